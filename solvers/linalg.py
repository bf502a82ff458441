"""Dense factorizations shared by the solvers, on NumPy or CuPy (float64 inside).

Errors name the problem: a Hessian that is not positive definite after damping
is reported as such instead of surfacing as a LinAlgError or NaNs.
"""

from __future__ import annotations

import numpy as np


def _scipy_linalg(xp):
    if xp is np:
        import scipy.linalg

        return scipy.linalg
    import cupyx.scipy.linalg

    return cupyx.scipy.linalg


def _is_linalg_error(exc: Exception) -> bool:
    return isinstance(exc, np.linalg.LinAlgError) or "LinAlgError" in type(exc).__name__


def cholesky_lower(H, xp):
    """L with H = L Lᵀ (float64); ValueError if H is not positive definite."""
    H64 = H.astype(xp.float64)
    try:
        L = xp.linalg.cholesky(H64)
    except Exception as exc:  # numpy raises LinAlgError; CuPy may return NaNs instead
        if _is_linalg_error(exc):
            raise ValueError("hessian is not positive definite after damping (Cholesky failed)") from exc
        raise
    if not bool(xp.isfinite(L).all()):
        raise ValueError("hessian is not positive definite after damping (Cholesky failed)")
    return L


def inverse_cholesky_upper(H, xp):
    """U upper triangular with H⁻¹ = Uᵀ U (SparseGPT's factor), float64."""
    L = cholesky_lower(H, xp)
    sl = _scipy_linalg(xp)
    eye = xp.eye(H.shape[0], dtype=xp.float64)
    L_inv = sl.solve_triangular(L, eye, lower=True)  # L⁻¹
    H_inv = L_inv.T @ L_inv
    H_inv = (H_inv + H_inv.T) * 0.5
    return cholesky_lower(H_inv, xp).T


def normalized_eigh(H, xp, psd_tol: float = 1e-6, dtype=None):
    """d = √diag H and the eigendecomposition Hn = D⁻¹ H D⁻¹ = Q diag(λ) Qᵀ (in ``dtype``, default float64).

    Returns (d, λ, Q); Hn itself is not kept (callers re-form it from Q and λ when needed).
    Raises ValueError when Hn has an eigenvalue below −psd_tol·max λ (not PSD).
    """
    dtype = np.dtype(dtype or np.float64)
    Hn = H.astype(dtype)
    diag = xp.diagonal(Hn).copy()
    if bool((diag <= 0).any()):
        raise ValueError("hessian has a zero or negative diagonal after damping")
    d = xp.sqrt(diag)
    Hn /= d[:, None]
    Hn /= d[None, :]
    lam, Q = xp.linalg.eigh(Hn)
    del Hn
    if float(lam.min()) < -psd_tol * float(lam.max()):
        raise ValueError(f"hessian is not PSD: smallest eigenvalue {float(lam.min()):.3g} after normalization")
    return d, xp.clip(lam, 0, None), Q
