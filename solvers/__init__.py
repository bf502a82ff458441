"""Solvers: ``solve(problem, method=...)``, the registry, ALPS and the array backend."""

from layerprune.solvers.options import MethodOptions, OptionError
from layerprune.solvers.registry import (
    Method,
    available_methods,
    check_options,
    get_method,
    options_help,
    register,
    solve,
    solve_many,
    stacks_by_default,
)
from layerprune.solvers.result import STATUS, MethodOutput, SolveResult

__all__ = ["STATUS", "Method", "MethodOptions", "MethodOutput", "OptionError", "SolveResult", "available_methods",
           "check_options", "get_method", "options_help", "register", "solve", "solve_many",
           "stacks_by_default"]
