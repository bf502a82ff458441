"""Magnitude pruning: keep the largest |Ŵᵢⱼ| the pattern allows; no weight update."""

from __future__ import annotations

from layerprune.solvers.registry import register
from layerprune.solvers.result import MethodOutput


@register("magnitude")
def magnitude(problem, xp, dtype, cache, **options) -> MethodOutput:
    if options:
        raise TypeError(f"magnitude takes no options, got {sorted(options)}")
    W = problem.weight.astype(dtype)
    keep = problem.pattern.mask(xp.abs(W), problem.sparsity)
    return MethodOutput(W * keep, keep, iterations=1, message="kept the largest magnitudes")
