"""Objective gaps with certified bounds on a small synthetic set (CPU, about a minute).

    python benchmarks/synthetic_gaps.py [OUTPUT]     (default /tmp/layerprune_synthetic_gaps)

Tiny layers (8×16: exact optima by enumeration) and small ones (64×128: the perspective
relaxation, certified), correlated inputs with outlier channels (``synthetic_problem``);
all registered methods at 50/70/90% unstructured and row sparsity, and 2:4.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from layerprune import available_methods
from layerprune.problems import synthetic_problem
from layerprune.reports import compare_problems


def main(output: str = "/tmp/layerprune_synthetic_gaps") -> None:
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(3):
            synthetic_problem(8, 16, 0.5, seed=seed).save(Path(folder) / f"tiny{seed}_8x16.npz")
        for seed in range(2):
            synthetic_problem(64, 128, 0.5, seed=10 + seed).save(Path(folder) / f"small{seed}_64x128.npz")
        compare_problems(folder, available_methods(), [0.5, 0.7, 0.9], ["unstructured", "row", "2:4"], output,
                         device="cpu", save_weights=False)
    print(f"report: {output}/report.md")


if __name__ == "__main__":
    main(*sys.argv[1:2])
