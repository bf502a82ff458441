"""The comparison grid: results.csv against recomputed objectives, resume, report files."""

import csv
import math

import numpy as np
import pytest

from layerprune import LayerProblem
from layerprune.reports import compare_problems, load_weight, read_results
from layerprune.reports.grid import save_weight
from layerprune.solvers import registry
from layerprune.solvers.result import MethodOutput

METHODS = ["magnitude", "wanda", "sparsegpt"]


def _save_problems(rng, folder, shapes):
    folder.mkdir()
    for i, (out, inp) in enumerate(shapes):
        X = rng.standard_normal((2 * inp, inp)) @ rng.standard_normal((inp, inp))
        X[:, rng.integers(inp)] *= 4.0
        W = rng.standard_normal((out, inp))
        LayerProblem.from_activations(X, W, sparsity=0.5, name=f"block{i}.proj").save(folder / f"p{i}.npz")
    return folder


def _nan_safe(row):
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


@pytest.fixture
def problems(rng, tmp_path):
    # tiny (exact bound), small (relaxation bound), in > 256 (diagonal bound only)
    return _save_problems(rng, tmp_path / "problems", [(4, 8), (12, 24), (20, 272)])


def test_weight_roundtrip(rng, tmp_path):
    W = rng.standard_normal((7, 13)).astype(np.float32)
    W[rng.random(W.shape) < 0.6] = 0
    save_weight(tmp_path / "w.npz", W)
    assert np.array_equal(load_weight(tmp_path / "w.npz"), W)


def test_grid_results_match_saved_weights_and_report(problems, tmp_path):
    out = tmp_path / "report"
    sparsities = [0.5, 0.75]
    rows = compare_problems(problems, METHODS, sparsities, ["unstructured", "2:4"], out, device="cpu", progress=False)
    assert len(rows) == 3 * (2 + 1) * len(METHODS)
    assert [_nan_safe(r) for r in rows] == [_nan_safe(r) for r in read_results(out / "results.csv")]
    cells = {}
    for r in rows:
        assert r["status"] == "ok"
        p = LayerProblem.load(problems / f"{r['problem']}.npz", sparsity=r["sparsity"], pattern=r["pattern"])
        W = load_weight(out / r["weights"])
        assert p.check_feasible(W)
        assert r["objective"] == pytest.approx(p.objective(W), rel=1e-6)
        assert r["relative_error"] == pytest.approx(p.relative_error(W), rel=1e-6)
        assert r["achieved_sparsity"] == pytest.approx(p.achieved_sparsity(W))
        assert r["lower_bound"] <= r["objective"]
        # 12×24 2:4 has C(4,2)^6 = 46,656 supports per row: within the enumeration limit
        small = {"exact"} if r["pattern"] == "2:4" else {"perspective", "diagonal"}  # the larger of the two
        expected = {(4, 8): {"exact"}, (12, 24): small, (20, 272): {"diagonal"}}[(r["out"], r["in"])]
        assert r["bound_kind"] in expected
        assert r["lower_bound"] > 0
        assert r["gap_to_bound"] == pytest.approx((r["objective"] - r["lower_bound"]) / r["lower_bound"])
        cells.setdefault((r["problem"], r["pattern"], r["sparsity"]), []).append(r)
    for cell in cells.values():
        best = min(r["objective"] for r in cell)
        assert min(r["gap_to_best"] for r in cell) == 0.0
        for r in cell:
            assert r["gap_to_best"] == pytest.approx((r["objective"] - best) / best)

    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        for m in METHODS:
            assert m in text
        for s in ("0.5", "0.75", "2:4", "unstructured"):
            assert s in text
        for kind in ("exact", "diagonal"):
            assert kind in text
    assert "data:image/png;base64," in html and "src='error_vs" not in html
    for png in ("error_vs_sparsity_unstructured.png", "error_vs_sparsity_2of4.png", "gap_to_best.png",
                "gap_to_bound.png", "runtime.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in md


def _counting_method(calls, fail_at=None, exc=KeyboardInterrupt):
    def fn(problem, xp, dtype, cache, options):
        calls.append(problem.sparsity)
        if fail_at is not None and len(calls) == fail_at:
            raise exc("interrupted")
        keep = problem.pattern.mask(xp.abs(problem.weight), problem.sparsity)
        return MethodOutput(problem.weight * keep, keep, iterations=1)

    return registry.Method("counting", fn)


def test_interrupted_grid_keeps_rows_and_resume_skips_them(problems, tmp_path, monkeypatch):
    out = tmp_path / "report"
    calls: list = []
    monkeypatch.setitem(registry._METHODS, "counting", _counting_method(calls, fail_at=5))
    args = (problems, ["magnitude", "counting"], [0.5, 0.6, 0.7], ["row"], out)
    with pytest.raises(KeyboardInterrupt):
        compare_problems(*args, device="cpu", progress=False, lower_bounds=False)
    kept = read_results(out / "results.csv")
    assert len(kept) == 2 * 4 + 1  # 4 cells finished (both methods) + magnitude of the fifth
    assert all(r["status"] == "ok" for r in kept)

    calls.clear()
    monkeypatch.setitem(registry._METHODS, "counting", _counting_method(calls))
    rows = compare_problems(*args, device="cpu", progress=False, lower_bounds=False, resume=True)
    assert len(calls) == 9 - 4  # only the counting solves that had not finished
    assert len(rows) == 3 * 3 * 2
    keys = {(r["problem"], r["sparsity"], r["method"]) for r in rows}
    assert len(keys) == len(rows)
    for r in kept:  # finished rows are kept as they were
        same = [x for x in rows if (x["problem"], x["sparsity"], x["method"]) == (r["problem"], r["sparsity"], r["method"])]
        assert same[0]["objective"] == r["objective"] and same[0]["seconds"] == r["seconds"]

    md = (out / "report.md").read_text()
    assert "no bound" in md  # bounds were off: every row says so, none is left blank
    assert all(r["bound_kind"] == "none" and math.isnan(r["gap_to_bound"]) for r in rows)
    calls.clear()
    again = compare_problems(*args, device="cpu", progress=False, lower_bounds=False, resume=True)
    assert calls == [] and len(again) == len(rows)
    # without resume the grid starts over
    compare_problems(*args, device="cpu", progress=False, lower_bounds=False, report=False)
    assert len(calls) == 9


def test_failing_method_is_recorded_and_retried_on_resume(problems, tmp_path, monkeypatch):
    out = tmp_path / "report"
    calls: list = []
    monkeypatch.setitem(registry._METHODS, "flaky", _counting_method(calls, fail_at=2, exc=ValueError))
    rows = compare_problems(problems, ["flaky"], [0.5], ["unstructured"], out, device="cpu",
                            progress=False, lower_bounds=False)
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 1 and "ValueError" in bad[0]["status"]
    assert "Failures" in (out / "report.md").read_text()
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    calls.clear()
    rows = compare_problems(problems, ["flaky"], [0.5], ["unstructured"], out, device="cpu",
                            progress=False, lower_bounds=False, resume=True)
    assert len(calls) == 1 and all(r["status"] == "ok" for r in rows)


def test_resume_with_bounds_on_gives_every_row_of_a_cell_the_bound(problems, tmp_path):
    out = tmp_path / "report"
    compare_problems(problems, ["magnitude"], [0.5], ["row"], out, device="cpu", progress=False,
                     lower_bounds=False, report=False)
    rows = compare_problems(problems, ["magnitude", "wanda"], [0.5], ["row"], out, device="cpu",
                            progress=False, resume=True, report=False)
    assert len(rows) == 6
    for r in rows:
        assert r["bound_kind"] != "none" and 0 < r["lower_bound"] <= r["objective"]
        assert not math.isnan(r["gap_to_bound"])


def test_the_grid_records_how_each_solve_ended(problems, tmp_path):
    out = tmp_path / "status"
    rows = compare_problems(problems, ["alps", "magnitude"], [0.7], ["unstructured"], out, device="cpu", progress=False,
                            lower_bounds=False, report=False, method_options={"alps": {"max_iter": 3}})
    by = {r["method"]: {x["solve_status"] for x in rows if x["method"] == r["method"]} for r in rows}
    assert by["alps"] == {1} and by["magnitude"] == {0}  # 1: ADMM's iteration cap (solvers.STATUS)
    from layerprune.reports.grid import read_results

    assert {r["solve_status"] for r in read_results(out / "results.csv") if r["method"] == "alps"} == {1}
