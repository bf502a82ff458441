"""Workspace and time of cuSOLVER's symmetric eigensolvers at LLaMA-7B widths (float32), one device call.

    python benchmarks/eigh_workspace.py [--sizes 4096,11008] [--jacobi] [--staged] [--ormtr]

ALPS's setup holds the normalized Hessian (overwritten by its eigenvectors, ``solvers.linalg.eigh_inplace``)
plus the solver's workspace; this prints that workspace in units of n² floats for syevd (divide and conquer,
one call), with ``--jacobi`` for syevj, and with ``--staged`` for the staged route (``solvers.staged_eigh``:
sytrd and orgtr, host stedc, one product in panels; its row gives the most bytes held beside A at once, from a CuPy pool
hook, and the host step's seconds), with times and errors, on a correlated test matrix. ``--ormtr`` adds
the workspace cuSOLVER's ``ormtr`` (syevd's back-transformation) asks for, at full width and for a panel of n/8
columns (a workspace query after a real ``sytrd``; nothing is run).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4096,11008")
    ap.add_argument("--jacobi", action="store_true")
    ap.add_argument("--staged", action="store_true")
    ap.add_argument("--ormtr", action="store_true")
    args = ap.parse_args()
    import cupy
    from cupy.cuda import cublas, cusolver, device

    from layerprune.solvers.linalg import eigh_inplace, syevd_lwork_overflows

    handle = device.get_cusolver_handle()
    jobz, uplo = cusolver.CUSOLVER_EIG_MODE_VECTOR, cublas.CUBLAS_FILL_MODE_LOWER
    print("| n | solver | workspace (n² floats) | seconds | max |A − QΛQᵀ| / max |A| |")
    print("|---|---|---|---|---|")
    for n in map(int, args.sizes.split(",")):
        X = cupy.random.standard_normal((2 * n, n), dtype=cupy.float32)
        X[:, 1:] += 0.5 * X[:, :-1]  # correlated columns
        A = X.T @ X / (2 * n)
        del X
        lam = cupy.empty(n, dtype=cupy.float32)
        wide = syevd_lwork_overflows(n)  # past the 32-bit lwork: eigh_inplace calls the 64-bit Xsyevd
        lwork = float("nan") if wide else cusolver.ssyevd_bufferSize(handle, jobz, uplo, n, A.data.ptr, n, lam.data.ptr)
        B = A.copy()
        cupy.cuda.runtime.deviceSynchronize()
        t = time.perf_counter()
        w, Q = eigh_inplace(B, cupy)
        cupy.cuda.runtime.deviceSynchronize()
        sec = time.perf_counter() - t
        err = float(cupy.abs((Q * w[None, :]) @ Q.T - A).max() / cupy.abs(A).max())
        print(f"| {n} | {'Xsyevd (64-bit)' if wide else 'syevd'} (in place) | {lwork / n**2:.2f} | {sec:.3f} | {err:.1e} |", flush=True)
        del B, Q, w
        if args.jacobi:
            params = cusolver.createSyevjInfo()
            lwork = cusolver.ssyevj_bufferSize(handle, jobz, uplo, n, A.data.ptr, n, lam.data.ptr, params)
            B = A.copy()
            work = cupy.empty(lwork, dtype=cupy.float32)
            info = cupy.zeros(1, dtype=cupy.int32)
            cupy.cuda.runtime.deviceSynchronize()
            t = time.perf_counter()
            cusolver.ssyevj(handle, jobz, uplo, n, B.data.ptr, n, lam.data.ptr, work.data.ptr, lwork, info.data.ptr, params)
            cupy.cuda.runtime.deviceSynchronize()
            sec = time.perf_counter() - t
            Q = B.T
            err = float(cupy.abs((Q * lam[None, :]) @ Q.T - A).max() / cupy.abs(A).max())
            print(f"| {n} | syevj | {lwork / n**2:.2f} | {sec:.3f} | {err:.1e} |", flush=True)
            cusolver.destroySyevjInfo(params)
            del B, Q, work
        if args.staged:
            _staged_row(A, n)
        if args.ormtr:
            _ormtr_rows(A, n)


def _ormtr_rows(A, n: int) -> None:
    import ctypes

    import cupy

    from layerprune.solvers import staged_eigh as staged
    from layerprune.solvers.cusolver import library as cusolver_library

    lib = staged._Cusolver(A.dtype.type)
    B = A.copy()
    _, _, tau = lib.sytrd(B)
    ormtr_size = cusolver_library().cusolverDnSormtr_bufferSize
    C = cupy.empty_like(B)
    for columns in (n, n // 8):
        lwork = ctypes.c_int()
        status = ormtr_size(lib._handle, 0, staged._LOWER, 0, n, columns, staged._ptr(B), n, staged._ptr(tau),
                            staged._ptr(C), n, ctypes.byref(lwork))  # side left, no transpose
        print(f"| {n} | ormtr workspace query, {columns} columns (status {status}) | {lwork.value / n**2:.2f} | | |",
              flush=True)
    del B, C


def _staged_row(A, n: int) -> None:
    import cupy
    from gpu_bench import PeakMemory

    from layerprune.solvers import staged_eigh as staged

    host_seconds = []
    tridiagonal = staged.tridiagonal_eigh

    def timed_tridiagonal(d, e):
        t = time.perf_counter()
        out = tridiagonal(d, e)
        host_seconds.append(time.perf_counter() - t)
        return out

    staged.tridiagonal_eigh = timed_tridiagonal
    try:
        for panel in (n // 8, n // 4):
            B = A.copy()
            cupy.cuda.runtime.deviceSynchronize()
            with PeakMemory(cupy) as mem:
                t = time.perf_counter()
                w, Q = staged.staged_eigh(B, cupy, panel=panel)
                cupy.cuda.runtime.deviceSynchronize()
                sec = time.perf_counter() - t
            extra = mem.peak / (4 * n * n)  # beside A, counting the n² array that becomes Q (syevd writes Q into A)
            err = float(cupy.abs((Q * w[None, :]) @ Q.T - A).max() / cupy.abs(A).max())
            print(f"| {n} | staged, panel n/{n // panel} (host stedc {host_seconds[-1]:.2f} s) | {extra:.2f} "
                  f"(with Q's n²) | {sec:.3f} | {err:.1e} |", flush=True)
            del B, Q, w
    finally:
        staged.tridiagonal_eigh = tridiagonal


if __name__ == "__main__":
    main()
