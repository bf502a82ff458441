"""Wanda (Sun et al., 2023): score |Ŵᵢⱼ|·‖X_j‖₂ = |Ŵᵢⱼ|·√Hⱼⱼ, compared per output row.

Uses only diag(H) of the *undamped* Hessian (the squared input-column norms).
Comparison groups: per output row (the paper's default) for ``row`` and for
``unstructured`` (the layer's k nonzeros split evenly over the rows), or within
N:M groups. ``group="layer"`` compares across the whole layer instead
(unstructured only). No weight update.
"""

from __future__ import annotations

from layerprune.problems.patterns import balanced_counts, top_k_per_row
from layerprune.solvers.registry import register
from layerprune.solvers.result import MethodOutput


@register("wanda")
def wanda(problem, xp, dtype, cache, group: str = "row", **options) -> MethodOutput:
    if options:
        raise TypeError(f"wanda got unknown options {sorted(options)}; it takes group='row'|'layer'")
    W = problem.weight.astype(dtype)
    col_norm = xp.sqrt(xp.clip(xp.diagonal(problem.raw_hessian), 0, None)).astype(dtype)
    score = xp.abs(W) * col_norm[None, :]
    pattern = problem.pattern
    if pattern.kind == "unstructured" and group == "row":
        counts = balanced_counts(problem.kept, W.shape[0], xp)
        keep = top_k_per_row(score, counts)
    elif group in ("row", "layer"):
        if group == "layer" and pattern.kind != "unstructured":
            raise ValueError(f"wanda group='layer' needs the unstructured pattern, not {pattern.name}")
        keep = pattern.mask(score, problem.sparsity)
    else:
        raise ValueError(f"wanda group must be 'row' or 'layer', got {group!r}")
    return MethodOutput(W * keep, keep, iterations=1, message=f"kept the largest |W|·‖X‖ per {group}")
