"""cuSOLVER routines CuPy does not bind, called through ctypes on CuPy arrays.

- :func:`library`: the libcusolver CuPy has loaded (the staged eigendecomposition's sytrd/orgtr
  come from it too, ``solvers.staged_eigh``);
- :func:`xsyevd_inplace`: the one-call symmetric eigendecomposition through the 64-bit API
  ``cusolverDnXsyevd``. CuPy's ``cusolver.ssyevd`` takes its workspace size as a 32-bit ``int``
  of entries: at n ≳ 23170 (4 n² > 2³¹, e.g. Llama-3-70B's down_proj, in = 28672) its
  ``bufferSize`` answers INVALID_VALUE. ``Xsyevd`` sizes its workspace in bytes (``size_t``), so
  the one-call route stays open at those sizes when the memory is there.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np

CUDA_R_32F, CUDA_R_64F = 0, 1  # cudaDataType
EIG_MODE_VECTOR = 1  # CUSOLVER_EIG_MODE_VECTOR
FILL_LOWER = 0  # CUBLAS_FILL_MODE_LOWER (column-major lower = row-major upper)


def library() -> ctypes.CDLL:
    """The libcusolver CuPy has loaded (found in the process's memory map)."""
    from cupy.cuda import cusolver  # noqa: F401  (loads the library)

    with open("/proc/self/maps") as maps:
        for line in maps:
            match = re.search(r"(/\S*libcusolver\.so[.\d]*)$", line.strip())
            if match:
                return ctypes.CDLL(match.group(1))
    raise RuntimeError("libcusolver is not loaded: this routine needs cuSOLVER")


def check_status(status: int, routine: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuSOLVER {routine} returned status {status}")


def handle_on_current_stream() -> ctypes.c_void_p:
    """CuPy's cuSOLVER handle of the current device, set to CuPy's current stream."""
    import cupy
    from cupy.cuda import cusolver, device

    handle = device.get_cusolver_handle()
    cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
    return ctypes.c_void_p(handle)


def xsyevd_inplace(A):
    """(λ ascending, Q) with A = Q diag(λ) Qᵀ for a symmetric C-contiguous float32/float64 CuPy
    array A (n × n), by ``cusolverDnXsyevd`` on A's own memory (A becomes Qᵀ; Q is returned as
    ``A.T``, a view). The device workspace (about 4 n² entries, as the 32-bit syevd) is allocated
    from CuPy's pool for the call; ValueError when the decomposition reports failure."""
    import cupy

    if A.ndim != 2 or A.shape[0] != A.shape[1] or not A.flags.c_contiguous or A.dtype not in (np.float32, np.float64):
        raise ValueError(f"xsyevd_inplace needs a square C-contiguous float32/float64 array, got {A.shape} {A.dtype}")
    lib = library()
    c_void_p, c_int64, c_size_t, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_int
    lib.cusolverDnXsyevd_bufferSize.argtypes = [c_void_p, c_void_p, c_int, c_int, c_int64, c_int, c_void_p, c_int64,
                                                c_int, c_void_p, c_int, ctypes.POINTER(c_size_t),
                                                ctypes.POINTER(c_size_t)]
    lib.cusolverDnXsyevd.argtypes = [c_void_p, c_void_p, c_int, c_int, c_int64, c_int, c_void_p, c_int64, c_int,
                                     c_void_p, c_int, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p]
    n = A.shape[0]
    dtype = CUDA_R_32F if A.dtype == np.float32 else CUDA_R_64F
    lam = cupy.empty(n, dtype=A.dtype)
    handle = handle_on_current_stream()
    params = c_void_p()
    check_status(lib.cusolverDnCreateParams(ctypes.byref(params)), "cusolverDnCreateParams")
    try:
        on_device, on_host = c_size_t(), c_size_t()
        check_status(lib.cusolverDnXsyevd_bufferSize(handle, params, EIG_MODE_VECTOR, FILL_LOWER, n, dtype,
                                                     A.data.ptr, n, dtype, lam.data.ptr, dtype,
                                                     ctypes.byref(on_device), ctypes.byref(on_host)),
                     "cusolverDnXsyevd_bufferSize")
        work = cupy.empty(max(on_device.value, 1), dtype=np.uint8)
        host = np.empty(max(on_host.value, 1), dtype=np.uint8)
        info = cupy.zeros(1, dtype=np.int32)
        check_status(lib.cusolverDnXsyevd(handle, params, EIG_MODE_VECTOR, FILL_LOWER, n, dtype, A.data.ptr, n,
                                          dtype, lam.data.ptr, dtype, work.data.ptr, on_device.value,
                                          host.ctypes.data, on_host.value, info.data.ptr),
                     "cusolverDnXsyevd")
        code = int(info[0])  # synchronizes: the workspace is free to go after this
        del work
    finally:
        lib.cusolverDnDestroyParams(params)
    if code != 0:
        raise ValueError(f"eigendecomposition of the hessian failed (cuSOLVER Xsyevd info={code})")
    return lam, A.T
