"""A few of benchmarks/faults.py's kill points: SIGKILL at a chosen write (``LAYERPRUNE_FAULT_AT``), then resume.

The killed run is a subprocess (SIGKILL cannot be caught); the uninterrupted reference and the
resume run in this process. Each test: the previous output is intact or the new one complete
right after the kill, the resumed result is bit-identical to the uninterrupted one, and
nothing temporary is left.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from layerwise_tiny import byte_tokenizer, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise.cli import main
from layerprune.layerwise.models import save_model
from layerprune.problems.atomic import FAULT_ENV, is_temp_name


def _killed_at(label: str, args: list[str]) -> None:
    env = {**os.environ, FAULT_ENV: label, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "layerprune.layerwise.cli", *args], env=env, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]


def _leftovers(parent, keep=("out", "old")):
    left = [p.name for p in parent.iterdir() if p.name not in keep]
    return left + [str(p) for p in (parent / "out").rglob("*") if is_temp_name(p.name) or ".tmp" in p.name]


def _tensors(folder):
    """Every tensor of a saved model: its shards as the index names them (or the one file)."""
    import json

    from safetensors.numpy import load_file

    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(folder / "model.safetensors"))
    out = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(load_file(str(folder / shard)))
    return out


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _npz(path):
    with np.load(path) as f:
        return {k: f[k].copy() for k in f.files}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    save_model(tiny_model("llama", layers=3), byte_tokenizer(), root / "tiny")
    (root / "text.txt").write_text(tiny_text(3000))
    return root


def _prune(files, out, sparsity="0.5"):
    return ["prune", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--text",
            str(files / "text.txt"), "--method", "sparsegpt", "--sparsity", sparsity, "--nsamples", "6",
            "--seqlen", "32", "--eval-tokens", "1024", "--threads", "1", "--quiet", "--output", str(out)]


@pytest.fixture(scope="module")
def pruned(files):
    """An uninterrupted run (the reference) and a previous good output made with other arguments."""
    assert main(_prune(files, files / "ref")) == 0
    assert main(_prune(files, files / "old", sparsity="0.6")) == 0
    return files / "ref", files / "old"


@pytest.mark.parametrize("label", ["replace:state.json#2", "folder:out"])
def test_prune_killed_then_resumed(files, pruned, tmp_path, label):
    ref, old = pruned
    out = tmp_path / "out"
    shutil.copytree(old, out)
    _killed_at(label, _prune(files, out))
    assert _same(_tensors(out), _tensors(old))  # the previous model, intact
    assert (tmp_path / "out.lock").exists()  # the dead run's lock: stale, taken over below
    assert main(_prune(files, out) + ["--resume"]) == 0
    assert _same(_tensors(out), _tensors(ref))
    a, b = (json.loads((p / "layerprune_run.json").read_text()) for p in (out, ref))
    assert a["perplexity"] == b["perplexity"] and a["dense_perplexity"] == b["dense_perplexity"]
    assert _leftovers(tmp_path, keep=("out",)) == []


def test_capture_killed_then_rerun(files, tmp_path):
    args = ["capture", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--layers", "all",
            "--nsamples", "4", "--seqlen", "32", "--threads", "1"]
    assert main([*args, "--output", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    _killed_at("replace:*.npz#9", [*args, "--output", str(out)])
    done = sorted(p.name for p in out.glob("*.npz") if not is_temp_name(p.name))
    assert len(done) == 8  # the ninth was complete in its temporary file, not yet in place
    for name in done:
        assert _same(_npz(out / name), _npz(tmp_path / "ref" / name))
    assert main([*args, "--output", str(out)]) == 0
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert sorted(p.name for p in out.iterdir()) == names  # the dead writer's temporary file is swept
    assert all(_same(_npz(out / n), _npz(tmp_path / "ref" / n)) for n in names)


def _rows(path):
    with open(path, newline="") as f:
        return {tuple(r[k] for k in ("problem", "pattern", "sparsity", "method")):
                {k: v for k, v in r.items() if k not in ("seconds", "bound_seconds")} for r in csv.DictReader(f)}


def test_compare_killed_then_resumed(files, tmp_path):
    captured, problems = tmp_path / "captured", tmp_path / "problems"
    assert main(["capture", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--layers", "0",
                 "--nsamples", "4", "--seqlen", "32", "--output", str(captured)]) == 0
    problems.mkdir()
    for name in ("block00.self_attn.q_proj.npz", "block00.mlp.down_proj.npz"):
        shutil.move(captured / name, problems / name)
    shutil.rmtree(captured)
    args = ["compare", str(problems), "--methods", "magnitude,wanda,sparsegpt", "--sparsity", "0.5", "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    _killed_at("replace:results.csv#5", [*args, "--output", str(out)])
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "problem" and len(rows) == 4 and all(len(r) == len(rows[0]) for r in rows)  # 3 whole rows
    assert main([*args, "--output", str(out), "--resume"]) == 0
    assert _rows(out / "results.csv") == _rows(tmp_path / "ref" / "results.csv")
    for w in (tmp_path / "ref" / "weights").iterdir():
        assert _same(_npz(out / "weights" / w.name), _npz(w))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "problems", "ref"]
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]


def test_the_hook_kills_at_the_nth_write_only(tmp_path):
    code = ("import sys; from layerprune.problems.atomic import atomic_write_text as w\n"
            "for i in range(5): w(sys.argv[1], str(i))\n")
    target = tmp_path / "f.txt"
    env = {**os.environ, FAULT_ENV: "replace:f.*#3"}
    p = subprocess.run([sys.executable, "-c", code, str(target)], env=env)
    assert p.returncode == -signal.SIGKILL
    assert target.read_text() == "1"  # writes 0 and 1 landed; the third died before its rename
    temps = [x.name for x in tmp_path.iterdir() if x != target]
    assert len(temps) == 1 and is_temp_name(temps[0]) and (tmp_path / temps[0]).read_text() == "2"
    from layerprune.problems.atomic import sweep_temps

    assert [x.name for x in sweep_temps(tmp_path)] == temps and [x.name for x in tmp_path.iterdir()] == ["f.txt"]
    env[FAULT_ENV] = "replace:other.txt"
    assert subprocess.run([sys.executable, "-c", code, str(target)], env=env).returncode == 0
    assert target.read_text() == "4"
