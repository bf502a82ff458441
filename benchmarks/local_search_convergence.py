"""Does ALPS's exact local search stop on its own or at its cap, and what do swaps add on top? (CPU)

    python benchmarks/local_search_convergence.py FOLDER SPARSITY OUT.jsonl [--layers substr,...] [--swap-on-top]
        [--variants sparsegpt,alps,alps-ls50,alps-lsinf]

FOLDER holds ``layerprune capture`` problem files; one JSON line per layer is appended to OUT.jsonl.
Variants per layer: sparsegpt, alps (default), alps-ls50 (local_search=True, cap 50/row),
alps-lsinf (local_search=True, local_search_swaps=100000), and optionally
alps-lsinf+swap: swap_search (uncapped) inside rows on the lsinf support, then ALPS's PCG refit.
"""

import json
import pathlib
import sys
import time

import numpy as np

from layerprune import LayerProblem, solve
from layerprune.solvers.alps import pcg_refit
from layerprune.solvers.local_search import swap_search
from layerprune.solvers.normalized import NormalizedProblem


def layer_problems(folder: str, sparsity: float, layers: list[str] | None = None):
    """(file, problem at ``sparsity`` unstructured) for the capture files in ``folder`` (names containing one of ``layers``)."""
    files = sorted(pathlib.Path(folder).glob("*.npz"))
    for f in files:
        if not layers or any(s in f.stem for s in layers):
            yield f, LayerProblem.load(f).with_sparsity(sparsity, "unstructured")


def main() -> None:
    folder, sparsity, out_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    args = sys.argv[4:]
    layers = None
    if "--layers" in args:
        layers = args[args.index("--layers") + 1].split(",")
    swap_on_top = "--swap-on-top" in args
    variants = ["sparsegpt", "alps", "alps-ls50", "alps-lsinf"]
    if "--variants" in args:
        variants = args[args.index("--variants") + 1].split(",")
    OPTS = {
        "sparsegpt": ("sparsegpt", {}),
        "alps": ("alps", {"local_search": False}),
        "alps-ls50": ("alps", {"local_search": True, "local_search_swaps": 50}),
        "alps-lsinf": ("alps", {"local_search": True, "local_search_swaps": 100000}),
    }

    with open(out_path, "a") as fh:
        for f, p in layer_problems(folder, sparsity, layers):
            rec = {"layer": f.stem, "sparsity": sparsity, "shape": list(p.shape)}
            lsinf = None
            for v in variants:
                name, opts = OPTS[v]
                r = solve(p, name, device="cpu", **opts)
                rec[v] = {"rel_error": r.relative_error, "seconds": r.seconds,
                          "moves": r.info.get("local_search_moves"),
                          "seconds_local_search": r.info.get("seconds_local_search"),
                          "admm_rel_error": r.info.get("admm_rel_error")}
                if v == "alps-lsinf":
                    lsinf = r
            if swap_on_top and lsinf is not None:
                t0 = time.perf_counter()
                norm = NormalizedProblem(p, np, np.dtype(np.float32), {})
                Hn = norm.hn()
                Hn64, G64 = Hn.astype(np.float64), norm.G.astype(np.float64)
                mask0 = lsinf.mask.astype(bool)
                new, swaps = swap_search(Hn64, G64, mask0, max_swaps=10**9)
                t_swap = time.perf_counter() - t0
                X = (lsinf.weight.astype(np.float32) * norm.d[None, :]) * new
                X, info = pcg_refit(norm, X, new, Hn, float("nan"), None, 200)
                W = norm.unscale(X, out=X) * new
                rel = p.relative(p.objective(W))
                # control: refit on the unchanged lsinf mask through the same path
                Xc = (lsinf.weight.astype(np.float32) * norm.d[None, :]) * mask0
                Xc, _ = pcg_refit(norm, Xc, mask0, Hn, float("nan"), None, 200)
                relc = p.relative(p.objective(norm.unscale(Xc, out=Xc) * mask0))
                rec["alps-lsinf+swap"] = {"rel_error": rel, "swaps": int(swaps), "seconds_extra": t_swap,
                                          "changed_entries": int((new != mask0).sum()),
                                          "control_refit_rel_error": relc}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            sg = rec["sparsegpt"]["rel_error"] if "sparsegpt" in rec else float("nan")
            line = f"{f.stem:28s} {sparsity:.2f} " + " ".join(
                f"{v}={rec[v]['rel_error']:.5f}({rec[v]['rel_error'] / sg:.4f}, {rec[v].get('seconds', rec[v].get('seconds_extra')):.1f}s"
                + (f", mv={rec[v]['moves']}" if rec[v].get("moves") is not None else "")
                + (f", sw={rec[v]['swaps']}" if "swaps" in rec[v] else "") + ")"
                for v in rec if isinstance(rec[v], dict))
            print(line, flush=True)


if __name__ == "__main__":
    main()
