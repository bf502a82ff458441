"""ALPS against the baselines on real layer problems (files from `layerprune capture`).

    layerprune capture --model smollm2 --layers 0,15,29 --output problems/ --nsamples 32 --seqlen 512
    python benchmarks/real_layers.py problems/ [--device cpu] [--out results.json]
        [--methods alps,alps-local,sparsegpt] [--settings 0.7,0.8,0.9,2:4]

Prints relative error per layer × method × setting and the mean ALPS/SparseGPT ratio
(``alps-local`` is ALPS with ``local_search=True``: moves between rows, swaps inside rows).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from variants import method_and_options

from layerprune import LayerProblem, solve

METHODS = ["alps", "sparsegpt", "admm_gradual", "wanda", "magnitude"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--settings", default="0.7,0.8,0.9,2:4")
    args = ap.parse_args()
    methods = args.methods.split(",")
    settings = [(s, None) if ":" in s else ("unstructured", float(s)) for s in args.settings.split(",")]
    files = sorted(pathlib.Path(args.folder).glob("*.npz"))
    rows = []
    for f in files:
        base = LayerProblem.load(f)
        for pattern, s in settings:
            p = base.with_sparsity(s, pattern)
            for m in methods:
                name, opts = method_and_options(m)
                r = solve(p, name, device=args.device, **opts)
                rows.append({"layer": f.stem, "pattern": pattern, "sparsity": r.sparsity, "method": m,
                             "rel_error": r.relative_error, "seconds": r.seconds})
            last = {x["method"]: x["rel_error"] for x in rows[-len(methods):]}
            print(f"{f.stem:28s} {p.pattern.name:12s} {p.sparsity:.2f} "
                  + " ".join(f"{m}={last[m]:.4f}" for m in methods), flush=True)
    alps_like = [m for m in methods if m.startswith("alps")]
    print("\n| setting | " + " | ".join(methods) + " | " + " | ".join(f"{m}/SparseGPT (mean of per-layer ratios)" for m in alps_like) + " |")
    print("|---|" + "---|" * (len(methods) + len(alps_like)))
    for pattern, s in settings:
        sel = [r for r in rows if r["pattern"] == pattern and (s is None or abs(r["sparsity"] - s) < 0.01)]
        mean = {m: np.mean([r["rel_error"] for r in sel if r["method"] == m]) for m in methods}
        b = np.array([r["rel_error"] for r in sel if r["method"] == "sparsegpt"])
        ratios = []
        for m in alps_like:
            a = np.array([r["rel_error"] for r in sel if r["method"] == m])
            ratios.append(f"{np.mean(a / b):.4f} (worst {np.max(a / b):.3f})")
        name = pattern if s is None else f"{pattern} {int(round(s * 100))}%"
        print(f"| {name} | " + " | ".join(f"{mean[m]:.4f}" for m in methods) + " | " + " | ".join(ratios) + " |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
