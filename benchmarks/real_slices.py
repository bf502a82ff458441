"""Certified gaps on slices of real layers, where exact optima and relaxations are computable.

    python benchmarks/real_slices.py PROBLEMS OUTPUT [--methods alps,sparsegpt,wanda,magnitude]

A full SmolLM2 layer (576 or 1536 inputs) only gets the weak diagonal bound. Here each captured
layer in PROBLEMS (from ``layerprune capture``) gives two sub-problems with real activation
statistics: Ŵ[R, C] and H[C, C] for a seeded random set R of output rows and a contiguous window
C of inputs (so N:M groups stay aligned), with the layer's damping factor:

- ``tiny``: 8 rows × 16 inputs — exact optimum by enumeration;
- ``small``: 64 rows × 128 inputs — perspective relaxation, certified through its dual.

Then ``compare_problems`` at 50/70/90% unstructured and 2:4.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from layerprune import LayerProblem
from layerprune.reports import compare_problems
from layerprune.reports.grid import problem_files

SLICES = {"tiny": (8, 16), "small": (64, 128)}


def write_slices(problem_dir: str, folder: Path, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    n = 0
    for path in problem_files(problem_dir):
        p = LayerProblem.load(path)
        W, H = np.asarray(p.weight), np.asarray(p.raw_hessian)
        out, inp = W.shape
        for tag, (r, c) in SLICES.items():
            rows = np.sort(rng.choice(out, size=r, replace=False))
            start = 4 * int(rng.integers(0, (inp - c) // 4 + 1))
            cols = np.arange(start, start + c)
            sub = LayerProblem(W[np.ix_(rows, cols)], H[np.ix_(cols, cols)], sparsity=0.5, damping=p.damping,
                               name=f"{p.name or path.stem}[{tag} {r}x{c} @{start}]")
            sub.save(folder / f"{path.stem}.{tag}.npz")
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("problems")
    ap.add_argument("output")
    ap.add_argument("--methods", default="alps,sparsegpt,wanda,magnitude")
    ap.add_argument("--sparsity", default="0.5,0.7,0.9")
    ap.add_argument("--patterns", default="unstructured,2:4")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_slices(a.problems, Path(folder))
        compare_problems(folder, a.methods.split(","), [float(s) for s in a.sparsity.split(",")],
                         a.patterns.split(","), a.output, resume=a.resume, device="cpu", save_weights=False)
    print(f"report: {a.output}/report.md")


if __name__ == "__main__":
    main()
