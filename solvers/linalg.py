"""Dense factorizations shared by the solvers, on NumPy or CuPy (float64 inside).

Errors name the problem: a Hessian that is not positive definite after damping
is reported as such instead of surfacing as a LinAlgError or NaNs.
"""

from __future__ import annotations

import numpy as np

from layerprune.problems.backend import free_device_bytes
from layerprune.problems.factorize import checked_cholesky, cholesky_lower, scipy_linalg, with_jitter


def _inverse_factor(H64, xp):
    """U with H⁻¹ = Uᵀ U for H64 (float64), or ValueError when H64 is singular in float64
    (``problems.factorize.checked_cholesky``)."""
    L = checked_cholesky(H64, xp)
    sl = scipy_linalg(xp)
    eye = xp.eye(H64.shape[0], dtype=xp.float64)
    L_inv = sl.solve_triangular(L, eye, lower=True)  # L⁻¹
    H_inv = L_inv.T @ L_inv
    H_inv = (H_inv + H_inv.T) * 0.5
    return cholesky_lower(H_inv, xp).T


SYEVD_WORKSPACE = 4.0  # cuSOLVER syevd's workspace in n² entries (measured: benchmarks/eigh_workspace.py)


def syevd_lwork_overflows(n: int) -> bool:
    """Whether syevd's workspace (``SYEVD_WORKSPACE`` · n² entries) exceeds the 32-bit ``lwork`` of
    CuPy's ``cusolver.ssyevd`` (n > 23170: its bufferSize answers INVALID_VALUE; measured at
    n = 28672, Llama-3-70B's down_proj); ``eigh_inplace`` then calls the 64-bit ``Xsyevd``."""
    return SYEVD_WORKSPACE * n * n >= 2**31


def syevd_fits(n: int, dtype, xp, margin: float = 1.25) -> bool:
    """Whether the one-call eigendecomposition's workspace (``SYEVD_WORKSPACE`` · n² entries of
    ``dtype``, times ``margin``) fits in the device memory free now (the driver's free memory
    plus what CuPy's pool holds unused). Always True on NumPy."""
    return SYEVD_WORKSPACE * n * n * np.dtype(dtype).itemsize * margin <= free_device_bytes(xp)


def inverse_cholesky_upper(H, xp, jitter: bool = True):
    """U upper triangular with H⁻¹ = Uᵀ U (SparseGPT's factor), float64.

    A singular H (damping 0 with fewer calibration rows than inputs) or a numerically singular
    one (cond ≳ 1e13) has no usable factor: the SparseGPT reference fails there. With
    ``jitter`` the factor of H + τI is returned instead, τ = 1e-10 · mean(diag H) at first and
    ×100 per failure up to 1e-2 · mean(diag H), with a RuntimeWarning naming τ (the solution is
    still scored on the problem's own H). ValueError without ``jitter`` or when that fails too.
    An H whose float64 Cholesky pivots stay above 1e-13 · max diag H (any damped H; at damping 0
    e.g. a float64 H of cond 1e12) is factored as given, exactly the reference's factor.
    """
    return with_jitter(_inverse_factor, H, xp, jitter)


def eigh_inplace(A, xp, staged: bool = False):
    """(λ ascending, Q) with A = Q diag(λ) Qᵀ for symmetric A (n × n), overwriting A where it can.

    On CuPy in float32/float64 this runs cuSOLVER's syevd on A's own memory, so the only
    extra memory is cuSOLVER's workspace, about 4 n² (``cupy.linalg.eigh`` first copies A,
    one n × n more); past the 32-bit workspace size (``syevd_lwork_overflows``) through the
    64-bit ``cusolverDnXsyevd`` (``solvers.cusolver``). syevd writes the eigenvectors column-major, i.e. Qᵀ in A's row-major
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
            if syevd_lwork_overflows(A.shape[0]):
                from layerprune.solvers.cusolver import xsyevd_inplace

                return xsyevd_inplace(A)
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
    Raises ValueError when Hn has an eigenvalue below −tol·max λ (not PSD), tol = max(psd_tol,
    n·ε) with ε the coarser of H's and the decomposition's precision: a PSD but singular H (damping
    0, fewer samples than inputs) comes back from a float32 H or a float32 eigh with eigenvalues
    of order −n·ε·max λ that are rounding, not a wrong input; they are clipped to 0.
    """
    dtype = np.dtype(dtype or np.float64)
    eps = max(float(np.finfo(dtype).eps), float(np.finfo(H.dtype).eps) if H.dtype.kind == "f" else 0.0)
    psd_tol = max(psd_tol, H.shape[0] * eps)
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
