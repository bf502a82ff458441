"""Layer pruning problems: `LayerProblem`, sparsity patterns, problem builders."""

from layerprune.problems.builders import HessianAccumulator, synthetic_problem
from layerprune.problems.patterns import (
    Pattern,
    StackedPattern,
    balanced_counts,
    parse_pattern,
    resolve_sparsity,
    top_k_per_row,
)
from layerprune.problems.problem import LayerProblem
from layerprune.problems.targets import CrossAccumulator

__all__ = [
    "CrossAccumulator",
    "HessianAccumulator",
    "LayerProblem",
    "Pattern",
    "StackedPattern",
    "balanced_counts",
    "parse_pattern",
    "resolve_sparsity",
    "synthetic_problem",
    "top_k_per_row",
]
