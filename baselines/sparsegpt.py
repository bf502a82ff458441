"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with lazy batched updates.

Columns are swept left to right in blocks of ``blocksize`` (128). With U the
upper Cholesky factor of H⁻¹ (H damped), inside a block each column i is
pruned where its mask says so and the error e = (wᵢ − qᵢ)/Uᵢᵢ is spread over
the block's remaining columns (W₁[:, i:] −= e Uᵢ,ᵢ:); the block's accumulated
errors update all later columns at once (W[:, i₂:] −= E U[i₁:i₂, i₂:]).
The mask is chosen adaptively per block from the saliency wᵢⱼ² / Uⱼⱼ²:
for ``unstructured`` over the whole block (the layer's exact count split over
blocks by width), for ``row`` per row of the block, for ``N:M`` per group of
M columns when the sweep reaches it (the block size is rounded down to a
multiple of M, at least M, so that blocks hold whole groups). Layers sharing one H
(q/k/v) are swept as one stack of rows (``solve_many``), each keeping its own count:
the sweep's cost is in its per-column steps, whatever the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerprune.problems.patterns import StackedPattern, top_k_per_row
from layerprune.solvers.linalg import inverse_cholesky_upper
from layerprune.solvers.options import MethodOptions
from layerprune.solvers.registry import register
from layerprune.solvers.result import MethodOutput


@dataclass(frozen=True)
class SparseGPTOptions(MethodOptions):
    """SparseGPT's options.

    blocksize : columns per lazy-update block (128; N:M rounds it down to a multiple of M).
    """

    blocksize: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(self.blocksize >= 1, "blocksize", "≥ 1")


def _split_by_width(total: int, edges: list[int], width: int) -> list[int]:
    """Integer shares of ``total`` for blocks ending at ``edges`` (proportional to width)."""
    cum = [round(total * e / width) for e in edges]
    return [c - p for c, p in zip(cum, [0] + cum[:-1])]


@register("sparsegpt", options=SparseGPTOptions, stackable=True, stack_safe=True, stack_entries=float("inf"),
          needs_hessian=True)
def sparsegpt(problem, xp, dtype, cache, options: SparseGPTOptions) -> MethodOutput:
    """SparseGPT on ``problem`` with ``options`` (:class:`SparseGPTOptions`)."""
    blocksize = options.blocksize
    W = problem.weight.astype(dtype).copy()
    out, inp = W.shape
    if "sparsegpt_U" not in cache:
        cache["sparsegpt_U"] = inverse_cholesky_upper(problem.hessian, xp)
    U = cache["sparsegpt_U"].astype(dtype)
    pattern, s = problem.pattern, problem.sparsity
    keep = xp.zeros((out, inp), dtype=bool)

    if pattern.kind == "nm":
        # Blocks must hold whole N:M groups, or groups straddle blocks and the
        # per-block group choice (at local i % M == 0) misses the layer's groups.
        blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
    starts = list(range(0, inp, blocksize))
    ends = [min(i + blocksize, inp) for i in starts]
    # row segments with their own count: one layer, or each layer of a stack (q/k/v sharing H: ``solve_many``)
    segments = pattern.segments() if isinstance(pattern, StackedPattern) else [slice(0, out)]
    if pattern.kind == "unstructured":
        counts = [problem.kept] if len(segments) == 1 else \
            [pattern.base.kept_per_layer((seg.stop - seg.start, inp), s) for seg in segments]
        block_keep = [_split_by_width(k, ends, inp) for k in counts]  # per segment, per block
    elif pattern.kind == "row":
        block_keep = _split_by_width(int(round((1 - s) * inp)), ends, inp)

    for b, (i1, i2) in enumerate(zip(starts, ends)):
        W1 = W[:, i1:i2].copy()
        U1 = U[i1:i2, i1:i2]
        diag1 = xp.diagonal(U1)
        Err1 = xp.zeros_like(W1)
        keep1 = xp.zeros(W1.shape, dtype=bool)
        if pattern.kind != "nm":
            score = W1**2 / diag1[None, :] ** 2
            if pattern.kind == "unstructured":
                for seg, share in zip(segments, block_keep):
                    keep1[seg] = top_k_per_row(score[seg].reshape(1, -1), xp.asarray([share[b]])).reshape(score[seg].shape)
            else:
                keep1 = top_k_per_row(score, xp.full((out,), block_keep[b], dtype=xp.int64))
        for i in range(i2 - i1):
            if pattern.kind == "nm" and i % pattern.m == 0:
                cols = slice(i, i + pattern.m)
                score = W1[:, cols] ** 2 / diag1[None, cols] ** 2
                keep1[:, cols] = top_k_per_row(score, xp.full((out,), pattern.n, dtype=xp.int64))
            w = W1[:, i]
            q = w * keep1[:, i]
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        keep[:, i1:i2] = keep1
        if i2 < inp:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return MethodOutput(W * keep, keep, iterations=len(starts), message="swept all column blocks")
