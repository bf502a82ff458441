"""A layer problem in normalized coordinates, shared by the ADMM-type solvers.

d = √diag H, Hn = D⁻¹ H D⁻¹ (unit diagonal: this scaling is the Jacobi
preconditioner), B = Ŵ D, G = B Hn. For X = W D,

    f(W) = tr((X − B) Hn (X − B)ᵀ),   ∇f = 2 (X Hn − G).

Hn = Q diag(Λ) Qᵀ is computed once per Hessian (float64) and shared through the
solve cache, so (Hn + ρI)⁻¹ = Q diag(1/(Λ + ρ)) Qᵀ costs one product for any ρ.
"""

from __future__ import annotations

from layerprune.solvers.linalg import normalized_eigh


class NormalizedProblem:
    """Arrays of one problem in normalized coordinates, on backend ``xp`` in ``dtype``."""

    def __init__(self, problem, xp, dtype, cache: dict) -> None:
        if "eig" not in cache:
            cache["eig"] = normalized_eigh(problem.hessian, xp)
        d, Hn, lam, Q = cache["eig"]
        self.xp = xp
        self.pattern, self.sparsity = problem.pattern, problem.sparsity
        self.kept = max(problem.kept, 1)
        self.d, self.Hn, self.lam, self.Q = (a.astype(dtype) for a in (d, Hn, lam, Q))
        self.B = problem.weight.astype(dtype) * self.d[None, :]
        self.G = self.B @ self.Hn
        self.energy = float(xp.sum(self.G * self.B))  # tr(B Hn Bᵀ) = tr(Ŵ H Ŵᵀ)

    def project(self, Z, sparsity: float | None = None):
        """(P(Z), mask): keep the largest |Z| the pattern allows."""
        return self.pattern.project(Z, self.sparsity if sparsity is None else sparsity)

    def inverse(self, rho: float):
        """(Hn + ρI)⁻¹ = Q diag(1/(Λ + ρ)) Qᵀ (in × in)."""
        return (self.Q * (1.0 / (self.lam + rho))[None, :]) @ self.Q.T

    def rel_error(self, X) -> float:
        """f / tr(Ŵ H Ŵᵀ) for X in normalized coordinates."""
        E = X - self.B
        return float(self.xp.sum((E @ self.Hn) * E)) / self.energy

    def unscale(self, X):
        """Back to the layer's coordinates: W = X D⁻¹."""
        return X / self.d[None, :]
