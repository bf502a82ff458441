"""Local-search polish after any method: its support → exact local search → PCG refit.

In normalized coordinates (d = √diag H, Hn = D⁻¹ H D⁻¹, B = Ŵ D, G = B Hn, all float64 on
the solving backend) the method's support is improved by ``solvers.batched_search``
(``unstructured``: moves of kept entries between rows of each layer; ``row`` and N:M: swaps
inside a row or group), then refit exactly on the new support by the batched PCG of
``solvers.pcg`` (warm start: the method's weights), W = X D⁻¹. Every accepted move lowers the
objective of the refit weights, so the result is never worse than the method's own weights
refit on its support; should the refit not converge and end above the method's objective, the
method's answer is kept. The polish is a step on top of an answer: when it runs out of memory (a
GPU shared with other processes), the layer keeps its method's answer, with a warning, a note in
the result's ``message`` and ``info["polish_out_of_memory"] = 1.0``, and the run goes on.

``solve(problem, method, polish=...)`` runs it for any method: False (default) never, True
always, None where the cost model says it pays (``polish_pays``: out · k² · in, the cost of
the per-row k × k inverses and the k × in products of the setup, at most
``POLISH_BUDGET[device]``, and not after a method that ran the search itself). ALPS's own
``local_search`` option calls :func:`search_support` on its ADMM support before its refit (the
same code, one setup fewer).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from layerprune.problems.backend import free_device_bytes, release_pool, synchronize
from layerprune.problems.patterns import StackedPattern
from layerprune.solvers.batched_search import SPARE_SLOTS, batched_move_search, batched_swap_search
from layerprune.solvers.pcg import masked_pcg

# out · k² · in up to which ``polish=None`` polishes, per device kind. CPU: also ALPS's own small-problem
# budget (``ALPSOptions.local_search_budget``). cuda: on an H200 it polishes SmolLM2's layers but down_proj
# (2.1·10¹² · density²) and a few gate/up projections OWL keeps densest, which lowered
# perplexity at 7 of 8 settings on the pipeline's defaults at 61–80 % of the pruning seconds; every layer
# of a 7B+ model is over it (BENCHMARKS.md, "The polish where its cost model lets it").
POLISH_BUDGET = {"cpu": 1e7, "cuda": 2e11}
# Moves per batched round of the unstructured search (1: the host reference's order), per backend.
# On the CPU a round's work grows with its size, so small rounds are fastest; on the GPU a round is
# a fixed number of small kernels and host reads, so fewer, larger rounds are (BENCHMARKS.md, "Batched
# local search": on the H200, rounds of 1024 cut the polish's seconds 2.7 × after SparseGPT and 1.2 ×
# after ALPS against rounds of 64 over three SmolLM2 layers, errors within 0.35 %).
MOVES_PER_ROUND = {"cpu": 64, "cuda": 1024}
# The move search's K blocks (rows × m × m float64) per group of rows: on NumPy at most 2²⁸ entries
# (2 GiB); on CuPy at most 2³² (32 GiB) and at most ``STATE_SHARE`` of the device memory free when the
# layer starts. A third: widening the slots (``SlotSupports.grow``) holds the old K and the new one at
# once, and the last third is left to the rebuild's temporaries (chunks of 2²⁷ gathered entries,
# ``SlotSupports.rebuild``; a round updates K in place) and to other processes. A fixed
# 32 GiB ran out of memory at 4096 × 4096 on an H200 shared with three other runs and the GPU tests
# (BENCHMARKS.md, "Batched local search", eighth session).
STATE_ENTRIES = {"cpu": 1 << 28, "cuda": 1 << 32}
STATE_SHARE = 1 / 3
SEARCH_KEYS = {"local_search_moves", "local_search_swaps"}  # the info a search leaves (``search_support``)


def segments(pattern) -> list[slice]:
    """Row ranges with their own count: a stack's layers (``StackedPattern``), else all rows."""
    return pattern.segments() if isinstance(pattern, StackedPattern) else [slice(None)]


def search_cost(mask, layers: list[slice]) -> int:
    """out · k² · in of the largest layer (row range in ``layers``) of ``mask``, k its largest count
    per row: the cost of the search's setup."""
    def cost(m) -> int:
        out, inp = m.shape
        k = int(m.sum(axis=1).max()) if out else 0
        return out * k * k * inp

    return max(cost(mask[rows]) for rows in layers)


def check_polish(setting) -> None:
    """ValueError unless ``setting`` is True, False or None (``solve(..., polish=...)``)."""
    if setting is not None and not isinstance(setting, bool):
        raise ValueError(f"polish must be True, False or None (where it pays), got {setting!r}")


def polish_pays(setting: bool | None, mask, pattern, device: str) -> bool:
    """The explicit choice, or (None) whether ``search_cost`` fits ``POLISH_BUDGET`` for ``device``."""
    if setting is not None:
        return bool(setting)
    return search_cost(mask, segments(pattern)) <= POLISH_BUDGET["cuda" if str(device).startswith("cuda") else "cpu"]


def state_entries(xp) -> int:
    """K entries one group of rows may hold on xp's device now (``STATE_ENTRIES``, ``STATE_SHARE``)."""
    if xp is np:
        return STATE_ENTRIES["cpu"]
    return int(min(STATE_ENTRIES["cuda"], STATE_SHARE * free_device_bytes(xp) // 8))


def state_groups(mask, layer: slice, xp, max_entries: int | None = None) -> list[slice]:
    """``layer``'s rows in groups whose move-search state (rows × m², m = the largest count + ``SPARE_SLOTS``)
    fits ``max_entries`` (default ``state_entries(xp)``); moves then stay inside a group (each
    group keeps its count, so the layer does: still exact, a smaller neighbourhood). One group
    when it fits: every layer of SmolLM2; a 4096 × 4096 layer at 70 % (m = 1318 on the synthetic one
    measured: 7.1 · 10⁹ entries, 53 GiB) takes two on an idle H200."""
    start, stop, _ = layer.indices(mask.shape[0])
    rows = stop - start
    if rows == 0:
        return [layer]
    m = int(mask[layer].sum(axis=1).max()) + SPARE_SLOTS
    max_entries = max_entries or state_entries(xp)
    size = max(1, max_entries // (m * m))
    if size >= rows:
        return [layer]
    parts = -(-rows // size)
    size = -(-rows // parts)
    return [slice(i, min(i + size, stop)) for i in range(start, stop, size)]


def round_size(moves_per_round: int | None, xp) -> int:
    """``moves_per_round``, or (None) ``MOVES_PER_ROUND`` of xp's backend (NumPy: cpu, else cuda)."""
    if moves_per_round is not None:
        return int(moves_per_round)
    return MOVES_PER_ROUND["cpu" if xp is np else "cuda"]


def search_support(Hn, G, mask, pattern, xp, max_swaps: int = 50, moves_per_round: int | None = None,
                   rounds: int = 1) -> tuple:
    """Exact local search on ``mask`` (out × in bool on xp) under ``pattern``; returns (mask, info key, count).

    Hn, G : float64 on xp (see the module). ``unstructured``: moves between rows of each layer, at
    most ``max_swaps`` per row on average, in rounds of ``round_size(moves_per_round, xp)`` moves;
    with ``rounds`` > 1 then swaps inside rows, and moves and swaps alternated until neither finds
    one (a joint local optimum) or ``rounds`` rounds; ``row`` / N:M: at most ``max_swaps`` swaps
    per row.
    """
    if pattern.kind != "unstructured":
        group = pattern.m if pattern.kind == "nm" else None
        new, swaps = batched_swap_search(Hn, G, mask, xp, group=group, max_swaps=max_swaps)
        return new, "local_search_swaps", swaps
    new, total = mask.copy(), 0
    for seg in (g for layer in segments(pattern) for g in state_groups(mask, layer, xp)):
        rows = mask[seg].shape[0]
        for r in range(max(1, rounds)):
            new[seg], moves = batched_move_search(Hn, G[seg], new[seg], xp, max_moves=max_swaps * rows,
                                                  moves_per_round=round_size(moves_per_round, xp))
            swaps = 0
            if rounds > 1 and (moves or r == 0):
                new[seg], swaps = batched_swap_search(Hn, G[seg], new[seg], xp, max_swaps=max_swaps)
            total += moves + swaps
            if swaps == 0:  # move-optimal (just searched) and swap-optimal: a joint local optimum
                break
    return new, "local_search_moves", total


def normalized64(problem, xp) -> tuple:
    """(d, Hn, B) in float64 on xp for ``problem`` (on xp): d = √diag H, Hn = D⁻¹ H D⁻¹, B = Ŵ D."""
    H = xp.asarray(problem.hessian, dtype=np.float64)
    d = xp.sqrt(xp.diagonal(H)).copy()
    d = xp.where(d > 0, d, 1.0)
    Hn = H / d[:, None] / d[None, :]
    B = xp.asarray(problem.weight, dtype=np.float64) * d[None, :]
    return d, Hn, B


def polish(problem, weight, mask, xp, max_swaps: int = 50, moves_per_round: int | None = None,
           refit_tol: float = 1e-10, refit_max_iter: int = 500, rounds: int = 1) -> tuple:
    """Polish a method's answer (``weight``, ``mask`` out × in on xp) on ``problem`` (on xp).

    Returns (weight, mask, info): info holds ``local_search_moves`` or ``local_search_swaps``, the
    relative errors before and after, the refit's PCG iterations and ``seconds_polish``;
    ``moves_per_round`` and ``rounds`` as in :func:`search_support`.
    """
    synchronize(xp)
    t0 = time.perf_counter()
    mask = problem.drop_dead(xp.asarray(mask, dtype=bool))
    d, Hn, B = normalized64(problem, xp)
    G = B @ Hn
    new, key, count = search_support(Hn, G, mask, problem.pattern, xp, max_swaps, moves_per_round, rounds)
    X0 = xp.asarray(weight, dtype=np.float64) * d[None, :] * new
    X, pcg = masked_pcg(Hn, G, new, X0, xp, tol=refit_tol, max_iter=refit_max_iter, inplace=True)
    W = X / d[None, :]
    before = problem.objective(xp.asarray(weight) * mask)
    after = problem.objective(W)
    kept = after <= before
    info = {key: count, "polish_rel_error_before": problem.relative(before),
            "polish_rel_error_after": problem.relative(after), "polish_refit_iterations": pcg.iterations,
            "polish_refit_converged": pcg.converged, "polish_kept": bool(kept)}
    synchronize(xp)
    info["seconds_polish"] = time.perf_counter() - t0
    if not kept:
        return weight, mask, info
    return W.astype(weight.dtype, copy=False), new, info


def skipped_out_of_memory(step: str, name: str | None, error: MemoryError, xp, kept: str) -> str:
    """After ``step`` ran out of memory: CuPy's unused pool released, a RuntimeWarning naming the layer
    and what is ``kept``; returns the note for the result's message."""
    release_pool(xp)
    note = f"{step} skipped: out of memory ({error})"
    warnings.warn(f"{name or 'layer'}: {note}; {kept}", RuntimeWarning, stacklevel=3)
    return note


def polish_answer(problem, out, xp, device: str, setting: bool | None) -> None:
    """Polish a method's ``MethodOutput`` in place when ``polish_pays(setting, …)`` (the harness step)."""
    if setting is None and SEARCH_KEYS & out.info.keys():
        return  # the method ran this search itself (ALPS's local_search): its support is a local optimum
    mask = problem.drop_dead(xp.asarray(out.mask, dtype=bool))
    if not polish_pays(setting, mask, problem.pattern, device):
        return
    try:
        out.weight, out.mask, info = polish(problem, xp.asarray(out.weight), mask, xp)
    except MemoryError as e:  # CuPy's OutOfMemoryError is one; the method's answer is untouched
        note = skipped_out_of_memory("polish", problem.name, e, xp, "the method's answer is kept")
        out.message = f"{out.message}; {note}" if out.message else note
        out.info["polish_out_of_memory"] = 1.0
        return
    out.info.update(info)
