"""Sparsity profiles in a run: the dense pre-pass and the per-layer sparsities it gives the driver.

``allocate_sparsity`` runs before any block is pruned. The layers it allocates ("free" layers)
are the pruned ones whose plan (``recipe.plan_layers``) sets no sparsity and whose pattern is
``unstructured`` or ``row``; a layer whose override sets a sparsity, or an N:M pattern, keeps
what it was given and is left out of the count. The free layers keep together exactly
K = round((1 − s)·Σ n_ℓ) weights (``layerwise.allocation``), the count a uniform run at s holds
up to each layer's rounding, so a profile changes how the free layers' budget is spread, never
what an override gives, nor the model-wide sparsity.

The pre-pass walks the *dense* blocks once (a streamed model reads each block once more):
block 0's inputs are captured, each block runs on them, its outputs feed the next.

- ``owl``: per linear, ‖X_j‖² (the diagonal of XᵀX, accumulated in float64 by forward hooks
  while the block runs); per block the outlier ratio of the Wanda scores |W|·‖X_j‖ over its free
  linears; sparsities from ``allocation.owl_sparsities``.
- ``curve``: per block H = XᵀX/n per distinct input (``collect_hessians``, as the run does);
  each free layer solved with its own method and options at the sparsities of
  ``allocation.curve_grid`` (one ``solve_many`` per group: the factorization of H is shared);
  the relative errors form its curve; ``allocation.allocate_curves`` spends the budget.

The result (the per-layer sparsities and what produced them) is written into the run log and the
checkpoint, so a resume reuses it without the pre-pass.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from torch import nn

from layerprune.layerwise.allocation import (
    Curve,
    Slot,
    allocate_curves,
    curve_grid,
    curve_weights,
    kept_counts,
    owl_sparsities,
    sparsities_of,
    target_kept,
)
from layerprune.layerwise.blocks import BlockInputs, capture_inputs, collect_hessians, run_block
from layerprune.layerwise.distributed import World
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears
from layerprune.layerwise.settings import PruneSettings
from layerprune.problems import LayerProblem, parse_pattern
from layerprune.solvers import solve_many

ROWS_PER_CHUNK = 8192  # rows of X squared at a time in float64 (bounds the temporary)


def free_layers(plans: dict[str, dict], settings: PruneSettings) -> list[str]:
    """The planned layers (full names, in plan order) a profile allocates: no sparsity of their own
    in the plan, and an unstructured or row pattern."""
    out = []
    for name, plan in plans.items():
        pattern = settings.layer(plan)[3]
        if "sparsity" not in plan and parse_pattern(pattern).implied_sparsity() is None:
            out.append(name)
    return out


def with_allocation(plans: dict[str, dict], sparsities: dict[str, float]) -> dict[str, dict]:
    """The plans with each allocated layer's sparsity set (as an override would set it)."""
    unknown = [n for n in sparsities if n not in plans]
    if unknown:
        raise LayerwiseError(f"the allocation names layers the run does not prune: {', '.join(unknown[:3])}")
    return {name: ({**plan, "sparsity": float(sparsities[name])} if name in sparsities else plan)
            for name, plan in plans.items()}


@torch.no_grad()
def column_sq_norms(block: nn.Module, inputs: BlockInputs, names: list[str]) -> tuple[dict[str, torch.Tensor], BlockInputs]:
    """‖X_j‖² (in, float64) of each named linear's inputs over every calibration row, and the
    block's outputs (one forward pass, forward hooks)."""
    linears = block_linears(block)
    acc: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m, inp, _out) -> None:
            x = inp[0].detach().reshape(-1, inp[0].shape[-1])
            total = acc.get(name)
            for start in range(0, x.shape[0], ROWS_PER_CHUNK):
                part = x[start:start + ROWS_PER_CHUNK].to(torch.float64).pow(2).sum(dim=0)
                total = part if total is None else total + part
            acc[name] = total

        return fn

    handles = [linears[n].register_forward_hook(hook(n)) for n in names]
    try:
        outputs = run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in acc]
    if missing:
        raise LayerwiseError(f"{type(block).__name__}: the linear layer(s) {', '.join(missing)} never ran in the block's forward pass")
    return acc, outputs


@torch.no_grad()
def block_outlier_ratio(block: nn.Module, norms: dict[str, torch.Tensor], names: list[str], m: float) -> float:
    """OWL's D for one block: the fraction of the Wanda scores |W_ij|·‖X_j‖ of the named linears
    (together) above m × their mean, in float64."""
    linears = block_linears(block)

    def scores(name: str) -> torch.Tensor:
        w = linears[name].weight.detach().to(torch.float64)
        return w.abs() * norms[name].to(w.device).sqrt()[None, :]

    total = sum(float(scores(n).sum()) for n in names)
    count = sum(linears[n].weight.numel() for n in names)
    threshold = m * total / count
    return sum(int((scores(n) > threshold).sum()) for n in names) / count


def measure_curves(block: nn.Module, inputs: BlockInputs, names: list[str], plans: dict[str, dict], prefix: str,
                   settings: PruneSettings, device: torch.device, index: int,
                   reduce=None) -> tuple[dict[str, dict], BlockInputs, float]:
    """Each named linear's (kept, relative error) at its curve grid, its size and dense energy
    tr(Ŵ H Ŵᵀ), from the dense block's H; the block's outputs; the solves' seconds. ``reduce``: as
    ``collect_hessians``' (the ranks' sums)."""
    hessians, groups, outputs = collect_hessians(block, inputs, device, keep_outputs=True, index=index, reduce=reduce)
    linears = block_linears(block)
    solver_dev = settings.solve_device
    out: dict[str, dict] = {}
    seconds = 0.0
    for group in groups:
        group = [n for n in group if n in names]
        if not group:
            continue
        H = hessians[group[0]].to(torch.device(solver_dev))
        base = None
        batches: dict[str, tuple[str, dict, list[tuple[str, LayerProblem]]]] = {}
        for name in group:
            method, options, sparsity, pattern = settings.layer(plans[prefix + name])
            w = linears[name].weight.detach().to(device=H.device, dtype=torch.float32, copy=True)
            grid = curve_grid(sparsity, settings.curve_offsets)
            if base is None:
                base = LayerProblem(weight=w, hessian=H, sparsity=grid[0], pattern=pattern, damping=settings.damping,
                                    name=f"block{index}.{name}")
            key = json.dumps([method, options], sort_keys=True, default=str)
            batch = batches.setdefault(key, (method, options, []))[2]
            for s in grid:
                batch.append((name, base.with_weight(w, name=f"block{index}.{name}", sparsity=s, pattern=pattern)))
        for method, options, batch in batches.values():
            t = time.perf_counter()
            # one call for the whole grid: the factorization of H is shared (results stay on the solver's device)
            results = solve_many([p for _, p in batch], method, cache={}, device=solver_dev, keep_array_type=True,
                                 **options)
            seconds += time.perf_counter() - t
            for (name, p), r in zip(batch, results):
                rec = out.setdefault(name, {"size": int(p.shape[0] * p.shape[1]), "energy": float(p.dense_energy()),
                                            "points": []})
                rec["points"].append([float(p.sparsity), int(p.kept), float(r.relative_error)])
    del hessians
    return out, outputs, seconds


def allocate_sparsity(model: nn.Module, store, calib: torch.Tensor, settings: PruneSettings, plans: dict[str, dict],
                      progress: bool = True, world: World | None = None) -> dict:
    """The profile's per-layer sparsities: ``{"profile", "sparsities": {full name: s}, "info": {…}}``.

    Runs the dense pre-pass (above) on ``store``'s blocks; the model must not be pruned yet. With
    several ranks (``world``) each runs its shard of the calibration mini-batches, as the run does,
    and the statistics (OWL's ‖X_j‖², the curves' H) are summed over the ranks in rank order, so
    every rank computes the same allocation from the whole calibration set.
    ``info`` holds the free layers' target and allocated kept counts, the pre-pass seconds, and
    OWL's ratios per block or the curves' points, weighting, objective and solve seconds.
    """
    from tqdm.auto import tqdm

    profile = settings.sparsity_profile
    t0 = time.perf_counter()
    free = free_layers(plans, settings)
    info: dict = {"free_layers": len(free), "fixed_layers": len(plans) - len(free)}
    if not free:
        info["note"] = "every pruned layer has its own sparsity or an N:M pattern: nothing to allocate"
        return {"profile": profile, "sparsities": {}, "info": info}
    device = torch.device(settings.device)
    world = world or World()
    inputs = capture_inputs(model, world.shard_ids(calib, settings.batch_size), settings.batch_size, device,
                            settings.activations)
    by_block: list[tuple[int, list[str]]] = []
    owl_ratios: dict[int, float] = {}
    curves: dict[str, dict] = {}
    shapes: dict[str, tuple[int, int]] = {}
    solve_seconds = 0.0
    for index in tqdm(range(len(store)), desc=f"{profile} pre-pass", unit="block",
                      disable=not (progress and world.is_main)):
        prefix = store.prefix(index)
        names = [n[len(prefix):] for n in free if n.startswith(prefix)]
        with store.on(index, device) as block:
            if not names:
                inputs = run_block(block, inputs)
                continue
            by_block.append((index, names))
            lins = block_linears(block)
            shapes.update({prefix + n: tuple(lins[n].weight.shape) for n in names})
            if profile == "owl":
                norms, inputs = column_sq_norms(block, inputs, names)
                world.sum_in_order([norms[n] for n in names])  # the ranks' shards, in rank order (alone: as is)
                owl_ratios[index] = block_outlier_ratio(block, norms, names, settings.owl_m)
                del norms
            else:
                measured, inputs, seconds = measure_curves(block, inputs, names, plans, prefix, settings, device, index,
                                                           reduce=world.reduce_accumulators)  # a no-op alone
                curves.update({prefix + n: rec for n, rec in measured.items()})
                solve_seconds += seconds
    del inputs
    patterns = {n: parse_pattern(settings.layer(plans[n])[3]) for n in free}
    slots = [Slot(shapes[n][0] * shapes[n][1], shapes[n][0] if patterns[n].kind == "row" else 1) for n in free]
    total = target_kept(slots, settings.sparsity)
    if profile == "owl":
        blocks = [i for i, _ in by_block]
        block_s = owl_sparsities([owl_ratios[i] for i in blocks], settings.sparsity, settings.owl_lmbda)
        of_block = {store.prefix(i) + n: float(s) for (i, names), s in zip(by_block, block_s) for n in names}
        kept = kept_counts(slots, [of_block[n] for n in free], total)
        info["owl"] = {"m": settings.owl_m, "lmbda": settings.owl_lmbda,
                       "outlier_ratio": {str(i): owl_ratios[i] for i in blocks},
                       "block_sparsity": {str(i): float(s) for i, s in zip(blocks, block_s)}}
    else:
        fitted = [Curve.from_points([p[1] for p in curves[n]["points"]], [p[2] for p in curves[n]["points"]]) for n in free]
        weights = curve_weights(settings.curve_weighting, [s.size for s in slots], [curves[n]["energy"] for n in free])
        kept, result = allocate_curves(fitted, weights, slots, total)
        info["curve"] = {"weighting": settings.curve_weighting, "offsets": list(settings.curve_offsets),
                         "solve_seconds": solve_seconds, **result,
                         "points": {n: curves[n]["points"] for n in free},
                         "energy": {n: curves[n]["energy"] for n in free}}
    sparsities = dict(zip(free, sparsities_of(slots, kept)))
    for n, k in zip(free, kept):  # the solver's own rounding gives back each count
        if patterns[n].kept_per_layer(shapes[n], sparsities[n]) != int(k):
            raise LayerwiseError(f"internal: the allocated sparsity of {n} does not round to its {int(k)} kept weights")
    info.update(target_kept=total, kept=int(np.sum(kept)), seconds=time.perf_counter() - t0)
    return {"profile": profile, "sparsities": sparsities, "info": info}
