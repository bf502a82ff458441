"""The staged eigendecomposition (sytrd + orgtr → host stedc → product in panels) against float64 references."""

import numpy as np
import pytest
import scipy.linalg

from layerprune import solve
from layerprune.problems import synthetic_problem
from layerprune.solvers.staged_eigh import staged_eigh, tridiagonal_eigh


def _correlated_psd(rng, n):
    X = rng.standard_normal((2 * n + 3, n))
    X[:, 1:] += 0.6 * X[:, :-1]  # correlated columns, a spread spectrum
    X[:, rng.integers(n)] *= 8.0  # an outlier channel
    return X.T @ X / X.shape[0]


def _check_decomposition(A64, lam, Q, tol):
    Q64, lam64 = np.asarray(Q, dtype=np.float64), np.asarray(lam, dtype=np.float64)
    ref = np.linalg.eigvalsh(A64)
    scale = np.abs(A64).max()
    assert np.all(np.diff(lam64) >= -tol * scale)  # ascending
    assert np.abs(lam64 - ref).max() < tol * scale
    assert np.abs((Q64 * lam64) @ Q64.T - A64).max() < tol * scale
    assert np.abs(Q64.T @ Q64 - np.eye(A64.shape[0])).max() < tol * 10


@pytest.mark.parametrize("n, panel", [(1, None), (2, None), (9, None), (300, 256), (700, 256), (700, 300), (520, None)])
def test_staged_eigh_float64_matches_a_dense_reference(n, panel):
    rng = np.random.default_rng(n)
    A64 = _correlated_psd(rng, n)
    A = A64.copy()
    lam, Q = staged_eigh(A, np, panel=panel)
    assert Q.shape == (n, n) and lam.dtype == np.float64
    _check_decomposition(A64, lam, Q, 1e-11)


def test_staged_eigh_float32_is_accurate_to_single_precision():
    rng = np.random.default_rng(7)
    A64 = _correlated_psd(rng, 600)
    lam, Q = staged_eigh(A64.astype(np.float32), np, panel=256)
    assert Q.dtype == np.float32
    _check_decomposition(A64, lam, Q, 2e-5)


def test_tridiagonal_eigh_matches_scipy():
    rng = np.random.default_rng(3)
    d, e = rng.standard_normal(50), rng.standard_normal(49)
    lam, Zt = tridiagonal_eigh(d, e)
    ref_lam, ref_Z = scipy.linalg.eigh_tridiagonal(d, e)
    assert np.allclose(lam, ref_lam, atol=1e-12)
    assert np.allclose(np.abs(Zt), np.abs(ref_Z.T), atol=1e-8)  # eigenvectors up to sign (distinct λ)


def test_staged_eigh_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        staged_eigh(np.zeros((3, 4)), np)
    with pytest.raises(ValueError, match="float32/float64"):
        staged_eigh(np.eye(3, dtype=np.int64), np)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_alps_with_the_staged_eigh_matches_the_one_call_eigh(pattern):
    p = synthetic_problem(24, 80, 0.7 if pattern == "unstructured" else 0.5, pattern=pattern, seed=11)
    staged = solve(p, "alps", device="cpu", dtype="float32", staged_eigh=True)
    direct = solve(p, "alps", device="cpu", dtype="float32", staged_eigh=False)
    assert np.array_equal(staged.weight != 0, direct.weight != 0)
    assert staged.objective == pytest.approx(direct.objective, rel=1e-5)


@pytest.mark.gpu
def test_staged_eigh_on_the_gpu_matches_cupy_and_uses_less_workspace():
    """cuSOLVER sytrd + orgtr, host stedc, a product in panels: same λ and Q diag(λ) Qᵀ as float64, and a
    smaller peak beside A than syevd's (CuPy pool hook)."""
    import cupy

    from layerprune.solvers.linalg import eigh_inplace

    rng = np.random.default_rng(5)
    n = 1536
    A64 = _correlated_psd(rng, n)
    pool = cupy.get_default_memory_pool()

    def peak_beside(fn):
        A = cupy.asarray(A64, dtype=cupy.float32)
        pool.free_all_blocks()
        base = pool.total_bytes()
        lam, Q = fn(A)
        cupy.cuda.runtime.deviceSynchronize()
        # The pool keeps freed blocks: its total is the most held at once since free_all_blocks.
        return cupy.asnumpy(lam), cupy.asnumpy(Q), (pool.total_bytes() - base) / (4 * n * n)

    lam, Q, staged_extra = peak_beside(lambda A: staged_eigh(A, cupy, panel=n // 8))
    _check_decomposition(A64, lam, Q, 2e-5)
    _, _, syevd_extra = peak_beside(lambda A: eigh_inplace(A, cupy))
    assert staged_extra < syevd_extra


def test_staged_eigh_refuses_a_read_only_array():
    A = np.eye(4)
    A.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        staged_eigh(A, np)


def test_syevd_lwork_overflow_boundary():
    """The 32-bit workspace bound (4 n² entries < 2³¹) is where the 64-bit Xsyevd takes over."""
    from layerprune.solvers.linalg import syevd_lwork_overflows

    assert not syevd_lwork_overflows(14336)  # Llama-3-8B's down_proj: CuPy's syevd
    assert not syevd_lwork_overflows(23170)
    assert syevd_lwork_overflows(23171)
    assert syevd_lwork_overflows(28672)  # Llama-3-70B's down_proj


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [("float32", 2e-5), ("float64", 1e-11)])
def test_xsyevd_matches_a_float64_reference_and_is_what_eigh_inplace_calls_past_the_32_bit_bound(monkeypatch, dtype, tol):
    """The 64-bit cusolverDnXsyevd (ctypes): same λ and Q diag(λ) Qᵀ as float64; ``eigh_inplace`` takes it
    when the 32-bit lwork would overflow (forced here at a small n)."""
    import cupy

    from layerprune.solvers import cusolver, linalg

    A64 = _correlated_psd(np.random.default_rng(11), 777)
    lam, Q = cusolver.xsyevd_inplace(cupy.asarray(A64, dtype=dtype))
    _check_decomposition(A64, cupy.asnumpy(lam), cupy.asnumpy(Q), tol)
    calls = []
    monkeypatch.setattr(linalg, "syevd_lwork_overflows", lambda n: calls.append(n) or True)
    monkeypatch.setattr(cusolver, "xsyevd_inplace", lambda A, real=cusolver.xsyevd_inplace: calls.append("x") or real(A))
    lam, Q = linalg.eigh_inplace(cupy.asarray(A64, dtype=dtype), cupy)
    assert calls == [777, "x"]
    _check_decomposition(A64, cupy.asnumpy(lam), cupy.asnumpy(Q), tol)
