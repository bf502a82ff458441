"""What else moves ALPS's error on real layers: two probes beside plain ALPS, on the same problems.

    python benchmarks/real_layer_probes.py PROBLEM_DIR [--sparsity 0.8] [--swap-layer block15.self_attn.v_proj]

1. *Polish*: from ALPS's refit solution X (normalized coordinates) restart ADMM with the dual
   set to the gradient, V = G − X Hn, at the largest ρ (from ALPS's last, divided by 1.5 at a
   time) at which P(X + V/ρ) moves more than 1 % of the support; refit; keep the better;
   3 rounds. This is iterative hard thresholding with a refit, run through ALPS's own machinery.
2. *Swaps*: ALPS's support improved by exact single swaps per row (``solvers.local_search``)
   until no swap helps, on one layer (minutes on a CPU for SmolLM2's larger layers).
Prints per layer the ALPS/SparseGPT error ratio before and after, and the means.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from layerprune import LayerProblem, solve
from layerprune.solvers.alps import _admm_step, pcg_refit
from layerprune.solvers.local_search import swap_search
from layerprune.solvers.normalized import NormalizedProblem, ShiftedInverse


def refit(norm: NormalizedProblem, X, mask):
    X = X * mask
    X, _ = pcg_refit(norm, X, mask, norm.hn(), norm.rel_error(X), None, 200)
    return X, norm.rel_error(X)


def admm_from(norm: NormalizedProblem, Z, rho: float, max_iter: int = 300):
    """ALPS's iteration (its X-update and ρ schedule) from the state Z = X + V/ρ; returns (Dv, mask)."""
    T, X_block = np.empty_like(Z), np.empty_like(Z)
    mask, at = norm.projection_mask(Z, T), None
    inverse = ShiftedInverse(norm, rho)
    for it in range(1, max_iter + 1):
        _admm_step(norm, Z, T, X_block, mask, inverse, rho)
        mask = norm.projection_mask(Z, T)
        if it % 3:
            continue
        change = np.count_nonzero(mask != at) / norm.kept if at is not None else 1.0
        at = mask
        if change == 0 or (it >= 30 and change < 3e-4):
            break
        new = rho * (1.3 if change > 0.1 else 1.2 if change > 0.005 else 1.1)
        Z += (Z * ~mask) * (rho / new - 1.0)
        rho = new
        inverse.set_rho(rho)
    return Z * mask, mask


def polish(p: LayerProblem, alps, rounds: int = 3) -> float:
    norm = NormalizedProblem(p, np, np.dtype(np.float32), {})
    X, mask = (alps.weight * norm.d[None, :]).astype(np.float32), alps.mask.copy()
    best, Hn = norm.rel_error(X), norm.hn()
    for _ in range(rounds):
        V, rho = norm.G - X @ Hn, alps.info["rho_final"]
        for _ in range(40):
            Z = X + V / rho
            if np.count_nonzero(norm.mask(np.abs(Z)) != mask) > 0.01 * norm.kept:
                break
            rho /= 1.5
        D, m = admm_from(norm, Z, rho)
        D, err = refit(norm, D, m)
        if err < best:
            best, X, mask = err, D, m
    return best


def swaps(p: LayerProblem, alps) -> float:
    norm = NormalizedProblem(p, np, np.dtype(np.float64), {})
    mask, _ = swap_search(norm.hn(), norm.G, alps.mask, max_swaps=10_000)
    return refit(norm, norm.B, mask)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--swap-layer", default="block15.self_attn.v_proj")
    args = ap.parse_args()
    ratios = {"alps": [], "polish": []}
    for f in sorted(pathlib.Path(args.folder).glob("*.npz")):
        p = LayerProblem.load(f).with_sparsity(args.sparsity, "unstructured")
        sgpt, alps = solve(p, "sparsegpt", device="cpu").relative_error, solve(p, "alps", device="cpu")
        polished = polish(p, alps)
        ratios["alps"].append(alps.relative_error / sgpt)
        ratios["polish"].append(polished / sgpt)
        line = f"{f.stem:28s} ALPS/SparseGPT {alps.relative_error / sgpt:.4f}  polished {polished / sgpt:.4f}"
        if f.stem == args.swap_layer:
            line += f"  swaps {swaps(p, alps) / sgpt:.4f}"
        print(line, flush=True)
    print(f"mean ratio: ALPS {np.mean(ratios['alps']):.4f}, polished {np.mean(ratios['polish']):.4f}")


if __name__ == "__main__":
    main()
