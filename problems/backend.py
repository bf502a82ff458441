"""The array backend: NumPy on CPU, CuPy on GPU, one code path (``xp``).

Arrays cross between torch, NumPy and CuPy without copies where the memory
allows it (DLPack for CUDA tensors, ``Tensor.numpy()`` for CPU tensors).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=1)
def cupy_or_none():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # no CuPy, no driver, or no device
        return None
    return None


@functools.lru_cache(maxsize=1)
def _count_ge_kernel():
    """A CuPy reduction: #{u ≥ cand} along an axis, reading ``u`` once (no boolean temporary)."""
    return cupy_or_none().ReductionKernel("T u, T cand", "int64 c", "u >= cand ? 1 : 0", "a + b", "c = a", "0", "count_ge")


def _count_ge(u, cand, axis: int):
    """#{u ≥ cand} along ``axis`` (cand broadcast against u): NumPy compares and sums,
    CuPy runs one fused reduction."""
    if array_module(u) is np:
        return (u >= cand).sum(axis=axis)
    return _count_ge_kernel()(u, cand, axis=axis)


def count_at_least(u, cand, chunk: int = 4096):
    """#{u[i, j] ≥ cand[i]} per row (rows,), for u (rows × n) and cand (rows,) of one dtype.

    A GPU reduction gives each output row to one block of threads, so a few long rows are
    first counted in chunks of ``chunk`` entries (many outputs, all in parallel), then summed.
    This is what makes the bitwise radix select (32 such passes) cheap and copy-free.
    """
    rows, n = u.shape
    if rows >= 1024 or n <= chunk:
        return _count_ge(u, cand[:, None], axis=1)
    if rows == 1:  # one long row: an (n/chunk × chunk) view plus the tail
        flat, full = u.reshape(-1), n - n % chunk
        count = _count_ge(flat[:full].reshape(-1, chunk), cand[0], axis=1).sum()
        if full < n:
            count = count + _count_ge(flat[full:], cand[0], axis=0)
        return count.reshape(1)
    if n % chunk == 0:
        return _count_ge(u.reshape(rows, -1, chunk), cand[:, None, None], axis=2).sum(axis=1)
    return _count_ge(u, cand[:, None], axis=1)


# In-place row-block kernels for CuPy: K (b × m × m, C order) is read and written where it lies, so
# neither a t × m × m gather nor its scatter back is made. The product is rounded before the add
# (``__dmul_rn`` / ``__fmul_rn`` are never fused into an FMA), so ``rows_add_outer`` gives NumPy's bits.
_ROW_BLOCK_KERNELS = r"""
template<typename T> __device__ T mul_rn(T a, T b);
template<> __device__ double mul_rn<double>(double a, double b) { return __dmul_rn(a, b); }
template<> __device__ float mul_rn<float>(float a, float b) { return __fmul_rn(a, b); }

// K[rows[s]][p][q] += a[s][p] * b[s][q], one thread per (s, p, q)
template<typename T>
__global__ void rows_add_outer(T* K, const long long* rows, const T* a, const T* b, long long t, long long m) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long mm = m * m;
    if (i >= t * mm) return;
    long long s = i / mm, pq = i - s * mm, p = pq / m, q = pq - p * m;
    K[rows[s] * mm + pq] += mul_rn(a[s * m + p], b[s * m + q]);
}

// out[s][p] = sum_q K[rows[s]][p][q] * h[s][q], one warp per (s, p)
template<typename T>
__global__ void rows_matvec(const T* K, const long long* rows, const T* h, T* out, long long t, long long m) {
    long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= t * m) return;  // whole warps: blockDim is a multiple of 32
    long long s = warp / m, p = warp - s * m;
    const T* Kp = K + (rows[s] * m + p) * m;
    const T* hs = h + s * m;
    T acc = 0;
    for (long long q = lane; q < m; q += 32) acc += Kp[q] * hs[q];
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out[s * m + p] = acc;
}
"""
_KERNEL_TYPES = {np.dtype(np.float64): "double", np.dtype(np.float32): "float"}
_THREADS = 256  # a multiple of 32: the matvec's warps must be whole


@functools.lru_cache(maxsize=1)
def _row_block_module():
    names = [f"{k}<{t}>" for k in ("rows_add_outer", "rows_matvec") for t in _KERNEL_TYPES.values()]
    return cupy_or_none().RawModule(code=_ROW_BLOCK_KERNELS, options=("-std=c++14",), name_expressions=names)


@functools.cache
def _row_block_kernel(name: str, dtype: np.dtype):
    return _row_block_module().get_function(f"{name}<{_KERNEL_TYPES[dtype]}>")


def _launch(name: str, K, threads: int, *args) -> None:
    """Kernel ``name`` for K's dtype over ``threads`` threads (whole blocks of ``_THREADS``), K first."""
    _row_block_kernel(name, np.dtype(K.dtype))(((threads + _THREADS - 1) // _THREADS,), (_THREADS,), (K, *args))


def _row_block_args(K, rows, *vectors):
    """(rows, vectors) ready for a kernel: rows int64 and every vector (t × m) C-ordered, or None when
    CuPy's kernels do not apply (K not C-ordered float32/float64, or a vector of another dtype: the
    gathering path then keeps NumPy's type promotion). Shapes are checked; the row indices are not
    (that would read them back to the host each call): they must lie in [0, b), as the callers' do."""
    xp, m = array_module(K), int(K.shape[1])
    if K.ndim != 3 or int(K.shape[2]) != m:
        raise ValueError(f"row-block update: K must be (b × m × m), got {tuple(K.shape)}")
    rows = xp.ascontiguousarray(xp.asarray(rows), dtype=np.int64)
    t = int(rows.shape[0])
    for v in vectors:
        if tuple(v.shape) != (t, m):
            raise ValueError(f"row-block update: a ({t} × {m}) array was expected, got {tuple(v.shape)}")
    dtype = np.dtype(K.dtype)
    if dtype not in _KERNEL_TYPES or not K.flags.c_contiguous or any(np.dtype(v.dtype) != dtype for v in vectors):
        return None
    return rows, [xp.ascontiguousarray(v) for v in vectors]


def rows_matvec(K, rows, h):
    """(t × m) with row t = K[rows[t]] @ h[t], for K (b × m × m), rows (t,) distinct, h (t × m).

    Both backends read each m × m block in place (no t × m × m copy): NumPy one contraction per
    row, in ``einsum``'s order; CuPy one warp per output entry (its own summation order).
    """
    xp = array_module(K)
    if xp is np:
        out = np.empty(h.shape, dtype=np.result_type(K, h))
        for t, r in enumerate(np.asarray(rows).tolist()):
            np.einsum("ab,b->a", K[r], h[t], out=out[t])
        return out
    ready = _row_block_args(K, rows, h)
    if ready is None:
        return xp.einsum("tab,tb->ta", K[rows], h)
    (rows, (h,)), m = ready, int(K.shape[1])
    t = int(rows.shape[0])
    out = xp.empty((t, m), dtype=K.dtype)
    if t and m:
        _launch("rows_matvec", K, t * m * 32, rows, h, out, np.int64(t), np.int64(m))  # a warp per output
    return out


def rows_add_outer(K, rows, a, b) -> None:
    """K[rows[t]] += a[t] b[t]ᵀ in place, for K (b × m × m), rows (t,) distinct, a and b (t × m).

    Both backends update each m × m block where it lies (no t × m × m copy): NumPy one block at a
    time, CuPy one thread per entry. The products a[t]_i b[t]_j are rounded before the add on both,
    so the result is the same bit for bit. Rows must be distinct (CuPy's threads would race).
    """
    xp = array_module(K)
    if xp is np:
        for t, r in enumerate(np.asarray(rows).tolist()):
            K[r] += np.multiply.outer(a[t], b[t])
        return
    ready = _row_block_args(K, rows, a, b)
    if ready is None:
        block = K[rows]
        block += a[:, :, None] * b[:, None, :]
        K[rows] = block
        return
    (rows, (a, b)), m = ready, int(K.shape[1])
    t = int(rows.shape[0])
    if t and m:
        _launch("rows_add_outer", K, t * m * m, rows, a, b, np.int64(t), np.int64(m))  # a thread per entry


def free_device_bytes(xp) -> float:
    """Bytes an allocation on xp's device can take now: the driver's free memory plus what
    CuPy's pool holds unused (other processes' use counts against it). ``inf`` on NumPy."""
    if xp is np:
        return float("inf")
    free, _ = xp.cuda.runtime.memGetInfo()
    pool = xp.get_default_memory_pool()
    return float(free + pool.total_bytes() - pool.used_bytes())


def release_pool(xp) -> None:
    """Hand CuPy's unused pool blocks back to the driver (after a failed allocation); nothing on NumPy."""
    if xp is not np:
        xp.get_default_memory_pool().free_all_blocks()


def gpu_available() -> bool:
    """True when CuPy is installed and sees at least one CUDA device."""
    return cupy_or_none() is not None


def parse_device(device: str) -> tuple[str, int | None]:
    """``"cpu"`` → ("cpu", None); ``"cuda"``/``"gpu"`` → ("cuda", None); ``"cuda:N"`` → ("cuda", N).

    Only the name is checked here (no GPU needed), so bad names fail before any work.
    """
    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu", None
    if name in ("cuda", "gpu"):
        return "cuda", None
    kind, sep, index = name.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        return "cuda", int(index)
    raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or None (auto)")


def resolve_device(device: str | None) -> str:
    """``None`` → ``"cuda"`` when a GPU is usable, else ``"cpu"``; ``"cuda:N"`` is kept (and N
    checked against the devices CuPy sees); other names are refused."""
    if device is None:
        return "cuda" if gpu_available() else "cpu"
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if not gpu_available():
        raise RuntimeError(
            f"device={device!r} was asked for, but no GPU is usable: CuPy is not installed "
            "or sees no CUDA device (install the 'gpu' extra: pip install 'layerprune[gpu]')"
        )
    if index is None:
        return "cuda"
    count = cupy_or_none().cuda.runtime.getDeviceCount()
    if index >= count:
        raise ValueError(f"device {device!r} does not exist: CuPy sees {count} CUDA device(s) (cuda:0 … cuda:{count - 1})")
    return f"cuda:{index}"


def xp_for(device: str):
    """The array module for a resolved device name."""
    return cupy_or_none() if str(device).startswith("cuda") else np


def device_scope(device: str):
    """Context manager making ``device`` (resolved) CuPy's current device: ``cupy.cuda.Device(N)``
    for ``"cuda:N"``; for ``"cuda"`` and ``"cpu"`` it changes nothing."""
    import contextlib

    kind, index = parse_device(device)
    if kind == "cuda" and index is not None:
        return cupy_or_none().cuda.Device(index)
    return contextlib.nullcontext()


def array_module(a: Any):
    """NumPy or CuPy, whichever owns ``a``."""
    cp = cupy_or_none()
    if cp is not None and isinstance(a, cp.ndarray):
        return cp
    return np


def is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def to_xp(a: Any, xp, dtype=None):
    """Move ``a`` (NumPy, CuPy, torch or nested lists) onto backend ``xp``.

    torch CUDA tensors become CuPy arrays through DLPack (no copy); torch CPU
    tensors become NumPy arrays through ``.numpy()`` (no copy); bfloat16 and
    float16 tensors are upcast to float32 first since NumPy has no bfloat16.
    """
    if is_torch(a):
        t = a.detach()
        if t.dtype.is_floating_point and t.element_size() < 4:
            import torch

            t = t.to(torch.float32)
        if t.is_cuda:
            cp = cupy_or_none()
            if cp is None:
                raise RuntimeError("a CUDA tensor was given but CuPy is not usable")
            a = cp.from_dlpack(t.contiguous())
        else:
            a = t.contiguous().numpy()
    cp = cupy_or_none()
    if xp is np:
        if cp is not None and isinstance(a, cp.ndarray):
            a = cp.asnumpy(a)
        out = np.asarray(a)
    else:
        out = xp.asarray(a)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


def to_numpy(a: Any) -> np.ndarray:
    return to_xp(a, np)


def to_torch(a: Any):
    """NumPy/CuPy → torch without a copy (``torch.from_numpy`` / DLPack)."""
    import torch

    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.from_dlpack(a)


def like_input(a: Any, template: Any):
    """Return ``a`` in the array type of ``template`` (NumPy, CuPy or torch)."""
    if is_torch(template):
        t = to_torch(a)
        return t.to(device=template.device)
    return to_xp(a, array_module(template))


def synchronize(xp) -> None:
    """Wait for queued device work (no-op on NumPy), so host clocks time it."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


class PhaseClock:
    """Wall time of consecutive phases of a solver, device-synchronized at each lap."""

    def __init__(self, xp) -> None:
        import time

        self._xp, self._now = xp, time.perf_counter
        synchronize(xp)
        self._t = self._now()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        synchronize(self._xp)
        t = self._now()
        self.laps[name] = self.laps.get(name, 0.0) + t - self._t
        self._t = t


class matmul_precision:
    """Context manager: float32 matrix products on the GPU in ``"tf32"`` or ``"float32"``.

    TF32 (tensor cores, 10-bit mantissa products, float32 accumulation) runs float32
    GEMMs several times faster on Ampere/Hopper. A no-op on NumPy.
    """

    def __init__(self, xp, mode: str) -> None:
        if mode not in ("tf32", "float32"):
            raise ValueError(f"matmul precision must be 'tf32' or 'float32', got {mode!r}")
        self.xp, self.mode, self._saved = xp, mode, None

    def set(self, mode: str) -> None:
        if self.xp is np:
            return
        from cupy._core import _routines_linalg as rl

        rl.set_compute_type(np.float32, rl.COMPUTE_TYPE_TF32 if mode == "tf32" else rl.COMPUTE_TYPE_FP32)

    def __enter__(self) -> "matmul_precision":
        if self.xp is not np:
            from cupy._core import _routines_linalg as rl

            self._saved = rl.get_compute_type(np.float32)
            self.set(self.mode)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            from cupy._core import _routines_linalg as rl

            rl.set_compute_type(np.float32, self._saved)



class full_float32_matmul:
    """Context manager: torch's float32 matrix products in full float32 (no TF32, no bf16 passes),
    and bf16/fp16 products without reduced-precision split-K reductions, whatever the process
    set, restored on exit.

    ``torch.backends.cuda.matmul.allow_tf32 = True`` or ``torch.set_float32_matmul_precision("high")``
    make cuBLAS round float32 GEMM inputs to TF32 (10-bit mantissa, ~1e-3 relative error per
    product), and "medium" lets oneDNN use bf16 on CPUs. torch keeps both a legacy setting
    (``get_float32_matmul_precision``, which ``allow_tf32`` also writes) and, from 2.9, per-backend
    ones (``torch.backends.cuda.matmul.fp32_precision``, ``…mkldnn.matmul…``); cuBLAS refuses to
    run when the two disagree. So inside: ``allow_tf32 = False`` (legacy "highest" and cuda "ieee"
    together) and oneDNN "ieee"; on exit the legacy value and then the per-backend strings are set
    back as they were (a legacy value that was unreadable because the process had mixed the two
    APIs stays "highest").
    """

    def __enter__(self) -> "full_float32_matmul":
        import torch

        self._backends = [m for m in (torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None))
                          if m is not None and hasattr(m, "fp32_precision")]
        self._saved = [(m, m.fp32_precision) for m in self._backends]
        try:
            self._legacy = torch.get_float32_matmul_precision()
        except RuntimeError:  # the process mixed the legacy and the new API
            self._legacy = None
        torch.backends.cuda.matmul.allow_tf32 = False
        for m in self._backends[1:]:
            m.fp32_precision = "ieee"
        matmul = torch.backends.cuda.matmul  # bf16/fp16 GEMMs: no split-K partial sums in the narrow type
        self._reduced = {k: getattr(matmul, k) for k in self.REDUCED if hasattr(matmul, k)}
        for k in self._reduced:
            setattr(matmul, k, False)
        return self

    REDUCED = ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction")

    def __exit__(self, *exc) -> None:
        import torch

        for k, value in self._reduced.items():
            setattr(torch.backends.cuda.matmul, k, value)
        if self._legacy is not None:
            torch.set_float32_matmul_precision(self._legacy)
        for m, value in self._saved:
            m.fp32_precision = value


def add_gram(acc: Any, a: Any, b: Any) -> None:
    """acc += aᵀb (torch; a, b: rows × in, acc: in × in) in full float32 precision.

    On a GPU, bf16/fp16 inputs into a float32 ``acc`` go through the tensor cores with float32
    output (``torch.mm(..., out_dtype=float32)``): a product of two bf16/fp16 values is exact in
    float32 and the GEMM accumulates in float32, so this is the same computation as upcasting
    first and multiplying in full float32, at the tensor cores' speed. Elsewhere a and b are
    upcast to ``acc``'s dtype. The one product of ``HessianAccumulator`` (a = b = x) and
    ``CrossAccumulator`` (a = x_p, b = x_d): with a = b both give the same bits.
    """
    import torch

    narrow = a.dtype in (torch.bfloat16, torch.float16) and acc.dtype == torch.float32
    with full_float32_matmul():
        if narrow and a.is_cuda:
            acc.add_(torch.mm(a.T, b, out_dtype=torch.float32))
        else:
            acc.addmm_(a.to(acc.dtype).T, b.to(acc.dtype))
