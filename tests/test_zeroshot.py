"""`layerprune eval --tasks` through lm-evaluation-harness, on a tiny model and a task the test writes.

The task (6 arithmetic questions, 4 choices) is a local jsonl file plus a YAML config in a
``--task-path`` folder, so nothing is downloaded; a second YAML names a hub dataset that is in no
cache, to check the offline error.
"""

from __future__ import annotations

import json
import sys

import pytest
from layerwise_tiny import byte_tokenizer, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise.cli import main
from layerprune.layerwise.models import save_model
from layerprune.layerwise.zeroshot import format_task_table, task_rows

TASK = "layerprune_tiny_mc"
UNCACHED = "layerprune_not_cached"


def write_task(folder, cache) -> None:
    """A 6-document multiple-choice task (jsonl + YAML) and a task whose hub data is not cached."""
    folder.mkdir()
    docs = []
    for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 6), (2, 2), (7, 1), (4, 4)]):
        choices = [str(a + b + 1), str(a * b + 3), str(a - b - 7)]
        choices.insert(i % 4, str(a + b))
        docs.append({"question": f"What is {a} plus {b}?", "choices": choices, "label": i % 4})
    (folder / "tiny.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tiny.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "tiny.jsonl"}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    (folder / "uncached.yaml").write_text(f"""task: {UNCACHED}
dataset_path: layerprune-tests/no-such-dataset
dataset_kwargs:
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
""")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    save_model(tiny_model("llama"), byte_tokenizer(), root / "tiny")
    (root / "text.txt").write_text(tiny_text(600))
    write_task(root / "tasks", root / "hf_cache")
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Downloads off, also where datasets was imported (and read its settings) before this test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if "datasets" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_OFFLINE", True)


def test_tasks_and_perplexity_in_one_call(files, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(files / "tiny"), "--tasks", TASK, "--task-path", str(files / "tasks"),
                 "--text", str(files / "text.txt"), "--seqlen", "32", "--max-tokens", "512", "--batch-size", "2",
                 "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["perplexity"] > 1 and record["tokens"] == 512
    zs = record["zeroshot"]
    assert zs["num_fewshot"] == 0 and zs["samples"] == {TASK: 6} and zs["lm_eval_version"]
    (acc,) = [r for r in zs["rows"] if r["metric"] == "acc"]
    assert acc["task"] == TASK and 0.0 <= acc["value"] <= 1.0 and acc["stderr"] > 0
    assert f"| {TASK} | acc | {acc['value']:.4f} | {acc['stderr']:.4f} |" in printed
    assert f"perplexity {record['perplexity']:.3f}" in printed

    # the same perplexity as the streamed (block-by-block) evaluation of the same folder
    assert main(["eval", "--model", str(files / "tiny"), "--text", str(files / "text.txt"), "--seqlen", "32",
                 "--max-tokens", "512", "--quiet"]) == 0
    assert f"perplexity {record['perplexity']:.3f}" in capsys.readouterr().out


def test_tasks_alone_skip_perplexity_and_limit_the_documents(files, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(files / "tiny"), "--tasks", TASK, "--task-path", str(files / "tasks"),
                 "--limit", "2", "--output", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert "perplexity" not in record and record["zeroshot"]["samples"] == {TASK: 2}
    assert "perplexity" not in capsys.readouterr().out


@pytest.mark.parametrize(("task", "words"), [
    ("no_such_task_anywhere", ["unknown task 'no_such_task_anywhere'", "lm-eval ls tasks"]),
    (UNCACHED, [f"task '{UNCACHED}'", "not in the local cache", "HF_DATASETS_OFFLINE=0", f"load(['{UNCACHED}'])"]),
])
def test_unknown_or_uncached_task_is_one_line(files, task, words, monkeypatch, capsys):
    import layerprune.layerwise.pipeline as pipeline

    monkeypatch.setattr(pipeline, "open_model", lambda *a, **k: pytest.fail("the model loaded"))
    assert main(["eval", "--model", str(files / "tiny"), "--tasks", task, "--task-path", str(files / "tasks")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerprune: error:") and err.count("\n") == 1, err
    assert all(w in err for w in words), err


def test_missing_harness_names_the_eval_extra(files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the eval extra were not installed
    assert main(["eval", "--model", str(files / "tiny"), "--tasks", TASK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lm-eval" in err and "pip install 'layerprune[eval]'" in err, err


def test_task_rows_and_table():
    results = {"boolq": {"alias": "boolq", "acc,none": 0.625, "acc_stderr,none": 0.01, "sample_len": 8},
               "gsm": {"exact_match,strict": 0.5, "exact_match_stderr,strict": "N/A"}}
    rows = task_rows(results)
    assert rows == [{"task": "boolq", "metric": "acc", "value": 0.625, "stderr": 0.01},
                    {"task": "gsm", "metric": "exact_match (strict)", "value": 0.5, "stderr": None}]
    table = format_task_table(rows)
    assert "| boolq | acc | 0.6250 | 0.0100 |" in table and "| gsm | exact_match (strict) | 0.5000 | — |" in table
