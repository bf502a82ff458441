"""Optional extras (reports, gguf, eval): a missing one is one line naming its pip command.

Each package is made missing with ``sys.modules[name] = None`` (import raises) or a patched
``importlib.util.find_spec`` (the GGUF check looks without importing).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from layerprune.extras import MissingExtraError, install_command, require
from layerprune.layerwise.cli import main
from layerprune.problems import synthetic_problem


def test_require_imports_or_names_the_extra(monkeypatch):
    assert require("json", "reports").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(MissingExtraError, match=r"cvxpy is not installed; install it with:  pip install 'layerprune\[reports\]'"):
        require("cvxpy", "reports")
    with pytest.raises(ValueError, match="unknown extra"):
        install_command("no-such-extra")


def test_a_missing_dependency_of_an_extra_is_named(monkeypatch, tmp_path):
    (tmp_path / "layerprune_fake_extra.py").write_text("import layerprune_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match=r"layerprune_fake_extra's dependency layerprune_missing_dependency "
                                                 r"is not installed; install it with:  pip install 'layerprune\[data\]'"):
        require("layerprune_fake_extra", "data")


def test_reports_import_neither_cvxpy_nor_matplotlib():
    code = ("import sys, layerprune.reports, layerprune.layerwise.cli; "
            "print(sorted(m for m in ('cvxpy', 'matplotlib', 'gguf', 'lm_eval') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_perspective_bound_without_cvxpy_is_not_swallowed(monkeypatch):
    from layerprune.reports import lower_bound, perspective_bound

    p = synthetic_problem(8, 12, 0.5, seed=1)
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(MissingExtraError, match=r"layerprune\[reports\]"):
        perspective_bound(p)
    with pytest.raises(MissingExtraError):  # not a failed relaxation falling through to the diagonal bound
        lower_bound(p, kinds=("perspective", "diagonal"))


def test_plots_without_matplotlib(monkeypatch, tmp_path):
    from layerprune.reports.plots import make_plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"matplotlib is not installed; install it with:  pip install 'layerprune\[reports\]'"):
        make_plots([], tmp_path, ["alps"])


@pytest.mark.parametrize("missing", ["cvxpy", "matplotlib"])
def test_compare_without_the_reports_extra_is_one_line_before_any_solve(missing, monkeypatch, tmp_path, capsys):
    import layerprune

    probs = tmp_path / "probs"
    probs.mkdir()
    synthetic_problem(8, 12, 0.5, seed=2).save(probs / "layer.npz")
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.setattr(layerprune, "solve", lambda *a, **k: pytest.fail("solved before the check"))
    status = main(["compare", str(probs), "--methods", "magnitude", "--sparsity", "0.5", "--output",
                   str(tmp_path / "report"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"layerprune: error: {missing}") and "pip install 'layerprune[reports]'" in err, err


def test_gguf_model_without_gguf_is_one_line(monkeypatch, tmp_path, capsys):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "text.txt").write_text("some words " * 50)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    status = main(["eval", "--model", str(tmp_path / "m.gguf"), "--text", str(tmp_path / "text.txt"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "gguf" in err and "pip install 'layerprune[gguf]'" in err, err


def test_setup_cfg_declares_the_extras():
    import configparser
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extras = cfg["options.extras_require"]
    for extra in ("reports", "gguf", "eval", "data", "gpu"):
        install_command(extra)  # every extra of setup.cfg is one layerprune.extras knows, and back
        assert extra in extras
    core = cfg["options"]["install_requires"]
    assert "cvxpy" not in core and "matplotlib" not in core and "gguf" not in core and "lm-eval" not in core
    for line in filter(None, (x.strip() for x in core.splitlines())):
        name = line.split(">")[0].split("<")[0]
        if name in ("numpy", "scipy", "torch", "transformers", "safetensors", "accelerate"):
            assert ">=" in line and ",<" in line, line  # tested lower bound, next major as the upper


def test_an_extra_that_fails_to_import_says_so(monkeypatch, tmp_path):
    (tmp_path / "layerprune_broken_extra.py").write_text("from json import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError, match=r"layerprune_broken_extra cannot be imported \(cannot import name "
                                                 r"'no_such_name'.*\); install it with:  pip install 'layerprune\[eval\]'"):
        require("layerprune_broken_extra", "eval")
