"""Lock files on the prune and compare outputs, and ``--resume`` refusing changed arguments (issue 14)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from layerwise_tiny import byte_tokenizer, folder_tensors, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise.cli import main
from layerprune.layerwise.models import save_model
from layerprune.problems.locks import lock_path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    save_model(tiny_model("llama"), byte_tokenizer(), root / "tiny")
    save_model(tiny_model("llama", seed=1), byte_tokenizer(), root / "other")
    (root / "text.txt").write_text(tiny_text(3000))
    (root / "text2.txt").write_text(tiny_text(3000, seed=1))
    return root


BASE = {"--method": "wanda", "--sparsity": "0.5", "--nsamples": "6", "--seqlen": "32", "--eval-tokens": "512",
        "--seed": "0", "--damping": "0.01", "--batch-size": "8"}


def _prune(files, out, changes=None, *extra):
    opts = {"--model": str(files / "tiny"), "--calib": str(files / "text.txt"), "--text": str(files / "text.txt"),
            **BASE, **(changes or {})}
    return ["prune", *[x for kv in opts.items() for x in kv], "--output", str(out), "--quiet", *extra]


def _write_lock(folder, pid):
    lock_path(folder).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then",
                                             "command": "layerprune prune …"}))


@pytest.fixture
def live_pid():
    p = subprocess.Popen(["sleep", "60"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture
def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- locks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["output", "checkpoint"])
def test_second_prune_on_one_output_is_refused(files, tmp_path, capsys, live_pid, which):
    out = tmp_path / "out"
    _write_lock(out if which == "output" else tmp_path / "out.partial", live_pid)
    assert main(_prune(files, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("layerprune: error: ") and f"pid {live_pid}" in err[0]
    assert not out.exists()


def test_stale_prune_lock_is_taken_over(files, tmp_path, capsys, dead_pid):
    out = tmp_path / "out"
    _write_lock(out, dead_pid)
    assert main(_prune(files, out)) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("layerprune:")]
    assert len(err) == 1 and "warning" in err[0] and "stale" in err[0] and str(dead_pid) in err[0]
    assert (out / "model.safetensors.index.json").exists()
    assert not lock_path(out).exists() and not lock_path(tmp_path / "out.partial").exists()


def test_prune_locks_are_released_after_a_crash(files, tmp_path, monkeypatch):
    import layerprune.layerwise.driver as driver

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_block", crash)
    out = tmp_path / "out"
    assert main(_prune(files, out)) == 130
    assert not lock_path(out).exists() and not lock_path(tmp_path / "out.partial").exists()


def test_second_compare_on_one_output_is_refused(files, tmp_path, capsys, live_pid):
    problems = tmp_path / "problems"
    assert main(["capture", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--layers", "0",
                 "--nsamples", "4", "--seqlen", "32", "--output", str(problems)]) == 0
    report = tmp_path / "report"
    _write_lock(report, live_pid)
    args = ["compare", str(problems), "--methods", "magnitude", "--sparsity", "0.5", "--output", str(report)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("layerprune: error: ") and f"pid {live_pid}" in err[0]
    lock_path(report).unlink()
    assert main(args) == 0 and not lock_path(report).exists()


# -- --resume refuses changed arguments ------------------------------------------------------------------
@pytest.fixture(scope="module")
def crashed(files, tmp_path_factory):
    """A prune run killed after its first block: the output's ``.partial`` checkpoint."""
    import layerprune.layerwise.api as api
    import layerprune.layerwise.driver as driver

    out = tmp_path_factory.mktemp("crashed") / "out"
    real = api.prune_model

    def crash_after_first(*a, **k):
        def after(index):
            raise KeyboardInterrupt

        return real(*a, **k, after_block=after)

    api.prune_model = crash_after_first
    try:
        assert main(_prune(files, out)) == 130
    finally:
        api.prune_model = real
    from layerprune.layerwise.pipeline import checkpoint_folder

    state = driver.Checkpoint(checkpoint_folder(out)).read_state()
    assert state["next_block"] == 1
    return out


@pytest.mark.parametrize(
    ("changes", "extra", "expect"),
    [
        ({"--sparsity": "0.6"}, (), "sparsity=0.5, this run has sparsity=0.6"),
        ({"--method": "magnitude"}, (), "method='wanda', this run has method='magnitude'"),
        ({"--pattern": "row"}, (), "pattern='unstructured', sparsity_profile='owl', this run has pattern='row', "
                                   "sparsity_profile='uniform'"),  # the default profile follows the pattern
        ({"--damping": "0.1"}, (), "damping=0.01, this run has damping=0.1"),
        ({"--seed": "3"}, (), "seed=0, this run has seed=3"),
        ({"--nsamples": "5"}, (), "nsamples=6, this run has nsamples=5"),
        ({"--seqlen": "16"}, (), "seqlen=32, this run has seqlen=16"),
        ({"--batch-size": "2"}, (), "batch_size=8, this run has batch_size=2"),
        ({"--eval-tokens": "256"}, (), "eval_tokens=512, this run has eval_tokens=256"),
        ({}, ("--option", "group=layer"), "options={}, this run has options={'group': 'layer'}"),
        ({}, ("--no-eval",), "this run has eval_text=None"),
        ({"--text": "TEXT2"}, (), "eval_text="),
        ({"--calib": "TEXT2"}, (), "calib="),
        ({"--model": "OTHER"}, (), "model="),
        ({"--sparsity": "0.6", "--seed": "2"}, (), "seed=0, sparsity=0.5, this run has seed=2, sparsity=0.6"),
    ],
)
def test_resume_refuses_a_changed_argument(files, crashed, capsys, changes, extra, expect):
    swap = {"TEXT2": str(files / "text2.txt"), "OTHER": str(files / "other")}
    changes = {k: swap.get(v, v) for k, v in changes.items()}
    assert main(_prune(files, crashed, changes, "--resume", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("layerprune: error: --resume: the checkpoint"), err
    assert expect in err[0]
    for key in changes:  # only the differing arguments are named
        assert key.lstrip("-").replace("-", "_").replace("text", "eval_text") in err[0]


def test_resume_with_the_same_arguments_finishes(files, crashed, tmp_path):
    full = tmp_path / "full"
    assert main(_prune(files, full)) == 0
    assert main(_prune(files, crashed, None, "--resume")) == 0
    a, b = folder_tensors(full), folder_tensors(crashed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    ra, rb = (json.loads((p / "layerprune_run.json").read_text()) for p in (full, crashed))
    assert ra["dense_perplexity"] == rb["dense_perplexity"] and ra["perplexity"] == rb["perplexity"]
    assert os.listdir(crashed.parent) == ["out"]  # no checkpoint, lock or temporary left
