"""ALPS against references: exact optima by enumeration, direct solves, SparseGPT."""

import itertools

import numpy as np
import pytest

from layerprune import LayerProblem, solve, solve_many
from layerprune.problems import synthetic_problem
from layerprune.solvers.pcg import masked_pcg


def _row_optimum(h, w, support):
    """min over x with supp(x) ⊆ support of (x − w)ᵀ h (x − w), float64 direct solve."""
    s = list(support)
    g = h @ w
    x = np.zeros_like(w)
    if s:
        x[s] = np.linalg.solve(h[np.ix_(s, s)], g[s])
    e = x - w
    return float(e @ h @ e)


def _row_supports(problem):
    """Every support one row may have under pattern 'row' or N:M (enumerated)."""
    inp, pat = problem.shape[1], problem.pattern
    if pat.kind == "row":
        return list(itertools.combinations(range(inp), int(round((1 - problem.sparsity) * inp))))
    per_group = list(itertools.combinations(range(pat.m), pat.n))
    return [
        tuple(g * pat.m + j for g, choice in enumerate(choices) for j in choice)
        for choices in itertools.product(per_group, repeat=inp // pat.m)
    ]


def _exact_rows(problem):
    """Per-row exact optima (the objective separates over rows for 'row' and N:M)."""
    H = problem.hessian.astype(np.float64)
    W = problem.weight.astype(np.float64)
    supports = _row_supports(problem)
    return np.array([min(_row_optimum(H, w, s) for s in supports) for w in W])


def _row_objectives(problem, X):
    E = np.asarray(X, dtype=np.float64) - problem.weight.astype(np.float64)
    return np.einsum("ri,ij,rj->r", E, problem.hessian.astype(np.float64), E)


def _tiny_problem(rng, out, inp, pattern, sparsity):
    X = rng.standard_normal((3 * inp, inp)) @ rng.standard_normal((inp, inp))  # correlated inputs
    X[:, rng.integers(inp)] *= 6.0  # an outlier channel
    W = rng.standard_normal((out, inp))
    return LayerProblem.from_activations(X, W, sparsity=sparsity, pattern=pattern)


@pytest.mark.parametrize("pattern,sparsity", [("row", 0.5), ("row", 0.75), ("2:4", None), ("1:4", None)])
def test_alps_reaches_enumerated_optimum_on_tiny_problems(rng, pattern, sparsity):
    gap_alps, gap_sgpt, exact_rows, rows = 0.0, 0.0, 0, 0
    for _ in range(5):
        p = _tiny_problem(rng, 4, 12, pattern, sparsity)
        best = _exact_rows(p)
        alps = _row_objectives(p, solve(p, "alps", dtype="float64").weight)
        sgpt = _row_objectives(p, solve(p, "sparsegpt", dtype="float64").weight)
        assert (alps >= best * (1 - 1e-9)).all() and (sgpt >= best * (1 - 1e-9)).all()
        gap_alps += (alps - best).sum() / best.sum()
        gap_sgpt += (sgpt - best).sum() / best.sum()
        exact_rows += int((alps <= best * (1 + 1e-8)).sum())
        rows += len(best)
    # Measured (BENCHMARKS.md): on 20 such 4×12 layers per pattern (seed 0) ALPS with its swap
    # local search (on by default at this size) leaves 0.3–2.2% of SparseGPT's total gap and is
    # exactly optimal on 87–94% of rows; SparseGPT is never exact.
    assert gap_alps <= 0.1 * gap_sgpt, (gap_alps, gap_sgpt)
    assert exact_rows >= 0.7 * rows, f"ALPS exact on {exact_rows}/{rows} rows"


def test_swap_search_never_worsens_and_keeps_the_pattern(rng):
    """Each accepted swap lowers the row objective (float64 direct solves), counts per row and
    per N:M group are unchanged, and a support that is already optimal is left alone."""
    from layerprune.solvers.local_search import swap_search

    for pattern, sparsity in [("row", 0.6), ("2:4", None), ("unstructured", 0.7)]:
        p = _tiny_problem(rng, 6, 16, pattern, sparsity)
        H, W = p.hessian.astype(np.float64), p.weight.astype(np.float64)
        d = np.sqrt(np.diag(H))
        Hn, G = H / np.outer(d, d), (W * d) @ (H / np.outer(d, d))
        start = p.pattern.mask(np.abs(rng.standard_normal(W.shape)), p.sparsity)  # a poor support
        group = 4 if pattern == "2:4" else None
        new, swaps = swap_search(Hn, G, start, group=group, max_swaps=1000)  # to a local optimum
        assert swaps > 0
        np.testing.assert_array_equal(new.sum(axis=1), start.sum(axis=1))
        if group:
            np.testing.assert_array_equal(new.reshape(6, 4, 4).sum(-1), start.reshape(6, 4, 4).sum(-1))
        before = [_row_optimum(H, W[i], np.flatnonzero(start[i])) for i in range(6)]
        after = [_row_optimum(H, W[i], np.flatnonzero(new[i])) for i in range(6)]
        assert all(a <= b * (1 + 1e-12) for a, b in zip(after, before)) and sum(after) < sum(before)
        again, more = swap_search(Hn, G, new, group=group)
        assert more == 0
        np.testing.assert_array_equal(again, new)


def test_local_search_runs_only_with_the_refit(rng):
    """A swap's gain assumes the refit weights: without the refit ALPS returns ADMM's own point."""
    p = _tiny_problem(rng, 16, 32, "row", 0.5)
    with_refit = solve(p, "alps", dtype="float64")
    without = solve(p, "alps", dtype="float64", refit=False)
    assert "local_search_swaps" in with_refit.info and "local_search_swaps" not in without.info  # row: swaps
    assert without.relative_error == pytest.approx(solve(p, "alps", dtype="float64", refit=False,
                                                          local_search=False).relative_error, rel=1e-12)


def test_alps_unstructured_tiny_matches_enumeration(rng):
    """Unstructured 3×4 layer at 50%: enumerate all C(12, 6) layer supports."""
    p = _tiny_problem(rng, 3, 4, "unstructured", 0.5)
    H, W = p.hessian.astype(np.float64), p.weight.astype(np.float64)
    best = np.inf
    for flat in itertools.combinations(range(12), p.kept):
        rows = [[j % 4 for j in flat if j // 4 == r] for r in range(3)]
        best = min(best, sum(_row_optimum(H, W[r], rows[r]) for r in range(3)))
    r = solve(p, "alps", dtype="float64")
    assert r.objective >= best * (1 - 1e-9)
    assert r.objective <= best * 1.05


def test_pcg_refit_matches_direct_solve(rng):
    p = synthetic_problem(24, 48, 0.6, "unstructured", seed=int(rng.integers(1 << 30)), dtype=np.float64)
    H = p.hessian.astype(np.float64)
    d = np.sqrt(np.diag(H))
    Hn = H / d[:, None] / d[None, :]
    B = p.weight * d[None, :]
    G = B @ Hn
    mask = p.pattern.mask(np.abs(rng.standard_normal(B.shape)), p.sparsity)  # an arbitrary support
    X, info = masked_pcg(Hn, G, mask, np.zeros_like(B), np, tol=1e-12, max_iter=500)
    assert info.converged
    ref = np.zeros_like(B)
    for r in range(B.shape[0]):
        s = np.flatnonzero(mask[r])
        ref[r, s] = np.linalg.solve(Hn[np.ix_(s, s)], G[r, s])
    assert np.linalg.norm(X - ref) / np.linalg.norm(ref) < 1e-6
    assert not X[~mask].any()


def test_alps_refit_is_optimal_for_its_support(rng):
    p = synthetic_problem(32, 64, 0.7, "unstructured", seed=int(rng.integers(1 << 30)), dtype=np.float64)
    r = solve(p, "alps", dtype="float64")
    H, W = p.hessian.astype(np.float64), p.weight.astype(np.float64)
    best = sum(_row_optimum(H, W[i], np.flatnonzero(r.mask[i])) for i in range(W.shape[0]))
    assert r.objective == pytest.approx(best, rel=1e-6)
    assert r.info["refit_converged"]


@pytest.mark.parametrize("sparsity", [0.7, 0.8, 0.9])
def test_alps_beats_sparsegpt_at_high_sparsity(sparsity):
    ratios = []
    for seed in range(3):
        p = synthetic_problem(128, 256, sparsity, "unstructured", seed=100 + seed)
        ratios.append(solve(p, "alps").relative_error / solve(p, "sparsegpt").relative_error)
    # Measured ≈ 0.5–0.6 on these problems (see BENCHMARKS.md); the issue asks for ≤ 0.7.
    assert np.mean(ratios) <= 0.7, ratios


def test_alps_beats_sparsegpt_at_2_4():
    p = synthetic_problem(128, 256, None, "2:4", seed=7)
    assert solve(p, "alps").relative_error < 0.8 * solve(p, "sparsegpt").relative_error


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.9), ("row", 0.7), ("2:4", None), ("4:8", None)])
def test_alps_feasible_and_exact_count(pattern, sparsity):
    p = synthetic_problem(48, 96, sparsity, pattern, seed=3)
    r = solve(p, "alps")
    assert p.check_feasible(r.weight)
    assert int(r.mask.sum()) == p.kept
    assert np.count_nonzero(r.weight) == p.kept
    assert r.history and {"iteration", "rho", "support_change", "rel_error"} <= set(r.history[0])


def test_iteration_cap_returns_feasible_point():
    p = synthetic_problem(32, 64, 0.8, "unstructured", seed=5)
    r = solve(p, "alps", max_iter=4)
    assert r.iterations == 4 and "cap" in r.message
    assert p.check_feasible(r.weight)
    assert r.relative_error < solve(p, "magnitude").relative_error


@pytest.mark.parametrize("max_iter", [6, 9, 15])
def test_iteration_cap_returns_a_point_no_worse_than_any_checked_iterate(max_iter):
    """Stopped by the cap, ALPS returns the refit on its last support: feasible, and at least as good as
    every projected iterate it checked (the history's errors, recomputed here in float64)."""
    for seed in range(3):
        p = synthetic_problem(128, 256, 0.8, "unstructured", seed=40 + seed)
        r = solve(p, "alps", max_iter=max_iter, local_search=False)
        assert "cap" in r.message and p.check_feasible(r.weight)
        assert r.relative_error <= min(h["rel_error"] for h in r.history) * (1 + 1e-4)


def test_too_large_rho_restarts_smaller():
    p = synthetic_problem(32, 64, 0.7, "unstructured", seed=9)
    r = solve(p, "alps", rho0=1e4)
    assert r.info["restarts"] >= 1
    assert r.history[0]["rho"] == pytest.approx(1e4)
    assert r.relative_error < 1.2 * solve(p, "alps").relative_error


@pytest.mark.parametrize("stack", [False, True])
def test_solve_many_shares_one_eigendecomposition(monkeypatch, stack):
    import layerprune.solvers.normalized as alps_mod

    calls = []
    real = alps_mod.normalized_eigh
    monkeypatch.setattr(alps_mod, "normalized_eigh", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = synthetic_problem(16, 32, 0.6, "unstructured", seed=11)
    rng = np.random.default_rng(0)
    probs = [LayerProblem(rng.standard_normal((n, 32)), base.raw_hessian, 0.6) for n in (16, 8, 24)]
    results = solve_many(probs, "alps", stack=stack)
    assert len(calls) == 1
    for p, r in zip(probs, results):
        alone = solve(p, "alps")
        if stack:  # one ρ schedule for the stack: a different path, the same quality
            assert r.info["stacked_layers"] == 3
            assert r.objective == pytest.approx(alone.objective, rel=0.05)
        else:
            assert r.objective == pytest.approx(alone.objective, rel=1e-5)


@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.7), ("row", 0.6), ("2:4", None)])
def test_stacked_solve_keeps_each_layers_constraint_and_scores_each_layer(pattern, sparsity):
    """Stacked q/k/v-like layers: every layer's support is feasible on its own (an unstructured
    count per layer, exactly), objectives are each layer's own, and the quality is that of
    solving the layers one by one."""
    base = synthetic_problem(24, 48, sparsity, pattern, seed=12)
    rng = np.random.default_rng(1)
    scales = (1.0, 0.2, 3.0)  # very different weight scales: a shared count would favour the largest
    probs = [base.with_weight(s * rng.standard_normal((n, 48)), name=f"l{i}") for i, (n, s) in enumerate(zip((24, 8, 16), scales))]
    results = solve_many(probs, "alps")
    for p, r in zip(probs, results):
        assert p.check_feasible(r.weight)
        if pattern == "unstructured":
            assert int(r.mask.sum()) == p.kept
        assert r.objective == pytest.approx(p.objective(r.weight), rel=1e-9)
        alone = solve(p, "alps")
        assert r.relative_error <= 1.05 * alone.relative_error
    assert sum(r.seconds for r in results) == pytest.approx(results[0].info["joint_seconds"])


def test_stacked_local_search_moves_entries_only_inside_each_layer():
    base = synthetic_problem(12, 32, 0.75, "unstructured", seed=13)
    rng = np.random.default_rng(2)
    probs = [base.with_weight(s * rng.standard_normal((12, 32))) for s in (1.0, 4.0)]
    results = solve_many(probs, "alps", local_search=True)
    assert results[0].info["local_search_moves"] > 0  # it moved entries, and none across layers:
    assert [int(r.mask.sum()) for r in results] == [p.kept for p in probs]


@pytest.mark.gpu
def test_stacked_solve_on_the_gpu_matches_the_cpu():
    """solve_many's stack on CuPy with torch CUDA weights (the driver's path): the same supports
    as on NumPy, results back as torch tensors on the GPU."""
    import torch

    base = synthetic_problem(32, 64, 0.7, "unstructured", seed=14)
    rng = np.random.default_rng(3)
    weights = [s * rng.standard_normal((n, 64)).astype(np.float32) for n, s in ((32, 1.0), (16, 3.0))]
    H = torch.as_tensor(base.raw_hessian).cuda()
    gpu_probs = [LayerProblem(torch.as_tensor(w).cuda(), H, 0.7) for w in weights]
    gpu_probs = [gpu_probs[0], gpu_probs[0].with_weight(torch.as_tensor(weights[1]).cuda())]
    cpu_probs = [LayerProblem(w, base.raw_hessian, 0.7) for w in weights]
    gpu = solve_many(gpu_probs, "alps", device="cuda", dtype="float64", keep_array_type=True)
    cpu = solve_many(cpu_probs, "alps", device="cpu", dtype="float64")
    for g, c, p in zip(gpu, cpu, cpu_probs):
        assert isinstance(g.weight, torch.Tensor) and g.weight.is_cuda
        assert np.array_equal(g.mask.cpu().numpy(), c.mask)
        assert g.objective == pytest.approx(c.objective, rel=1e-6)
        assert int(c.mask.sum()) == p.kept


def test_solve_many_rejects_different_hessians():
    a = synthetic_problem(8, 16, 0.5, seed=1)
    b = synthetic_problem(8, 16, 0.5, seed=2)
    with pytest.raises(ValueError, match="same Hessian"):
        solve_many([a, b], "alps")


def test_device_cuda_without_gpu_is_a_clear_error():
    from layerprune.problems.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    p = synthetic_problem(8, 16, 0.5, seed=1)
    with pytest.raises(RuntimeError, match="no GPU"):
        solve(p, "alps", device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.7), ("row", 0.8), ("2:4", None)])
def test_numpy_and_cupy_agree(pattern, sparsity):
    p = synthetic_problem(256, 512, sparsity, pattern, seed=21)
    cpu = solve(p, "alps", device="cpu", dtype="float64")
    gpu = solve(p, "alps", device="cuda", dtype="float64")
    assert (cpu.mask != gpu.mask).mean() < 1e-3
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-4)


@pytest.mark.gpu
def test_numpy_and_cupy_agree_in_row_blocks():
    """A layer above 1M entries runs ADMM, G, the inverse and the refit in blocks of rows."""
    from layerprune.solvers.normalized import row_blocks

    p = synthetic_problem(1024, 1536, 0.7, "unstructured", seed=22)
    assert len(row_blocks(*p.shape)) == 4
    cpu = solve(p, "alps", device="cpu", dtype="float64")
    gpu = solve(p, "alps", device="cuda", dtype="float64")
    assert (cpu.mask != gpu.mask).mean() < 1e-3
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-4)


@pytest.mark.gpu
def test_torch_cuda_tensors_cross_without_copy():
    import torch

    p0 = synthetic_problem(64, 128, 0.7, seed=3)
    W = torch.as_tensor(p0.weight, device="cuda")
    p = LayerProblem(W, torch.as_tensor(p0.raw_hessian, device="cuda"), 0.7)
    assert p.weight.data.ptr == W.data_ptr()
    r = solve(p, "alps", keep_array_type=True)
    assert isinstance(r.weight, torch.Tensor) and r.weight.is_cuda


@pytest.mark.gpu
def test_tf32_phase_does_not_hurt_the_objective():
    p = synthetic_problem(1024, 1024, 0.7, "unstructured", seed=4)
    fp32 = solve(p, "alps", device="cuda", tf32=False)
    mixed = solve(p, "alps", device="cuda", tf32=True)
    assert mixed.relative_error <= fp32.relative_error * 1.005
    from cupy._core import _routines_linalg as rl

    assert rl.get_compute_type(np.float32) != rl.COMPUTE_TYPE_TF32  # restored afterwards


def test_pcg_in_row_blocks_equals_all_rows_at_once(rng):
    """Rows are independent systems: the blocked iteration gives the same iterates."""
    from layerprune.solvers.normalized import row_blocks

    p = synthetic_problem(300, 40, 0.6, "unstructured", seed=int(rng.integers(1 << 30)), dtype=np.float64)
    H = p.hessian.astype(np.float64)
    d = np.sqrt(np.diag(H))
    Hn = H / d[:, None] / d[None, :]
    G = (p.weight * d[None, :]) @ Hn
    mask = p.pattern.mask(np.abs(rng.standard_normal(G.shape)), p.sparsity)
    X0 = rng.standard_normal(G.shape)
    whole, i1 = masked_pcg(Hn, G, mask, X0, np, tol=0.0, max_iter=7)
    blocked, i2 = masked_pcg(Hn, G, mask, X0, np, tol=0.0, max_iter=7, blocks=row_blocks(300, 40, min_rows=64, small=0))
    assert len(row_blocks(300, 40, min_rows=64, small=0)) == 4 and i1.iterations == i2.iterations == 7
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-12)


def test_alps_in_row_blocks_equals_one_block(rng, monkeypatch):
    """Large layers run ADMM, G, (Hn + ρI)⁻¹ and the refit in blocks of rows: forced onto a small
    problem, the blocked path gives the same support and objective as the one-block path."""
    from layerprune.solvers import normalized

    p = synthetic_problem(200, 64, 0.7, "unstructured", seed=int(rng.integers(1 << 30)), dtype=np.float64)
    whole = solve(p, "alps", dtype="float64", local_search=False)
    blocks = normalized.row_blocks
    monkeypatch.setattr(normalized, "row_blocks", lambda r, c=0: blocks(r, c, min_rows=16, small=0))
    assert len(normalized.row_blocks(200, 64)) == 4
    blocked = solve(p, "alps", dtype="float64", local_search=False)
    np.testing.assert_array_equal(blocked.mask, whole.mask)
    assert abs(blocked.objective - whole.objective) <= 1e-9 * whole.objective


def _hn64(p):
    """Hn = D⁻¹ H D⁻¹ of the damped H, and d, in float64 from the problem (the reference)."""
    H = np.asarray(p.hessian, dtype=np.float64)
    d = np.sqrt(np.diag(H))
    return H / d[:, None] / d[None, :], d


@pytest.mark.parametrize("explicit", [True, False])
def test_shifted_inverse_matches_a_direct_solve(rng, explicit):
    """T (Hn + ρI)⁻¹, formed explicitly or applied through Q, against a float64 solve."""
    from layerprune.solvers.normalized import NormalizedProblem, ShiftedInverse

    p = synthetic_problem(20, 48, 0.7, seed=int(rng.integers(1 << 30)))
    norm = NormalizedProblem(p, np, np.dtype(np.float32), {})
    inv = ShiftedInverse(norm, 0.3, explicit)
    assert inv.explicit is explicit and ShiftedInverse(norm, 0.3).explicit is False  # in > out: through Q
    Hn, _ = _hn64(p)
    T = rng.standard_normal((7, 48))
    for rho in (0.3, 2.5):
        inv.set_rho(rho)
        ref = np.linalg.solve(Hn + rho * np.eye(48), T.T).T  # Hn symmetric: T (Hn+ρI)⁻¹
        got = inv.apply(T.astype(np.float32))
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    assert (inv.release() is not None) is explicit


def test_hn_operator_through_h_matches_float64(rng):
    """P ↦ ((P D⁻¹) H) D⁻¹ equals P Hn, and G = B Hn, against float64 recomputations."""
    from layerprune.solvers.normalized import NormalizedProblem

    p = synthetic_problem(16, 40, 0.6, seed=int(rng.integers(1 << 30)))
    norm = NormalizedProblem(p, np, np.dtype(np.float32), {})
    Hn, d = _hn64(p)
    times_hn = norm.hn_operator()
    assert callable(times_hn)  # the problem's H is float32 like the solver: no Hn is formed
    P = rng.standard_normal((5, 40)).astype(np.float32)
    got = times_hn(P, np.empty_like(P))
    ref = P.astype(np.float64) @ Hn
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5
    G_ref = (p.weight.astype(np.float64) * d[None, :]) @ Hn
    assert np.linalg.norm(norm.G - G_ref) / np.linalg.norm(G_ref) < 1e-5
    np.testing.assert_allclose(norm.hn_operator(np.empty((40, 40), np.float32)), Hn, atol=1e-5)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.8), ("2:4", None)])
def test_alps_wide_layer_same_with_or_without_explicit_inverse(pattern, sparsity):
    """in > out: the X-update through Q and the refit through H give ALPS's answer of the explicit path."""
    p = synthetic_problem(48, 160, sparsity, pattern, seed=31)  # float32, like the solver: the refit uses H
    via_q = solve(p, "alps")
    explicit = solve(p, "alps", explicit_inverse=True)
    reference = solve(p, "alps", dtype="float64")  # float64 forms Hn from Q (H is float32)
    assert (via_q.mask != explicit.mask).mean() < 1e-3 and (via_q.mask != reference.mask).mean() < 1e-3
    assert via_q.objective == pytest.approx(explicit.objective, rel=1e-6)
    assert via_q.objective == pytest.approx(reference.objective, rel=1e-5)
    assert via_q.info["refit_converged"]


@pytest.mark.gpu
def test_inplace_eigh_on_the_gpu_matches_cupy():
    """cuSOLVER syevd on the array's own memory: Q diag(λ) Qᵀ rebuilds Hn; λ equals cupy.linalg.eigh's."""
    import cupy

    from layerprune.solvers.linalg import eigh_inplace

    p = synthetic_problem(64, 300, 0.7, seed=5, xp=cupy)
    Hn64, _ = _hn64(LayerProblem(cupy.asnumpy(p.weight), cupy.asnumpy(p.raw_hessian), 0.7))
    A = cupy.asarray(Hn64, dtype=cupy.float32)
    ref_lam = cupy.linalg.eigh(A.copy())[0]
    ptr = A.data.ptr
    lam, Q = eigh_inplace(A, cupy)
    assert Q.data.ptr == ptr  # no copy: the eigenvectors live in A's memory
    rebuilt = cupy.asnumpy((Q * lam[None, :]) @ Q.T).astype(np.float64)
    assert np.abs(rebuilt - Hn64).max() < 1e-4 * np.abs(Hn64).max()
    assert cupy.allclose(lam, ref_lam, rtol=1e-4, atol=1e-5)
    assert np.allclose(cupy.asnumpy(Q.T @ Q), np.eye(300), atol=1e-4)


def test_unknown_alps_option_is_a_clear_error():
    p = synthetic_problem(8, 16, 0.5, seed=2)
    with pytest.raises(ValueError, match=r"alps has no option 'rho'; did you mean rho0\?"):
        solve(p, "alps", rho=3.0)
    with pytest.raises(TypeError):  # an OptionError is also a TypeError, as an unexpected keyword is
        solve(p, "alps", rho=3.0)


def _hn_g(p):
    """Hn and G = B Hn in float64 (from ``_hn64``)."""
    Hn, d = _hn64(p)
    return Hn, (p.weight.astype(np.float64) * d) @ Hn


def _row_decrease(Hn, g, S):
    """g_Sᵀ Hn_SS⁻¹ g_S by a direct solve: how far the best weights on S lower the row's objective."""
    S = list(S)
    return float(g[S] @ np.linalg.solve(Hn[np.ix_(S, S)], g[S])) if S else 0.0


def test_row_support_gains_and_updates_match_direct_solves(rng):
    """Addition gains and removal costs equal differences of direct solves; after random
    rank-one additions and removals the state equals one rebuilt from scratch."""
    from layerprune.solvers.local_search import RowSupport

    p = _tiny_problem(rng, 3, 24, "unstructured", 0.6)
    Hn, G = _hn_g(p)
    g = G[1]
    state = RowSupport(Hn, g, rng.random(24) < 0.4, refresh=10**9)
    for _ in range(30):
        S = list(state.S)
        base = _row_decrease(Hn, g, S)
        gains = state.addition_gains()
        for i in np.flatnonzero(~state.kept)[:3]:
            assert gains[i] == pytest.approx(_row_decrease(Hn, g, S + [i]) - base, rel=1e-8, abs=1e-12)
        costs = state.removal_costs()
        for q in range(min(3, len(S))):
            assert costs[q] == pytest.approx(base - _row_decrease(Hn, g, S[:q] + S[q + 1:]), rel=1e-8, abs=1e-12)
        if len(S) > 2 and rng.random() < 0.5:
            state.remove(int(rng.integers(len(S))))
        else:
            state.add(int(rng.choice(np.flatnonzero(~state.kept))))
    fresh = RowSupport(Hn, g, state.kept)
    order = np.argsort(state.S)
    np.testing.assert_allclose(state.x[order], fresh.x[np.argsort(fresh.S)], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state.r, fresh.r, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(state.s, fresh.s, rtol=1e-9, atol=1e-10)


def test_move_search_lowers_the_objective_and_keeps_the_layer_count(rng):
    from layerprune.solvers.local_search import move_search

    p = _tiny_problem(rng, 8, 16, "unstructured", 0.7)
    Hn, G = _hn_g(p)
    start = p.pattern.mask(np.abs(rng.standard_normal(G.shape)), p.sparsity)  # a poor support
    new, moves = move_search(Hn, G, start)
    assert moves > 0 and new.sum() == start.sum()
    before = sum(_row_decrease(Hn, G[r], np.flatnonzero(start[r])) for r in range(8))
    after = sum(_row_decrease(Hn, G[r], np.flatnonzero(new[r])) for r in range(8))
    assert after > before  # a larger decrease is a lower objective
    again, more = move_search(Hn, G, new)
    assert more == 0
    np.testing.assert_array_equal(again, new)


def test_alps_local_search_moves_between_rows_on_unstructured(rng):
    p = synthetic_problem(24, 48, 0.8, "unstructured", seed=int(rng.integers(1 << 30)))
    plain = solve(p, "alps", local_search=False)
    moved = solve(p, "alps", local_search=True)
    assert "local_search_moves" in moved.info
    assert moved.objective <= plain.objective * (1 + 1e-6)
    assert int(moved.mask.sum()) == p.kept and p.check_feasible(moved.weight)


def test_stacked_layers_get_the_automatic_local_search_each_would_get_alone():
    """The size budget of the automatic local search applies per layer, not to the stack."""
    base = synthetic_problem(64, 64, 0.5, "unstructured", seed=15)
    rng = np.random.default_rng(4)
    probs = [base] + [base.with_weight(rng.standard_normal((64, 64)).astype(np.float32)) for _ in range(2)]
    assert "local_search_moves" in solve(probs[1], "alps").info  # each layer alone is under the budget
    stacked = solve_many(probs, "alps", stack=True)
    assert "local_search_moves" in stacked[0].info
    assert [int(r.mask.sum()) for r in stacked] == [p.kept for p in probs]


def test_stacking_a_method_that_selects_across_the_stack_is_a_clear_error():
    base = synthetic_problem(16, 32, 0.6, "unstructured", seed=16)
    probs = [base, base.with_weight(np.ones((8, 32)))]
    with pytest.raises(ValueError, match="'wanda' selects across the whole stack"):
        solve_many(probs, "wanda", stack=True)
    assert len(solve_many(probs, "wanda")) == 2  # not stacked by default


@pytest.mark.parametrize("pattern", ["unstructured", "row", "2:4"])
def test_sparsegpt_stacked_equals_each_layer_swept_alone(pattern):
    """SparseGPT's sweep is row by row given U, and its unstructured choice per block is made per layer
    of the stack: the stacked solve (the default for layers sharing H) gives each layer's own mask and
    weights, and each layer keeps its own count."""
    rng = np.random.default_rng(21)
    base = synthetic_problem(24, 256, 0.5 if ":" in pattern else 0.7, pattern, seed=21)
    probs = [base] + [base.with_weight(rng.standard_normal((r, 256)) * rng.uniform(0.2, 3, 256)) for r in (8, 40)]
    alone = [solve(p, "sparsegpt", device="cpu", dtype=np.float64) for p in probs]
    stacked = solve_many(probs, "sparsegpt", device="cpu", dtype=np.float64)
    assert all(r.info.get("stacked_layers") == 3 for r in stacked)
    for p, a, b in zip(probs, alone, stacked):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-9, atol=1e-12)
        assert int(b.mask.sum()) == int(a.mask.sum()) and p.check_feasible(b.weight)


def test_stacked_results_keep_each_layers_dtype_and_own_history():
    base = synthetic_problem(16, 32, 0.6, "unstructured", seed=17)
    other = base.with_weight(np.random.default_rng(5).standard_normal((8, 32)))  # float64 weight
    a, b = solve_many([base, other], "alps", stack=True)
    assert a.weight.dtype == np.float32 and b.weight.dtype == np.float64
    assert a.history == b.history and a.history is not b.history


def test_solve_many_fills_an_empty_cache_it_is_given():
    """The factorization lands in the caller's (empty) cache, so later calls can share it."""
    base = synthetic_problem(16, 32, 0.6, "unstructured", seed=23)
    cache: dict = {}
    solve_many([base], "sparsegpt", cache=cache, device="cpu")
    assert "sparsegpt_U" in cache
