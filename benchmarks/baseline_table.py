"""Relative error of every method × sparsity on one correlated synthetic layer.

    python benchmarks/baseline_table.py [--out 512] [--inp 1024] [--seed 0] [--device cpu]

The problem is ``synthetic_problem(out, inp, seed=seed)``: a power-law Hessian
spectrum with outlier channels, damping 0.01. Methods: magnitude, Wanda,
SparseGPT, and ALPS when ``available_methods()`` lists it; sparsities 0.5–0.9
(unstructured) and 2:4. Each cell is the relative error f(W)/tr(Ŵ H Ŵᵀ) and the
method's wall time; every solve runs on a fresh factorization cache, so
SparseGPT's Cholesky and ALPS's eigendecomposition are inside their times.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys

from layerprune import available_methods, solve
from layerprune.problems import synthetic_problem
from layerprune.problems.backend import resolve_device

BASE_METHODS = ["magnitude", "wanda", "sparsegpt", "alps"]
SPARSITIES = ["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"]


def run_table(out: int, inp: int, seed: int, device: str | None, methods: list[str],
              columns: list[str]) -> list[tuple[str, list[tuple[float, float]]]]:
    """Rows (method, [(relative error, seconds) per column])."""
    base = synthetic_problem(out, inp, 0.5, seed=seed)
    warm = synthetic_problem(8, 16, 0.5, seed=seed)
    for method in methods:  # imports and first-call set-up stay out of the timings
        solve(warm, method, device=device)
    rows = []
    for method in methods:
        cells = []
        for col in columns:
            p = base.with_sparsity(None, col) if ":" in col else base.with_sparsity(float(col))
            r = solve(p, method, device=device)
            if abs(r.sparsity - p.sparsity) > 0.5 / inp:
                raise RuntimeError(f"{method} at {col}: achieved sparsity {r.sparsity:.4f}")
            cells.append((r.relative_error, r.seconds))
        rows.append((method, cells))
    return rows


def markdown(rows: list[tuple[str, list[tuple[float, float]]]], columns: list[str]) -> str:
    head = ["method"] + [c if ":" in c else f"{float(c):.0%}" for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, cells in rows:
        lines.append("| " + " | ".join([method] + [f"{e:.4f} ({s:.2f} s)" for e, s in cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=int, default=512, help="output features (rows of W)")
    ap.add_argument("--inp", type=int, default=1024, help="input features (columns of W)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu, cuda, or auto (default)")
    ap.add_argument("--methods", default=",".join(BASE_METHODS),
                    help="comma-separated; methods the registry lacks are skipped")
    ap.add_argument("--sparsities", default=",".join(SPARSITIES), help="fractions and N:M patterns")
    args = ap.parse_args(argv)

    known = set(available_methods())
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = [m for m in wanted if m in known]
    skipped = [m for m in wanted if m not in known]
    columns = [c.strip() for c in args.sparsities.split(",") if c.strip()]
    device = resolve_device(args.device)

    rows = run_table(args.out, args.inp, args.seed, device, methods, columns)
    print(f"Relative error f(W)/tr(Ŵ H Ŵᵀ) (wall seconds) on synthetic_problem({args.out}, {args.inp}, "
          f"seed={args.seed}), damping 0.01, device {device} ({platform.processor() or platform.machine()})\n")
    print(markdown(rows, columns))
    if skipped:
        print(f"\nnot registered, skipped: {', '.join(skipped)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
