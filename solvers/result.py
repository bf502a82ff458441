"""`SolveResult` (what every solver returns) and `MethodOutput` (what a method hands the harness).

Status codes, as scipy's ``OptimizeResult.status``; ``success`` is ``status == CONVERGED``.
The answer is feasible and scored whatever the status: a code says only how the method ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONVERGED = 0  # the method finished as designed (ALPS: support settled and refit converged; one-shot methods)
ITERATION_CAP = 1  # ALPS: the ADMM iteration cap (max_iter) was reached before the support settled
REFIT_NOT_CONVERGED = 2  # ALPS: the PCG refit stopped at refit_max_iter with its residual above refit_tol
SUPPORT_FROZEN = 3  # ALPS: the support never moved, even after max_restarts smaller penalties
STATUS = {
    CONVERGED: "converged",
    ITERATION_CAP: "iteration cap reached",
    REFIT_NOT_CONVERGED: "refit not converged",
    SUPPORT_FROZEN: "support frozen after all restarts",
}


def status_ok(status: int) -> bool:
    """``success`` for a status code."""
    return int(status) == CONVERGED


@dataclass
class MethodOutput:
    """A method's raw answer, on the solving backend (NumPy or CuPy arrays)."""

    weight: Any  # (out × in) pruned weight
    mask: Any  # (out × in) bool support
    iterations: int = 0
    history: list = field(default_factory=list)
    message: str = ""
    info: dict = field(default_factory=dict)
    status: int = CONVERGED  # one of ``STATUS`` (when several apply, the largest)


@dataclass
class SolveResult:
    """The solution of one `LayerProblem` and its diagnostics.

    weight, mask : (out × in) arrays (NumPy unless ``keep_array_type=True``)
    objective : f(W) = tr((W − Ŵ) H (W − Ŵ)ᵀ), float64, H damped
    relative_error : objective / tr(Ŵ H Ŵᵀ)
    sparsity : achieved fraction of zeros in ``mask``
    seconds : wall time of the method (device synchronized), excluding the final objective
    iterations : the method's main iterations (ADMM steps, column blocks, …)
    history : per-check diagnostics (list of dicts)
    message : why the method stopped
    info : method-specific extras (refit iterations, residuals, ρ, …)
    success : whether the method converged (``status == 0``)
    status : how it ended, one of ``STATUS`` (0 converged, 1 iteration cap reached,
        2 refit not converged, 3 support frozen after all restarts)
    """

    weight: Any
    mask: Any
    objective: float
    relative_error: float
    sparsity: float
    seconds: float
    iterations: int
    history: list
    method: str
    pattern: str
    device: str
    message: str = ""
    info: dict = field(default_factory=dict)
    success: bool = True
    status: int = CONVERGED

    def __repr__(self) -> str:
        return (
            f"SolveResult(method={self.method!r}, pattern={self.pattern}, sparsity={self.sparsity:.4f}, "
            f"relative_error={self.relative_error:.5g}, objective={self.objective:.5g}, "
            f"seconds={self.seconds:.3f}, iterations={self.iterations}, device={self.device!r}, "
            f"success={self.success}, status={self.status}, message={self.message!r})"
        )
