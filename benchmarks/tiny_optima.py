"""ALPS (with and without its swap local search) and SparseGPT against exact optima on tiny layers.

    python benchmarks/tiny_optima.py [--layers 20] [--seed 0]

Every row's support is enumerated (patterns ``row`` and N:M separate over rows), on 4 × 12
layers with correlated inputs and an outlier channel, in float64. The problem builder and the
enumeration are the ones ``tests/test_alps.py`` checks against. Prints, per pattern, the gap
ALPS leaves as a fraction of SparseGPT's gap and how many rows and layers are exactly optimal;
then what the local search does on a larger (128 × 256, synthetic) layer and what it costs.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from test_alps import _exact_rows, _row_objectives, _tiny_problem  # noqa: E402

from layerprune import solve  # noqa: E402
from layerprune.problems import synthetic_problem  # noqa: E402

SETTINGS = [("row", 0.5), ("row", 0.75), ("2:4", None), ("1:4", None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| pattern | ALPS variant | gap / SparseGPT's gap | rows exactly optimal | layers exactly optimal |")
    print("|---|---|---|---|---|")
    for pattern, sparsity in SETTINGS:
        rng = np.random.default_rng(args.seed)
        gap_sgpt, stats = 0.0, {False: [0.0, 0, 0, 0], True: [0.0, 0, 0, 0]}
        for _ in range(args.layers):
            p = _tiny_problem(rng, 4, 12, pattern, sparsity)
            best = _exact_rows(p)
            sgpt = _row_objectives(p, solve(p, "sparsegpt", dtype="float64").weight)
            gap_sgpt += (sgpt - best).sum() / best.sum()
            for local_search, s in stats.items():
                alps = _row_objectives(p, solve(p, "alps", dtype="float64", local_search=local_search).weight)
                exact = alps <= best * (1 + 1e-8)
                s[0] += (alps - best).sum() / best.sum()
                s[1], s[2], s[3] = s[1] + int(exact.sum()), s[2] + int(exact.all()), s[3] + len(best)
        for local_search, (gap, rows_exact, layers_exact, rows) in stats.items():
            label = "ADMM + swap local search (default here)" if local_search else "ADMM + refit only"
            print(f"| {pattern} {'' if sparsity is None else f'{sparsity:.0%}'} | {label} | {gap / gap_sgpt:.3f} | "
                  f"{rows_exact}/{rows} | {layers_exact}/{args.layers} |")

    print("\n| 128 × 256 synthetic (seed 100) | ALPS/SparseGPT, ADMM + refit | with the local search | seconds without / with |")
    print("|---|---|---|---|")
    for sparsity in (0.7, 0.8, 0.9):
        p = synthetic_problem(128, 256, sparsity, "unstructured", seed=100)
        sgpt = solve(p, "sparsegpt").relative_error
        cells = []
        for local_search in (False, True):
            t = time.perf_counter()
            cells.append((solve(p, "alps", local_search=local_search).relative_error / sgpt, time.perf_counter() - t))
        print(f"| {sparsity:.0%} | {cells[0][0]:.4f} | {cells[1][0]:.4f} | {cells[0][1]:.2f} / {cells[1][1]:.2f} |")


if __name__ == "__main__":
    main()
