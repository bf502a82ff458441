"""Alternate uncapped move_search and swap_search from ALPS's ADMM support until neither changes it.

    python benchmarks/local_search_alternate.py FOLDER SPARSITY OUT.jsonl [--layers substr,...] [--rounds R]

Starts from ALPS local_search=True, local_search_swaps=100000 (= ADMM + uncapped moves), then
repeats (swap_search uncapped; move_search uncapped) up to R rounds, refitting after each step with
ALPS's PCG refit; reports the relative error (float64 objective of the unscaled weight).
"""

import json
import sys
import time

import numpy as np
from local_search_convergence import layer_problems

from layerprune import solve
from layerprune.solvers.alps import pcg_refit
from layerprune.solvers.local_search import move_search, swap_search
from layerprune.solvers.normalized import NormalizedProblem

folder, sparsity, out_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
args = sys.argv[4:]
layers = args[args.index("--layers") + 1].split(",") if "--layers" in args else None
rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 4

with open(out_path, "a") as fh:
    for f, p in layer_problems(folder, sparsity, layers):
        sg = solve(p, "sparsegpt", device="cpu").relative_error
        t0 = time.perf_counter()
        r = solve(p, "alps", device="cpu", local_search=True, local_search_swaps=100000)
        norm = NormalizedProblem(p, np, np.dtype(np.float32), {})
        Hn = norm.hn()
        Hn64, G64 = Hn.astype(np.float64), norm.G.astype(np.float64)
        mask = r.mask.astype(bool)
        X = (r.weight.astype(np.float32) * norm.d[None, :]) * mask
        steps = [{"step": "alps-lsinf", "rel_error": r.relative_error, "count": r.info.get("local_search_moves")}]

        def refit(X, mask, norm=norm, Hn=Hn, p=p):
            X = X * mask
            X, _ = pcg_refit(norm, X, mask, Hn, float("nan"), None, 200)
            W = norm.unscale(X.copy()) * mask
            return X, p.relative(p.objective(W))

        for rnd in range(rounds):
            mask, sw = swap_search(Hn64, G64, mask, max_swaps=10**9)
            X, e = refit(X, mask)
            steps.append({"step": f"swap{rnd}", "rel_error": e, "count": int(sw)})
            mask, mv = move_search(Hn64, G64, mask, max_moves=None)
            X, e = refit(X, mask)
            steps.append({"step": f"move{rnd}", "rel_error": e, "count": int(mv)})
            if sw == 0 and mv == 0:
                break
        secs = time.perf_counter() - t0
        rec = {"layer": f.stem, "sparsity": sparsity, "sparsegpt": sg, "steps": steps, "seconds": secs}
        fh.write(json.dumps(rec) + "\n")
        fh.flush()
        print(f"{f.stem:28s} {sparsity:.2f} {secs:6.1f}s " + " ".join(
            f"{s['step']}:{s['rel_error'] / sg:.4f}({s['count']})" for s in steps), flush=True)
