"""Dense factorizations on NumPy or CuPy (float64 inside), shared by the problems and the solvers.

The lowest layer that needs them: ``problems.targets`` (a dense target's Ŵ′) and ``solvers.linalg``
(SparseGPT's factor) both factor damped Hessians. A matrix that is not positive definite is
reported as a ValueError naming it, instead of a LinAlgError or NaNs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

NOT_PD = "hessian is not positive definite after damping (Cholesky failed)"
PIVOT_RCOND = 1e-13  # a Cholesky pivot Lⱼⱼ² below this · max diag H: H is singular in float64
JITTER_START, JITTER_STEP, JITTER_MAX = 1e-10, 100.0, 1e-2  # τ / mean(diag H) for a singular H


def scipy_linalg(xp):
    """``scipy.linalg`` for NumPy arrays, ``cupyx.scipy.linalg`` for CuPy arrays."""
    if xp is np:
        import scipy.linalg

        return scipy.linalg
    import cupyx.scipy.linalg

    return cupyx.scipy.linalg


def is_linalg_error(exc: Exception) -> bool:
    return isinstance(exc, np.linalg.LinAlgError) or "LinAlgError" in type(exc).__name__


def cholesky_lower(H, xp, message: str = NOT_PD):
    """L (float64, lower) with H = L Lᵀ; ValueError(``message``) if H is not positive definite
    (NumPy raises LinAlgError; CuPy may return NaNs instead)."""
    try:
        L = xp.linalg.cholesky(H.astype(xp.float64))
    except Exception as exc:
        if is_linalg_error(exc):
            raise ValueError(message) from exc
        raise
    if not bool(xp.isfinite(L).all()):
        raise ValueError(message)
    return L


def checked_cholesky(H64, xp):
    """L (float64, lower) with H64 = L Lᵀ, or ValueError when H64 is singular in float64 (the
    Cholesky fails, gives NaN, or a pivot Lⱼⱼ² < PIVOT_RCOND · max diag H)."""
    L = cholesky_lower(H64, xp)
    if float(xp.min(xp.diagonal(L))) ** 2 < PIVOT_RCOND * float(xp.max(xp.diagonal(H64))):
        raise ValueError("hessian is numerically singular (a Cholesky pivot below 1e-13 · max diag H)")
    return L


def with_jitter(factor: Callable, H, xp, jitter: bool = True, what: str = "", stacklevel: int = 3):
    """``factor(H64)`` for H in float64, or, when it raises ValueError (H singular: damping 0 with
    fewer calibration rows than inputs, or cond ≳ 1e13) and ``jitter``, ``factor(H64 + τI)`` with
    τ = 1e-10 · mean(diag H) at first and ×100 per failure up to 1e-2 · mean(diag H), with a
    RuntimeWarning naming τ (and ``what`` the factor is for; ``stacklevel`` as ``warnings.warn``'s,
    counted from the caller of ``with_jitter``'s caller). ValueError without ``jitter`` or when that
    fails too."""
    H64 = H.astype(xp.float64)
    try:
        return factor(H64, xp)
    except ValueError as exc:
        if not jitter:
            raise
        first = exc
    mean_diag = float(xp.diagonal(H64).mean())
    idx = xp.arange(H64.shape[0])
    rel = JITTER_START
    while rel <= JITTER_MAX * (1 + 1e-9):
        tau = rel * mean_diag
        shifted = H64.copy()
        shifted[idx, idx] += tau
        try:
            out = factor(shifted, xp)
        except ValueError:
            rel *= JITTER_STEP
            continue
        warnings.warn(
            f"{what}hessian is singular or numerically so at this damping ({first}); the factor of "
            f"H + τI was used, τ = {rel:.0e} · mean(diag H) = {tau:.3g}; use damping > 0 (e.g. 0.01)",
            RuntimeWarning, stacklevel=stacklevel,
        )
        return out
    raise ValueError(f"{what}hessian is singular at this damping and stays so with a jitter of {JITTER_MAX:g} · mean(diag H) "
                     f"({first}); use damping > 0 (e.g. 0.01)") from first
