"""Sparsity patterns and their Euclidean projections.

A pattern says which supports are allowed for a weight of shape (out, in):

- ``unstructured``: k = round((1 - s)·out·in) nonzeros in the whole layer;
- ``row``: round((1 - s)·in) nonzeros in every output row;
- ``N:M``: N nonzeros in every group of M consecutive inputs of each row.

``mask(scores)`` keeps the largest scores allowed by the pattern: for scores
|Z| it is the support of the Euclidean projection of Z onto the pattern.
Ties are broken deterministically: among equal scores the lower flat index wins.
Every function works on NumPy and CuPy arrays alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from layerprune.problems.backend import array_module, count_at_least

SMALL = 1 << 20  # entries (4 MiB in float32): below this the GPU selects by sorting


def _one_count(counts) -> bool:
    """Whether ``counts`` is one integer for every row (rather than an array of per-row counts)."""
    return isinstance(counts, (int, np.integer))


def _as_counts(counts, rows: int, xp):
    """Per-row counts as an int64 array (rows,); a Python int applies to every row."""
    if _one_count(counts):
        return xp.full((rows,), int(counts), dtype=xp.int64)
    return xp.asarray(counts).astype(xp.int64)


def kth_largest_per_row(scores, counts, method: str | None = None):
    """The ``counts[i]``-th largest value of each row of nonnegative ``scores`` (rows,).

    ``counts``: (rows,) integers, or one Python int for every row. NumPy selects
    (``np.partition``) or sorts. On the GPU a radix select on the float bit patterns
    (monotone for nonnegative floats) finds it in one counting pass per bit, all on the
    device and without a copy of ``scores``: ``prefix`` stays the largest v with
    #{u ≥ v} ≥ count, which ends at the count-th largest. Each pass is one fused
    reduction (``solvers.backend.count_at_least``).
    """
    xp = array_module(scores)
    rows, n = scores.shape
    # method: "sort" (NumPy's default; the GPU's up to SMALL entries, where one sort costs fewer
    # kernel launches than 32 counting passes and its copy is small) or "radix" (the GPU's for
    # larger arrays: no copy of the scores; also runs on NumPy for tests).
    method = method or ("sort" if xp is np or scores.size <= SMALL else "radix")
    uniform = _one_count(counts)
    if method == "sort":
        if xp is np and (uniform or bool((counts == counts[0]).all())):  # one k for all rows: O(n) selection
            kth = n - int(np.clip(counts if uniform else counts[0], 1, n))
            return np.partition(scores, kth, axis=1)[:, kth]
        idx = xp.clip(_as_counts(counts, rows, xp) - 1, 0, n - 1)
        return xp.take_along_axis(-xp.sort(-scores, axis=1), idx[:, None], axis=1)[:, 0]
    utype = {4: xp.uint32, 8: xp.uint64}[scores.dtype.itemsize]
    u = xp.ascontiguousarray(scores).view(utype)
    prefix = xp.zeros((rows,), dtype=utype)
    need = max(int(counts), 1) if uniform else xp.maximum(counts, 1)
    for bit in range(8 * scores.dtype.itemsize - 1, -1, -1):
        cand = prefix | utype(1 << bit)
        prefix = xp.where(count_at_least(u, cand) >= need, cand, prefix)
    return prefix.view(scores.dtype)


def _top_k_by_rank(scores, counts):
    """Top-k along the last axis for short rows (n ≤ 16): rank = #larger + #equal with a lower index.

    ``counts``: an int, or an array of the leading shape. The rank is accumulated one
    column at a time (int8 up to 127 columns), so the temporaries are the size of one boolean mask.
    """
    xp = array_module(scores)
    n = scores.shape[-1]
    rank = xp.zeros(scores.shape, dtype=xp.int8 if n <= 127 else xp.int32)  # N:M groups may be long
    for j in range(n):
        col = scores[..., j : j + 1]
        rank += col > scores
        rank[..., j + 1 :] += col == scores[..., j + 1 :]  # ties: the lower index ranks first
    limit = counts if _one_count(counts) else counts[..., None]
    return rank < limit


def _row_sums(b):
    """Per-row sums; one long row is reduced as a whole (the GPU's fast full reduction)."""
    return b.sum()[None] if b.shape[0] == 1 else b.sum(axis=1)


def top_k_per_row(scores, counts):
    """Boolean mask keeping ``counts[i]`` largest entries of each row (ties: lower index).

    scores: (rows, n) nonnegative array; counts: (rows,) integers with 0 ≤ counts ≤ n,
    or one Python int for every row (no host-to-device copy).
    """
    xp = array_module(scores)
    rows, n = scores.shape
    if not _one_count(counts):
        counts = xp.asarray(counts).astype(xp.int64)
    if rows == 0 or n == 0:
        return xp.zeros(scores.shape, dtype=bool)
    if n <= 16:
        return _top_k_by_rank(scores, counts)
    return _top_k_at_threshold(scores, counts, kth_largest_per_row(scores, counts))


def _top_k_at_threshold(scores, counts, thresh):
    """top_k_per_row given each row's count-th largest score ``thresh`` (rows,)."""
    thresh = thresh[:, None]
    keep = scores > thresh
    need = counts - _row_sums(keep)  # how many entries equal to the threshold to add per row
    equal = scores == thresh
    if not bool((_row_sums(equal) > need).any()):  # no row has more ties than places (the usual case)
        keep |= equal
        return keep
    _add_first_ties(keep, equal, need)
    return keep


def _add_first_ties(keep, equal, need, parts: int = 4) -> None:
    """keep |= the first ``need[i]`` True entries of each row of ``equal`` (in place).

    The running count is a cumulative sum taken over ``parts`` column blocks with a carried
    offset, so its int32 temporary is 1/``parts`` of the mask's entries.
    """
    xp = array_module(equal)
    rows, n = equal.shape
    seen = xp.zeros((rows, 1), dtype=xp.int32)
    need = need.astype(xp.int32)[:, None]
    step = max(1, -(-n // parts))
    for c in range(0, n, step):
        e = equal[:, c : c + step]
        order = xp.cumsum(e, axis=1, dtype=xp.int32)
        order += seen
        keep[:, c : c + step] |= e & (order <= need)
        seen = order[:, -1:].copy()


def balanced_counts(total: int, rows: int, xp=np):
    """Split ``total`` kept entries over ``rows`` rows as evenly as possible."""
    base, extra = divmod(int(total), rows)
    counts = xp.full((rows,), base, dtype=xp.int64)
    counts[:extra] += 1
    return counts


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern; build one with :func:`parse_pattern`."""

    kind: str  # "unstructured" | "row" | "nm"
    n: int = 0
    m: int = 0

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind

    def __str__(self) -> str:
        return self.name

    # -- sizes --------------------------------------------------------------
    def implied_sparsity(self) -> float | None:
        """N:M fixes the sparsity at 1 − N/M; the others take it as a parameter."""
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    def check_shape(self, shape: tuple[int, int]) -> None:
        if self.kind == "nm" and shape[1] % self.m != 0:
            raise ValueError(
                f"pattern {self.name}: M={self.m} does not divide the input dimension {shape[1]}"
            )

    @staticmethod
    def kept_per_row(inp: int, sparsity: float) -> int:
        """Nonzeros the ``row`` pattern allows in each row of ``inp`` entries."""
        return int(round((1.0 - sparsity) * inp))

    def kept_per_layer(self, shape: tuple[int, int], sparsity: float) -> int:
        """Number of nonzeros the pattern allows in the whole layer."""
        out, inp = shape
        if self.kind == "unstructured":
            return int(round((1.0 - sparsity) * out * inp))
        if self.kind == "row":
            return out * self.kept_per_row(inp, sparsity)
        return out * (inp // self.m) * self.n

    # -- projection -----------------------------------------------------------
    def mask(self, scores, sparsity: float):
        """Support (bool, same shape) keeping the largest ``scores`` allowed.

        ``scores`` must be nonnegative-comparable (e.g. |W| or a saliency).
        """
        out, inp = scores.shape
        self.check_shape(scores.shape)
        if self.kind == "unstructured":
            k = self.kept_per_layer(scores.shape, sparsity)
            flat = scores.reshape(1, -1)
            return top_k_per_row(flat, k).reshape(out, inp)
        if self.kind == "row":
            return top_k_per_row(scores, self.kept_per_row(inp, sparsity))
        return _top_k_by_rank(scores.reshape(out, inp // self.m, self.m), self.n).reshape(out, inp)

    def projection_mask(self, z, sparsity: float, scratch):
        """The support of the projection of ``z``, i.e. ``mask(|z|)``, using ``scratch``
        (an array of z's shape and dtype, overwritten) as the only full-size workspace.

        On the GPU that is ``mask`` itself: its radix select reads the scores without copying
        them. NumPy's selection copies, so here it partitions ``scratch`` in place instead and
        then writes |z| there again. Either way no copy of the scores is made, which keeps
        ALPS within its memory budget.
        """
        xp = array_module(z)
        if scratch.shape != z.shape or not scratch.flags.c_contiguous:
            raise ValueError("projection_mask needs a C-contiguous scratch array of z's shape")
        xp.abs(z, out=scratch)
        if xp is not np or self.kind == "nm":
            return self.mask(scratch, sparsity)
        self.check_shape(z.shape)
        if self.kind == "unstructured":
            rows, count = 1, self.kept_per_layer(z.shape, sparsity)
        else:
            rows, count = z.shape[0], self.kept_per_row(z.shape[1], sparsity)
        scores = scratch.reshape(rows, -1)
        n = scores.shape[1]
        if count <= 0 or n == 0:
            return np.zeros(z.shape, dtype=bool)
        kth = n - min(count, n)
        scores.partition(kth, axis=1)
        thresh = scores[:, kth].copy()
        np.abs(z, out=scratch)
        return _top_k_at_threshold(scores, count, thresh).reshape(z.shape)

    def project(self, z, sparsity: float):
        """Euclidean projection of ``z`` onto the pattern: (projected z, mask)."""
        keep = self.mask(abs(z), sparsity)
        return z * keep, keep

    def is_feasible(self, mask, sparsity: float) -> bool:
        """Does the support ``mask`` (bool, out × in) satisfy the pattern?"""
        xp = array_module(mask)
        mask = mask.astype(bool)
        out, inp = mask.shape
        if self.kind == "unstructured":
            return int(mask.sum()) <= self.kept_per_layer(mask.shape, sparsity)
        if self.kind == "row":
            return bool(xp.all(mask.sum(axis=1) <= self.kept_per_row(inp, sparsity)))
        if inp % self.m:
            return False
        return bool(xp.all(mask.reshape(out, inp // self.m, self.m).sum(axis=-1) <= self.n))


@dataclass(frozen=True)
class StackedPattern(Pattern):
    """A pattern held separately by consecutive blocks of rows: the weights of layers that
    share one Hessian (q/k/v, gate/up), stacked to be solved together (``solve_many``).

    ``rows`` gives each layer's row count. Only ``unstructured`` needs this (its count is
    per layer, and stays per layer here); ``row`` and N:M act row by row anyway.
    """

    rows: tuple[int, ...] = ()

    @classmethod
    def of(cls, base: Pattern, rows) -> "StackedPattern":
        return cls(base.kind, base.n, base.m, tuple(int(r) for r in rows))

    @property
    def base(self) -> Pattern:
        return Pattern(self.kind, self.n, self.m)

    def segments(self) -> list[slice]:
        ends = np.cumsum((0,) + self.rows)
        return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]

    def check_shape(self, shape: tuple[int, int]) -> None:
        if shape[0] != sum(self.rows):
            raise ValueError(f"stacked pattern: {shape[0]} rows, but its layers have {sum(self.rows)}")
        self.base.check_shape(shape)

    def kept_per_layer(self, shape: tuple[int, int], sparsity: float) -> int:
        """Nonzeros allowed in the whole stack: the sum of its layers'."""
        return sum(self.base.kept_per_layer((r, shape[1]), sparsity) for r in self.rows)

    def _per_segment(self, fn, shape, like):
        xp = array_module(like)
        self.check_shape(shape)
        keep = xp.empty(shape, dtype=bool)
        for seg in self.segments():
            keep[seg] = fn(seg)
        return keep

    def mask(self, scores, sparsity: float):
        return self._per_segment(lambda seg: self.base.mask(scores[seg], sparsity), scores.shape, scores)

    def projection_mask(self, z, sparsity: float, scratch):
        return self._per_segment(lambda seg: self.base.projection_mask(z[seg], sparsity, scratch[seg]), z.shape, z)

    def is_feasible(self, mask, sparsity: float) -> bool:
        return mask.shape[0] == sum(self.rows) and all(
            self.base.is_feasible(mask[seg], sparsity) for seg in self.segments()
        )


_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: "str | Pattern") -> Pattern:
    """``"unstructured"``, ``"row"`` or ``"N:M"`` (0 < N < M) → :class:`Pattern`."""
    if isinstance(pattern, Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string, got {type(pattern).__name__}")
    name = pattern.strip().lower()
    if name in ("unstructured", "row"):
        return Pattern(name)
    m = _NM.match(name)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise ValueError(f"pattern {pattern!r}: N:M needs 0 < N < M")
        return Pattern("nm", n, mm)
    raise ValueError(f"unknown pattern {pattern!r}: use 'unstructured', 'row' or 'N:M' such as '2:4'")


def resolve_sparsity(sparsity: float | None, pattern: "str | Pattern") -> float:
    """The sparsity a (sparsity, pattern) pair means: an N:M pattern fixes it at 1 − N/M (a
    given one must agree); the other patterns need one in [0, 1). ValueError otherwise."""
    pat = parse_pattern(pattern)
    implied = pat.implied_sparsity()
    if sparsity is None:
        if implied is None:
            raise ValueError(f"sparsity is required for pattern {pat.name!r}")
        return implied
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not np.isfinite(s) or not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if implied is not None and abs(s - implied) > 1e-9:
        raise ValueError(f"pattern {pat.name} fixes the sparsity at {implied:g}; got sparsity={s:g}")
    return s
