"""Bad inputs to every ``layerprune`` command (issue 14): each is one ``layerprune: error:`` line,
exit status 2, no traceback, and is caught before anything slow (no model load, no solve).

``CASES`` and ``make_files`` are shared with ``benchmarks/bad_inputs_table.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from layerwise_tiny import byte_tokenizer, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise.cli import main
from layerprune.problems.backend import gpu_available

NO_CUDA_TORCH = not torch.cuda.is_available()
NO_CUPY = not gpu_available()

PRUNE = ["prune", "--model", "{model}", "--calib", "{text}", "--text", "{text}", "--nsamples", "4", "--seqlen", "32",
         "--eval-tokens", "512", "--sparsity", "0.5", "--output", "{out}", "--quiet"]
EVAL = ["eval", "--model", "{model}", "--text", "{text}", "--seqlen", "32", "--quiet"]
CAPTURE = ["capture", "--model", "{model}", "--calib", "{text}", "--layers", "1", "--nsamples", "4", "--seqlen", "32",
           "--output", "{out}"]
SOLVE = ["solve", "{good}", "--device", "cpu"]
COMPARE = ["compare", "{probs}", "--methods", "magnitude", "--sparsity", "0.5", "--output", "{out}", "--device", "cpu"]
DEMO = ["demo", "--model", "{model}", "--calib", "{text}", "--text", "{text}", "--nsamples", "4", "--seqlen", "32",
        "--eval-tokens", "512", "--methods", "magnitude", "--quiet"]

# (base argv or None, the bad part (appended; later options win), a keyword the message must hold, needs)
# needs: "" always runs; "no-cuda-torch" / "no-cupy": only where this machine lacks them (as this CPU does)
CASES = [
    (PRUNE, ["--method", "alps", "--option", "max_itr=5"], "did you mean max_iter", ""),
    (PRUNE, ["--device", "cuda"], "torch was built without CUDA", "no-cuda-torch"),
    (PRUNE, ["--device", "cuda:x"], "--device cuda:x: not a device", ""),
    (PRUNE, ["--device", "tpu"], "--device tpu: not a device", ""),
    (PRUNE, ["--solver-device", "cuda"], "pip install 'layerprune[gpu]'", "no-cupy"),
    (PRUNE, ["--solver-device", "tpu"], "--solver-device tpu", ""),
    (PRUNE, ["--sparsity", "1.5"], "[0, 1)", ""),
    (PRUNE, ["--sparsity", "nan"], "[0, 1)", ""),
    (PRUNE, ["--nsamples", "0"], "nsamples must be ≥ 1", ""),
    (PRUNE, ["--nsamples", "many"], "invalid int value: 'many'", ""),
    (PRUNE, ["--seqlen", "1"], "seqlen must be ≥ 2", ""),
    (PRUNE, ["--batch-size", "0"], "batch_size must be ≥ 1", ""),
    (PRUNE, ["--damping", "-0.1"], "damping must be ≥ 0", ""),
    (PRUNE, ["--eval-tokens", "1"], "eval_tokens must be ≥ 2", ""),
    (PRUNE, ["--threads", "0"], "threads must be ≥ 1", ""),
    (PRUNE, ["--calib", "{missing}"], "--calib", ""),
    (PRUNE, ["--text", "{missing}"], "--text", ""),
    (PRUNE, ["--model", "{missing}"], "does not exist", ""),
    (PRUNE, ["--output", "{file}"], "exists and is not a folder", ""),
    (PRUNE, ["--log", "{dir}"], "--log", ""),
    (PRUNE, ["--pattern", "diagonal"], "pattern", ""),
    (PRUNE, ["--pattern", "2:4", "--sparsity", "0.7"], "fixes the sparsity", ""),
    (PRUNE, ["--method", "bogus"], "unknown method 'bogus'", ""),
    (PRUNE, ["--method", "alps", "--option", "max_iter=abc"], "max_iter must be int", ""),
    (PRUNE, ["--method", "alps", "--option", "max_iter=0"], "max_iter must be ≥ 1", ""),
    (PRUNE, ["--method", "alps", "--option", "rho_factors=[1.3,1.2]"], "rho_factors", ""),
    (PRUNE, ["--method", "wanda", "--option", "group=column"], "group must be 'row' or 'layer'", ""),
    (PRUNE, ["--method", "magnitude", "--option", "blocksize=64"], "magnitude has no option 'blocksize'", ""),
    (PRUNE, ["--option", "max_iter"], "KEY=VALUE", ""),
    (PRUNE, ["--help-options", "bogus"], "unknown method 'bogus'", ""),
    (EVAL, ["--model", "{missing}"], "does not exist", ""),
    (EVAL, ["--seqlen", "1"], "seqlen must be ≥ 2", ""),
    (EVAL, ["--max-tokens", "1"], "max_tokens must be ≥ 2", ""),
    (EVAL, ["--batch-size", "0"], "batch_size must be ≥ 1", ""),
    (EVAL, ["--text", "{missing}"], "--text", ""),
    (EVAL, ["--device", "cuda"], "torch was built without CUDA", "no-cuda-torch"),
    (EVAL, ["--limit", "0"], "limit must be ≥ 1", ""),
    (EVAL, ["--output", "{dir}"], "is a folder, not a file", ""),
    (EVAL, ["--tasks", "x", "--task-path", "{missing}"], "--task-path", ""),
    (EVAL, ["--tasks", ","], "--tasks names no task", ""),
    (CAPTURE, ["--layers", "first,last"], "--layers", ""),
    (CAPTURE, ["--sparsity", "1.0"], "sparsity must be in [0, 1)", ""),
    (CAPTURE, ["--pattern", "5:4"], "--pattern 5:4", ""),
    (CAPTURE, ["--calib", "{missing}"], "--calib", ""),
    (CAPTURE, ["--device", "cuda:x"], "not a device", ""),
    (CAPTURE, ["--output", "{file}"], "exists and is not a folder", ""),
    (SOLVE, ["--option", "max_itr=5"], "did you mean max_iter", ""),
    (None, ["solve", "{objnpz}"], "is not a layerprune problem file", ""),
    (None, ["solve", "{txtnpz}"], "is not a layerprune problem file: not an .npz archive", ""),
    (None, ["solve", "{missing}"], "no problem file", ""),
    (None, ["solve", "{nanh}"], "nan_hessian.npz: hessian contains NaN", ""),
    (SOLVE, ["--method", "bogus"], "unknown method 'bogus'", ""),
    (SOLVE, ["--device", "cuda"], "pip install 'layerprune[gpu]'", "no-cupy"),
    (SOLVE, ["--device", "tpu"], "--device tpu", ""),
    (SOLVE, ["--sparsity", "2"], "sparsity must be in [0, 1)", ""),
    (SOLVE, ["--pattern", "5:4"], "--pattern 5:4", ""),
    (SOLVE, ["--output", "{dir}"], "is a folder", ""),
    (None, ["compare", "{mixed}", "--methods", "magnitude", "--output", "{out}"], "bad.npz is not a layerprune problem file", ""),
    (COMPARE, ["--methods", "magnitude,bogus"], "unknown method 'bogus'", ""),
    (None, ["compare", "{emptydir}", "--methods", "magnitude", "--output", "{out}"], "no LayerProblem files", ""),
    (None, ["compare", "{missing}", "--output", "{out}"], "does not exist", ""),
    (COMPARE, ["--sparsity", "0.5,abc"], "comma-separated numbers", ""),
    (COMPARE, ["--sparsity", "1.2"], "sparsity must be in [0, 1)", ""),
    (COMPARE, ["--patterns", "diagonal"], "pattern", ""),
    (COMPARE, ["--device", "cuda"], "pip install 'layerprune[gpu]'", "no-cupy"),
    (COMPARE, ["--output", "{file}"], "exists and is not a folder", ""),
    (DEMO, ["--methods", "magnitude,bogus"], "unknown method 'bogus'", ""),
    (DEMO, ["--settings", "0.6,half"], "a setting is a sparsity", ""),
    (DEMO, ["--settings", "0.6", "--sparsity", "0.5"], "not both", ""),
    (DEMO, ["--device", "cuda"], "torch was built without CUDA", "no-cuda-torch"),
    (DEMO, ["--eval-batch-size", "0"], "eval_batch_size must be ≥ 1", ""),
    (DEMO, ["--nsamples", "-1"], "nsamples must be ≥ 1", ""),
    (DEMO, ["--calib", "{missing}"], "--calib", ""),
    (DEMO, ["--output", "{dir}"], "is a folder", ""),
]


def make_files(root: Path) -> dict[str, str]:
    """The paths the cases name: a tiny model, a text, problem folders good and bad, stray files."""
    from layerprune.layerwise.models import save_model
    from layerprune.problems import synthetic_problem

    save_model(tiny_model("llama"), byte_tokenizer(), root / "tiny")
    (root / "text.txt").write_text(tiny_text(2000))
    probs, mixed, empty = root / "problems", root / "mixed", root / "empty"
    for d in (probs, mixed, empty):
        d.mkdir()
    good = synthetic_problem(8, 16, 0.5, seed=1)
    good.save(probs / "good.npz")
    good.save(mixed / "good.npz")
    np.savez(mixed / "bad.npz", a=np.array([object()], dtype=object))  # an array file, not a problem
    np.savez(root / "obj.npz", a=np.array([object()], dtype=object))
    H = np.eye(16)
    H[0, 0] = np.nan  # the header is a problem file's; an array is not
    np.savez(root / "nan_hessian.npz", weight=np.ones((8, 16)), hessian=H,
             metadata=np.array('{"format_version": 1, "sparsity": 0.5, "pattern": "unstructured"}'))
    (root / "text.npz").write_text("not an archive")
    (root / "a_file").write_text("x")
    (root / "a_dir").mkdir()
    return {"model": str(root / "tiny"), "text": str(root / "text.txt"), "probs": str(probs),
            "good": str(probs / "good.npz"), "mixed": str(mixed), "emptydir": str(empty),
            "objnpz": str(root / "obj.npz"), "nanh": str(root / "nan_hessian.npz"), "txtnpz": str(root / "text.npz"), "file": str(root / "a_file"),
            "dir": str(root / "a_dir"), "missing": str(root / "no_such_thing.txt"), "out": str(root / "out")}


def argv_of(base: list[str] | None, bad: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in (base or []) + bad]


def case_id(case) -> str:
    base, bad, _, _ = case
    return " ".join(([base[0]] if base else []) + bad)


def runnable(needs: str) -> bool:
    return {"": True, "no-cuda-torch": NO_CUDA_TORCH, "no-cupy": NO_CUPY}[needs]


class ModelLoaded(Exception):
    """Raised by the patched loader: a bad input got as far as loading the model."""


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture
def loads(monkeypatch):
    """Every way a command loads a model, and every solve, patched to count and refuse."""
    import layerprune
    import layerprune.layerwise.lazy as lazy
    import layerprune.layerwise.models as models
    import layerprune.layerwise.pipeline as pipeline

    calls: list[str] = []

    def refuse(what):
        def fn(*a, **k):
            calls.append(what)
            raise ModelLoaded(what)
        return fn

    monkeypatch.setattr(models, "load_model", refuse("load_model"))
    monkeypatch.setattr(pipeline, "load_model", refuse("load_model"))
    monkeypatch.setattr(lazy, "open_lazy", refuse("load_model"))  # safetensors folders are opened lazily
    monkeypatch.setattr(layerprune, "solve", refuse("solve"))
    return calls


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_one_line_before_any_work(case, paths, loads, capsys):
    base, bad, keyword, needs = case
    if not runnable(needs):
        pytest.skip(f"this machine has what the case lacks ({needs})")
    status = main(argv_of(base, bad, paths))
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert err.startswith("layerprune: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err and keyword in err, err
    assert loads == [], f"got as far as {loads}"
    assert not Path(paths["out"]).exists()


def test_there_are_enough_cases():
    assert len(CASES) >= 30
    assert {c[0][0] if c[0] else c[1][0] for c in CASES} == {"prune", "eval", "capture", "solve", "compare", "demo"}


@pytest.mark.parametrize("base", [PRUNE, EVAL, CAPTURE, DEMO], ids=lambda b: b[0])
def test_good_inputs_pass_the_checks_and_reach_the_load(base, paths, loads):
    """The cases fail for their bad part only: the same command without it gets to the model load."""
    with pytest.raises(ModelLoaded):
        main(argv_of(base, [], paths))
    assert loads == ["load_model"]


def test_good_compare_and_solve_reach_the_solve(paths, loads):
    with pytest.raises(ModelLoaded):
        main(argv_of(SOLVE, [], paths))
    # the grid records a failing solve as an error row and goes on
    assert main(argv_of(COMPARE, [], paths) + ["--output", paths["out"] + "_compare"]) == 0
    assert loads == ["solve", "solve"]


def test_help_options_lists_a_methods_options(capsys):
    assert main(["solve", "--help-options", "alps"]) == 0
    text = capsys.readouterr().out
    assert "max_iter (int, default 300): ADMM iteration cap" in text and "rho0 (float, default 0.1)" in text
    assert main(["prune", "--help-options", "wanda"]) == 0
    assert "group (str, default 'row')" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["prune", "--model", "{model}", "--output", "{out}", "--device", "cuda"],
    ["compare", "{mixed}", "--output", "{out}"],
], ids=["prune --device cuda", "compare bad folder"])
def test_console_command_prints_one_line(argv, paths):
    """The real console entry point in a fresh process: one stderr line, status 2, no traceback."""
    if argv[-1] == "cuda" and not NO_CUDA_TORCH:
        pytest.skip("this machine has a CUDA torch")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "layerprune.layerwise.cli", *argv_of(None, argv, paths)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerprune: error:"), proc.stderr
    assert not Path(paths["out"]).exists()
