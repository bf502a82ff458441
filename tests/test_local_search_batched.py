"""The batched exact local search (``solvers.batched_search``) and the polish after any method (``solvers.polish``).

Checked against the per-row host reference (``solvers.local_search``: the same swaps and moves),
against float64 recomputations of the exact objective on a support (a direct solve per row), and
against the pattern.
"""

import types

import numpy as np
import pytest

from layerprune import LayerProblem, solve, solve_many
from layerprune.problems.backend import free_device_bytes, rows_add_outer, rows_matvec
from layerprune.problems.patterns import parse_pattern
from layerprune.solvers import polish as polish_module
from layerprune.solvers.batched_search import SlotSupports, batched_move_search, batched_swap_search
from layerprune.solvers.local_search import move_search, swap_search

METHODS = ["alps", "sparsegpt", "wanda", "magnitude", "admm_gradual"]


def normalized(rng, out: int, inp: int):
    """(Hn, G) of a random layer with correlated inputs and one outlier channel, float64."""
    X = rng.standard_normal((3 * inp, inp)) @ (np.eye(inp) + 0.3 * rng.standard_normal((inp, inp)))
    X[:, rng.integers(inp)] *= 8.0
    H = X.T @ X
    H += 0.01 * np.mean(np.diag(H)) * np.eye(inp)
    d = np.sqrt(np.diag(H))
    Hn = H / np.outer(d, d)
    B = rng.standard_normal((out, inp)) * d
    return Hn, B @ Hn, B


def exact_objective(Hn, G, B, mask) -> float:
    """min over X with supp ⊆ mask of tr((X − B) Hn (X − B)ᵀ): a direct solve per row, float64."""
    total = 0.0
    for g, b, keep in zip(G, B, mask):
        S = np.flatnonzero(keep)
        x = np.zeros_like(b)
        if S.size:
            x[S] = np.linalg.solve(Hn[np.ix_(S, S)], g[S])
        e = x - b
        total += float(e @ Hn @ e)
    return total


def start_mask(B, pattern: str, sparsity: float):
    """A poor support: the largest |B| (magnitude in normalized coordinates) under the pattern."""
    return parse_pattern(pattern).mask(np.abs(B), sparsity)


@pytest.mark.parametrize("pattern,sparsity", [("row", 0.6), ("row", 0.8), ("2:4", 0.5), ("1:4", 0.75)])
def test_batched_swaps_are_the_references(rng, pattern, sparsity):
    group = parse_pattern(pattern).m if ":" in pattern else None
    for _ in range(3):
        Hn, G, B = normalized(rng, int(rng.integers(8, 20)), 32)
        mask = start_mask(B, pattern, sparsity)
        ref, ref_swaps = swap_search(Hn, G, mask, group=group)
        new, swaps = batched_swap_search(Hn, G, mask, np, group=group)
        assert ref_swaps > 0
        assert swaps == ref_swaps
        np.testing.assert_array_equal(new, ref)


def test_batched_swaps_in_small_row_chunks_are_the_same(rng):
    Hn, G, B = normalized(rng, 17, 24)
    mask = start_mask(B, "row", 0.5)
    whole, n1 = batched_swap_search(Hn, G, mask, np)
    chunked, n2 = batched_swap_search(Hn, G, mask, np, max_entries=3 * 13 * 24)  # 3 rows per chunk
    assert n1 == n2 > 0
    np.testing.assert_array_equal(whole, chunked)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_batched_moves_one_per_round_are_the_references(rng, sparsity):
    for _ in range(3):
        Hn, G, B = normalized(rng, int(rng.integers(8, 24)), 32)
        mask = start_mask(B, "unstructured", sparsity)
        ref, ref_moves = move_search(Hn, G, mask)
        new, moves = batched_move_search(Hn, G, mask, np, moves_per_round=1)
        assert ref_moves > 0
        assert moves == ref_moves
        np.testing.assert_array_equal(new, ref)


def test_in_place_row_block_updates_are_the_gathered_ones(rng):
    """``rows_add_outer`` / ``rows_matvec`` on a subset of K's blocks: the same bits as gathering the
    blocks and updating them batched (the code they replace), the others untouched."""
    K = rng.standard_normal((9, 40, 40))
    rows = np.array([7, 2, 4])
    a, b, h = (rng.standard_normal((3, 40)) for _ in range(3))
    expected = K.copy()
    block = expected[rows]
    block += a[:, :, None] * b[:, None, :]
    expected[rows] = block
    got = K.copy()
    rows_add_outer(got, rows, a, b)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(rows_matvec(K, rows, h), np.einsum("tab,tb->ta", K[rows], h))


def test_the_round_size_defaults_to_the_backends(rng, monkeypatch):
    """``moves_per_round=None`` takes ``MOVES_PER_ROUND`` of the array's backend: with the CPU's set
    to 1 the search makes the reference's moves; the GPU's entry is read for any other module."""
    Hn, G, B = normalized(rng, 20, 32)
    mask = start_mask(B, "unstructured", 0.7)
    ref, ref_moves = move_search(Hn, G, mask)
    pattern = parse_pattern("unstructured")
    _, _, wide = polish_module.search_support(Hn, G, mask, pattern, np, moves_per_round=64)
    assert wide != ref_moves  # so the check below can tell the round sizes apart
    monkeypatch.setitem(polish_module.MOVES_PER_ROUND, "cpu", 1)
    new, _, moves = polish_module.search_support(Hn, G, mask, pattern, np)
    assert moves == ref_moves
    np.testing.assert_array_equal(new, ref)
    assert polish_module.round_size(None, object()) == polish_module.MOVES_PER_ROUND["cuda"]
    assert polish_module.round_size(7, np) == 7


def test_batched_moves_reach_a_local_optimum_of_the_references_test(rng):
    """Several moves per round end where the reference's own test finds no move left."""
    Hn, G, B = normalized(rng, 20, 32)
    mask = start_mask(B, "unstructured", 0.7)
    new, moves = batched_move_search(Hn, G, mask, np, moves_per_round=8)
    assert moves > 0 and new.sum() == mask.sum()
    again, more = move_search(Hn, G, new)
    assert more == 0
    np.testing.assert_array_equal(again, new)
    assert exact_objective(Hn, G, B, new) < exact_objective(Hn, G, B, mask)


def test_a_move_budget_below_the_round_size_still_ends_at_a_local_optimum(rng, monkeypatch):
    """max_moves below moves_per_round (the GPU's rounds of 1024 on a 16-row layer: 800 moves), from a
    local optimum: the empty rounds go to one move at a time and stop, as without the budget. The
    round counter fails the test where the search would loop, as it did before the fix (the GPU test of
    ALPS's stacked solve hung there: its 16-row layer's budget is 800 moves, the GPU's round 1024)."""
    from layerprune.solvers import batched_search

    Hn, G, B = normalized(rng, 16, 32)
    optimum, found = batched_move_search(Hn, G, start_mask(B, "unstructured", 0.7), np, moves_per_round=1024)
    assert 0 < found < 800
    rounds, real_round = [], batched_search._move_round

    def counted(*args):
        rounds.append(args[1])
        assert len(rounds) < 50, f"the search did not stop: rounds of {rounds[:6]} …"
        return real_round(*args)

    monkeypatch.setattr(batched_search, "_move_round", counted)
    new, moves = batched_move_search(Hn, G, optimum, np, moves_per_round=1024, max_moves=800)
    assert moves == 0 and rounds[-1] == 1
    np.testing.assert_array_equal(new, optimum)
    rounds.clear()  # and from a poor support, the budget is spent or a local optimum reached
    new, moves = batched_move_search(Hn, G, start_mask(B, "unstructured", 0.7), np, moves_per_round=1024, max_moves=7)
    assert moves == 7 and max(rounds) <= 7


def test_every_accepted_round_of_moves_lowers_the_exact_objective(rng):
    """Rounds of 4 moves: the support after 4, 8, 12 … moves has a strictly lower exact objective
    (float64 direct solves) than the one before, and the count stays the same."""
    Hn, G, B = normalized(rng, 16, 24)
    mask = start_mask(B, "unstructured", 0.7)
    _, total = batched_move_search(Hn, G, mask, np, moves_per_round=4)
    assert total >= 8
    prev = exact_objective(Hn, G, B, mask)
    for cap in range(4, total + 1, 4):
        step, moves = batched_move_search(Hn, G, mask, np, moves_per_round=4, max_moves=cap)
        assert moves == cap and step.sum() == mask.sum()
        f = exact_objective(Hn, G, B, step)
        assert f < prev
        prev = f


@pytest.mark.parametrize("pattern", ["row", "2:4"])
def test_every_swap_lowers_each_rows_exact_objective(rng, pattern):
    group = 4 if pattern == "2:4" else None
    Hn, G, B = normalized(rng, 10, 24)
    mask = start_mask(B, pattern, 0.5)
    prev = [exact_objective(Hn, G[i:i + 1], B[i:i + 1], mask[i:i + 1]) for i in range(10)]
    for t in range(1, 6):
        step, _ = batched_swap_search(Hn, G, mask, np, group=group, max_swaps=t)
        assert parse_pattern(pattern).is_feasible(step, 0.5)
        for i in range(10):
            f = exact_objective(Hn, G[i:i + 1], B[i:i + 1], step[i:i + 1])
            assert f <= prev[i]  # equal only where the row stopped
            prev[i] = f


def test_rank_one_updates_match_a_rebuild(rng):
    """K, x, r, s and U after batched additions and removals (with empty slots) equal a fresh build."""
    Hn, G, B = normalized(rng, 6, 20)
    mask = start_mask(B, "unstructured", 0.7)
    st = SlotSupports(Hn, G, mask, slots=int(mask.sum(axis=1).max()) + 3, xp=np, track_u=True, refresh=10**9)
    for _ in range(4):
        rows = np.arange(6)
        cols = np.array([rng.choice(np.flatnonzero(~st.kept[r])) for r in rows])
        st.add(rows, cols)
        filled = [np.flatnonzero(st.S[r] < 20) for r in rows]
        st.remove(rows, np.array([rng.choice(f) for f in filled]))
    fresh = SlotSupports(Hn, G, st.kept, slots=st.slots, xp=np, track_u=True)
    for r in range(6):  # compare slot by slot through the column each slot holds
        a, b = st.S[r], fresh.S[r]
        order_a, order_b = np.argsort(a), np.argsort(b)
        np.testing.assert_array_equal(a[order_a], b[order_b])
        live = a[order_a] < 20
        ia, ib = order_a[live], order_b[live]
        np.testing.assert_allclose(st.K[r][np.ix_(ia, ia)], fresh.K[r][np.ix_(ib, ib)], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(st.x[r][ia], fresh.x[r][ib], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(st.U[r][ia], fresh.U[r][ib], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(st.r, fresh.r, atol=1e-9)
    np.testing.assert_allclose(st.s, fresh.s, atol=1e-9)
    some = np.array([4, 1])  # the scores of a subset of rows are those rows' full scores
    np.testing.assert_array_equal(st.removal_costs(some), st.removal_costs()[some])
    np.testing.assert_array_equal(st.addition_gains(some), st.addition_gains()[some])


def layer(rng, pattern: str, sparsity):
    X = rng.standard_normal((192, 48)) @ (np.eye(48) + 0.4 * rng.standard_normal((48, 48)))
    return LayerProblem.from_activations(X, rng.standard_normal((24, 48)), sparsity=sparsity, pattern=pattern)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.7), ("row", 0.6), ("2:4", None)])
@pytest.mark.parametrize("method", METHODS)
def test_polish_after_every_method(rng, method, pattern, sparsity):
    """polish=True: feasible, never worse than the method, and at most the exact refit on its support."""
    p = layer(rng, pattern, sparsity)
    plain = solve(p, method, dtype="float64")
    polished = solve(p, method, dtype="float64", polish=True)
    assert p.check_feasible(polished.weight) and p.pattern.is_feasible(polished.mask, p.sparsity)
    if pattern == "unstructured":
        assert int(polished.mask.sum()) == int(plain.mask.sum())
    assert polished.info["polish_kept"]
    assert polished.objective <= plain.objective * (1 + 1e-9)
    d = np.sqrt(np.diag(p.hessian))
    Hn, B = p.hessian / np.outer(d, d), p.weight * d
    refit_on_own = exact_objective(Hn, B @ Hn, B, plain.mask)
    assert polished.objective <= refit_on_own * (1 + 1e-8)
    assert polished.objective == pytest.approx(exact_objective(Hn, B @ Hn, B, polished.mask), rel=1e-8)
    if method in ("wanda", "magnitude"):  # far from a local optimum: the search must move
        assert polished.info.get("local_search_moves", 0) + polished.info.get("local_search_swaps", 0) > 0
        assert polished.objective < 0.9 * plain.objective


def test_polish_setting_and_its_cost_model(rng, monkeypatch):
    p = layer(rng, "unstructured", 0.7)
    assert "seconds_polish" not in solve(p, "wanda").info  # default: off
    assert "seconds_polish" in solve(p, "wanda", polish=None).info  # 24 · 15² · 48 ≤ the CPU budget
    monkeypatch.setitem(polish_module.POLISH_BUDGET, "cpu", 10.0)
    assert "seconds_polish" not in solve(p, "wanda", polish=None).info
    assert "seconds_polish" in solve(p, "wanda", polish=True).info
    with pytest.raises(ValueError, match="polish must be True, False or None"):
        solve(p, "wanda", polish="yes")


def out_of_memory(*args, **kwargs):
    """Stands in for a search whose allocation fails (CuPy's OutOfMemoryError is a MemoryError)."""
    raise MemoryError("Out of memory allocating 1,071,802,368 bytes")


def test_a_polish_out_of_memory_keeps_the_methods_answer(rng, monkeypatch):
    """An allocation failure inside the search (CuPy's OutOfMemoryError is a MemoryError) leaves the
    method's answer as it was, says so, and the solve goes on; any other error still propagates."""
    p = layer(rng, "unstructured", 0.7)
    plain = solve(p, "sparsegpt", dtype="float64")

    monkeypatch.setattr(polish_module, "batched_move_search", out_of_memory)
    with pytest.warns(RuntimeWarning, match="polish skipped: out of memory"):
        r = solve(p, "sparsegpt", dtype="float64", polish=True)
    np.testing.assert_array_equal(r.weight, plain.weight)
    np.testing.assert_array_equal(r.mask, plain.mask)
    assert r.objective == plain.objective and r.success
    assert r.info["polish_out_of_memory"] == 1.0 and "seconds_polish" not in r.info
    assert "polish skipped: out of memory" in r.message

    def broken(*args, **kwargs):
        raise ValueError("not a memory failure")

    monkeypatch.setattr(polish_module, "batched_move_search", broken)
    with pytest.raises(ValueError, match="not a memory failure"):
        solve(p, "sparsegpt", dtype="float64", polish=True)


def test_an_alps_local_search_out_of_memory_refits_admms_support(rng, monkeypatch):
    """ALPS's own local search running out of memory leaves ADMM's support for the refit (the answer
    of local_search=False), says so, and the solve goes on."""
    import layerprune.solvers.alps as alps_module

    p = layer(rng, "unstructured", 0.7)
    plain = solve(p, "alps", dtype="float64", local_search=False)

    monkeypatch.setattr(alps_module, "search_support", out_of_memory)
    with pytest.warns(RuntimeWarning, match="local search skipped: out of memory"):
        r = solve(p, "alps", dtype="float64", local_search=True)
    np.testing.assert_array_equal(r.mask, plain.mask)
    np.testing.assert_allclose(r.weight, plain.weight, rtol=1e-10, atol=1e-12)
    assert r.info["local_search_out_of_memory"] == 1.0 and "local_search_moves" not in r.info
    assert "local search skipped: out of memory" in r.message and r.success


def test_alps_local_search_and_the_polish_share_the_search(rng):
    """ALPS's own local_search=True ends at a local optimum the polish (the same search, on Hn formed
    directly rather than from ALPS's eigendecomposition) improves by at most a near-tie move."""
    p = layer(rng, "unstructured", 0.7)
    plain = solve(p, "alps", dtype="float64", local_search=False)
    r = solve(p, "alps", dtype="float64", local_search=True)
    assert "seconds_polish" not in solve(p, "alps", dtype="float64", local_search=True, polish=None).info  # not twice
    again = solve(p, "alps", dtype="float64", local_search=True, polish=True)
    assert r.info["local_search_moves"] > 0 and r.objective < plain.objective
    assert again.info["local_search_moves"] <= 2
    assert r.objective * (1 - 1e-4) <= again.objective <= r.objective * (1 + 1e-9)


def test_joint_rounds_reach_a_move_and_swap_local_optimum(rng):
    p = layer(rng, "unstructured", 0.7)
    base = solve(p, "sparsegpt", dtype="float64")
    W1, m1, _ = polish_module.polish(p, base.weight, base.mask, np)
    W2, m2, info = polish_module.polish(p, base.weight, base.mask, np, rounds=10)
    assert m2.sum() == m1.sum() == base.mask.sum()
    assert p.objective(W2) <= p.objective(W1) * (1 + 1e-9)
    d = np.sqrt(np.diag(p.hessian))
    Hn = p.hessian / np.outer(d, d)
    G = (p.weight * d) @ Hn
    assert move_search(Hn, G, m2)[1] == 0 and swap_search(Hn, G, m2)[1] == 0


def test_stacked_polish_keeps_each_layers_count(rng):
    p = layer(rng, "unstructured", 0.75)
    probs = [p.with_weight(s * rng.standard_normal(p.shape)) for s in (1.0, 5.0)]
    results = solve_many(probs, "wanda", polish=True)
    assert [int(r.mask.sum()) for r in results] == [q.kept for q in probs]
    assert results[0].info["local_search_moves"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("m", [5, 70])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_block_updates_on_the_gpu_are_the_cpus(rng, m, dtype):
    """CuPy's in-place kernels against NumPy: the rank-one update bit for bit (the product is rounded
    before the add on both), the blocks of other rows untouched, the matvec to rounding; m = 70 spans
    more than one warp's 32 lanes per output and more than one thread block."""
    import cupy

    K = rng.standard_normal((9, m, m)).astype(dtype)
    rows = np.array([7, 2, 4])
    a, b, h = (rng.standard_normal((3, m)).astype(dtype) for _ in range(3))
    Kg = cupy.asarray(K)
    wide = cupy.zeros((3, 2 * m), dtype=dtype)  # a strided b, as the removal's column gather K[rows, :, p] can be
    wide[:, ::2] = cupy.asarray(b)
    rows_add_outer(Kg, cupy.asarray(rows), cupy.asarray(a), wide[:, ::2])
    rows_add_outer(K, rows, a, b)
    np.testing.assert_array_equal(cupy.asnumpy(Kg), K)
    with pytest.raises(ValueError, match="expected"):
        rows_add_outer(Kg, cupy.asarray(rows), cupy.asarray(a[:2]), cupy.asarray(b[:2]))
    got = cupy.asnumpy(rows_matvec(Kg, rows, cupy.asarray(h)))  # host rows are taken too
    assert got.dtype == dtype
    np.testing.assert_allclose(got, rows_matvec(K, rows, h), rtol=1e-12 if dtype == np.float64 else 1e-4,
                               atol=1e-12 if dtype == np.float64 else 1e-4)


@pytest.mark.gpu
def test_wide_rounds_on_the_gpu_reach_the_cpus_optimum(rng):
    """Rounds wider than the layer (1024 moves, 48 rows) with m ≈ 550 slots, large enough that the
    in-place kernels run many thread blocks per row: the GPU's search keeps the count and ends at the
    CPU's objective (float64 recomputation), the masks equal up to rounding-order ties."""
    import cupy

    Hn, G, B = normalized(rng, 48, 1024)
    mask = start_mask(B, "unstructured", 0.5)
    cpu, n_cpu = batched_move_search(Hn, G, mask, np, moves_per_round=1024)
    gpu, n_gpu = batched_move_search(cupy.asarray(Hn), cupy.asarray(G), cupy.asarray(mask), cupy, moves_per_round=1024)
    gpu = cupy.asnumpy(gpu)
    assert n_cpu > 0 and int(gpu.sum()) == int(mask.sum())
    start, f_cpu, f_gpu = (exact_objective(Hn, G, B, m) for m in (mask, cpu, gpu))
    assert f_cpu < start
    assert f_gpu == pytest.approx(f_cpu, rel=1e-6)
    assert (gpu != cpu).mean() < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", ["unstructured", "row", "2:4"])
def test_batched_search_on_the_gpu_is_the_cpus(rng, pattern):
    import cupy

    Hn, G, B = normalized(rng, 40, 64)
    mask = start_mask(B, pattern, 0.5 if pattern == "2:4" else 0.7)
    if pattern == "unstructured":
        ref, n_ref = move_search(Hn, G, mask)
        new, n = batched_move_search(cupy.asarray(Hn), cupy.asarray(G), cupy.asarray(mask), cupy, moves_per_round=1)
        cpu, n_cpu = batched_move_search(Hn, G, mask, np, moves_per_round=16)
        gpu, n_gpu = batched_move_search(cupy.asarray(Hn), cupy.asarray(G), cupy.asarray(mask), cupy, moves_per_round=16)
        assert n_gpu == n_cpu
        np.testing.assert_array_equal(cupy.asnumpy(gpu), cpu)
    else:
        group = 4 if pattern == "2:4" else None
        ref, n_ref = swap_search(Hn, G, mask, group=group)
        new, n = batched_swap_search(cupy.asarray(Hn), cupy.asarray(G), cupy.asarray(mask), cupy, group=group)
    assert n == n_ref > 0
    np.testing.assert_array_equal(cupy.asnumpy(new), ref)
    p = LayerProblem.from_activations(rng.standard_normal((256, 64)), rng.standard_normal((40, 64)),
                                      sparsity=None if ":" in pattern else 0.7, pattern=pattern)
    a = solve(p, "sparsegpt", device="cpu", polish=True)
    b = solve(p, "sparsegpt", device="cuda", polish=True)
    assert b.relative_error == pytest.approx(a.relative_error, rel=1e-3)


def test_the_run_setting_polishes_every_layer_of_a_tiny_model():
    """PruneSettings.local_search=True (CLI --local-search on) reaches every layer's solve: a lower
    mean error than magnitude alone, the same sparsity; bad values fail before any work."""
    from layerwise_tiny import byte_tokenizer, tiny_model, tiny_text

    from layerprune.layerwise import data
    from layerprune.layerwise.cli import build_parser, prune_settings_given
    from layerprune.layerwise.driver import PruneSettings, prune_model
    from layerprune.layerwise.errors import LayerwiseError

    calib = data.sample_segments(data.token_stream(byte_tokenizer(), [tiny_text(3000)]), 8, 32, seed=0)
    logs = {on: prune_model(tiny_model("llama"), calib, PruneSettings(method="magnitude", sparsity=0.7, local_search=on),
                            progress=False) for on in (False, True)}
    assert logs[True]["mean_relative_error"] < 0.8 * logs[False]["mean_relative_error"]
    assert abs(logs[True]["sparsity"] - 0.7) < 1e-3
    assert all(e["polish_seconds"] == 0 for e in logs[False]["layers"])
    # SparseGPT stacks q/k/v and gate/up: each layer's polish seconds are its share of the joint polish
    stacked = prune_model(tiny_model("llama"), calib, PruneSettings(method="sparsegpt", sparsity=0.7, local_search=True),
                          progress=False)
    assert all(0 < e["polish_seconds"] <= e["seconds"] for e in stacked["layers"])
    assert stacked["polished_layers"] == len(stacked["layers"]) and logs[False]["polished_layers"] == 0
    assert stacked["polish_seconds"] == pytest.approx(sum(e["polish_seconds"] for e in stacked["layers"]))
    with pytest.raises(LayerwiseError, match="local_search must be"):
        PruneSettings(method="magnitude", sparsity=0.7, local_search="yes").validate()
    args = build_parser().parse_args(["prune", "--model", "m", "--output", "o", "--local-search", "auto"])
    assert prune_settings_given(args)["local_search"] is None
    args = build_parser().parse_args(["prune", "--model", "m", "--output", "o"])
    assert "local_search" not in prune_settings_given(args)


def test_state_groups_cover_the_layer_and_keep_each_groups_count(rng, monkeypatch):
    Hn, G, B = normalized(rng, 30, 24)
    mask = start_mask(B, "unstructured", 0.7)
    m = int(mask.sum(axis=1).max()) + 8
    groups = polish_module.state_groups(mask, slice(None), np, max_entries=9 * m * m)
    assert len(groups) == 4 and groups[0].start == 0 and groups[-1].stop == 30
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))
    monkeypatch.setattr(polish_module, "state_groups", lambda mask, layer, xp: groups)
    grouped, _, moves = polish_module.search_support(Hn, G, mask, parse_pattern("unstructured"), np)
    assert moves > 0
    assert [int(grouped[g].sum()) for g in groups] == [int(mask[g].sum()) for g in groups]
    assert exact_objective(Hn, G, B, grouped) < exact_objective(Hn, G, B, mask)


class _FakeDevice:
    """Stands in for CuPy where only the memory queries are read: ``free`` bytes free on the
    device, ``slack`` bytes held unused by the pool."""

    def __init__(self, free: int, slack: int) -> None:
        total = 5 * slack + 7  # any pool size above its unused part
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (free, 1 << 40)))
        self.get_default_memory_pool = lambda: types.SimpleNamespace(total_bytes=lambda: total,
                                                                     used_bytes=lambda: total - slack)


def test_gpu_state_groups_take_a_third_of_the_free_memory_at_most_32_gib():
    gib = 1 << 30
    tight = _FakeDevice(free=10 * gib, slack=2 * gib)
    assert free_device_bytes(tight) == 12 * gib and free_device_bytes(np) == float("inf")
    assert polish_module.state_entries(tight) == 12 * gib // 3 // 8
    assert polish_module.state_entries(_FakeDevice(free=140 * gib, slack=0)) == 1 << 32
    assert polish_module.state_entries(np) == 1 << 28
    # a 4096 × 4096 layer at 70 % with 1229 entries in every row: m = 1237 slots, 4096 · 1237² ≈ 6.3e9 entries
    mask = np.zeros((4096, 4096), dtype=bool)
    mask[:, :1229] = True
    assert len(polish_module.state_groups(mask, slice(None), _FakeDevice(free=140 * gib, slack=0))) == 2
    groups = polish_module.state_groups(mask, slice(None), tight)  # 2²⁹ entries: at most 350 rows a group
    assert len(groups) == 12 and all(g.stop - g.start <= 12 * gib // 3 // 8 // 1237**2 for g in groups)
