"""layerprune: prune LLM layers one at a time by solving each layer's problem.

    f(W) = tr((W - Ŵ) H (W - Ŵ)ᵀ),  H = XᵀX + λI,  W sparse under a pattern.

Public API::

    from layerprune import LayerProblem, solve
    p = LayerProblem(weight=W, hessian=H, sparsity=0.7, pattern="unstructured")
    r = solve(p, method="alps")

    from layerprune import prune        # the whole-model pipeline on an in-memory transformers model
    res = prune(model, tokenizer, method="alps", sparsity=0.7, calib="wiki", recipe=None, device="cuda")
"""

from layerprune.problems import LayerProblem
from layerprune.solvers import SolveResult, available_methods, solve, solve_many

__all__ = ["LayerProblem", "PruneResult", "PruneSettings", "SolveResult", "available_methods", "prune", "solve",
           "solve_many"]
_PIPELINE = {"prune": "layerprune.layerwise.api", "PruneResult": "layerprune.layerwise.api",
             "PruneSettings": "layerprune.layerwise.settings"}


def __getattr__(name: str):
    """The whole-model pipeline, imported on first use (it needs torch and transformers)."""
    if name in _PIPELINE:
        import importlib

        return getattr(importlib.import_module(_PIPELINE[name]), name)
    raise AttributeError(f"module 'layerprune' has no attribute {name!r}")
__version__ = "0.1.0"
