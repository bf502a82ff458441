"""layerprune: prune LLM layers one at a time by solving each layer's problem.

    f(W) = tr((W - Ŵ) H (W - Ŵ)ᵀ),  H = XᵀX + λI,  W sparse under a pattern.

Public API::

    from layerprune import LayerProblem, solve
    p = LayerProblem(weight=W, hessian=H, sparsity=0.7, pattern="unstructured")
    r = solve(p, method="alps")
"""

from layerprune.problems import LayerProblem
from layerprune.solvers import SolveResult, available_methods, solve, solve_many

__all__ = ["LayerProblem", "SolveResult", "available_methods", "solve", "solve_many"]
__version__ = "0.1.0"
