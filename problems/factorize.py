"""Dense factorizations on NumPy or CuPy (float64 inside), shared by the problems and the solvers.

The lowest layer that needs them: ``problems.targets`` (a dense target's Ŵ′) and ``solvers.linalg``
(SparseGPT's factor) both factor damped Hessians. A matrix that is not positive definite is
reported as a ValueError naming it, instead of a LinAlgError or NaNs.
"""

from __future__ import annotations

import numpy as np

NOT_PD = "hessian is not positive definite after damping (Cholesky failed)"


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
