"""Local search on a support: ALPS's last stage, exact swaps and moves between rows.

For one row with support S (|S| = k) in normalized coordinates (unit-diagonal Hn,
g = that row of G = B Hn), the best weights on S solve Hn_SS x = g_S and the row's
objective is f(S) = c − g_Sᵀ x. With K = Hn_SS⁻¹ (``RowSupport`` keeps K, x, r, s):

    r_i = g_i − Hn_{i,S} x,   s_i = 1 − Hn_{i,S} K Hn_{S,i}   (Schur complement),
    adding i ∉ S lowers f by r_i²/s_i;   removing j ∈ S raises f by x_j²/K_jj.

Both updates of (K, x, r, s) are rank-one (O(k² + k·in)); the state is rebuilt from
scratch every ``refresh`` updates to bound rounding.

- ``swap_search`` (patterns with a count per row or per group of M: ``row``, N:M):
  each row takes its best exact swap (i in, j out; with u_i = K Hn_{S,i} the change is
  −r_i²/s_i + (x_j − u_ij r_i/s_i)² / (K_jj + u_ij²/s_i)) while it lowers f.
- ``move_search`` (``unstructured``, one count per layer): a kept entry may move to
  another row. Each move takes the largest addition anywhere (row b), then the cheapest
  removal anywhere with row b's costs as after the addition (a pair inside row b is a
  swap), and is applied only when the gain beats the cost, so every move lowers the
  objective exactly.

Setup costs out · k² · in (one k × k inverse and a k × in product per row), which is why
ALPS runs these only on request or on small problems (``alps(local_search=...)``).
Works on host float64 arrays; the caller refits the weights on the returned support.
"""

from __future__ import annotations

import numpy as np


class RowSupport:
    """One row's support S with K = Hn_SS⁻¹, x = K g_S, and r, s for every column (see the module)."""

    def __init__(self, Hn: np.ndarray, g: np.ndarray, keep: np.ndarray, refresh: int = 200) -> None:
        self.Hn, self.g, self.refresh = Hn, g, refresh
        self.rebuild(np.flatnonzero(keep))

    def rebuild(self, S) -> None:
        """Compute K, x, r, s from scratch for the support S (column indices)."""
        Hn, g = self.Hn, self.g
        self.S = np.asarray(S, dtype=np.int64)
        self.kept = np.zeros(Hn.shape[0], dtype=bool)
        self.kept[self.S] = True
        HS = Hn[self.S]  # k × in
        K = np.linalg.inv(HS[:, self.S]) if self.S.size else np.zeros((0, 0))
        self.K = (K + K.T) * 0.5
        self.x = self.K @ g[self.S]
        self.r = g - self.x @ HS
        self.s = np.diagonal(Hn) - np.einsum("kn,kn->n", HS, self.K @ HS)
        self.r[self.S], self.s[self.S] = 0.0, 0.0
        self.updates = 0

    def decrease(self) -> float:
        """g_Sᵀ x: how much the support lowers the row's objective below c (the dense error)."""
        return float(self.g[self.S] @ self.x)

    def addition_gains(self) -> np.ndarray:
        """r_i²/s_i for i ∉ S (−inf on S and where s_i is numerically zero)."""
        ok = ~self.kept & (self.s > 1e-12)
        return np.where(ok, self.r**2 / np.where(ok, self.s, 1.0), -np.inf)

    def removal_costs(self) -> np.ndarray:
        """x_j²/K_jj for j = S[p], in S's order."""
        return self.x**2 / np.diagonal(self.K)

    def _maybe_rebuild(self) -> None:
        self.updates += 1
        if self.updates >= self.refresh:
            self.rebuild(self.S)

    def add(self, i: int) -> None:
        """S ← S ∪ {i} (appended last)."""
        HS = self.Hn[self.S]
        si, ri = self.s[i], self.r[i]
        u = self.K @ HS[:, i]
        w = self.Hn[i] - u @ HS
        k = self.S.size
        K = np.empty((k + 1, k + 1))
        K[:k, :k] = self.K + np.outer(u, u) / si
        K[:k, k] = K[k, :k] = -u / si
        K[k, k] = 1.0 / si
        self.K = K
        self.x = np.append(self.x - u * (ri / si), ri / si)
        self.r -= w * (ri / si)
        self.s -= w * w / si
        self.S = np.append(self.S, i)
        self.kept[i] = True
        self.r[i], self.s[i] = 0.0, 0.0
        self._maybe_rebuild()

    def remove(self, p: int) -> None:
        """S ← S minus its p-th entry."""
        j, kappa, kc, xp = self.S[p], self.K[p, p], self.K[:, p].copy(), self.x[p]
        v = kc @ self.Hn[self.S]
        self.r += v * (xp / kappa)
        self.s += v * v / kappa
        rest = np.arange(self.S.size) != p
        self.K = self.K[np.ix_(rest, rest)] - np.outer(kc[rest], kc[rest]) / kappa
        self.x = self.x[rest] - kc[rest] * (xp / kappa)
        self.S = self.S[rest]
        self.kept[j] = False
        self.s[j] = 1.0 / kappa
        self._maybe_rebuild()


def swap_search(Hn: np.ndarray, G: np.ndarray, mask: np.ndarray, group: int | None = None,
                max_swaps: int = 50, rel_tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """Improve ``mask`` (out × in, bool) by exact single swaps per row; returns (mask, swaps).

    Hn : (in × in) SPD, unit diagonal; G : (out × in) = B Hn; group : M for N:M patterns,
    where i and j must share a group of M. A swap is taken only when it lowers the row's
    objective by more than ``rel_tol`` × g_Sᵀx.
    """
    mask = np.array(mask, dtype=bool, copy=True)
    Hn = np.asarray(Hn, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    swaps = 0
    for row in range(mask.shape[0]):
        state = RowSupport(Hn, G[row], mask[row])
        for _ in range(max_swaps):
            S, C = state.S, np.flatnonzero(~state.kept)
            if S.size == 0 or C.size == 0:
                break
            U = state.K @ Hn[np.ix_(S, C)]  # column c: u_i for i = C[c]
            valid = state.s[C] > 1e-12
            s = np.where(valid, state.s[C], 1.0)
            step = state.r[C] / s
            delta = -(state.r[C] * step)[None, :] + (state.x[:, None] - U * step[None, :]) ** 2 / (
                np.diagonal(state.K)[:, None] + U**2 / s[None, :])
            delta[:, ~valid] = np.inf
            if group is not None:
                delta[(S[:, None] // group) != (C[None, :] // group)] = np.inf
            p, c = np.unravel_index(np.argmin(delta), delta.shape)
            if not delta[p, c] < -rel_tol * abs(state.decrease()):
                break
            state.add(int(C[c]))
            state.remove(int(p))
            swaps += 1
        mask[row] = state.kept
    return mask, swaps


def move_search(Hn: np.ndarray, G: np.ndarray, mask: np.ndarray, max_moves: int | None = None,
                rel_tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """Improve ``mask`` (out × in, bool) under one count per layer by exact moves; returns (mask, moves).

    Hn : (in × in) SPD, unit diagonal; G : (out × in) = B Hn. Each move takes the largest
    addition anywhere and the cheapest removal anywhere (costs of the adding row as after
    the addition), while the gain beats the cost by ``rel_tol`` × Σ g_Sᵀx; at most
    ``max_moves`` moves (default: no cap). The total count stays the same.
    """
    mask = np.array(mask, dtype=bool, copy=True)
    Hn = np.asarray(Hn, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    rows = [RowSupport(Hn, G[r], mask[r]) for r in range(mask.shape[0])]
    tol = rel_tol * abs(sum(state.decrease() for state in rows))
    best_gain = np.empty(len(rows))
    best_add = np.zeros(len(rows), dtype=np.int64)
    cheapest = np.empty(len(rows))
    cheapest_at = np.zeros(len(rows), dtype=np.int64)  # its position in the row's S

    def score(r: int) -> None:
        gains, costs = rows[r].addition_gains(), rows[r].removal_costs()
        best_add[r] = int(np.argmax(gains))
        best_gain[r] = gains[best_add[r]]
        cheapest_at[r] = int(np.argmin(costs)) if costs.size else 0
        cheapest[r] = costs[cheapest_at[r]] if costs.size else np.inf

    for r in range(len(rows)):
        score(r)
    moves = 0
    while max_moves is None or moves < max_moves:
        b = int(np.argmax(best_gain))
        gain, i = best_gain[b], int(best_add[b])
        if not gain > tol:
            break
        rows[b].add(i)
        costs_b = rows[b].removal_costs()
        costs_b[-1] = np.inf  # removing i again undoes the addition
        others = cheapest.copy()
        others[b] = np.inf
        a = int(np.argmin(others))
        if costs_b.size and costs_b.min() <= others[a]:
            a, p, cost = b, int(np.argmin(costs_b)), costs_b.min()
        else:
            p, cost = int(cheapest_at[a]), others[a]
        if not gain - cost > tol:
            rows[b].remove(rows[b].S.size - 1)  # undo
            break
        rows[a].remove(p)
        moves += 1
        for r in {a, b}:
            score(r)
    for r, state in enumerate(rows):
        mask[r] = state.kept
    return mask, moves
