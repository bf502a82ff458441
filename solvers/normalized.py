"""A layer problem in normalized coordinates, shared by the ADMM-type solvers.

d = √diag H, Hn = D⁻¹ H D⁻¹ (unit diagonal: this scaling is the Jacobi
preconditioner), B = Ŵ D, G = B Hn. For X = W D,

    f(W) = tr((X − B) Hn (X − B)ᵀ) = ‖(X − B) Q Λ^½‖²_F,   ∇f = 2 (X Hn − G).

Hn = Q diag(Λ) Qᵀ is computed once per Hessian and shared through the solve
cache, so (Hn + ρI)⁻¹ = Q diag(1/(Λ + ρ)) Qᵀ costs one product for any ρ
(``ShiftedInverse``). Only Q and Λ are kept: products with Hn go through the
problem's own H, P Hn = ((P D⁻¹) H) D⁻¹, when H is in the working dtype, and
otherwise through Hn re-formed from Q (``hn_operator``).
Work on (out × in) arrays goes in blocks of rows (``row_blocks``), so a solver's
temporaries stay a fraction of the weight's size.
The eigendecomposition runs in float64 on the CPU and in the working precision
on the GPU (cuSOLVER float32; ``eig_dtype`` overrides), where float64 would
double the memory of the largest arrays for no change in the chosen support.
Dead input channels (``LayerProblem.dead_channels``: decoupled, Ŵ zero there) stay zero:
their columns are zeroed before every projection and in ``unscale``, so the rounding of
Q diag(·) Qᵀ cannot leak a tiny value into them.
"""

from __future__ import annotations

import numpy as np

from layerprune.solvers.linalg import normalized_eigh


def row_blocks(rows: int, cols: int = 0, parts: int = 4, min_rows: int = 128, small: int = 1 << 20) -> list[slice]:
    """Slices covering range(rows) in about ``parts`` blocks of at least ``min_rows`` rows.

    Row-wise work on an (out × in) array in these blocks keeps its temporaries at
    about 1/``parts`` of the array while each product stays a large GEMM. Arrays of at
    most ``small`` entries (4 MiB in float32) are one block: there the kernel launches
    per block would cost more time than the temporaries cost memory.
    """
    if rows * cols <= small:
        return [slice(0, rows)]
    size = max(min_rows, -(-rows // parts))
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


class NormalizedProblem:
    """Arrays of one problem in normalized coordinates, on backend ``xp`` in ``dtype``."""

    def __init__(self, problem, xp, dtype, cache: dict, eig_dtype=None, staged_eigh: bool = False) -> None:
        eig_dtype = np.dtype(eig_dtype or (np.float64 if xp is np else dtype))
        key = ("eig", eig_dtype.str)  # the staged route gives the same decomposition
        if key not in cache:
            cache[key] = normalized_eigh(problem.hessian, xp, dtype=eig_dtype, staged=staged_eigh)
        d, lam, Q = cache[key]
        self.xp, self.dtype = xp, dtype
        self.pattern, self.sparsity = problem.pattern, problem.sparsity
        self.kept = max(problem.kept, 1)
        self.d, self.lam, self.Q = d.astype(dtype), lam.astype(dtype), Q.astype(dtype, copy=False)
        self._weight = problem.weight
        self.dead = xp.asarray(problem.dead_channels) if problem.n_dead else None  # bool (in,) or None
        H = problem.hessian
        self._H = H if problem.xp is xp and H.dtype == dtype else None  # usable for products with Hn
        self.blocks = row_blocks(*problem.shape)
        self.G = xp.empty(problem.shape, dtype=dtype)  # B Hn, one block of rows at a time
        for r in self.blocks:
            if self._H is not None:  # B Hn = (Ŵ H) D⁻¹: one product, exact up to rounding
                xp.matmul(self._weight[r].astype(dtype, copy=False), self._H, out=self.G[r])
                self.G[r] /= self.d[None, :]
            else:  # B Q Λ Qᵀ
                BQ = self.B_rows(r) @ self.Q
                BQ *= self.lam[None, :]
                xp.matmul(BQ, self.Q.T, out=self.G[r])
                del BQ
        self.energy = self._energy()

    def _energy(self) -> float:
        """tr(B Hn Bᵀ) = tr(Ŵ H Ŵᵀ), summed over row blocks."""
        return sum(float(self.xp.sum(self.G[r] * self.B_rows(r))) for r in self.blocks)

    def B_rows(self, rows: slice):
        """Rows of B = Ŵ D (a new array)."""
        B = self._weight[rows].astype(self.dtype, copy=True)
        B *= self.d[None, :]
        return B

    @property
    def B(self):
        """Ŵ D (formed on demand: the weight already lives in the problem)."""
        return self.B_rows(slice(None))

    def write_B(self, out):
        """B written into ``out`` (out × in) block by block, without a full-size temporary."""
        for r in self.blocks:
            out[r] = self.B_rows(r)
        return out

    def zero_dead(self, A):
        """A's dead-channel columns set to 0, in place (A itself)."""
        if self.dead is not None:
            A[:, self.dead] = 0
        return A

    def project(self, Z, sparsity: float | None = None):
        """(P(Z), mask): keep the largest |Z| the pattern allows (Z's dead columns zeroed first)."""
        return self.pattern.project(self.zero_dead(Z), self.sparsity if sparsity is None else sparsity)

    def projection_mask(self, Z, scratch):
        """Support of P(Z) at the problem's sparsity (Z's dead columns zeroed first, in place);
        ``scratch`` (Z's shape) is overwritten."""
        return self.pattern.projection_mask(self.zero_dead(Z), self.sparsity, scratch)

    def mask(self, scores, sparsity: float | None = None):
        return self.pattern.mask(scores, self.sparsity if sparsity is None else sparsity)

    def _q_diag_qt(self, s, out=None):
        """Q diag(s) Qᵀ (in × in) into ``out``, in blocks of rows (no in × in temporary)."""
        n = self.Q.shape[0]
        out = self.xp.empty((n, n), dtype=self.dtype) if out is None else out
        for r in row_blocks(n, n):
            self.xp.matmul(self.Q[r] * s[None, :], self.Q.T, out=out[r])
        return out

    def inverse(self, rho: float, out=None):
        """(Hn + ρI)⁻¹ = Q diag(1/(Λ + ρ)) Qᵀ (in × in), written into ``out`` if given."""
        return self._q_diag_qt(1.0 / (self.lam + rho), out)

    def hn(self, out=None):
        """Hn = Q diag(Λ) Qᵀ (in × in), written into ``out`` if given."""
        return self._q_diag_qt(self.lam, out)

    def hn_operator(self, buffer=None):
        """Products with Hn for the PCG refit: Hn itself (formed into ``buffer``) when a buffer
        is given, else the map (P, out) ↦ P Hn = ((P D⁻¹) H) D⁻¹ through the problem's H when
        it is in the working dtype (no in × in array beyond H), else a newly formed Hn."""
        if buffer is not None or self._H is None:
            return self.hn(out=buffer)
        H, d, xp = self._H, self.d, self.xp

        def times_hn(P, out):
            xp.matmul(P / d[None, :], H, out=out)
            out /= d[None, :]
            return out

        return times_hn

    def rel_error(self, X) -> float:
        """f / tr(Ŵ H Ŵᵀ) for X in normalized coordinates: ‖(X − B) Q Λ^½‖² / energy.

        Summed over row blocks so the temporaries stay small.
        """
        total = 0.0
        for r in self.blocks:
            E = self.B_rows(r)
            self.xp.subtract(X[r], E, out=E)
            EQ = E @ self.Q
            del E
            EQ *= EQ
            total += float(self.xp.sum(EQ @ self.lam))
        return total / self.energy

    def unscale(self, X, out=None):
        """Back to the layer's coordinates: W = X D⁻¹ (into ``out`` if given, e.g. X itself), dead columns 0."""
        return self.zero_dead(self.xp.divide(X, self.d[None, :], out=out))


class ShiftedInverse:
    """Right products with (Hn + ρI)⁻¹ = Q diag(1/(Λ + ρ)) Qᵀ for a ρ that changes now and then.

    ``explicit`` (default when in ≤ out) forms the in × in inverse at each ρ, so each product
    is one GEMM; otherwise the product goes through Q twice, (T Q) diag(1/(Λ+ρ)) Qᵀ, with no
    in × in buffer. For in > out the inverse would be the loop's largest buffer, and forming
    it (2·in³ per ρ change, every 3 iterations in ALPS) costs about what it saves
    (2·out·in² per iteration).
    """

    def __init__(self, norm: NormalizedProblem, rho: float, explicit: bool | None = None) -> None:
        out, inp = norm.G.shape
        self.norm = norm
        self.explicit = inp <= out if explicit is None else bool(explicit)
        self.M = None
        self.set_rho(rho)

    def set_rho(self, rho: float) -> None:
        self.rho = float(rho)
        if self.explicit:
            self.M = self.norm.inverse(self.rho, out=self.M)
        else:
            self.scale = 1.0 / (self.norm.lam + self.rho)

    def apply(self, T, out=None):
        """T (Hn + ρI)⁻¹ for T (rows × in), into ``out`` if given."""
        xp, Q = self.norm.xp, self.norm.Q
        if self.explicit:
            return xp.matmul(T, self.M, out=out)
        TQ = T @ Q
        TQ *= self.scale[None, :]
        return xp.matmul(TQ, Q.T, out=out)

    def release(self):
        """The explicit inverse's in × in buffer for reuse (None when there is none); ends the operator."""
        M, self.M = self.M, None
        return M
