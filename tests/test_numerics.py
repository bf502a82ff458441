"""Numerics of every method: dead input channels, ill-conditioned and rank-deficient H at damping 0.

Each case checks a finite, feasible result whose objective equals a float64 recomputation
from the problem's inputs (never NaN/Inf, never a stop mid-run). The ``gpu`` tests repeat
the cases with device="cuda".
"""

import warnings

import numpy as np
import pytest

from layerprune import LayerProblem, solve

METHODS = ["alps", "sparsegpt", "wanda", "magnitude", "admm_gradual"]
PATTERNS = [("unstructured", 0.5), ("2:4", None)]
OUT, INP = 24, 64


def _activations(rng, n: int, inp: int = INP):
    """Correlated calibration inputs with per-channel scales (fresh, never zero)."""
    mix = rng.standard_normal((inp, inp)) / np.sqrt(inp) + 0.5 * np.eye(inp)
    return (rng.standard_normal((n, inp)) @ mix) * np.exp(0.5 * rng.standard_normal(inp))[None, :]


def _weight(rng):
    return rng.standard_normal((OUT, INP)).astype(np.float32)


def _objective64(W, W_dense, H, damping: float, live=None) -> float:
    """tr(E (H + λI) Eᵀ) in float64 over the live channels, E = W − Ŵ, λ = damping · mean diag H."""
    H = np.asarray(H, dtype=np.float64)
    lam = damping * float(np.diagonal(H).mean())
    live = np.ones(H.shape[0], dtype=bool) if live is None else live
    E = (np.asarray(W, dtype=np.float64) - np.asarray(W_dense, dtype=np.float64))[:, live]
    HL = H[np.ix_(live, live)] + lam * np.eye(int(live.sum()))
    return float(np.sum((E @ HL) * E))


def _check(p, r, W_dense, H, damping, live=None):
    assert np.isfinite(r.weight).all() and np.isfinite(r.objective) and np.isfinite(r.relative_error)
    assert p.check_feasible(r.weight)
    assert r.objective == pytest.approx(_objective64(r.weight, W_dense, H, damping, live), rel=1e-6, abs=1e-12)


# -- dead input channels ---------------------------------------------------------
def _dead_problem(rng, pattern, sparsity, damping, n_dead: int = 6):
    X = _activations(rng, 2 * INP)
    dead = np.sort(rng.choice(INP, n_dead, replace=False))
    X[:, dead] = 0.0
    H = (X.T @ X).astype(np.float32)  # the driver's float32 H: the dead diagonal is exactly 0
    W = _weight(rng)
    return LayerProblem(W, H, sparsity=sparsity, pattern=pattern, damping=damping), W, H, dead


@pytest.mark.parametrize("damping", [0.0, 0.01])
@pytest.mark.parametrize("pattern,sparsity", PATTERNS + [("row", 0.5)])
@pytest.mark.parametrize("method", METHODS)
def test_dead_channels_are_pruned_for_free(rng, method, pattern, sparsity, damping):
    p, W, H, dead = _dead_problem(rng, pattern, sparsity, damping)
    W_given = W.copy()
    assert p.n_dead == len(dead) and np.flatnonzero(p.dead_channels).tolist() == dead.tolist()
    r = solve(p, method, device="cpu")
    live = np.ones(INP, dtype=bool)
    live[dead] = False
    _check(p, r, W, H, damping, live)
    assert (r.weight[:, dead] == 0).all() and not r.mask[:, dead].any()
    np.testing.assert_array_equal(W, W_given)  # the caller's weight is left alone
    # the budget is met by the live entries (dead ones are free, not counted against it)
    if pattern == "unstructured":
        assert int(r.mask.sum()) == p.kept
    elif pattern == "row":
        assert (r.mask.sum(axis=1) == round(0.5 * INP)).all()
    else:
        live_per_group = live.reshape(-1, 4).sum(axis=1)
        np.testing.assert_array_equal(r.mask.reshape(OUT, -1, 4).sum(axis=2), np.minimum(2, live_per_group)[None, :].repeat(OUT, 0))


def test_dead_channel_convention_in_the_hessian(rng):
    p, W, H, dead = _dead_problem(rng, "unstructured", 0.5, 0.0)
    Hd = p.hessian
    live = ~p.dead_channels
    assert (np.diagonal(Hd) > 0).all()  # d = √diag H > 0 and a Cholesky factor exist at damping 0
    assert (Hd[dead][:, live] == 0).all() and (Hd[live][:, dead] == 0).all()
    assert np.diagonal(Hd)[dead] == pytest.approx(float(np.diagonal(H)[live].mean()), rel=1e-6)
    assert (p.weight[:, dead] == 0).all() and (p.weight[:, live] == W[:, live]).all()
    q = p.with_weight(_weight(rng))  # a group's other layers get the same convention
    assert (q.weight[:, dead] == 0).all()


def test_dead_channels_survive_save_and_load(rng, tmp_path):
    p, W, H, dead = _dead_problem(rng, "2:4", None, 0.0)
    p.save(tmp_path / "dead.npz")
    q = LayerProblem.load(tmp_path / "dead.npz")
    assert q.n_dead == len(dead)
    assert solve(q, "sparsegpt", device="cpu").objective == pytest.approx(solve(p, "sparsegpt", device="cpu").objective)


# -- ill-conditioned and rank-deficient H at damping 0 --------------------------------
def _ill_conditioned(rng, cond: float = 1e12):
    """H = Q diag(λ) Qᵀ, λ log-spaced over [1/cond, 1] (cond(H) = 1e12)."""
    q, _ = np.linalg.qr(rng.standard_normal((INP, INP)))
    lam = np.logspace(-np.log10(cond), 0.0, INP)
    H = (q * lam) @ q.T
    return (H + H.T) * 0.5


def _rank_deficient(rng):
    """H = XᵀX from n = in/4 calibration rows (rank 16 of 64)."""
    X = _activations(rng, INP // 4)
    return X.T @ X


CASES = {"ill_conditioned": _ill_conditioned, "rank_deficient": _rank_deficient}


def _hard_problem(rng, case, pattern, sparsity, dtype):
    H = CASES[case](rng).astype(dtype)
    W = _weight(rng)
    return LayerProblem(W, H, sparsity=sparsity, pattern=pattern, damping=0.0), W, H


def _solve_hard(p, method, device, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = solve(p, method, device=device, **options)
    return r, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_hard_hessians_at_damping_zero(rng, method, case, pattern, sparsity, dtype):
    p, W, H = _hard_problem(rng, case, pattern, sparsity, dtype)
    r, warned = _solve_hard(p, method, "cpu")
    _check(p, r, W, H, 0.0)
    assert r.relative_error < 1.0  # better than pruning everything
    if warned:  # only SparseGPT may jitter a singular H, and it says so
        assert method == "sparsegpt" and all("use damping > 0" in w for w in warned), warned


@pytest.mark.parametrize("case", sorted(CASES))
def test_alps_float32_eigendecomposition_of_hard_hessians(rng, case):
    """The GPU's float32 eigendecomposition (eig_dtype), on the CPU: rounding below zero is not "not PSD"."""
    p, W, H = _hard_problem(rng, case, "unstructured", 0.5, np.float32)
    r = solve(p, "alps", device="cpu", eig_dtype="float32")
    _check(p, r, W, H, 0.0)
    assert r.relative_error < 1.0


def test_sparsegpt_jitter_only_when_singular(rng):
    """A singular H (rank 16 of 64) warns and is jittered; cond 1e12 and damped H are factored as given."""
    from layerprune.solvers.linalg import inverse_cholesky_upper

    H = _rank_deficient(rng)
    with pytest.warns(RuntimeWarning, match="singular.*τ = 1e-.*use damping > 0"):
        U = inverse_cholesky_upper(H, np)
    assert np.isfinite(U).all()
    with pytest.raises(ValueError, match="singular|positive definite"):
        inverse_cholesky_upper(H, np, jitter=False)
    for M in (_ill_conditioned(rng), H + 0.01 * np.diagonal(H).mean() * np.eye(INP)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            U = inverse_cholesky_upper(M, np)
        np.testing.assert_allclose(U.T @ U @ M, np.eye(INP), atol=1e-3)


# -- the same on the GPU ------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("damping", [0.0, 0.01])
@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
@pytest.mark.parametrize("method", METHODS)
def test_dead_channels_gpu(rng, method, pattern, sparsity, damping):
    p, W, H, dead = _dead_problem(rng, pattern, sparsity, damping)
    r = solve(p, method, device="cuda")
    live = np.ones(INP, dtype=bool)
    live[dead] = False
    _check(p, r, W, H, damping, live)
    assert (r.weight[:, dead] == 0).all() and not r.mask[:, dead].any()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_hard_hessians_at_damping_zero_gpu(rng, method, case, pattern, sparsity, dtype):
    p, W, H = _hard_problem(rng, case, pattern, sparsity, dtype)
    r, warned = _solve_hard(p, method, "cuda")
    _check(p, r, W, H, 0.0)
    assert r.relative_error < 1.0
    if warned:
        assert method == "sparsegpt" and all("use damping > 0" in w for w in warned), warned
