"""Exact local search on a support for all rows of a layer at once, on the array backend.

The same neighbourhoods and the same exact gains as ``solvers.local_search`` (the per-row
host reference; read its docstring), batched over rows so one code path runs on NumPy and
CuPy. Per row, in normalized coordinates (unit-diagonal Hn, g = that row of G = B Hn), the
support sits in ``m`` slots (b rows × m, an empty slot holds the sentinel column ``in``):

    K (b × m × m) = Hn_SS⁻¹ on the filled slots and the identity on the empty ones,
    x = K g_S,  r = g − x Hn_S,  s = 1 − diag(Hn_{·,S} K Hn_{S,·})   (b × in),
    adding i ∉ S lowers f by r_i²/s_i,  removing slot p raises f by x_p²/K_pp.

An addition into empty slot p with u = K Hn_{S,i} is K ← K + (u − e_p)(u − e_p)ᵀ/s_i − e_p e_pᵀ;
a removal of slot p is K ← K − K_{·p} K_{p·}/K_pp with row and column p reset to e_p: both
rank one, applied to any subset of rows at once (O(m² + m·in) per row); a row is rebuilt
from scratch (batched inverse) every ``refresh`` updates, as the reference does.

- ``batched_swap_search`` (``row``, N:M): every row takes its best exact swap at once; rows
  are independent, so the swaps are the reference's. It keeps U = K Hn_{S,·} (b × m × in),
  updated by rank one (add: U ← U − u wᵀ/s_i, U_p = w/s_i with w = Hn_i − Hn_{i,S} U;
  remove: U ← U − K_{·p} U_p/K_pp), so a swap step costs O(m · in) per row; rows run in
  chunks of at most ``max_entries`` U entries.
- ``batched_move_search`` (``unstructured``): moves of kept entries between rows. Each round
  adds the best entry of each of the ``moves_per_round`` rows with the largest gains, then
  pairs them in that order with the cheapest removal: in the adding row after the addition
  (a swap) or in a row that adds nothing this round (each used once, cheapest first), and
  keeps a pair only when its gain beats its cost; rejected additions are undone. Every kept
  pair lowers f exactly (rows are separable), the count is kept, and the search stops when
  the best addition does not beat the cheapest removal: the reference's test. With
  ``moves_per_round=1`` the moves are the reference's, one at a time.

Arrays are float64 by default: a gain is a small difference of large numbers.
"""

from __future__ import annotations

import numpy as np

from layerprune.problems.backend import rows_add_outer, rows_matvec

INF = float("inf")
SPARE_SLOTS = 8  # the move search's slots beyond the largest row count (more are added as rows grow)


class SlotSupports:
    """Supports of ``b`` rows in ``m`` slots with K, x, r, s (and U when ``track_u``); see the module.

    Hn : (in × in) unit-diagonal SPD on xp; G : (b × in); mask : (b × in) bool; slots ≥ max row count.
    """

    def __init__(self, Hn, G, mask, slots: int, xp, track_u: bool = False, refresh: int = 200) -> None:
        self.xp, self.Hn, self.G, self.refresh, self.track_u = xp, Hn, G, refresh, track_u
        b, n = G.shape
        self.n = n
        self.Hz = xp.concatenate([Hn, xp.zeros((1, n), dtype=Hn.dtype)])  # row ``n``: an empty slot
        self.kept = xp.array(mask, dtype=bool, copy=True)
        self.S = _slots_of(self.kept, slots, xp)
        self.updates = xp.zeros(b, dtype=np.int64)
        m = slots
        self.K = xp.empty((b, m, m), dtype=Hn.dtype)
        self.x = xp.empty((b, m), dtype=Hn.dtype)
        self.r = xp.empty((b, n), dtype=Hn.dtype)
        self.s = xp.empty((b, n), dtype=Hn.dtype)
        self.U = xp.empty((b, m, n), dtype=Hn.dtype) if track_u else None
        self.rebuild(xp.arange(b))

    @property
    def slots(self) -> int:
        return self.S.shape[1]

    def rebuild(self, rows, chunk_entries: int | None = None) -> None:
        """K, x, r, s (and U) of ``rows`` (index array) from scratch, in chunks of rows of about
        ``chunk_entries`` gathered Hn entries (default 2²² on NumPy, 2²⁷ on CuPy)."""
        xp, m, n = self.xp, self.slots, self.n
        rows = xp.asarray(rows)
        chunk_entries = chunk_entries or (1 << 22 if xp is np else 1 << 27)
        step = max(1, chunk_entries // max(1, m * n))
        eye = xp.eye(m, dtype=self.Hn.dtype)
        for c in range(0, int(rows.shape[0]), step):
            sel = rows[c:c + step]
            S = self.S[sel]
            valid = S < n
            HS = self.Hz[S]  # (c × m × in), zero rows on empty slots
            A = xp.take_along_axis(HS, xp.where(valid, S, 0)[:, None, :], axis=2) * valid[:, None, :]
            A += eye * (~valid)[:, None, :]
            K = xp.linalg.inv(A)
            K = (K + xp.swapaxes(K, 1, 2)) * 0.5
            gS = xp.take_along_axis(self.G[sel], xp.where(valid, S, 0), axis=1) * valid
            x = xp.einsum("cab,cb->ca", K, gS)
            U = K @ HS
            self.K[sel], self.x[sel] = K, x
            self.r[sel] = self.G[sel] - xp.einsum("ca,cai->ci", x, HS)
            self.s[sel] = 1.0 - xp.einsum("cai,cai->ci", HS, U)
            if self.track_u:
                self.U[sel] = U
            kept = self.kept[sel]
            self.r[sel] = xp.where(kept, 0.0, self.r[sel])
            self.s[sel] = xp.where(kept, 0.0, self.s[sel])
        self.updates[rows] = 0

    def grow(self, slots: int) -> None:
        """Widen to ``slots`` slots (empty ones appended; K padded with the identity)."""
        xp, b, m = self.xp, self.S.shape[0], self.slots
        if slots <= m:
            return
        extra = slots - m
        self.S = xp.concatenate([self.S, xp.full((b, extra), self.n, dtype=self.S.dtype)], axis=1)
        K = xp.zeros((b, slots, slots), dtype=self.K.dtype)
        K[:, :m, :m] = self.K
        idx = xp.arange(m, slots)
        K[:, idx, idx] = 1.0
        self.K = K
        self.x = xp.concatenate([self.x, xp.zeros((b, extra), dtype=self.x.dtype)], axis=1)
        if self.track_u:
            self.U = xp.concatenate([self.U, xp.zeros((b, extra, self.n), dtype=self.U.dtype)], axis=1)

    def count(self):
        """Filled slots per row (b,)."""
        return (self.S < self.n).sum(axis=1)

    def decrease(self):
        """g_Sᵀ x per row (b,): how far the support lowers each row's objective below its dense error."""
        xp, valid = self.xp, self.S < self.n
        gS = xp.take_along_axis(self.G, xp.where(valid, self.S, 0), axis=1) * valid
        return (gS * self.x).sum(axis=1)

    def addition_gains(self, rows=None):
        """r_i²/s_i for i ∉ S (−inf on S and where s_i ≤ 1e-12), (rows × in)."""
        r, s, kept = (self.r, self.s, self.kept) if rows is None else (self.r[rows], self.s[rows], self.kept[rows])
        ok = ~kept & (s > 1e-12)
        return self.xp.where(ok, r * r / self.xp.where(ok, s, 1.0), -INF)

    def k_diagonals(self, rows=None):
        """K_pp per slot, (rows × m): the rows' diagonals gathered alone, not their m × m blocks."""
        xp = self.xp
        if rows is None:
            return xp.diagonal(self.K, axis1=1, axis2=2)
        slot = xp.arange(self.slots)
        return self.K[xp.asarray(rows)[:, None], slot, slot]

    def removal_costs(self, rows=None):
        """x_p²/K_pp per slot (+inf on empty slots), (rows × m)."""
        S, x = (self.S, self.x) if rows is None else (self.S[rows], self.x[rows])
        return self.xp.where(S < self.n, x * x / self.k_diagonals(rows), INF)

    def _scatter(self, rows, V):
        """(rows × in) with V (rows × m) placed at the rows' slot columns (empty slots dropped)."""
        xp = self.xp
        out = xp.zeros((V.shape[0], self.n + 1), dtype=V.dtype)
        out[xp.arange(V.shape[0])[:, None], self.S[rows]] = V
        return out[:, : self.n]

    def add(self, rows, cols) -> None:
        """S ← S ∪ {cols[t]} in the first empty slot of rows[t] (rows distinct, each with a free slot)."""
        xp = self.xp
        rows, cols = xp.asarray(rows), xp.asarray(cols)
        if rows.shape[0] == 0:
            return
        t = xp.arange(rows.shape[0])
        S = self.S[rows]
        p = xp.argmax(S >= self.n, axis=1)  # the first empty slot
        si, ri = self.s[rows, cols], self.r[rows, cols]
        if self.track_u:
            U = self.U[rows]
            u = U[t, :, cols]  # K Hn_{S,i}
            h = xp.take_along_axis(self.Hz[cols], xp.where(S < self.n, S, 0), axis=1) * (S < self.n)
            w = self.Hn[cols] - xp.einsum("ta,tai->ti", h, U)
        else:
            h = self.Hz[S, cols[:, None]]  # Hn_{S,i} (t × m), 0 on empty slots
            u = rows_matvec(self.K, rows, h)
            w = self.Hn[cols] - self._scatter(rows, u) @ self.Hn
        step = (ri / si)[:, None]
        e = xp.zeros_like(u)
        e[t, p] = 1.0
        d = u - e
        rows_add_outer(self.K, rows, d / si[:, None], d)
        self.K[rows, p, p] -= 1.0
        x = self.x[rows] - u * step
        x[t, p] = step[:, 0]
        self.x[rows] = x
        if self.track_u:
            U -= u[:, :, None] * (w / si[:, None])[:, None, :]
            U[t, p] = w / si[:, None]
            self.U[rows] = U
        self.r[rows] -= w * step
        self.s[rows] -= w * w / si[:, None]
        S[t, p] = cols
        self.S[rows] = S
        self.kept[rows, cols] = True
        self.r[rows, cols] = 0.0
        self.s[rows, cols] = 0.0
        self._count(rows)

    def remove(self, rows, slots) -> None:
        """Empty slot ``slots[t]`` of row ``rows[t]`` (rows distinct, slots filled)."""
        xp = self.xp
        rows, p = xp.asarray(rows), xp.asarray(slots)
        if rows.shape[0] == 0:
            return
        t = xp.arange(rows.shape[0])
        kc = self.K[rows, :, p]  # (t × m)
        kappa = kc[t, p]
        S = self.S[rows]
        j = S[t, p]
        xq = self.x[rows, p]
        if self.track_u:
            U = self.U[rows]
            v = U[t, p]  # K_{p·} Hn_S
        else:
            v = self._scatter(rows, kc) @ self.Hn
        self.r[rows] += v * (xq / kappa)[:, None]
        self.s[rows] += v * v / kappa[:, None]
        rows_add_outer(self.K, rows, -(kc / kappa[:, None]), kc)
        self.K[rows, p, :] = 0.0
        self.K[rows, :, p] = 0.0
        self.K[rows, p, p] = 1.0
        x = self.x[rows] - kc * (xq / kappa)[:, None]
        x[t, p] = 0.0
        self.x[rows] = x
        if self.track_u:
            U -= kc[:, :, None] * (v / kappa[:, None])[:, None, :]
            U[t, p] = 0.0
            self.U[rows] = U
        S[t, p] = self.n
        self.S[rows] = S
        self.kept[rows, j] = False
        self.s[rows, j] = 1.0 / kappa
        self._count(rows)

    def _count(self, rows) -> None:
        self.updates[rows] += 1
        due = rows[self.updates[rows] >= self.refresh]
        if int(due.shape[0]):
            self.rebuild(due)


def _slots_of(mask, slots: int, xp):
    """Column indices of each row's kept entries, ascending, padded with ``in`` to ``slots`` (b × slots)."""
    b, n = mask.shape
    cols = xp.where(mask, xp.arange(n)[None, :], n)
    cols = xp.sort(cols, axis=1)[:, :slots] if slots <= n else xp.concatenate(
        [xp.sort(cols, axis=1), xp.full((b, slots - n), n, dtype=cols.dtype)], axis=1)
    return cols.astype(np.int64)


def batched_swap_search(Hn, G, mask, xp, group: int | None = None, max_swaps: int = 50, rel_tol: float = 1e-12,
                        max_entries: int | None = None) -> tuple:
    """Improve ``mask`` (out × in, bool, on xp) by exact swaps in every row at once; returns (mask, swaps).

    Hn : (in × in) unit diagonal; G : (out × in) = B Hn (both on xp, float64 advised); group : M
    for N:M patterns (i and j share a group of M). Each row takes its best swap while it lowers
    the row's objective by more than ``rel_tol`` × g_Sᵀx, at most ``max_swaps`` times: the
    reference's ``swap_search``. Rows run in chunks of about ``max_entries`` / (k · in) rows
    (default 2²² entries of U on NumPy, 2²⁶ on CuPy; the step's temporaries are a few times that).
    """
    mask = xp.array(mask, dtype=bool, copy=True)
    out, n = mask.shape
    if out == 0 or max_swaps <= 0:
        return mask, 0
    k = int(mask.sum(axis=1).max())
    if k == 0 or bool(mask.all()):
        return mask, 0
    slots = k + 1
    max_entries = max_entries or (1 << 22 if xp is np else 1 << 26)
    step = max(1, max_entries // (slots * n))
    col_group = xp.arange(n) // group if group is not None else None
    swaps = 0
    for c in range(0, out, step):
        part = slice(c, min(c + step, out))
        st = SlotSupports(Hn, G[part], mask[part], slots, xp, track_u=True)
        active = xp.flatnonzero(st.count() > 0)
        for _ in range(max_swaps):
            if int(active.shape[0]) == 0:
                break
            delta = _swap_deltas(st, active, col_group, xp)
            flat = xp.argmin(delta.reshape(delta.shape[0], -1), axis=1)
            best = delta.reshape(delta.shape[0], -1)[xp.arange(delta.shape[0]), flat]
            take = best < -rel_tol * xp.abs(st.decrease()[active])
            active = active[take]
            if int(active.shape[0]) == 0:
                break
            p, i = flat[take] // n, flat[take] % n
            st.add(active, i)
            st.remove(active, p)
            swaps += int(active.shape[0])
        mask[part] = st.kept
    return mask, swaps


def _swap_deltas(st: SlotSupports, rows, col_group, xp):
    """Objective change of swapping slot p out for column i in, (rows × m × in); +inf where not allowed.

    With u = U[p, i]: −r_i²/s_i + (x_p − u r_i/s_i)² / (K_pp + u²/s_i) (the reference's formula).
    """
    U, r, s, x = st.U[rows], st.r[rows], st.s[rows], st.x[rows]
    kdiag = st.k_diagonals(rows)
    ok = ~st.kept[rows] & (s > 1e-12)
    s1 = xp.where(ok, s, 1.0)
    step = r / s1
    delta = -(r * step)[:, None, :] + (x[:, :, None] - U * step[:, None, :]) ** 2 / (
        kdiag[:, :, None] + U * U / s1[:, None, :])
    S = st.S[rows]
    allowed = ok[:, None, :] & (S < st.n)[:, :, None]
    if col_group is not None:
        gz = xp.concatenate([col_group, xp.full((1,), -1, dtype=col_group.dtype)])
        allowed &= gz[S][:, :, None] == col_group[None, None, :]
    return xp.where(allowed, delta, INF)


def batched_move_search(Hn, G, mask, xp, *, moves_per_round: int, max_moves: int | None = None,
                        rel_tol: float = 1e-12, spare: int = SPARE_SLOTS) -> tuple:
    """Improve ``mask`` (out × in, bool, on xp) under one count per layer by exact moves; returns (mask, moves).

    Rounds of up to ``moves_per_round`` moves (see the module; the polish's per-backend choice is
    ``solvers.polish.MOVES_PER_ROUND``), while the best addition beats the cheapest removal by
    ``rel_tol`` × Σ g_Sᵀx; at most ``max_moves`` moves (default no cap); ``moves_per_round=1``
    makes the reference's ``move_search`` moves. The count stays the same. A round's rank-one updates
    work on K's blocks in place (``rows_add_outer``, ``rows_matvec``: NumPy, and CuPy in float32/float64),
    so its temporaries are a few rows × (in + m) arrays whatever the round size (CuPy in other dtypes
    gathers the rows' m × m blocks).
    """
    mask = xp.array(mask, dtype=bool, copy=True)
    out, n = mask.shape
    counts = mask.sum(axis=1)
    if out == 0 or int(counts.sum()) == 0 or int(counts.sum()) == out * n or (max_moves is not None and max_moves <= 0):
        return mask, 0
    st = SlotSupports(Hn, G, mask, min(int(counts.max()) + spare, n), xp)
    tol = rel_tol * abs(float(st.decrease().sum()))
    gains = st.addition_gains()
    best_add = xp.argmax(gains, axis=1)
    best_gain = gains[xp.arange(out), best_add]
    costs = st.removal_costs()
    cheapest_at = xp.argmin(costs, axis=1)
    cheapest = costs[xp.arange(out), cheapest_at]
    del gains, costs
    full = max(1, int(moves_per_round))
    moves, per_round = 0, full
    while max_moves is None or moves < max_moves:
        limit = full if max_moves is None else min(full, max_moves - moves)  # the largest round allowed now
        room = min(per_round, limit)
        accepted, first_failed = _move_round(st, room, tol, best_add, best_gain, cheapest, cheapest_at, spare)
        moves += accepted
        if accepted == 0:
            if first_failed is None or room == 1:
                break  # no addition beats the cheapest removal (the reference's test): a local optimum
            # an empty round: retry with the largest round allowed (swaps in lower-ranked rows), then
            # one at a time (it pairs the best addition with the cheapest removal of any other row)
            per_round = limit if room < limit else 1
        else:  # twice the moves the last round kept (few are kept near the optimum), capped
            per_round = min(full, 2 * accepted)
    return st.kept.copy(), moves


def _move_round(st: SlotSupports, room: int, tol: float, best_add, best_gain, cheapest, cheapest_at,
                spare: int) -> tuple:
    """One round of up to ``room`` moves (see the module), updating the per-row scores of the rows it
    touches in place; returns (moves kept, None when no row had an addition above ``tol`` else whether
    the best addition was rejected)."""
    xp, n = st.xp, st.n
    order = xp.argsort(-best_gain)[:room]
    adders = order[best_gain[order] > tol]
    if int(adders.shape[0]) == 0:
        return 0, None
    if bool((st.count()[adders] >= st.slots).any()):
        st.grow(min(st.slots + spare, n))
    cols = best_add[adders]
    t_all = xp.arange(adders.shape[0])
    gain_h = _host(best_gain[adders])
    st.add(adders, cols)
    new_slot = xp.argmax(st.S[adders] == cols[:, None], axis=1)
    own = st.removal_costs(adders)
    own[t_all, new_slot] = INF  # removing i again undoes the addition
    own_at = xp.argmin(own, axis=1)
    own_cost = _host(own[t_all, own_at])
    others = cheapest.copy()
    others[adders] = INF
    other_rows = xp.argsort(others)[: adders.shape[0]]
    other_cost = _host(others[other_rows])
    adders_h, own_at_h, new_slot_h = _host(adders), _host(own_at), _host(new_slot)
    other_rows_h, other_at_h = _host(other_rows), _host(cheapest_at[other_rows])
    rem_rows, rem_slots, touched, ptr, accepted, first_failed = [], [], [], 0, 0, False
    for t in range(len(adders_h)):
        o = other_cost[ptr] if ptr < len(other_cost) else INF
        if own_cost[t] <= o:
            row, slot, cost, used = adders_h[t], own_at_h[t], own_cost[t], 0
        else:
            row, slot, cost, used = other_rows_h[ptr], other_at_h[ptr], o, 1
        if gain_h[t] - cost > tol:
            rem_rows.append(row)
            rem_slots.append(slot)
            touched.append(row)
            ptr += used
            accepted += 1
        else:  # undo the addition
            rem_rows.append(adders_h[t])
            rem_slots.append(new_slot_h[t])
            first_failed = first_failed or t == 0
    st.remove(xp.asarray(np.array(rem_rows, dtype=np.int64)), xp.asarray(np.array(rem_slots, dtype=np.int64)))
    rescore = xp.asarray(np.unique(np.concatenate([adders_h, np.array(touched, dtype=np.int64)])))
    t_re = xp.arange(rescore.shape[0])
    g = st.addition_gains(rescore)
    best_add[rescore] = xp.argmax(g, axis=1)
    best_gain[rescore] = g[t_re, best_add[rescore]]
    c = st.removal_costs(rescore)
    cheapest_at[rescore] = xp.argmin(c, axis=1)
    cheapest[rescore] = c[t_re, cheapest_at[rescore]]
    return accepted, first_failed


def _host(a) -> np.ndarray:
    """A small array on the host (NumPy), whichever backend holds it."""
    return a.get() if hasattr(a, "get") else np.asarray(a)
