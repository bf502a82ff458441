"""Symmetric eigendecomposition A = Q diag(λ) Qᵀ in three stages, with a bounded workspace.

cuSOLVER's one-call ``syevd`` needs about 4 n² floats of workspace beside A (measured at
n = 4096 and 11008, ``benchmarks/eigh_workspace.py``; its back-transformation alone,
``ormtr``, asks for 3 n², 2 n² even for a panel of columns). In stages the peak beside A is one
n × n array and a panel:

1. ``sytrd`` reduces A (n × n) in place to T = Hᵀ A H, tridiagonal (d, e), and ``orgtr``
   then overwrites A with the orthogonal H itself;
2. T = Z diag(λ) Zᵀ on the host: LAPACK's divide and conquer ``stedc`` (host memory
   2 n², no device memory), in A's precision;
3. Qᵀ = Zᵀ Hᵀ, a panel of rows of Zᵀ at a time, written back over that panel.

The same stages run through cuSOLVER on CuPy arrays and through LAPACK on NumPy arrays
(``_Cusolver``, ``_Lapack``: one small class per library, the same two calls), so the
logic is tested on the CPU. Row-major arrays are handed to these column-major
libraries as they are: A is symmetric, after ``orgtr`` A's memory holds Hᵀ, and the
arrays of eigenvectors hold Zᵀ and Qᵀ (row i = eigenvector i); Q is returned as the
transpose of that array, a view.
"""

from __future__ import annotations

import ctypes

import numpy as np

from layerprune.problems.backend import array_module, to_numpy
from layerprune.solvers.cusolver import library as cusolver_library

_LOWER = 0  # CUBLAS_FILL_MODE_LOWER (column-major lower = row-major upper)


def _capsule_pointer(capsule) -> int:
    """The C pointer inside a PyCapsule (SciPy's cython_lapack exports its routines as capsules)."""
    api = ctypes.pythonapi
    get_name, get_pointer = api.PyCapsule_GetName, api.PyCapsule_GetPointer
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


def _lapack_function(name: str, *argtypes):
    """A Fortran LAPACK routine of SciPy's own LAPACK, as a ctypes function (every argument by pointer)."""
    from scipy.linalg import cython_lapack

    return ctypes.CFUNCTYPE(None, *argtypes)(_capsule_pointer(cython_lapack.__pyx_capi__[name]))


def _ptr(a) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr)


def _ints(*values):
    return [ctypes.byref(ctypes.c_int(int(v))) for v in values]


def _check(info: int, routine: str) -> None:
    if info != 0:
        raise ValueError(f"eigendecomposition of the hessian failed ({routine} info={info})")


class _Lapack:
    """The stages on NumPy arrays through SciPy's LAPACK (float32 or float64)."""

    def __init__(self, dtype) -> None:
        p = "s" if dtype == np.float32 else "d"
        c, v = ctypes.c_char_p, ctypes.c_void_p
        self.dtype = dtype
        self._sytrd = _lapack_function(p + "sytrd", c, v, v, v, v, v, v, v, v, v)
        self._orgtr = _lapack_function(p + "orgtr", c, v, v, v, v, v, v, v)

    def sytrd(self, A):
        n = A.shape[0]
        d, e, tau = (np.empty(max(m, 1), dtype=self.dtype) for m in (n, n - 1, n - 1))
        work = np.empty(max(64 * n, 1), dtype=self.dtype)
        info = ctypes.c_int()
        self._sytrd(b"L", *_ints(n), _ptr(A), *_ints(n), _ptr(d), _ptr(e), _ptr(tau), _ptr(work),
                    *_ints(work.size), ctypes.byref(info))
        _check(info.value, "sytrd")
        return d, e[: n - 1], tau

    def orgtr(self, A, tau) -> None:
        n = A.shape[0]
        work = np.empty(max(64 * n, 1), dtype=self.dtype)
        info = ctypes.c_int()
        self._orgtr(b"L", *_ints(n), _ptr(A), *_ints(n), _ptr(tau), _ptr(work), *_ints(work.size), ctypes.byref(info))
        _check(info.value, "orgtr")


class _Cusolver:
    """The stages on CuPy arrays through cuSOLVER (float32 or float64), called with ctypes:
    CuPy's own bindings stop short of sytrd and orgtr."""

    def __init__(self, dtype) -> None:
        from cupy.cuda import device

        p = "S" if dtype == np.float32 else "D"
        lib = cusolver_library()
        self.dtype = dtype
        self._handle = ctypes.c_void_p(device.get_cusolver_handle())
        self._sytrd_size, self._sytrd = getattr(lib, f"cusolverDn{p}sytrd_bufferSize"), getattr(lib, f"cusolverDn{p}sytrd")
        self._orgtr_size, self._orgtr = getattr(lib, f"cusolverDn{p}orgtr_bufferSize"), getattr(lib, f"cusolverDn{p}orgtr")

    def _call(self, fn, *args) -> None:
        status = fn(self._handle, *args)
        if status != 0:
            raise RuntimeError(f"cuSOLVER {fn.__name__} returned status {status}")

    def _run(self, size_fn, fn, name: str, *args) -> None:
        """Query the workspace, allocate it, run on CuPy's current stream, check info."""
        import cupy
        from cupy.cuda import cusolver

        cusolver.setStream(self._handle.value, cupy.cuda.get_current_stream().ptr)
        lwork = ctypes.c_int()
        self._call(size_fn, *args, ctypes.byref(lwork))
        work, info = cupy.empty(max(lwork.value, 1), dtype=self.dtype), cupy.zeros(1, dtype=np.int32)
        self._call(fn, *args, _ptr(work), lwork, _ptr(info))
        del work
        _check(int(info[0]), name)

    def sytrd(self, A):
        import cupy

        n = A.shape[0]
        d, e, tau = (cupy.empty(max(m, 1), dtype=self.dtype) for m in (n, n - 1, n - 1))
        self._run(self._sytrd_size, self._sytrd, "sytrd", _LOWER, n, _ptr(A), n, _ptr(d), _ptr(e), _ptr(tau))
        return d, e[: n - 1], tau

    def orgtr(self, A, tau) -> None:
        n = A.shape[0]
        self._run(self._orgtr_size, self._orgtr, "orgtr", _LOWER, n, _ptr(A), n, _ptr(tau))


def tridiagonal_eigh(d: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(λ ascending, Zᵀ) for the symmetric tridiagonal T (diagonal d, off-diagonal e), on the host
    by LAPACK's divide and conquer (s/dstedc, in d's precision, float32 or float64). Row i of the
    returned n × n array is eigenvector i."""
    dtype = np.float32 if np.asarray(d).dtype == np.float32 else np.float64
    n = d.size
    c, v = ctypes.c_char_p, ctypes.c_void_p
    stedc = _lapack_function(("s" if dtype == np.float32 else "d") + "stedc", c, v, v, v, v, v, v, v, v, v, v)
    lam = np.array(d, dtype=dtype)
    off = np.array(e, dtype=dtype) if n > 1 else np.zeros(1, dtype=dtype)
    Zt = np.empty((n, n), dtype=dtype)  # column-major Z = row-major Zᵀ
    work = np.empty(1 + 4 * n + n * n, dtype=dtype)
    iwork = np.empty(3 + 5 * n, dtype=np.int32)
    info = ctypes.c_int()
    stedc(b"I", *_ints(n), _ptr(lam), _ptr(off), _ptr(Zt), *_ints(n), _ptr(work), *_ints(work.size),
          _ptr(iwork), *_ints(iwork.size), ctypes.byref(info))
    _check(info.value, "stedc")
    return lam, Zt


def staged_eigh(A, xp, panel: int | None = None):
    """(λ ascending, Q) with A = Q diag(λ) Qᵀ; A (n × n, symmetric, C-contiguous float32/float64)
    is overwritten. ``panel`` rows of Qᵀ are formed per product (default n/8, at least 256):
    the device holds A, Zᵀ (which becomes Qᵀ) and one panel × n temporary."""
    if A.ndim != 2 or A.shape[0] != A.shape[1] or not A.flags.c_contiguous or A.dtype not in (np.float32, np.float64):
        raise ValueError(f"staged_eigh needs a square C-contiguous float32/float64 array, got {A.shape} {A.dtype}")
    if not getattr(A.flags, "writeable", True) or array_module(A) is not xp:  # CuPy arrays are always writeable
        raise ValueError("staged_eigh overwrites A: it must be a writeable array of the backend it runs on")
    n = A.shape[0]
    lib = (_Lapack if xp is np else _Cusolver)(A.dtype.type)
    d, e, tau = lib.sytrd(A)
    lib.orgtr(A, tau)  # A's memory: Hᵀ
    del tau
    lam, Zt = tridiagonal_eigh(to_numpy(d), to_numpy(e))
    del d, e
    Qt = xp.asarray(Zt)  # Zᵀ, overwritten by Qᵀ = Zᵀ Hᵀ below, a panel of rows at a time
    del Zt
    panel = n if n <= 256 else max(256, panel or -(-n // 8))
    for start in range(0, n, panel):
        rows = slice(start, min(start + panel, n))
        Qt[rows] = Qt[rows] @ A
    return xp.asarray(lam), Qt.T
