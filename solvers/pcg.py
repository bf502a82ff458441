"""Batched preconditioned conjugate gradient for the refit on a fixed support.

In normalized coordinates (unit-diagonal Hn, so the Jacobi preconditioner is the
identity) the refit on support S minimizes tr((X − B) Hn (X − B)ᵀ) over X with
supp(X) ⊆ S. Each row r solves Hn[S_r, S_r] x = G[r, S_r] with G = B Hn; all rows
go at once through the masked operator

    A(P) = mask ⊙ (P Hn)          (one out × in × in product per iteration),

with per-row step sizes. The iteration stops on the masked residual
‖mask ⊙ (G − X Hn)‖_F / ‖mask ⊙ G‖_F ≤ tol.

Rows are independent systems, so each iteration runs over blocks of rows: the
product A(P) exists one block at a time and the buffers are X, R, P (out × in)
plus one block.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PCGInfo:
    iterations: int
    residual: float  # final relative masked residual
    converged: bool


def _row_dots(A, B, xp):
    """Σⱼ A[i, j] B[i, j] per row (rows,)."""
    return xp.einsum("ij,ij->i", A, B)


def masked_pcg(Hn, G, mask, X0, xp, tol: float = 1e-6, max_iter: int = 200, inplace: bool = False,
               blocks: list[slice] | None = None):
    """Solve mask ⊙ (X Hn) = mask ⊙ G for X supported on ``mask``, warm-started at X0.

    Hn: (in × in) SPD with unit diagonal, so the Jacobi preconditioner is the identity
    and preconditioned CG is plain CG here; or a callable (P, out) ↦ P Hn that writes
    into ``out`` (``NormalizedProblem.hn_operator``); G, mask, X0: (out × in).
    ``inplace`` overwrites X0 with the solution (one weight-sized buffer fewer);
    ``blocks`` (row slices, default all rows at once) bound the per-iteration temporaries.
    Returns (X, PCGInfo). Rows are independent systems with their own α, β.
    """
    rows = G.shape[0]
    blocks = blocks or [slice(0, rows)]
    times_hn = Hn if callable(Hn) else (lambda P, out: xp.matmul(P, Hn, out=out))
    X = X0 if inplace else X0.copy()
    X *= mask
    R = xp.empty_like(X)
    g_sq = 0.0
    for r in blocks:  # R = mask ⊙ (G − X Hn)
        times_hn(X[r], R[r])
        xp.subtract(G[r], R[r], out=R[r])
        R[r] *= mask[r]
        g_sq += float(xp.sum(xp.square(G[r]) * mask[r]))
    g_norm = g_sq ** 0.5
    if g_norm == 0.0:
        X[...] = 0
        return X, PCGInfo(0, 0.0, True)
    P = R.copy()
    AP = xp.empty((max(r.stop - r.start for r in blocks), G.shape[1]), dtype=G.dtype)
    rz = _row_dots(R, R, xp)
    tiny = xp.finfo(G.dtype).tiny
    res = float(xp.sqrt(rz.sum())) / g_norm  # ‖R‖_F from the per-row ‖R_r‖² CG keeps anyway
    it = 0
    while res > tol and it < max_iter:
        for r in blocks:
            Pr, Rr, rzr = P[r], R[r], rz[r]
            APr = times_hn(Pr, AP[: Pr.shape[0]])
            APr *= mask[r]
            pAp = _row_dots(Pr, APr, xp)
            alpha = xp.where(pAp > tiny, rzr / xp.where(pAp > tiny, pAp, 1.0), 0.0).astype(G.dtype)[:, None]
            X[r] += alpha * Pr
            APr *= alpha
            Rr -= APr
            rz_new = _row_dots(Rr, Rr, xp)
            beta = xp.where(rzr > tiny, rz_new / xp.where(rzr > tiny, rzr, 1.0), 0.0).astype(G.dtype)[:, None]
            Pr *= beta
            Pr += Rr
            rz[r] = rz_new
        it += 1
        res = float(xp.sqrt(rz.sum())) / g_norm
    return X, PCGInfo(it, res, res <= tol)
