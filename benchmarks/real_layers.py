"""ALPS against the baselines on real layer problems (files from `layerprune capture`).

    layerprune capture --model smollm2 --layers 0,15,29 --output problems/ --nsamples 32 --seqlen 512
    python benchmarks/real_layers.py problems/ [--device cpu] [--out results.json]

Prints relative error per layer × method × setting and the mean ALPS/SparseGPT ratio.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from layerprune import LayerProblem, solve

SETTINGS = [("unstructured", 0.7), ("unstructured", 0.8), ("unstructured", 0.9), ("2:4", None)]
METHODS = ["alps", "sparsegpt", "admm_gradual", "wanda", "magnitude"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    files = sorted(pathlib.Path(args.folder).glob("*.npz"))
    rows = []
    for f in files:
        base = LayerProblem.load(f)
        for pattern, s in SETTINGS:
            p = base.with_sparsity(s, pattern)
            for m in METHODS:
                r = solve(p, m, device=args.device)
                rows.append({"layer": f.stem, "pattern": pattern, "sparsity": r.sparsity, "method": m,
                             "rel_error": r.relative_error, "seconds": r.seconds})
            last = {x["method"]: x["rel_error"] for x in rows[-len(METHODS):]}
            print(f"{f.stem:28s} {p.pattern.name:12s} {p.sparsity:.2f} "
                  + " ".join(f"{m}={last[m]:.4f}" for m in METHODS), flush=True)
    print("\n| setting | " + " | ".join(METHODS) + " | ALPS/SparseGPT (mean of per-layer ratios) |")
    print("|---|" + "---|" * (len(METHODS) + 1))
    for pattern, s in SETTINGS:
        sel = [r for r in rows if r["pattern"] == pattern and (s is None or abs(r["sparsity"] - s) < 0.01)]
        mean = {m: np.mean([r["rel_error"] for r in sel if r["method"] == m]) for m in METHODS}
        a = np.array([r["rel_error"] for r in sel if r["method"] == "alps"])
        b = np.array([r["rel_error"] for r in sel if r["method"] == "sparsegpt"])
        name = pattern if s is None else f"{pattern} {int(round(s * 100))}%"
        print(f"| {name} | " + " | ".join(f"{mean[m]:.4f}" for m in METHODS)
              + f" | {np.mean(a / b):.3f} (worst {np.max(a / b):.3f}) |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
