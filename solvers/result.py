"""`SolveResult` (what every solver returns) and `MethodOutput` (what a method hands the harness)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MethodOutput:
    """A method's raw answer, on the solving backend (NumPy or CuPy arrays)."""

    weight: Any  # (out × in) pruned weight
    mask: Any  # (out × in) bool support
    iterations: int = 0
    history: list = field(default_factory=list)
    message: str = ""
    info: dict = field(default_factory=dict)


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

    def __repr__(self) -> str:
        return (
            f"SolveResult(method={self.method!r}, pattern={self.pattern}, sparsity={self.sparsity:.4f}, "
            f"relative_error={self.relative_error:.5g}, objective={self.objective:.5g}, "
            f"seconds={self.seconds:.3f}, iterations={self.iterations}, device={self.device!r}, "
            f"message={self.message!r})"
        )
