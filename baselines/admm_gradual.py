"""Gradual-mask ADMM with a fixed penalty (Boža, 2024, "Fast and Optimal Weight Update
for Pruned Large Language Models"): the fast end of the speed/quality trade-off.

In normalized coordinates (``solvers.normalized``; there |X| is Wanda's score
|Ŵᵢⱼ|·√Hⱼⱼ) run ``iterations`` ADMM steps with one fixed ρ, so (Hn + ρI)⁻¹ is
formed once, while the projection's sparsity rises on a cubic schedule
s_t = s·(1 − (1 − t/ramp)³) and stays at s after ``ramp`` steps::

    X  ← (G − V + ρ Z) (Hn + ρI)⁻¹
    Z  ← P_{s_t}(X + V/ρ)
    V  ← V + ρ (X − Z)

N:M patterns project onto the final pattern from the first step (there is no
intermediate N:M sparsity). The answer is the last Z (feasible by construction).
"""

from __future__ import annotations

from dataclasses import dataclass

from layerprune.solvers.normalized import NormalizedProblem, ShiftedInverse
from layerprune.solvers.options import MethodOptions
from layerprune.solvers.registry import register
from layerprune.solvers.result import MethodOutput


@dataclass(frozen=True)
class ADMMGradualOptions(MethodOptions):
    """Gradual-mask ADMM's options.

    rho : the fixed penalty ρ (1.0).
    iterations : ADMM steps (20).
    ramp : steps of the cubic sparsity ramp, 1 ≤ ramp ≤ iterations (15).
    """

    rho: float = 1.0
    iterations: int = 20
    ramp: int = 15

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(self.rho > 0, "rho", "> 0")
        self.require(self.iterations >= 1, "iterations", "≥ 1")
        self.require(1 <= self.ramp <= self.iterations, "ramp", f"in [1, iterations={self.iterations}]")


@register("admm_gradual", options=ADMMGradualOptions, stack_safe=True, needs_hessian=True)
def admm_gradual(problem, xp, dtype, cache, options: ADMMGradualOptions) -> MethodOutput:
    """Gradual-mask ADMM on ``problem`` with ``options`` (:class:`ADMMGradualOptions`)."""
    rho, iterations, ramp = options.rho, options.iterations, options.ramp
    norm = NormalizedProblem(problem, xp, dtype, cache)
    gradual = problem.pattern.kind != "nm"
    inverse = ShiftedInverse(norm, rho)  # ρ is fixed: the explicit inverse is formed once if in ≤ out
    Z, V = norm.B, xp.zeros_like(norm.B)
    history = []
    for t in range(1, iterations + 1):
        s_t = problem.sparsity * (1.0 - (1.0 - min(t / ramp, 1.0)) ** 3) if gradual else None
        X = inverse.apply(norm.G - V + rho * Z)
        Z, mask = norm.project(X + V / rho, s_t)
        V += rho * (X - Z)
        history.append({"iteration": t, "rho": rho, "sparsity": problem.sparsity if s_t is None else s_t})
    return MethodOutput(
        norm.unscale(Z) * mask, mask, iterations=iterations, history=history,
        message=f"{iterations} fixed-penalty steps, mask ramped over {ramp}",
    )
