"""Solvers: ``solve(problem, method=...)``, the registry, ALPS and the array backend."""

from layerprune.solvers.registry import available_methods, get_method, register, solve, solve_many
from layerprune.solvers.result import MethodOutput, SolveResult

__all__ = ["MethodOutput", "SolveResult", "available_methods", "get_method", "register", "solve", "solve_many"]
