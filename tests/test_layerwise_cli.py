"""The `layerprune` command line on a tiny saved model and a small text file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from layerwise_tiny import byte_tokenizer, folder_tensors, one_thread, tiny_model, tiny_text, untimed  # noqa: F401

from layerprune.layerwise.cli import main, parse_options
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import save_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_model(tiny_model("llama"), byte_tokenizer(), root / "tiny")
    (root / "text.txt").write_text(tiny_text(3000))
    (root / "empty.txt").write_text("")
    return root


def _prune_args(files, out, *extra):
    return ["prune", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--text",
            str(files / "text.txt"), "--nsamples", "6", "--seqlen", "32", "--eval-tokens", "1024",
            "--output", str(out), "--quiet", *extra]


def test_prune_eval_roundtrip(files, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(_prune_args(files, out, "--method", "sparsegpt", "--sparsity", "0.5", "--log", str(tmp_path / "log.json"))) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "saved to" in printed
    run = json.loads((out / "layerprune_run.json").read_text())
    assert run == json.loads((tmp_path / "log.json").read_text())
    assert len(run["layers"]) == 14 and abs(run["sparsity"] - 0.5) < 1e-9
    assert {"relative_error", "seconds", "sparsity"} <= set(run["layers"][0])
    assert run["perplexity"] > 0 and run["dense_perplexity"] > 0
    assert not (tmp_path / "pruned.partial").exists()  # the checkpoint goes once the model is saved

    assert main(["eval", "--model", str(out), "--text", str(files / "text.txt"), "--seqlen", "32",
                 "--max-tokens", "1024", "--quiet"]) == 0
    line = capsys.readouterr().out
    assert f"perplexity {run['perplexity']:.3f}" in line


def test_prune_resume_after_a_crash(files, tmp_path, monkeypatch):
    import layerprune.layerwise.driver as driver

    full = tmp_path / "full"
    assert main(_prune_args(files, full, "--method", "wanda", "--pattern", "2:4")) == 0
    out = tmp_path / "out"
    real = driver.run_block
    calls = {"n": 0}

    def crash(block, inputs):
        calls["n"] += 1
        if calls["n"] == 2:  # the pruned block 1 dies
            raise KeyboardInterrupt
        return real(block, inputs)

    monkeypatch.setattr(driver, "run_block", crash)
    assert main(_prune_args(files, out, "--method", "wanda", "--pattern", "2:4")) == 130
    monkeypatch.setattr(driver, "run_block", real)
    assert not out.exists() and (tmp_path / "out.partial" / "state.json").exists()
    assert main(_prune_args(files, out, "--method", "wanda", "--pattern", "2:4")) == 2  # needs --resume
    assert main(_prune_args(files, out, "--method", "wanda", "--pattern", "2:4", "--resume")) == 0
    a, b = folder_tensors(full), folder_tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((p / "layerprune_run.json").read_text()) for p in (full, out))
    assert ra["perplexity"] == rb["perplexity"] and ra["dense_perplexity"] == rb["dense_perplexity"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "/no/such/model"], "does not exist"),
        (["--sparsity", "1.5"], r"in \[0, 1\)"),
        (["--sparsity", "-0.2"], r"in \[0, 1\)"),
        (["--seqlen", "512"], "longer than the model's context of 128"),
        (["--calib", "EMPTY"], "is empty"),
        (["--method", "bogus"], "unknown method 'bogus'"),
        (["--pattern", "2:4", "--sparsity", "0.7"], "fixes the sparsity"),
        (["--nsamples", "0"], "nsamples"),
    ],
)
def test_bad_inputs_are_one_clear_line(files, tmp_path, capsys, args, match):
    base = {"--model": str(files / "tiny"), "--calib": str(files / "text.txt"), "--method": "wanda",
            "--sparsity": "0.5", "--seqlen": "32", "--nsamples": "4"}
    i = 0
    while i < len(args):
        base[args[i]] = args[i + 1].replace("EMPTY", str(files / "empty.txt"))
        i += 2
    argv = ["prune", "--output", str(tmp_path / "o"), "--quiet", "--no-eval"]
    for k, v in base.items():
        argv += [k, v]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerprune: error:") and err.count("\n") == 1
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_eval_errors(files, capsys):
    assert main(["eval", "--model", str(files / "tiny"), "--text", str(files / "empty.txt"), "--seqlen", "32"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["eval", "--model", str(files / "tiny"), "--text", str(files / "text.txt"), "--seqlen", "4096"]) == 2
    assert "longer than the model's context" in capsys.readouterr().err


def test_capture_then_solve(files, tmp_path, capsys):
    probs = tmp_path / "problems"
    assert main(["capture", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--layers", "1",
                 "--nsamples", "4", "--seqlen", "32", "--output", str(probs)]) == 0
    names = sorted(p.name for p in probs.iterdir())
    assert names == sorted(f"block01.{n}.npz" for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    from layerprune import LayerProblem

    p = LayerProblem.load(probs / "block01.mlp.down_proj.npz")
    assert p.shape == (32, 64) and p.sparsity == 0.7 and p.name == "block1.mlp.down_proj"
    capsys.readouterr()
    out = tmp_path / "sol.npz"
    assert main(["solve", str(probs / "block01.mlp.down_proj.npz"), "--method", "sparsegpt", "--sparsity", "0.8",
                 "--device", "cpu", "--json", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "sparsegpt" and abs(summary["sparsity"] - 0.8) < 1e-3
    assert 0 < summary["relative_error"] < 1
    with np.load(out) as f:
        assert f["weight"].shape == (32, 64) and int(f["mask"].sum()) == round(0.2 * 32 * 64)
    assert main(["solve", str(probs / "block01.mlp.down_proj.npz"), "--method", "magnitude", "--device", "cpu"]) == 0
    assert "magnitude: relative error" in capsys.readouterr().out
    assert main(["solve", str(tmp_path / "missing.npz"), "--method", "alps"]) == 2
    assert main(["capture", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--layers", "5",
                 "--nsamples", "4", "--seqlen", "32", "--output", str(probs)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_compare_delegates_to_reports(files, tmp_path, monkeypatch):
    import sys
    import types

    seen = {}
    fake = types.ModuleType("layerprune.reports")
    fake.compare_problems = lambda *a, **k: seen.update(args=a, kwargs=k)
    monkeypatch.setitem(sys.modules, "layerprune.reports", fake)
    assert main(["compare", str(tmp_path), "--methods", "alps,wanda", "--sparsity", "0.5,0.8",
                 "--output", str(tmp_path / "r"), "--resume"]) == 0
    assert seen["args"] == (str(tmp_path), ["alps", "wanda"], [0.5, 0.8], ["unstructured"], str(tmp_path / "r"))
    assert seen["kwargs"] == {"resume": True, "device": None}
    assert main(["compare", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 2


def test_parse_options():
    assert parse_options(["max_iter=100", "refit=false", "group=row", "rho0=0.5"]) == {
        "max_iter": 100, "refit": False, "group": "row", "rho0": 0.5}
    with pytest.raises(LayerwiseError):
        parse_options(["oops"])


def test_demo_table_on_a_tiny_model(files, capsys):
    from layerprune.layerwise.pipeline import run_demo

    lines = []
    result = run_demo(str(files / "tiny"), ("sparsegpt", "magnitude"), sparsity=0.7, calib=str(files / "text.txt"),
                      text=str(files / "text.txt"), nsamples=4, seqlen=32, eval_tokens=512, progress=False,
                      echo=lines.append)
    assert [r["method"] for r in result["rows"]] == ["sparsegpt", "magnitude"]
    assert all(abs(r["sparsity"] - 0.7) < 1e-3 and r["perplexity"] > 0 and r["minutes"] >= 0 for r in result["rows"])
    table = lines[-1]
    assert "| method | sparsity | perplexity |" in table and "| dense | 0.00 |" in table
    assert "| sparsegpt | 0.70 |" in table and "| magnitude | 0.70 |" in table


def _demo_kwargs(files):
    return dict(calib=str(files / "text.txt"), text=str(files / "text.txt"), nsamples=4, seqlen=32, eval_tokens=512,
                progress=False)


def test_demo_several_settings_in_one_run(files, tmp_path):
    from layerprune.layerwise.pipeline import run_demo
    from layerprune.problems import parse_pattern

    lines = []
    out = tmp_path / "grid.json"
    result = run_demo(str(files / "tiny"), ("wanda", "sparsegpt"), settings="0.5,0.8,2:4", output=out,
                      echo=lines.append, **_demo_kwargs(files))
    rows = result["rows"]
    assert [(r["setting"], r["method"]) for r in rows] == [
        ("0.5 unstructured", "wanda"), ("0.5 unstructured", "sparsegpt"), ("0.8 unstructured", "wanda"),
        ("0.8 unstructured", "sparsegpt"), ("2:4", "wanda"), ("2:4", "sparsegpt")]
    for r in rows:
        pattern = parse_pattern(r["pattern"])
        assert len(r["layers"]) == 14 and r["perplexity"] > 0 and r["prune_seconds"] >= 0
        for e in r["layers"]:  # every layer at its exact target
            assert e["kept"] == e["target_kept"] == pattern.kept_per_layer(tuple(e["shape"]), e["target_sparsity"])
        if pattern.kind == "unstructured":  # the default profile (OWL) keeps the model-wide count exact
            size = sum(e["shape"][0] * e["shape"][1] for e in r["layers"])
            assert sum(e["kept"] for e in r["layers"]) == round((1 - r["target_sparsity"]) * size)
            assert r["sparsity_profile"] == "owl"
        else:  # N:M stays uniform
            assert all(e["target_sparsity"] == r["target_sparsity"] for e in r["layers"])
        assert r["ratio"] == pytest.approx(r["perplexity"] / result["dense_perplexity"])
    assert any("rows without a lever label: sequential groups, target dense blended at 0.25, sparsity profile "
               "owl/uniform, polish where it pays (" in line for line in lines)  # the defaults, named above the table
    assert all(r["local_search"] is None and 0 <= r["polished_layers"] <= len(r["layers"]) for r in rows)
    assert result["complete"] and json.loads(out.read_text()) == json.loads(json.dumps(result))
    table = lines[-1]
    assert "| setting | method | sparsity | perplexity | × dense | mean rel. error | pruning s |" in table
    assert "| 0.8 unstructured | sparsegpt | 0.80 |" in table and "| 2:4 | wanda | 0.50 |" in table
    assert table.count("\n| ") == 2 + 1 + 6  # header, rule, dense, one row per (setting, method)

    # each row starts from the dense model: a row equals the same setting run on its own
    alone = run_demo(str(files / "tiny"), ("sparsegpt",), settings=[0.8], echo=lambda *a: None, **_demo_kwargs(files))
    assert alone["dense_perplexity"] == result["dense_perplexity"]
    assert alone["rows"][0]["perplexity"] == rows[3]["perplexity"]
    assert untimed(alone["rows"][0]["layers"]) == untimed(rows[3]["layers"])


def test_demo_writes_each_row_as_it_finishes(files, tmp_path, monkeypatch):
    import layerprune.layerwise.pipeline as pipeline

    real, calls = pipeline.prune, {"n": 0}

    def dies_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the machine went away")
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "prune", dies_third)
    out = tmp_path / "grid.json"
    with pytest.raises(RuntimeError, match="went away"):
        pipeline.run_demo(str(files / "tiny"), ("magnitude",), settings="0.5,0.6,0.7", output=out,
                          echo=lambda *a: None, **_demo_kwargs(files))
    saved = json.loads(out.read_text())
    assert not saved["complete"] and [r["setting"] for r in saved["rows"]] == ["0.5 unstructured", "0.6 unstructured"]
    assert saved["dense_perplexity"] > 0 and list(tmp_path.iterdir()) == [out]  # no temporary files left


def test_demo_command_line(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.json"
    args = ["demo", "--model", str(files / "tiny"), "--calib", str(files / "text.txt"), "--text", str(files / "text.txt"),
            "--nsamples", "4", "--seqlen", "32", "--eval-tokens", "512", "--quiet"]
    assert main([*args, "--settings", "0.6,2:4", "--methods", "magnitude,wanda", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 0.6 unstructured | magnitude | 0.60 |" in printed and "| 2:4 | wanda | 0.50 |" in printed
    assert len(json.loads(out.read_text())["rows"]) == 4
    assert main([*args, "--settings", "0.6", "--sparsity", "0.5"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*args, "--settings", "0.6,half"]) == 2
    assert "a setting is a sparsity" in capsys.readouterr().err
    assert main([*args, "--settings", "0.6,1.5"]) == 2  # checked before anything slow
    assert "[0, 1)" in capsys.readouterr().err


def test_demo_defaults_are_unchanged(monkeypatch):
    import layerprune.layerwise.pipeline as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "run_demo", lambda *a, **k: seen.update(args=a, kwargs=k))
    assert main(["demo"]) == 0
    assert seen["args"] == ("smollm2", ("alps", "sparsegpt", "wanda"))
    k = seen["kwargs"]
    assert k["settings"] is None and k["sparsity"] == 0.7 and k["pattern"] == "unstructured"
    assert (k["nsamples"], k["seqlen"], k["eval_tokens"], k["device"]) == (16, 512, 8192, "cpu")
    assert (k["calib"], k["text"], k["batch_size"], k["eval_batch_size"], k["output"]) == ("wiki", "wiki-test", 8, 1, None)


def test_limit_threads_sets_and_restores(files, capsys):
    from layerprune.layerwise.threads import limit_threads

    before = torch.get_num_threads()
    with limit_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    assert main(["eval", "--model", str(files / "tiny"), "--threads", "0"]) == 2
    assert "threads must be ≥ 1" in capsys.readouterr().err


def test_text_field_reaches_eval_and_capture(files, tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    words = tiny_text(3000).split(". ")
    docs.write_text("".join(json.dumps({"body": w + ".", "id": i}) + "\n" for i, w in enumerate(words)))
    assert main(["eval", "--model", str(files / "tiny"), "--text", str(docs), "--text-field", "body", "--seqlen", "32",
                 "--max-tokens", "512", "--quiet"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["eval", "--model", str(files / "tiny"), "--text", str(docs), "--seqlen", "32", "--quiet"]) == 2
    assert "line 1 has no 'text' field (its fields: 'body', 'id')" in capsys.readouterr().err
    assert main(["capture", "--model", str(files / "tiny"), "--calib", str(docs), "--text-field", "body",
                 "--layers", "0", "--nsamples", "2", "--seqlen", "32", "--output", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").glob("*.npz"))) == 7
