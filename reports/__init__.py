"""Objective-gap reports: methods × sparsities × patterns × layer problems, with certified lower bounds.

    from layerprune.reports import compare_problems
    rows = compare_problems("problems/", ["alps", "sparsegpt"], [0.5, 0.7], ["unstructured"], "report/")

Writes ``results.csv`` (one row per problem, pattern, sparsity, method), ``weights/``,
``report.md``, ``report.html`` and PNG plots. Lower bounds: :mod:`layerprune.reports.bounds`.
"""

from layerprune.reports.bounds import (
    LowerBound,
    bound_limits,
    diagonal_bound,
    exact_optimum,
    lower_bound,
    perspective_bound,
)
from layerprune.reports.grid import compare_problems, load_weight, read_results
from layerprune.reports.render import write_report

__all__ = [
    "LowerBound",
    "bound_limits",
    "compare_problems",
    "diagonal_bound",
    "exact_optimum",
    "load_weight",
    "lower_bound",
    "perspective_bound",
    "read_results",
    "write_report",
]
