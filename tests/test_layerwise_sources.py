"""Record files (.jsonl/.json/.parquet) and hf: datasets as text sources, checked before a model loads."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
from layerwise_tiny import byte_tokenizer, one_thread  # noqa: F401

from layerprune.layerwise import data, sources
from layerprune.layerwise.cli import main
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError
from layerprune.layerwise.sources import HFSource, parse_hf


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# -- .jsonl / .json --------------------------------------------------------------------
def test_jsonl_reads_the_text_field_strings_and_skips_blank_lines(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "one", "id": 1}\n\n"two"\n{"text": "three"}\n')
    assert data.load_documents(f) == ["one", "two", "three"]
    g = write_jsonl(tmp_path / "body.jsonl", [{"body": "a b"}, {"body": "c"}])
    assert data.load_documents(g, text_field="body") == ["a b", "c"]


def test_jsonl_record_without_the_field_names_the_line_and_its_fields(tmp_path):
    f = write_jsonl(tmp_path / "docs.jsonl", [{"text": "ok"}, {"text": "ok"}, {"title": "x", "body": "y"}])
    with pytest.raises(LayerwiseError, match=r"line 3 has no 'text' field \(its fields: 'title', 'body'\)"):
        data.load_documents(f)
    with pytest.raises(LayerwiseError, match="--calib: .*line 3 has no 'text' field"):
        data.check_text_source(f, "--calib")
    data.check_text_source(write_jsonl(tmp_path / "ok.jsonl", [{"text": "fine"}]), "--calib")


@pytest.mark.parametrize(("line", "match"), [("{not json", "line 2 is not JSON"), ("[1, 2]", "line 2 is a JSON list"),
                                              ('{"text": 3}', "line 2: field 'text' is a JSON int")])
def test_bad_jsonl_lines(tmp_path, line, match):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(LayerwiseError, match=match):
        data.check_text_source(f, "--text")


@pytest.mark.parametrize("content", [
    [{"text": "a"}, {"text": "b"}],
    ["a", "b"],
    {"version": 1, "data": [{"text": "a"}, "b"]},
])
def test_json_forms(tmp_path, content):
    f = tmp_path / "docs.json"
    f.write_text(json.dumps(content))
    assert data.load_documents(f) == ["a", "b"]


@pytest.mark.parametrize(("content", "match"), [
    ([{"text": "a"}, {"body": "b"}], r"record 2 has no 'text' field \(its fields: 'body'\)"),
    ({"train": ["a"], "test": ["b"]}, "exactly one list.*holds 2"),
    ({"a": 1}, "exactly one list.*holds 0"),
    ("just a string", "must hold a list"),
])
def test_bad_json(tmp_path, content, match):
    f = tmp_path / "docs.json"
    f.write_text(json.dumps(content))
    with pytest.raises(LayerwiseError, match=match):
        data.check_text_source(f, "--calib")


def test_record_file_text_segments(tmp_path):
    f = write_jsonl(tmp_path / "docs.jsonl", [{"text": "ab" * 40}, {"text": "cd" * 40}])
    ids = data.calibration_segments(byte_tokenizer(), f, nsamples=3, seqlen=16)
    assert ids.shape == (3, 16)


# -- .parquet ---------------------------------------------------------------------------
def write_parquet(path, **columns):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_column(tmp_path):
    f = write_parquet(tmp_path / "docs.parquet", text=["one", "two"], body=["x", "y"], n=[1, 2])
    assert data.load_documents(f) == ["one", "two"]
    assert data.load_documents(f, text_field="body") == ["x", "y"]
    data.check_text_source(f, "--calib", "body")
    with pytest.raises(LayerwiseError, match=r"no column 'content' \(its columns: 'text', 'body', 'n'\)"):
        data.check_text_source(f, "--calib", "content")
    with pytest.raises(LayerwiseError, match="column 'n' holds int64, not text"):
        data.check_text_source(f, "--calib", "n")
    g = write_parquet(tmp_path / "nulls.parquet", text=["one", None])
    with pytest.raises(LayerwiseError, match="row 2 of column 'text' is null"):
        data.load_documents(g)
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(LayerwiseError, match="not a parquet file"):
        data.check_text_source(tmp_path / "fake.parquet", "--text")


def test_parquet_without_pyarrow_names_the_data_extra(tmp_path, monkeypatch):
    f = tmp_path / "docs.parquet"
    f.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow → ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingPackageError, match=r"pyarrow .*pip install 'layerprune\[data\]'"):
        data.check_text_source(f, "--calib")


# -- hf: names ----------------------------------------------------------------------------
def test_parse_hf_forms():
    assert parse_hf("wiki") is None and parse_hf("data/x.jsonl") is None
    assert parse_hf("hf:wikitext") == HFSource("wikitext")
    assert parse_hf("hf:wikitext:wikitext-2-raw-v1:test") == HFSource("wikitext", "wikitext-2-raw-v1", "test")
    assert parse_hf("hf:allenai/c4::validation") == HFSource("allenai/c4", None, "validation")
    for bad in ("hf:", "hf::x", "hf:a:b:c:d"):
        with pytest.raises(LayerwiseError, match=r"hf:NAME\[:CONFIG\[:SPLIT\]\]"):
            parse_hf(bad)
    assert str(parse_hf("hf:allenai/c4::validation")) == "hf:allenai/c4::validation"


def test_protocols_are_recognized_by_name():
    assert HFSource("wikitext").protocol == "wikitext2"
    assert HFSource("wikitext", "wikitext-2-v1").protocol == "wikitext2"
    assert HFSource("Salesforce/wikitext", "wikitext-2-raw-v1").protocol == "wikitext2"
    assert HFSource("wikitext", "wikitext-103-raw-v1").protocol is None
    assert HFSource("c4").protocol == HFSource("allenai/c4").protocol == "c4"
    assert HFSource("someone/corpus").protocol is None
    assert HFSource("wikitext").split_for("calibration") == "train"
    assert HFSource("wikitext").split_for("evaluation") == "test"
    assert HFSource("allenai/c4").split_for("evaluation") == "validation"
    assert HFSource("x", None, "dev").split_for("evaluation") == "dev"


def test_fetch_commands():
    assert HFSource("wikitext", "wikitext-2-raw-v1", "test").fetch_command("evaluation") == (
        'python -c "import datasets; datasets.load_dataset(\'wikitext\', \'wikitext-2-raw-v1\', split=\'test\')"')
    assert HFSource("wikitext").fetch_command("calibration") == (
        'python -c "import datasets; datasets.load_dataset(\'wikitext\', \'wikitext-2-raw-v1\', split=\'train\')"')
    assert HFSource("allenai/c4").fetch_command("calibration") == (
        "python -c \"import datasets; datasets.load_dataset('allenai/c4', data_files={'train': "
        "'en/c4-train.00000-of-01024.json.gz'}, split='train')\"")
    assert "en/c4-validation.00000-of-00008.json.gz" in HFSource("c4").fetch_command("evaluation")
    with pytest.raises(LayerwiseError, match="'en' config"):
        HFSource("allenai/c4", "realnewslike").load_arguments("calibration")


class FakeDataset:
    def __init__(self, rows):
        self.rows = rows
        self.column_names = list(rows[0]) if rows else []

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):  # a row, or a whole column by name
        return [r[i] for r in self.rows] if isinstance(i, str) else self.rows[i]


@pytest.fixture
def fake_datasets(monkeypatch):
    """A stand-in ``datasets`` module whose load_dataset records its calls and the offline flag."""
    module = types.ModuleType("datasets")
    module.calls = []
    module.tables = {}

    def load_dataset(*args, **kwargs):
        module.calls.append((args, kwargs, os.environ.get("HF_DATASETS_OFFLINE")))
        key = (args, kwargs["split"])
        if key not in module.tables:
            raise ConnectionError(f"Couldn't reach '{args[0]}' on the Hub (offline mode is enabled)")
        return FakeDataset(module.tables[key])

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name, *a: object() if name == "datasets" else real(name, *a))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return module


def test_hf_source_is_loaded_offline(fake_datasets):
    fake_datasets.tables[(("someone/corpus",), "train")] = [{"text": "alpha", "n": 1}, {"text": "beta", "n": 2}]
    assert data.load_documents("hf:someone/corpus") == ["alpha", "beta"]
    args, kwargs, offline = fake_datasets.calls[-1]
    assert args == ("someone/corpus",) and kwargs == {"split": "train"} and offline == "1"
    assert "HF_DATASETS_OFFLINE" not in os.environ  # restored
    with pytest.raises(LayerwiseError, match=r"no column 'body' \(its columns: 'text', 'n'\)"):
        data.check_text_source("hf:someone/corpus", "--calib", "body")


def test_hf_source_absent_from_the_cache_names_the_fetch_command(fake_datasets):
    with pytest.raises(LayerwiseError) as e:
        data.check_text_source("hf:wikitext:wikitext-2-raw-v1:test", "--text")
    message = str(e.value)
    assert "\n" not in message and "cannot be loaded offline from the datasets cache" in message
    assert message.endswith('with network: python -c "import datasets; '
                            'datasets.load_dataset(\'wikitext\', \'wikitext-2-raw-v1\', split=\'test\')"')


def test_hf_without_datasets_names_the_data_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"datasets .*pip install 'layerprune\[data\]'"):
        data.check_text_source("hf:wikitext", "--text")
    with pytest.raises(MissingPackageError, match=r"pip install 'layerprune\[data\]'"):
        data.load_documents("hf:wikitext")


def test_cli_rejects_a_bad_record_file_before_the_model_loads(tmp_path, capsys):
    f = write_jsonl(tmp_path / "docs.jsonl", [{"text": "ok"}, {"body": "no text"}])
    code = main(["eval", "--model", str(tmp_path / "no-such-model"), "--text", str(f)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--text: " in err and "line 2 has no 'text' field (its fields: 'body')" in err
    code = main(["prune", "--model", str(tmp_path / "no-such-model"), "--calib", str(f), "--text-field", "body",
                 "--no-eval", "--sparsity", "0.5", "--output", str(tmp_path / "out")])
    assert code == 2 and "line 1 has no 'body' field (its fields: 'text')" in capsys.readouterr().err
