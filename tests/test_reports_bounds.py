"""Lower bounds: exact enumeration/DP against brute force; relaxation bounds never above the optimum."""

import itertools

import numpy as np
import pytest

from layerprune import LayerProblem, available_methods, solve
from layerprune.reports.bounds import (
    allocate_counts,
    diagonal_bound,
    dual_certificate,
    exact_available,
    exact_optimum,
    lower_bound,
    perspective_bound,
    perspective_split,
)


def _problem(rng, out, inp, pattern, sparsity):
    """Correlated inputs with an outlier channel, so supports matter and methods differ."""
    X = rng.standard_normal((2 * inp, inp)) @ rng.standard_normal((inp, inp))
    X[:, rng.integers(inp)] *= 5.0
    W = rng.standard_normal((out, inp))
    return LayerProblem.from_activations(X, W, sparsity=sparsity, pattern=pattern)


def _row_value(H, w, support):
    """min over x, supp(x) ⊆ support, of (x − w)ᵀ H (x − w): a direct float64 solve."""
    x = np.zeros_like(w)
    s = list(support)
    if s:
        x[s] = np.linalg.solve(H[np.ix_(s, s)], (H @ w)[s])
    e = x - w
    return float(e @ H @ e)


def _brute_force(problem):
    """Minimum over every feasible layer support (not per row, not by DP)."""
    H = problem.hessian.astype(np.float64)
    W = problem.weight.astype(np.float64)
    out, inp = W.shape
    memo = {}

    def value(r, s):
        if (r, s) not in memo:
            memo[(r, s)] = _row_value(H, W[r], s)
        return memo[(r, s)]

    pat = problem.pattern
    best = np.inf
    if pat.kind == "unstructured":
        for flat in itertools.combinations(range(out * inp), problem.kept):
            rows = [tuple(j % inp for j in flat if j // inp == r) for r in range(out)]
            best = min(best, sum(value(r, s) for r, s in enumerate(rows)))
        return best
    if pat.kind == "row":
        per_row = list(itertools.combinations(range(inp), int(round((1 - problem.sparsity) * inp))))
    else:
        groups = list(itertools.combinations(range(pat.m), pat.n))
        per_row = [tuple(g * pat.m + j for g, c in enumerate(ch) for j in c)
                   for ch in itertools.product(groups, repeat=inp // pat.m)]
    for layer in itertools.product(per_row, repeat=out):
        best = min(best, sum(value(r, s) for r, s in enumerate(layer)))
    return best


@pytest.mark.parametrize(
    "shape,pattern,sparsity",
    [((3, 5), "unstructured", 0.55), ((3, 5), "unstructured", 0.8), ((3, 6), "row", 0.5), ((2, 8), "2:4", None)],
)
def test_exact_optimum_equals_brute_force(rng, shape, pattern, sparsity):
    p = _problem(rng, *shape, pattern, sparsity)
    ex = exact_optimum(p)
    brute = _brute_force(p)
    assert ex.kind == "exact"
    assert ex.info["optimum"] == pytest.approx(brute, rel=1e-9, abs=1e-12)
    assert ex.value <= brute
    assert p.check_feasible(ex.weight)
    assert p.objective(ex.weight) == pytest.approx(brute, rel=1e-9)


def test_exact_unstructured_allocates_unevenly(rng):
    """A row with tiny weights should give up its entries: the DP must find uneven counts."""
    p0 = _problem(rng, 4, 8, "unstructured", 0.5)
    W = np.array(p0.weight, dtype=np.float64)
    W[0] *= 1e-3
    p = LayerProblem(W, p0.raw_hessian, sparsity=0.5, pattern="unstructured")
    ex = exact_optimum(p)
    counts = (ex.weight != 0).sum(axis=1)
    assert counts.sum() <= p.kept
    assert counts[0] < counts[1:].min()
    row_even = p.with_sparsity(0.5, "row")  # the same k split evenly: never better than the optimum
    assert exact_optimum(row_even).info["optimum"] >= ex.info["optimum"] * (1 - 1e-12)


def test_allocate_counts_matches_enumeration(rng):
    rows, inp = 4, 5
    best = np.sort(rng.random((rows, inp + 1)), axis=1)[:, ::-1] * rng.random((rows, 1))
    for total in (0, 3, 7, 12, 20):
        val, counts = allocate_counts(best, total)
        brute = min(
            sum(best[r, c] for r, c in enumerate(cs))
            for cs in itertools.product(range(inp + 1), repeat=rows) if sum(cs) <= total
        )
        assert val == pytest.approx(brute, rel=1e-12)
        assert counts.sum() <= total
        assert sum(best[r, c] for r, c in enumerate(counts)) == pytest.approx(brute, rel=1e-12)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.75), ("row", 0.5),
                                              ("2:4", None), ("1:4", None)])
def test_perspective_bound_below_exact_optimum(rng, pattern, sparsity):
    for _ in range(3):
        p = _problem(rng, 5, 12, pattern, sparsity)
        ex = exact_optimum(p).info["optimum"]
        lb = perspective_bound(p)
        assert lb.kind == "perspective"
        assert 0 < lb.value <= ex
        # the certified value sits at (not above) the relaxation's own optimum
        assert lb.value <= lb.info["relaxation_value"] * (1 + 1e-6)


def test_dual_certificate_is_valid_for_any_multipliers(rng):
    """Weak duality: q(ν) ≤ f* for arbitrary ν ≥ 0 and an arbitrary (poor) starting W."""
    for pattern, sparsity in [("row", 0.5), ("unstructured", 0.6)]:
        p = _problem(rng, 4, 10, pattern, sparsity)
        f_star = exact_optimum(p).info["optimum"]
        H = p.hessian.astype(np.float64)
        d, lam = perspective_split(H)
        cap = (p.kept if pattern == "unstructured" else 5.0)
        for _ in range(4):
            scale = float(np.mean(np.diagonal(H))) * np.exp(rng.normal(0, 2))
            if pattern == "unstructured":
                mu = np.array([scale])
                nu, total = np.full((4, 10), scale), scale * cap
            else:
                mu = scale * rng.random(4)
                nu, total = np.repeat(mu[:, None], 10, axis=1), float(mu.sum() * cap)
            W0 = rng.standard_normal((4, 10))
            val, info = dual_certificate(p, nu, total, d, W0, lam, polish=rng.integers(0, 30))
            assert val <= f_star * (1 + 1e-9)
            assert info["certificate_slack"] >= 0


def test_lower_bound_never_exceeds_any_method(rng):
    methods = available_methods()
    for shape, pattern, sparsity in [((6, 12), "unstructured", 0.7), ((16, 32), "row", 0.6),
                                     ((16, 32), "2:4", None), ((24, 40), "unstructured", 0.5)]:
        p = _problem(rng, *shape, pattern, sparsity)
        lb = lower_bound(p)
        if shape[1] <= 16:
            assert lb.kind == "exact"
        else:  # the larger of the two certified bounds computed
            assert set(lb.info["candidates"]) == {"perspective", "diagonal"}
            assert lb.value == max(lb.info["candidates"].values())
        assert lb.value > 0
        for m in methods:
            r = solve(p, method=m, device="cpu")
            assert lb.value <= r.objective, (m, pattern, lb.value, r.objective)


def test_bound_kinds_follow_size_limits(rng):
    tiny = _problem(rng, 3, 8, "row", 0.5)
    assert exact_available(tiny) and lower_bound(tiny).kind == "exact"
    assert lower_bound(tiny, kinds=("perspective",)).kind == "perspective"
    big = _problem(rng, 40, 272, "unstructured", 0.5)  # in > 256: beyond the relaxation
    assert not exact_available(big)
    lb = lower_bound(big)
    assert lb.kind == "diagonal" and lb.value > 0
    none = lower_bound(big, kinds=("exact", "perspective"))
    assert none.kind == "none" and none.value == 0.0
    with pytest.raises(ValueError):
        exact_optimum(big)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.6), ("row", 0.5), ("2:4", None)])
def test_diagonal_bound_below_optimum_and_methods(rng, pattern, sparsity):
    for _ in range(3):
        p = _problem(rng, 4, 12, pattern, sparsity)
        lb = diagonal_bound(p)
        assert lb.kind == "diagonal"
        f_star = exact_optimum(p).info["optimum"]
        assert 0 < lb.value <= f_star
        assert max(lb.info["jacobi"], lb.info["inverse"]) <= f_star  # each form on its own
    p = _problem(rng, 40, 64, pattern, sparsity)
    lb = diagonal_bound(p)
    H = p.hessian.astype(np.float64)
    # δ is the largest with H − δ·diag(H) ⪰ 0: a 1% larger δ breaks it
    s = 1 / np.sqrt(np.diagonal(H))
    assert np.linalg.eigvalsh(H - 1.01 * lb.info["delta"] * np.diag(np.diagonal(H)))[0] < 0
    for m in available_methods():
        assert lb.value <= solve(p, method=m, device="cpu").objective
    assert lb.info["delta"] == pytest.approx(np.linalg.eigvalsh(H * s[:, None] * s[None, :])[0], rel=1e-6)


def test_schur_complement_identity_behind_the_inverse_form(rng):
    """min over kept weights of (w − ŵ)ᵀH(w − ŵ), pruned set P fixed, = ŵ_Pᵀ((H⁻¹)_PP)⁻¹ŵ_P."""
    p = _problem(rng, 1, 10, "unstructured", 0.5)
    H, w = p.hessian.astype(np.float64), p.weight.astype(np.float64)[0]
    for _ in range(5):
        P = np.sort(rng.choice(10, size=int(rng.integers(1, 10)), replace=False))
        K = np.setdiff1d(np.arange(10), P)
        direct = _row_value(H, w, K)
        B = np.linalg.inv(H)
        assert direct == pytest.approx(w[P] @ np.linalg.solve(B[np.ix_(P, P)], w[P]), rel=1e-8)


def test_inverse_form_needs_kappa_on_anticorrelated_inputs(rng):
    """Two strongly anti-correlated inputs with same-sign weights: pruning both is cheap,
    cheaper than the sum of their OBS saliencies; the 1/κ factor is what keeps the bound valid."""
    r = rng.uniform(0.8, 0.95)
    H = np.eye(4)
    H[0, 1] = H[1, 0] = -r
    a = rng.uniform(0.5, 1.0)
    W = np.array([[a, a * rng.uniform(0.9, 1.1), 10.0, -10.0]])
    p = LayerProblem(W, H, sparsity=0.5, pattern="row", damping=0.0)
    f_star = exact_optimum(p).info["optimum"]
    lb = diagonal_bound(p)
    assert lb.info["inverse"] <= f_star * (1 + 1e-9)
    assert lb.info["inverse"] * lb.info["kappa"] > 1.2 * f_star  # without κ it would not be a bound
    assert lb.value >= 0.8 * f_star  # and here the bound is nearly tight
