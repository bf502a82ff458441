"""Swap local search on a support: ALPS's last stage on problems small enough for it.

For one row with support S (|S| = k) in normalized coordinates (unit-diagonal Hn,
g = that row of G = B Hn), the best weights on S solve Hn_SS x = g_S and the row's
objective is f(S) = c − g_Sᵀ x. With K = Hn_SS⁻¹, for i ∉ S:

    u_i = K Hn_{S,i},   s_i = 1 − Hn_{i,S} u_i   (Schur complement),   r_i = g_i − Hn_{i,S} x,

adding i lowers f by r_i²/s_i and leaves the weights x − u_i r_i/s_i on S; removing
j ∈ S from S ∪ {i} then raises f by (x_j − u_ij r_i/s_i)² / (K_jj + u_ij²/s_i). The sum
is the exact change of the swap (i in, j out). Each row takes its best swap while it
lowers f, at most ``max_swaps`` times; for N:M patterns i and j must share a group of M,
so every pattern stays satisfied with the same count per row (and per group).

Cost per swap and row: one k × k inverse and a k × k × (in − k) product, which is
why ALPS runs this only when out · k² · in is small (``alps(local_search=...)``).
Works on host float64 arrays; the caller refits the weights on the returned support.
"""

from __future__ import annotations

import numpy as np


def swap_search(Hn: np.ndarray, G: np.ndarray, mask: np.ndarray, group: int | None = None,
                max_swaps: int = 50, rel_tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """Improve ``mask`` (out × in, bool) by exact single swaps per row; returns (mask, swaps).

    Hn : (in × in) SPD, unit diagonal; G : (out × in) = B Hn; group : M for N:M patterns.
    A swap is taken only when it lowers the row's objective by more than ``rel_tol`` × g_Sᵀx.
    """
    mask = np.array(mask, dtype=bool, copy=True)
    Hn = np.asarray(Hn, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    diag = np.diagonal(Hn)
    swaps = 0
    for row in range(mask.shape[0]):
        g = G[row]
        for _ in range(max_swaps):
            S, C = np.flatnonzero(mask[row]), np.flatnonzero(~mask[row])
            if S.size == 0 or C.size == 0:
                break
            K = np.linalg.inv(Hn[np.ix_(S, S)])
            x = K @ g[S]
            H_SC = Hn[np.ix_(S, C)]
            U = K @ H_SC  # column c: u_i for i = C[c]
            schur = diag[C] - np.einsum("kc,kc->c", H_SC, U)
            r = g[C] - H_SC.T @ x
            valid = schur > 1e-12 * diag[C]
            s = np.where(valid, schur, 1.0)
            step = r / s
            delta = -(r * step)[None, :] + (x[:, None] - U * step[None, :]) ** 2 / (np.diag(K)[:, None] + U**2 / s[None, :])
            delta[:, ~valid] = np.inf
            if group is not None:
                delta[(S[:, None] // group) != (C[None, :] // group)] = np.inf
            j, c = np.unravel_index(np.argmin(delta), delta.shape)
            if not delta[j, c] < -rel_tol * abs(float(g[S] @ x)):
                break
            mask[row, S[j]], mask[row, C[c]] = False, True
            swaps += 1
    return mask, swaps
