"""Batched preconditioned conjugate gradient for the refit on a fixed support.

In normalized coordinates (unit-diagonal Hn, so the Jacobi preconditioner is the
identity) the refit on support S minimizes tr((X − B) Hn (X − B)ᵀ) over X with
supp(X) ⊆ S. Each row r solves Hn[S_r, S_r] x = G[r, S_r] with G = B Hn; all rows
go at once through the masked operator

    A(P) = mask ⊙ (P Hn)          (one out × in × in product per iteration),

with per-row step sizes. The iteration stops on the masked residual
‖mask ⊙ (G − X Hn)‖_F / ‖mask ⊙ G‖_F ≤ tol.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PCGInfo:
    iterations: int
    residual: float  # final relative masked residual
    converged: bool


def masked_pcg(Hn, G, mask, X0, xp, tol: float = 1e-6, max_iter: int = 200, inplace: bool = False):
    """Solve mask ⊙ (X Hn) = mask ⊙ G for X supported on ``mask``, warm-started at X0.

    Hn: (in × in) SPD with unit diagonal, so the Jacobi preconditioner is the identity
    and preconditioned CG is plain CG here; G, mask, X0: (out × in).
    ``inplace`` overwrites X0 with the solution (one weight-sized buffer fewer).
    Returns (X, PCGInfo). Rows are independent systems with their own α, β.
    """
    X = X0 if inplace else X0.copy()
    X *= mask
    R = xp.matmul(X, Hn)
    xp.subtract(G, R, out=R)
    R *= mask
    g_norm = float(xp.linalg.norm(G * mask))
    if g_norm == 0.0:
        X[...] = 0
        return X, PCGInfo(0, 0.0, True)
    P = R.copy()
    AP = xp.empty_like(P)
    rz = xp.sum(R * R, axis=1)
    tiny = xp.finfo(G.dtype).tiny
    res = float(xp.sqrt(rz.sum())) / g_norm  # ‖R‖_F from the per-row ‖R_r‖² CG keeps anyway
    it = 0
    while res > tol and it < max_iter:
        xp.matmul(P, Hn, out=AP)
        AP *= mask
        pAp = xp.sum(P * AP, axis=1)
        alpha = xp.where(pAp > tiny, rz / xp.maximum(pAp, tiny), 0.0).astype(G.dtype)[:, None]
        X += alpha * P
        R -= alpha * AP
        rz_new = xp.sum(R * R, axis=1)
        beta = xp.where(rz > tiny, rz_new / xp.maximum(rz, tiny), 0.0).astype(G.dtype)[:, None]
        P *= beta
        P += R
        rz = rz_new
        it += 1
        res = float(xp.sqrt(rz.sum())) / g_norm
    return X, PCGInfo(it, res, res <= tol)
