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


SYEVD_WORKSPACE = 4.0  # cuSOLVER syevd's workspace in n² entries (measured: benchmarks/eigh_workspace.py)


def syevd_fits(n: int, dtype, xp, margin: float = 1.25) -> bool:
    """Whether the one-call eigendecomposition's workspace (``SYEVD_WORKSPACE`` · n² entries of
    ``dtype``, times ``margin``) fits in the device memory free now (the driver's free memory
    plus what CuPy's pool holds unused), and its entry count in the 32-bit ``lwork`` of the
    cuSOLVER call (n ≤ 23170: beyond, syevd_bufferSize answers INVALID_VALUE; measured at
    n = 28672, Llama-3-70B's down_proj). Always True on NumPy."""
    if xp is np:
        return True
    if SYEVD_WORKSPACE * n * n >= 2**31:
        return False
    free, _ = xp.cuda.runtime.memGetInfo()
    pool = xp.get_default_memory_pool()
    free += pool.total_bytes() - pool.used_bytes()
    return SYEVD_WORKSPACE * n * n * np.dtype(dtype).itemsize * margin <= free


def eigh_inplace(A, xp, staged: bool = False):
    """(λ ascending, Q) with A = Q diag(λ) Qᵀ for symmetric A (n × n), overwriting A where it can.

    On CuPy in float32/float64 this runs cuSOLVER's syevd on A's own memory, so the only
    extra memory is cuSOLVER's workspace, about 4 n² (``cupy.linalg.eigh`` first copies A,
    one n × n more). syevd writes the eigenvectors column-major, i.e. Qᵀ in A's row-major
    memory, so Q is returned as ``A.T`` (a view). ``staged=True`` (float32/float64, NumPy
    or CuPy) runs the same decomposition in stages with about 1.1 n² beside A instead,
    and a slower host step (``solvers.staged_eigh``); A is overwritten. Elsewhere
    (NumPy without ``staged``, other dtypes, or a CuPy without these bindings) it is
    ``xp.linalg.eigh(A)`` and A is left as it was.
    """
    if staged and A.dtype in (np.float32, np.float64) and A.flags.c_contiguous:
        from layerprune.solvers.staged_eigh import staged_eigh

        return staged_eigh(A, xp)
    if xp is not np and A.dtype in (np.float32, np.float64) and A.flags.c_contiguous:
        try:
            from cupy.cuda import cublas, cusolver, device
        except ImportError:  # pragma: no cover - CuPy without the low-level bindings
            pass
        else:
            single = A.dtype == np.float32
            buffer_size = cusolver.ssyevd_bufferSize if single else cusolver.dsyevd_bufferSize
            syevd = cusolver.ssyevd if single else cusolver.dsyevd
            n = A.shape[0]
            handle = device.get_cusolver_handle()
            jobz, uplo = cusolver.CUSOLVER_EIG_MODE_VECTOR, cublas.CUBLAS_FILL_MODE_LOWER
            lam = xp.empty(n, dtype=A.dtype)
            lwork = buffer_size(handle, jobz, uplo, n, A.data.ptr, n, lam.data.ptr)
            work = xp.empty(lwork, dtype=A.dtype)
            info = xp.zeros(1, dtype=np.int32)
            syevd(handle, jobz, uplo, n, A.data.ptr, n, lam.data.ptr, work.data.ptr, lwork, info.data.ptr)
            del work
            if int(info[0]) != 0:
                raise ValueError(f"eigendecomposition of the hessian failed (cuSOLVER syevd info={int(info[0])})")
            return lam, A.T
    return xp.linalg.eigh(A)


def normalized_eigh(H, xp, psd_tol: float = 1e-6, dtype=None, staged: bool = False):
    """d = √diag H and the eigendecomposition Hn = D⁻¹ H D⁻¹ = Q diag(λ) Qᵀ (in ``dtype``, default float64).

    Returns (d, λ, Q); Hn itself is not kept (callers re-form it from Q and λ, or use H, when
    needed): on the GPU the decomposition overwrites the normalized copy (``eigh_inplace``),
    so the setup holds one in × in array plus cuSOLVER's workspace (``staged``: see ``eigh_inplace``).
    Raises ValueError when Hn has an eigenvalue below −psd_tol·max λ (not PSD).
    """
    dtype = np.dtype(dtype or np.float64)
    Hn = H.astype(dtype, order="C", copy=True)
    diag = xp.diagonal(Hn).copy()
    if bool((diag <= 0).any()):
        raise ValueError("hessian has a zero or negative diagonal after damping")
    d = xp.sqrt(diag)
    Hn /= d[:, None]
    Hn /= d[None, :]
    lam, Q = eigh_inplace(Hn, xp, staged=staged)
    del Hn
    if not bool(xp.isfinite(lam).all()):
        raise ValueError("eigendecomposition of the hessian produced NaN or Inf")
    if float(lam.min()) < -psd_tol * float(lam.max()):
        raise ValueError(f"hessian is not PSD: smallest eigenvalue {float(lam.min()):.3g} after normalization")
    return d, xp.clip(lam, 0, None), Q
