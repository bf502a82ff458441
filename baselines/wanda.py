"""Wanda (Sun et al., 2023): score |Ŵᵢⱼ|·‖X_j‖₂ = |Ŵᵢⱼ|·√Hⱼⱼ, compared per output row.

Uses only diag(H) of the *undamped* Hessian (the squared input-column norms).
Comparison groups: per output row (the paper's default) for ``row`` and for
``unstructured`` (the layer's k nonzeros split evenly over the rows), or within
N:M groups. ``group="layer"`` compares across the whole layer instead
(unstructured only). No weight update.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerprune.problems.patterns import balanced_counts, top_k_per_row
from layerprune.solvers.options import MethodOptions
from layerprune.solvers.registry import register
from layerprune.solvers.result import MethodOutput


@dataclass(frozen=True)
class WandaOptions(MethodOptions):
    """Wanda's options.

    group : comparison group, "row" (each output row, the paper's default) or "layer" (unstructured only).
    """

    group: str = "row"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(self.group in ("row", "layer"), "group", "'row' or 'layer'")


@register("wanda", options=WandaOptions, needs_hessian=False)
def wanda(problem, xp, dtype, cache, options: WandaOptions) -> MethodOutput:
    group = options.group
    W = problem.weight.astype(dtype)
    col_norm = xp.sqrt(xp.clip(xp.diagonal(problem.raw_hessian), 0, None)).astype(dtype)
    score = xp.abs(W) * col_norm[None, :]
    pattern = problem.pattern
    if pattern.kind == "unstructured" and group == "row":
        counts = balanced_counts(problem.kept, W.shape[0], xp)
        keep = top_k_per_row(score, counts)
    else:
        if group == "layer" and pattern.kind != "unstructured":
            raise ValueError(f"wanda group='layer' needs the unstructured pattern, not {pattern.name}")
        keep = pattern.mask(score, problem.sparsity)
    return MethodOutput(W * keep, keep, iterations=1, message=f"kept the largest |W|·‖X‖ per {group}")
