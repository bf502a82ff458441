"""Magnitude pruning: keep the largest |Ŵᵢⱼ| the pattern allows; no weight update."""

from __future__ import annotations

from dataclasses import dataclass

from layerprune.solvers.options import MethodOptions
from layerprune.solvers.registry import register
from layerprune.solvers.result import MethodOutput


@dataclass(frozen=True)
class MagnitudeOptions(MethodOptions):
    """Magnitude pruning has no options."""


@register("magnitude", options=MagnitudeOptions, stack_safe=True, needs_hessian=False)
def magnitude(problem, xp, dtype, cache, options: MagnitudeOptions) -> MethodOutput:
    W = problem.weight.astype(dtype)
    keep = problem.pattern.mask(xp.abs(W), problem.sparsity)
    return MethodOutput(W * keep, keep, iterations=1, message="kept the largest magnitudes")
