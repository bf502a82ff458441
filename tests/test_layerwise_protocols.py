"""WikiText-2 and C4 read as the SparseGPT paper does, on small in-memory and on-disk look-alikes."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import torch
from layerwise_tiny import bos_byte_tokenizer, byte_tokenizer, one_thread  # noqa: F401

from layerprune.layerwise import data, protocols

LINES = ["", " = Alpha = \n", "", " Alpha is a letter . It comes first . \n", " The Greeks used it . \n", "",
         " = Beta = \n", "", " Beta is the second letter of the alphabet . \n"]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def expected_reference_windows(stream, nsamples, length, seed):
    """The reference's draws: random.seed(seed), then randint(0, n - length - 1) per sample."""
    random.seed(seed)
    starts = [random.randint(0, len(stream) - length - 1) for _ in range(nsamples)]
    return [stream[s : s + length] for s in starts]


def test_wikitext2_evaluation_joins_every_line_with_a_blank_line_as_one_stream():
    tok = byte_tokenizer()
    stream = protocols.wikitext2_evaluation(tok, LINES)
    assert stream.tolist() == ids(tok, "\n\n".join(LINES))  # empty lines kept, one tokenizer call


def test_wikitext2_calibration_draws_as_the_reference():
    tok = byte_tokenizer()
    stream = ids(tok, " ".join(LINES))
    got = protocols.wikitext2_calibration(tok, LINES, nsamples=5, length=12, seed=3)
    assert got.tolist() == expected_reference_windows(stream, 5, 12, 3)
    assert not torch.equal(got, protocols.wikitext2_calibration(tok, LINES, 5, 12, seed=4))


def test_c4_calibration_draws_as_the_reference():
    tok = byte_tokenizer()
    docs = ["short", "x" * 10, "a long document number one " * 3, "tiny", "another long document here " * 4]
    length, seed, nsamples = 20, 7, 6
    random.seed(seed)
    expected = []
    for _ in range(nsamples):
        while True:
            doc = ids(tok, docs[random.randint(0, len(docs) - 1)])
            if len(doc) > length:
                break
        start = random.randint(0, len(doc) - length - 1)
        expected.append(doc[start : start + length])
    got = protocols.c4_calibration(tok, docs, nsamples, length, seed)
    assert got.tolist() == expected


def test_c4_calibration_without_a_long_document_fails(monkeypatch):
    monkeypatch.setattr(protocols, "C4_MAX_DRAWS", 50)
    with pytest.raises(data.LayerwiseError, match="no C4 document with more than 20 tokens"):
        protocols.c4_calibration(byte_tokenizer(), ["short", "docs"], 2, 20)


def test_c4_evaluation_is_1100_documents_cut_at_256_windows():
    tok = byte_tokenizer()
    docs = [f"d{i}" for i in range(1200)]
    stream = protocols.c4_evaluation(tok, docs, length=100)
    full = ids(tok, " ".join(docs[:1100]))
    assert len(full) < 256 * 100 and stream.tolist() == full  # all of the first 1100, nothing of doc 1101
    assert protocols.c4_evaluation(tok, docs, length=10).tolist() == full[:2560]


# -- through data.py, on a real (local) datasets cache --------------------------------------
@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    return datasets


def make_wikitext_repo(root):
    """A folder laid out as the hub's wikitext repository (README configs, one file a split)."""
    folder = root / "wikitext" / "wikitext-2-raw-v1"
    folder.mkdir(parents=True)
    for split, lines in (("train", LINES * 3), ("test", LINES)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    (root / "wikitext" / "README.md").write_text(
        "---\nconfigs:\n- config_name: wikitext-2-raw-v1\n  data_files:\n"
        "  - split: train\n    path: wikitext-2-raw-v1/train.jsonl\n"
        "  - split: test\n    path: wikitext-2-raw-v1/test.jsonl\n---\n")


def test_hf_wikitext2_from_the_datasets_cache(datasets_cache, tmp_path, monkeypatch):
    make_wikitext_repo(tmp_path)
    datasets_cache.load_dataset("wikitext", "wikitext-2-raw-v1")  # "fetch": fill the cache from the folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # now "wikitext" names only the cached dataset, read offline
    tok = byte_tokenizer()
    data.check_text_source("hf:wikitext:wikitext-2-raw-v1:test", "--text")
    stream = data.evaluation_stream(tok, "hf:wikitext:wikitext-2-raw-v1:test")
    assert stream.tolist() == ids(tok, "\n\n".join(LINES))
    assert torch.equal(data.evaluation_stream(tok, "hf:wikitext"), stream)  # default config and split
    calib = data.calibration_segments(tok, "hf:wikitext", nsamples=4, seqlen=16, seed=2)
    assert calib.tolist() == expected_reference_windows(ids(tok, " ".join(LINES * 3)), 4, 16, 2)
    bos = data.calibration_segments(bos_byte_tokenizer(), "hf:wikitext", nsamples=4, seqlen=16, seed=2)
    assert bos[:, 0].eq(257).all() and bos[:, 1:].tolist() == expected_reference_windows(
        ids(tok, " ".join(LINES * 3)), 4, 15, 2)
    with pytest.raises(data.LayerwiseError, match=r"wikitext-103-raw-v1', split='test'\)\"$"):
        data.check_text_source("hf:wikitext:wikitext-103-raw-v1", "--text")


def test_hf_folder_with_splits(datasets_cache, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"body": "train one"}\n{"body": "train two"}\n')
    (folder / "test.jsonl").write_text('{"body": "test one"}\n')
    assert data.load_documents("hf:corpus", "body") == ["train one", "train two"]
    assert data.load_documents("hf:corpus", "body", role="evaluation") == ["test one"]
    assert data.load_documents("hf:corpus::test", "body") == ["test one"]


def test_hf_c4_shards(datasets_cache, tmp_path):
    shards = tmp_path / "c4" / "en"
    shards.mkdir(parents=True)
    train = [f"train document {i} " * (1 + i % 5) for i in range(40)]
    val = [f"validation document {i}" for i in range(1150)]
    for name, docs in ((protocols.C4_SHARDS["train"], train), (protocols.C4_SHARDS["validation"], val)):
        with gzip.open(shards / name, "wt") as f:
            f.writelines(json.dumps({"text": t, "url": "u"}) + "\n" for t in docs)
    tok = byte_tokenizer()
    data.check_text_source("hf:c4", "--calib")
    assert data.calibration_segments(tok, "hf:c4", nsamples=5, seqlen=40, seed=1).tolist() == \
        protocols.c4_calibration(tok, train, 5, 40, seed=1).tolist()
    stream = data.evaluation_stream(tok, "hf:c4", seqlen=8)
    assert stream.tolist() == ids(tok, " ".join(val[:1100]))[: 256 * 8]
    windows = data.evaluation_windows(tok, "hf:c4", seqlen=8)
    assert windows.shape == (256, 8)
    with pytest.raises(data.LayerwiseError, match="give seqlen"):
        data.evaluation_stream(tok, "hf:c4")
