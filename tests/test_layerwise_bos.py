"""Windows start with BOS when the tokenizer adds one by default: [BOS] + (seqlen − 1) text tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch
from layerwise_tiny import bos_byte_tokenizer, byte_tokenizer, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise import data
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import save_model
from layerprune.layerwise.perplexity import eval_windows, perplexity
from layerprune.layerwise.pipeline import run_demo, run_eval, run_prune
from layerprune.layerwise.tokens import bos_id

BOS = 257
SEQLEN = 32


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("bos") / "text.txt"
    f.write_text(tiny_text(1500))
    return f


def test_bos_is_detected_from_what_the_tokenizer_does():
    assert bos_byte_tokenizer()("a")["input_ids"][0] == BOS
    assert bos_id(bos_byte_tokenizer()) == BOS
    assert bos_id(byte_tokenizer()) is None  # no BOS token at all
    assert bos_id(lambda text: [ord(c) for c in text]) is None  # a plain callable

    class Flagged:  # add_bos_token set, e.g. a slow Llama tokenizer
        model_input_names = ["input_ids"]
        bos_token_id = 5
        add_bos_token = True

        def __call__(self, text, **kw):
            return {"input_ids": [7]}

    assert bos_id(Flagged()) == 5
    Flagged.add_bos_token = False
    assert bos_id(Flagged()) is None


def test_calibration_segments_begin_with_bos(text_file):
    tok = bos_byte_tokenizer()
    seg = data.calibration_segments(tok, text_file, nsamples=6, seqlen=SEQLEN, seed=1)
    assert seg.shape == (6, SEQLEN)
    assert seg[:, 0].eq(BOS).all() and not seg[:, 1:].eq(BOS).any()  # no BOS mid-stream
    stream = data.token_stream(tok, data.load_documents(text_file))
    assert torch.equal(seg[:, 1:], data.sample_segments(stream, 6, SEQLEN - 1, seed=1))


def test_without_bos_calibration_is_unchanged(text_file):
    tok = byte_tokenizer()
    seg = data.calibration_segments(tok, text_file, nsamples=6, seqlen=SEQLEN, seed=1)
    stream = data.token_stream(tok, data.load_documents(text_file))
    assert torch.equal(seg, data.sample_segments(stream, 6, SEQLEN, seed=1))


def test_evaluation_windows_with_and_without_bos(text_file):
    tok = bos_byte_tokenizer()
    stream = data.evaluation_stream(tok, text_file, max_tokens=1000)
    assert not stream.eq(BOS).any()
    win = data.evaluation_windows(tok, text_file, SEQLEN, max_tokens=1000)
    k = 1000 // (SEQLEN - 1)
    assert win.shape == (k, SEQLEN) and win[:, 0].eq(BOS).all()
    assert torch.equal(win[:, 1:].reshape(-1), stream[: k * (SEQLEN - 1)])  # every stream token once, in order
    plain = data.evaluation_windows(byte_tokenizer(), text_file, SEQLEN, max_tokens=1000)
    assert torch.equal(plain, eval_windows(data.evaluation_stream(byte_tokenizer(), text_file, 1000), SEQLEN))
    assert plain.shape == (1000 // SEQLEN, SEQLEN)


def test_perplexity_scores_the_text_tokens_after_bos(text_file):
    model = tiny_model("llama")
    win = data.evaluation_windows(bos_byte_tokenizer(), text_file, SEQLEN, max_tokens=300)
    with torch.no_grad():
        logits = model(input_ids=win).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), win[:, 1:].reshape(-1))
    assert win[:, 1:].numel() == win.shape[0] * (SEQLEN - 1)  # all text tokens are targets, BOS never is
    assert perplexity(model, win, SEQLEN) == pytest.approx(math.exp(float(nll)), rel=1e-5)
    with pytest.raises(LayerwiseError, match="do not match seqlen"):
        perplexity(model, win, SEQLEN + 1)


@pytest.mark.parametrize(("tokenizer", "bos"), [(bos_byte_tokenizer, BOS), (byte_tokenizer, None)])
def test_run_logs_record_the_convention(tmp_path, text_file, tokenizer, bos):
    save_model(tiny_model("llama"), tokenizer(), tmp_path / "tiny")
    rec = run_prune(str(tmp_path / "tiny"), tmp_path / "out", method="magnitude", sparsity=0.5, calib=str(text_file),
                    nsamples=4, seqlen=SEQLEN, eval_text=str(text_file), eval_tokens=400, progress=False)
    assert rec["bos"] is (bos is not None) and rec["bos_id"] == bos
    assert rec["eval_tokens_used"] == (400 // (SEQLEN - (bos is not None))) * (SEQLEN - (bos is not None))
    saved = json.loads((tmp_path / "out" / "layerprune_run.json").read_text())
    assert saved["bos"] == rec["bos"] and saved["bos_id"] == bos and saved["text_field"] == "text"
    ev = run_eval(str(tmp_path / "out"), str(text_file), seqlen=SEQLEN, max_tokens=400, progress=False)
    assert ev["bos_id"] == bos and ev["tokens"] == rec["eval_tokens_used"]
    assert ev["perplexity"] == pytest.approx(rec["perplexity"], rel=1e-4)
    demo = run_demo(str(tmp_path / "tiny"), ("magnitude",), sparsity=0.5, calib=str(text_file), text=str(text_file),
                    nsamples=4, seqlen=SEQLEN, eval_tokens=400, progress=False, echo=lambda *a: None)
    assert demo["bos"] is (bos is not None) and demo["bos_id"] == bos
