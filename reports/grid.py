"""Run methods × sparsities × patterns over a folder of saved `LayerProblem`s.

One row of ``results.csv`` per (problem, pattern, sparsity, method), appended as soon
as it finishes, so an interrupted grid keeps what it did and ``resume=True`` skips
it. Each result's weight is saved to ``weights/<key>.npz`` (mask bits + kept values)
so the objectives in the table can be recomputed. The gaps need every method of a
cell, so they are filled in (and the CSV rewritten) when the grid completes:

    gap_to_best  = (f − f_best) / f_best,   f_best the lowest objective of the cell;
    gap_to_bound = (f − LB) / LB,           LB the certified lower bound (empty if none).

Each cell's bound (:func:`layerprune.reports.bounds.lower_bound`: exact, perspective,
diagonal or none) is computed once, before its methods, and every row names its kind.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layerprune.extras import require
from layerprune.problems import LayerProblem, parse_pattern
from layerprune.problems.atomic import (
    atomic_append_text,
    atomic_write,
    atomic_write_text,
    csv_text,
    is_temp_name,
    sweep_temps,
)
from layerprune.problems.files import inspect_problem_file
from layerprune.problems.locks import output_lock
from layerprune.reports.bounds import LowerBound, lower_bound

COLUMNS = [
    "problem", "layer", "out", "in", "pattern", "sparsity", "method", "status",
    "objective", "relative_error", "achieved_sparsity", "seconds", "iterations", "solve_status",
    "lower_bound", "bound_relative", "bound_kind", "bound_seconds",
    "gap_to_best", "gap_to_bound", "weights",
]
FLOATS = {"sparsity", "objective", "relative_error", "achieved_sparsity", "seconds", "lower_bound",
          "bound_relative", "bound_seconds", "gap_to_best", "gap_to_bound"}
INTS = {"out", "in", "iterations", "solve_status"}  # solve_status: SolveResult.status (0 converged; solvers.STATUS)


def sparsity_label(s: float) -> str:
    return f"{float(s):.4g}"


def row_key(problem: str, pattern: str, sparsity: float | str, method: str) -> tuple[str, str, str, str]:
    s = sparsity if isinstance(sparsity, str) else sparsity_label(sparsity)
    return (problem, pattern, sparsity_label(float(s)), method)


def weight_file(problem: str, pattern: str, sparsity: float, method: str) -> str:
    pat = pattern.replace(":", "of")
    return f"weights/{problem}__{pat}__s{sparsity_label(sparsity)}__{method}.npz"


# -- weights on disk -------------------------------------------------------------------
def save_weight(path: str | os.PathLike, weight: np.ndarray) -> None:
    """Store a sparse W as packed mask bits + its kept values (float32 as returned)."""
    W = np.asarray(weight)
    mask = W != 0
    arrays = dict(shape=np.array(W.shape), mask=np.packbits(mask.ravel()), values=W[mask])
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def load_weight(path: str | os.PathLike) -> np.ndarray:
    """Inverse of :func:`save_weight`."""
    with np.load(path) as f:
        shape = tuple(int(x) for x in f["shape"])
        n = int(np.prod(shape))
        mask = np.unpackbits(f["mask"], count=n).astype(bool).reshape(shape)
        W = np.zeros(shape, dtype=f["values"].dtype)
        W[mask] = f["values"]
    return W


# -- the CSV ---------------------------------------------------------------------------------
def _parse(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in COLUMNS:
        v = row.get(k, "")
        if k in FLOATS:
            out[k] = float(v) if v not in ("", None) else float("nan")
        elif k in INTS:
            out[k] = int(float(v)) if v not in ("", None) else 0
        else:
            out[k] = v or ""
    return out


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a results.csv as dicts (floats parsed; missing numbers are NaN)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [_parse(r) for r in csv.DictReader(f)]


def _fmt(k: str, v: Any) -> str:
    if k in FLOATS:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))
    return str(v)


def _csv_rows(rows: Sequence[dict[str, Any]], header: bool) -> str:
    def write(buf) -> None:
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        if header:
            w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(k, r.get(k)) for k in COLUMNS})

    return csv_text(write)


def _write_all(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, _csv_rows(rows, header=True))


def _append(path: Path, row: dict[str, Any]) -> None:
    """One row more: the file is rewritten atomically, so a kill never leaves a torn row."""
    atomic_append_text(path, _csv_rows([row], header=False))


def fill_gaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """gap_to_best and gap_to_bound for every ok row (in place; returns rows).

    Every row of a cell (same problem, pattern, sparsity) gets the cell's strongest bound:
    each is a valid bound on the same f*, so their maximum is too (rows resumed from a run
    with bounds off, or from an older run, pick up a bound computed later).
    """
    strongest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        cell = (r["problem"], r["pattern"], sparsity_label(r["sparsity"]))
        if r["bound_kind"] != "none" and r["lower_bound"] > strongest.get(cell, {}).get("lower_bound", 0.0):
            strongest[cell] = {k: r[k] for k in ("lower_bound", "bound_relative", "bound_kind", "bound_seconds")}
    for r in rows:
        r.update(strongest.get((r["problem"], r["pattern"], sparsity_label(r["sparsity"])), {}))
    best: dict[tuple, float] = {}
    for r in rows:
        if r["status"] == "ok":
            cell = (r["problem"], r["pattern"], sparsity_label(r["sparsity"]))
            best[cell] = min(best.get(cell, math.inf), r["objective"])
    for r in rows:
        if r["status"] != "ok":
            r["gap_to_best"] = r["gap_to_bound"] = float("nan")
            continue
        fb = best[(r["problem"], r["pattern"], sparsity_label(r["sparsity"]))]
        r["gap_to_best"] = (r["objective"] - fb) / fb if fb > 0 else 0.0
        lb = r["lower_bound"]
        r["gap_to_bound"] = (r["objective"] - lb) / lb if r["bound_kind"] != "none" and lb > 0 else float("nan")
    return rows


# -- the grid ----------------------------------------------------------------------------------
def problem_files(problem_dir: str | os.PathLike) -> list[Path]:
    """The saved problems (``*.npz``) of a folder, sorted by name."""
    d = Path(problem_dir)
    if d.is_file():
        return [d]
    files = sorted(p for p in d.glob("*.npz") if not is_temp_name(p.name) and not p.name.endswith(".tmp.npz"))
    if not files:
        raise FileNotFoundError(f"no LayerProblem files (*.npz) in {os.fspath(d)!r}")
    return files


def grid_cells(sparsities: Iterable[float], patterns: Iterable[str]) -> list[tuple[str, float]]:
    """(pattern, sparsity) pairs; an N:M pattern runs once, at its own sparsity 1 − N/M."""
    cells: list[tuple[str, float]] = []
    for pat in patterns:
        p = parse_pattern(pat)
        implied = p.implied_sparsity()
        if implied is not None:
            cells.append((p.name, implied))
        else:
            cells.extend((p.name, float(s)) for s in sparsities)
    return cells


def check_grid(problem_dir: str | os.PathLike, methods: Sequence[str], sparsities: Sequence[float],
               patterns: Sequence[str], output: str | os.PathLike, device: str | None = None,
               method_options: dict[str, dict] | None = None) -> list[Path]:
    """Everything :func:`compare_problems` is given, checked before any solve; returns the problem files.

    Each method is registered and its options valid, each sparsity in [0, 1), each pattern parses,
    the solver device is usable, ``output`` is not a file, and every ``.npz`` of the folder is a
    problem file (its header: :func:`~layerprune.problems.files.inspect_problem_file`).
    Raises ValueError (FileNotFoundError for a missing or empty folder) naming the bad input.
    """
    from layerprune.problems.backend import resolve_device
    from layerprune.solvers import check_options

    if not methods:
        raise ValueError("no methods given")
    for m in methods:
        check_options(m, (method_options or {}).get(m))
    for s in sparsities:
        if not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s!r}")
    if not patterns:
        raise ValueError("no patterns given")
    grid_cells(sparsities, patterns)  # each pattern parses
    try:
        resolve_device(device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    if Path(output).exists() and not Path(output).is_dir():
        raise ValueError(f"output {os.fspath(output)!r} exists and is not a folder")
    if not Path(problem_dir).exists():
        raise FileNotFoundError(f"problem folder {os.fspath(problem_dir)!r} does not exist")
    files = problem_files(problem_dir)
    for f in files:
        inspect_problem_file(f)
    return files


def compare_problems(
    problem_dir: str | os.PathLike,
    methods: Sequence[str],
    sparsities: Sequence[float],
    patterns: Sequence[str] = ("unstructured",),
    output: str | os.PathLike = "report",
    resume: bool = False,
    device: str | None = None,
    lower_bounds: bool = True,
    *,
    method_options: dict[str, dict] | None = None,
    save_weights: bool = True,
    progress: bool = True,
    report: bool = True,
) -> list[dict[str, Any]]:
    """Solve every saved problem with every method at every (pattern, sparsity); write the report.

    Returns the rows of ``output/results.csv`` (list of dicts, gaps filled). Writes
    ``report.md``, ``report.html`` and PNG plots to ``output`` unless ``report=False``.
    ``resume=True`` keeps the finished rows of an existing results.csv and skips them.
    A method that fails on a cell gets a row with status ``error: …`` (retried on resume).
    A second run on the same ``output`` is refused (``<output>.lock``,
    :class:`layerprune.problems.locks.LockError`) while the first lives.
    """
    from tqdm import tqdm

    from layerprune import solve

    methods = [m.strip() for m in methods if m.strip()]
    files = check_grid(problem_dir, methods, sparsities, patterns, output, device, method_options)
    if lower_bounds:
        require("cvxpy", "reports", "cvxpy (the perspective lower bounds)")  # before any solve, not at the end
    if report:
        require("matplotlib", "reports", "matplotlib (the report's plots)")
    out = Path(output)
    with output_lock(out):  # one run at a time on this report folder; released however the run ends
        out.mkdir(parents=True, exist_ok=True)
        if save_weights:
            (out / "weights").mkdir(exist_ok=True)
        for folder in (out, out / "weights"):
            sweep_temps(folder)  # what a killed run left half-written
        csv_path = out / "results.csv"
        cells = grid_cells(sparsities, patterns)
        options = method_options or {}

        done: dict[tuple, dict[str, Any]] = {}
        if resume:
            for r in read_results(csv_path):
                if r["status"] == "ok":
                    done[row_key(r["problem"], r["pattern"], r["sparsity"], r["method"])] = r
        _write_all(csv_path, list(done.values()))  # a fresh file, or the finished rows only

        total = len(files) * len(cells) * len(methods)
        bar = tqdm(total=total, desc="compare", unit="solve", disable=not progress)
        grid_keys = {row_key(f.stem, pat, s, m) for f in files for pat, s in cells for m in methods}
        bar.update(sum(1 for k in done if k in grid_keys))
        for path in files:
            name = path.stem
            try:
                base = LayerProblem.load(path)
            except ValueError as e:  # the header was fine (check_grid), an array is not (NaN, not PSD)
                raise ValueError(f"{path}: {e}") from None
            base.dense_energy()  # damped H, its float64 copy and tr(ŴHŴᵀ): once per file, shared by every cell
            caches: dict[str, dict] = {m: {} for m in methods}  # one Hessian per file: share factorizations
            bound_cache: dict = {}
            for pattern, s in cells:
                keys = [row_key(name, pattern, s, m) for m in methods]
                if all(k in done for k in keys):
                    continue
                try:
                    prob = base.with_sparsity(s, pattern)
                except ValueError as exc:
                    for m, k in zip(methods, keys):
                        if k not in done:
                            row = _row(name, base, pattern, s, m, status=f"error: {exc}")
                            _append(csv_path, row)
                            done[k] = row
                            bar.update(1)
                    continue
                bound = _cell_bound(prob, [done.get(k) for k in keys], lower_bounds, bound_cache)
                for m, k in zip(methods, keys):
                    if k in done:
                        continue
                    bar.set_postfix_str(f"{name} {pattern} {sparsity_label(s)} {m}")
                    row = _row(name, prob, pattern, s, m, bound=bound)
                    try:
                        res = solve(prob, method=m, device=device, cache=caches[m], **options.get(m, {}))
                    except Exception as exc:  # noqa: BLE001 - one failing method must not stop the grid
                        row["status"] = f"error: {type(exc).__name__}: {exc}"
                    else:
                        row.update(
                            status="ok", objective=res.objective, relative_error=res.relative_error,
                            achieved_sparsity=res.sparsity, seconds=res.seconds, iterations=res.iterations,
                            solve_status=res.status,
                        )
                        if save_weights:
                            rel = weight_file(name, pattern, s, m)
                            save_weight(out / rel, res.weight)
                            row["weights"] = rel
                    _append(csv_path, row)
                    done[k] = row
                    bar.update(1)
        bar.close()
        rows = fill_gaps(read_results(csv_path))
        _write_all(csv_path, rows)
        if report:
            from layerprune.reports.render import write_report

            write_report(rows, out, methods=methods, sparsities=sorted({s for _, s in cells}),
                         patterns=[parse_pattern(p).name for p in patterns], device=device)
        return rows


def _row(name: str, prob: LayerProblem, pattern: str, s: float, method: str,
         bound: LowerBound | None = None, status: str = "") -> dict[str, Any]:
    out_dim, in_dim = prob.shape
    nan = float("nan")
    row: dict[str, Any] = {
        "problem": name, "layer": prob.name or name, "out": out_dim, "in": in_dim, "pattern": pattern,
        "sparsity": float(s), "method": method, "status": status, "objective": nan, "relative_error": nan,
        "achieved_sparsity": nan, "seconds": nan, "iterations": 0, "solve_status": 0, "lower_bound": 0.0, "bound_relative": 0.0,
        "bound_kind": "none", "bound_seconds": 0.0, "gap_to_best": nan, "gap_to_bound": nan, "weights": "",
    }
    if bound is not None:
        row.update(lower_bound=bound.value, bound_kind=bound.kind, bound_seconds=bound.seconds,
                   bound_relative=bound.value / prob.dense_energy())
    return row


def _cell_bound(prob: LayerProblem, finished: list[dict[str, Any] | None], enabled: bool,
                cache: dict | None = None) -> LowerBound:
    """The cell's bound: reused from a finished row of the same cell, else computed."""
    if not enabled:
        return LowerBound(0.0, "none", info={"reason": "lower bounds disabled"})
    for r in finished:
        if r is not None and r["bound_kind"] != "none":
            return LowerBound(r["lower_bound"], r["bound_kind"], seconds=r["bound_seconds"])
    return lower_bound(prob, cache=cache)
