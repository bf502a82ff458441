"""The driver on bad numerics: NaN/Inf in weights or activations are named by block and layer;
dead input channels prune through at damping 0 with every method."""

from __future__ import annotations

import pytest
import torch
from layerwise_tiny import byte_tokenizer, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise import data
from layerprune.layerwise.driver import PruneSettings, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import find_blocks

SEQLEN = 32


@pytest.fixture(scope="module")
def calib():
    return data.sample_segments(data.token_stream(byte_tokenizer(), [tiny_text(3000)]), 6, SEQLEN, seed=0)


def _model(layers: int = 4):
    model = tiny_model("llama", layers=layers)
    return model, find_blocks(model)[1]


def _prune(model, calib, method: str = "magnitude", damping: float = 0.01, **fields):
    return prune_model(model, calib, PruneSettings(method=method, sparsity=0.5, damping=damping, **fields), progress=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_is_named(calib, value):
    model, blocks = _model()
    with torch.no_grad():
        blocks[2].mlp.down_proj.weight[3, 5] = value
    with pytest.raises(LayerwiseError, match=r"non-finite weight \(NaN/Inf\) in block 2, layer mlp\.down_proj \(1 of"):
        _prune(model, calib)


def test_non_finite_norm_weight_is_named(calib):
    model, blocks = _model()
    with torch.no_grad():
        blocks[1].post_attention_layernorm.weight[0] = float("nan")
    with pytest.raises(LayerwiseError, match=r"block 1, parameter post_attention_layernorm\.weight"):
        _prune(model, calib)


def test_non_finite_activation_inside_a_block_is_named(calib):
    """A NaN that appears in the input of one layer (here through a hook), the block's input finite."""
    model, blocks = _model()

    def poison(_module, args):
        x = args[0].clone()
        x[0, 1, 2] = float("nan")
        return (x,)

    blocks[3].mlp.down_proj.register_forward_pre_hook(poison)
    with pytest.raises(LayerwiseError) as err:
        _prune(model, calib)
    msg = str(err.value)
    assert "non-finite activation (NaN/Inf) in the input of block 3, layer mlp.down_proj" in msg
    assert "input of block 3 is finite" in msg


def test_non_finite_block_input_names_its_source(calib):
    """Block 1's output turns Inf: block 2's first layer reports it, and that it came from block 1."""
    model, blocks = _model()

    def blow_up(_module, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        h[..., 0] = float("inf")
        return out

    blocks[1].register_forward_hook(blow_up)
    with pytest.raises(LayerwiseError) as err:
        _prune(model, calib)
    msg = str(err.value)
    assert "in the input of block 2, layer self_attn.q_proj (the input it shares with self_attn.k_proj" in msg
    assert "already non-finite: it comes from the output of block 1" in msg


@pytest.mark.parametrize("method", ["alps", "sparsegpt", "wanda", "magnitude", "admm_gradual"])
def test_dead_channels_prune_through_at_damping_zero(calib, method):
    """Rows of up_proj set to zero make those input channels of down_proj dead (H_jj = 0 exactly);
    at damping 0 every method prunes the whole model and those columns of down_proj come out zero."""
    model, blocks = _model(layers=2)
    dead = [1, 7, 30]
    with torch.no_grad():
        for block in blocks:
            block.mlp.up_proj.weight[dead] = 0.0
    log = _prune(model, calib, method, damping=0.0, sparsity_profile="uniform")  # per-layer counts below
    for e in log["layers"]:
        assert 0 <= e["relative_error"] < 1 and e["kept"] <= e["target_kept"]
        if e["layer"] not in ("mlp.up_proj", "mlp.down_proj"):  # up_proj has zero rows, which Wanda cannot fill
            assert e["kept"] == e["target_kept"]
    for block in blocks:
        W = block.mlp.down_proj.weight
        assert torch.isfinite(W).all() and (W[:, dead] == 0).all()
        assert int((W != 0).sum()) == W.numel() // 2  # the budget is met by the live channels
