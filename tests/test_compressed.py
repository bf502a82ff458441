"""--save-format compressed: compressed-tensors' bitmask layouts, written and read back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from layerwise_tiny import byte_tokenizer, folder_tensors, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise import compressed
from layerprune.layerwise.cli import main
from layerprune.layerwise.compressed import (
    BITMASK,
    BITMASK_24,
    Compression,
    compress_tensors,
    compress_weight,
    decompress_tensors,
    decompress_weight,
    unpack_bits,
)
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError
from layerprune.layerwise.lazy import open_model
from layerprune.layerwise.models import find_blocks, load_model, save_model

INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits (so equality is bit for bit, NaN and the sign of zero included)."""
    return t.contiguous().view(INT[t.element_size()]) if t.is_floating_point() else t


def same_bits(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])), k


def nbytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny float32 Llama (one file), a 3-block bf16 Llama in shards, and a text."""
    root = tmp_path_factory.mktemp("compressed")
    save_model(tiny_model("llama"), byte_tokenizer(), root / "tiny")
    model = tiny_model("llama", layers=3).to(torch.bfloat16)
    model.save_pretrained(root / "bf16", max_shard_size="30KB")
    byte_tokenizer().save_pretrained(root / "bf16")
    (root / "text.txt").write_text(tiny_text(3000))
    return root


def _prune(files, model, out, *extra):
    args = ["prune", "--model", str(files / model), "--calib", str(files / "text.txt"), "--text",
            str(files / "text.txt"), "--nsamples", "6", "--seqlen", "32", "--eval-tokens", "1024",
            "--output", str(out), "--quiet", *extra]
    assert main(args) == 0
    return json.loads((out / "layerprune_run.json").read_text())


def _eval(files, folder, capsys, *extra) -> str:
    capsys.readouterr()
    assert main(["eval", "--model", str(folder), "--text", str(files / "text.txt"), "--seqlen", "32",
                 "--max-tokens", "1024", "--quiet", *extra]) == 0
    return capsys.readouterr().out


# -- one tensor ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bitmask_round_trip_is_bit_exact(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 20, generator=g).to(dtype)
    w[w.abs() < 0.9] = 0
    w[0, 3], w[2, 0], w[5] = float("nan"), -torch.finfo(dtype).tiny, 0  # NaN, a subnormal-ish value, an empty row
    parts = compress_weight(w, BITMASK)
    assert parts["compressed"].numel() == int((w != 0).sum()) and parts["bitmask"].shape == (12, 3)
    assert parts["row_offsets"].tolist() == (torch.cumsum((w != 0).sum(1), 0) - (w != 0).sum(1)).tolist()
    assert torch.equal(bits(decompress_weight(parts)), bits(w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_24_round_trip_fills_sparse_groups_and_refuses_other_patterns(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 16, generator=g).to(dtype)
    groups = w.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    w = torch.where(keep, groups, 0).reshape(8, 16)
    w[0, :4] = 0  # a group with no value left
    w[1, 4:8] = torch.tensor([0, 0, 0, 1.5])  # and one with one
    parts = compress_weight(w, BITMASK_24)
    assert parts["compressed"].shape == (8, 8) and "row_offsets" not in parts
    assert torch.equal(bits(decompress_weight(parts)), bits(w))
    w[2, :4] = 1.0  # four kept in a group: not 2:4
    with pytest.raises(LayerwiseError, match="not 2:4"):
        compress_weight(w, BITMASK_24)


def test_our_unpacking_matches_compressed_tensors():
    from compressed_tensors.utils import unpack_bitmasks

    mask = torch.rand(7, 21, generator=torch.Generator().manual_seed(2)) > 0.6
    packed = compressed.pack_bits(mask)
    assert torch.equal(unpack_bits(packed, [7, 21]), mask)
    assert torch.equal(unpack_bitmasks(packed, [7, 21]), mask)


def test_shard_tensors_compress_only_the_named_weights():
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    tensors = {"a.weight": w, "a.bias": torch.zeros(2), "b.weight": w.clone()}
    out = compress_tensors(tensors, {"a.weight"}, BITMASK)
    assert set(out) == {"a.compressed", "a.bitmask", "a.shape", "a.row_offsets", "a.bias", "b.weight"}
    same_bits(decompress_tensors(out), tensors)


# -- whole runs ----------------------------------------------------------------------------------
def test_in_memory_unstructured_saves_smaller_and_reloads_identical(files, tmp_path, capsys):
    args = ("--method", "sparsegpt", "--sparsity", "0.7", "--no-stream")
    dense_run = _prune(files, "tiny", tmp_path / "dense", *args)
    run = _prune(files, "tiny", tmp_path / "comp", *args, "--save-format", "compressed")
    assert run["save_format"] == BITMASK and dense_run["save_format"] == "dense" and not run["streamed"]
    assert [e["objective"] for e in run["layers"]] == [e["objective"] for e in dense_run["layers"]]
    config = json.loads((tmp_path / "comp" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["sparsity_config"]["format"] == BITMASK
    assert len(config["sparsity_config"]["targets"]) == len(run["layers"]) == 14

    stored = folder_tensors(tmp_path / "comp")
    pruned = {f"model.layers.{e['block']}.{e['layer']}.weight" for e in run["layers"]}
    assert not pruned & set(stored)  # every pruned layer compressed …
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(stored)  # … the rest dense
    same_bits(compressed.folder_tensors(tmp_path / "comp"), folder_tensors(tmp_path / "dense"))
    assert nbytes(tmp_path / "comp") < nbytes(tmp_path / "dense")

    a, _ = load_model(tmp_path / "comp")
    b, _ = load_model(tmp_path / "dense")
    assert getattr(a.config, "quantization_config", None) is None
    same_bits(a.state_dict(), b.state_dict())
    lazy, _ = open_model(tmp_path / "comp")
    store = lazy.layerprune_store
    for i in range(len(store)):
        with store.on(i, "cpu") as block:
            same_bits({f"model.layers.{i}.{k}": v for k, v in block.state_dict().items()},
                      {k: v for k, v in b.state_dict().items() if k.startswith(f"model.layers.{i}.")})

    line = _eval(files, tmp_path / "dense", capsys)
    assert _eval(files, tmp_path / "comp", capsys) == line
    assert _eval(files, tmp_path / "comp", capsys, "--no-stream") == line
    assert f"perplexity {run['perplexity']:.3f}" in line


def test_streamed_24_writes_sparse_24_bitmask_shards(files, tmp_path, capsys):
    args = ("--method", "wanda", "--pattern", "2:4")
    _prune(files, "bf16", tmp_path / "dense", *args)
    run = _prune(files, "bf16", tmp_path / "comp", *args, "--save-format", "compressed")
    assert run["streamed"] and run["dtype"] == "bfloat16" and run["save_format"] == BITMASK_24
    index = json.loads((tmp_path / "comp" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4  # a shard per block + the rest
    assert "model.layers.0.mlp.up_proj.compressed" in index["weight_map"]
    config = json.loads((tmp_path / "comp" / "config.json").read_text())["quantization_config"]
    assert config["sparsity_config"]["format"] == BITMASK_24 and config["sparsity_config"]["sparsity_structure"] == "2:4"
    parts = folder_tensors(tmp_path / "comp")
    assert parts["model.layers.1.mlp.down_proj.compressed"].shape == (32, 32)  # (out × in/2), bf16
    assert parts["model.layers.1.mlp.down_proj.compressed"].dtype == torch.bfloat16
    same_bits(compressed.folder_tensors(tmp_path / "comp"), folder_tensors(tmp_path / "dense"))
    assert nbytes(tmp_path / "comp") < nbytes(tmp_path / "dense")
    a, _ = load_model(tmp_path / "comp")
    assert a.dtype == torch.bfloat16
    same_bits(a.state_dict(), load_model(tmp_path / "dense")[0].state_dict())
    line = _eval(files, tmp_path / "dense", capsys)
    assert _eval(files, tmp_path / "comp", capsys) == line
    assert f"perplexity {run['perplexity']:.3f}" in line


def test_ignored_layers_stay_dense(files, tmp_path):
    from layerprune.layerwise.data import calibration_segments
    from layerprune.layerwise.driver import PruneSettings, prune_model

    model, tok = load_model(files / "tiny")
    ids = calibration_segments(tok, str(files / "text.txt"), 4, 32, 0)
    run = prune_model(model, ids, PruneSettings(method="magnitude", sparsity=0.7, ignore=("re:.*o_proj$",)),
                      progress=False)
    comp = Compression.from_run(run)
    assert comp.format == BITMASK and len(comp.weights) == 12 and len(comp.dense_layers) == 2
    save_model(model, tok, tmp_path / "out", compression=comp)
    stored = folder_tensors(tmp_path / "out")
    assert "model.layers.0.self_attn.o_proj.weight" in stored and "model.layers.0.self_attn.q_proj.weight" not in stored
    same_bits(load_model(tmp_path / "out")[0].state_dict(), model.state_dict())


def test_a_missing_compressed_tensors_is_one_line(files, tmp_path, capsys, monkeypatch):
    real = compressed.importlib.util.find_spec
    monkeypatch.setattr(compressed.importlib.util, "find_spec",
                        lambda name, *a: None if name == "compressed_tensors" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"pip install 'layerprune\[compressed\]'"):
        compressed.check_save_format("compressed")
    capsys.readouterr()
    assert main(["prune", "--model", str(files / "tiny"), "--output", str(tmp_path / "x"), "--method", "magnitude",
                 "--sparsity", "0.5", "--save-format", "compressed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layerprune[compressed]" in err
    assert not (tmp_path / "x").exists()
    assert main(["prune", "--model", str(files / "tiny"), "--output", str(tmp_path / "x"),
                 "--save-format", "zip"]) == 2


# -- what the installed compressed-tensors / transformers cannot do (KNOWN FAILURES) -----------------
# These two tests pass while the failure lasts. When one starts failing, a release that writes or
# reads sparse bitmask checkpoints again has landed: write through it (layerwise/compressed.py)
# and make the second a plain reload test.
@pytest.mark.parametrize("fmt", [BITMASK, BITMASK_24])
def test_known_failure_compressed_tensors_has_no_sparse_compressor(fmt):
    from compressed_tensors.compressors import BaseCompressor

    with pytest.raises(KeyError, match=f"Unable to find {fmt} registered"):
        BaseCompressor.get_value_from_registry(fmt)


def test_known_failure_transformers_leaves_the_pruned_weights_missing(files, tmp_path):
    from transformers import AutoModelForCausalLM

    run = _prune(files, "tiny", tmp_path / "comp", "--method", "magnitude", "--sparsity", "0.7", "--no-eval",
                 "--save-format", "compressed")
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "comp", local_files_only=True,
                                                       output_loading_info=True)
    pruned = {f"model.layers.{e['block']}.{e['layer']}.weight" for e in run["layers"]}
    assert pruned <= set(info["missing_keys"])  # randomly initialized, not our weights
    assert "model.layers.0.mlp.up_proj.bitmask" in info["unexpected_keys"]
    ours, _ = load_model(tmp_path / "comp")
    w = find_blocks(model)[1][0].mlp.up_proj.weight
    assert not torch.equal(w, ours.model.layers[0].mlp.up_proj.weight)
    assert np.isfinite(w.detach().numpy()).all()
