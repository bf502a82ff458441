"""LayerProblem: the objective against a float64 recomputation from X, save/load, and bad input."""

import json

import numpy as np
import pytest
import torch

from layerprune import LayerProblem, available_methods, solve


def _correlated_X(rng, n: int, inp: int) -> np.ndarray:
    """Activations with correlated columns and uneven scales (not identity-like)."""
    mix = rng.standard_normal((inp, inp)) / np.sqrt(inp) + np.eye(inp)
    return (rng.standard_normal((n, inp)) @ mix) * np.exp(rng.standard_normal(inp))[None, :]


def _reference(X: np.ndarray, W_hat: np.ndarray, W: np.ndarray, damping: float) -> tuple[float, float]:
    """f(W) = ‖XŴᵀ − XWᵀ‖² + λ‖W − Ŵ‖² and f(W)/f(0), λ = damping·mean‖X_j‖², all float64."""
    X, W_hat, W = (np.asarray(a, dtype=np.float64) for a in (X, W_hat, W))
    lam = damping * np.mean(np.sum(X**2, axis=0))
    f = np.sum((X @ W_hat.T - X @ W.T) ** 2) + lam * np.sum((W - W_hat) ** 2)
    energy = np.sum((X @ W_hat.T) ** 2) + lam * np.sum(W_hat**2)
    return float(f), float(f / energy)


@pytest.mark.parametrize("damping", [0.0, 0.01, 0.1])
def test_objective_matches_recomputation_from_X(rng, damping):
    n, out, inp = 300, 12, 40
    X = _correlated_X(rng, n, inp)
    W_hat = rng.standard_normal((out, inp)).astype(np.float32)
    p = LayerProblem.from_activations(X, W_hat, sparsity=0.5, damping=damping)
    assert p.lam == pytest.approx(damping * np.mean(np.sum(X**2, axis=0)), rel=1e-12)
    for _ in range(3):
        # A random pruned-and-perturbed W (not a solver's output).
        W = (W_hat + 0.3 * rng.standard_normal((out, inp))) * (rng.random((out, inp)) < 0.5)
        f, rel = _reference(X, W_hat, W, damping)
        assert p.objective(W) == pytest.approx(f, rel=1e-9)
        assert p.relative_error(W) == pytest.approx(rel, rel=1e-9)
        assert 0 < rel
    assert p.objective(W_hat) == pytest.approx(0.0, abs=1e-9 * f)
    assert p.relative_error(np.zeros((out, inp))) == pytest.approx(1.0, rel=1e-12)


def test_objective_from_float32_hessian(rng):
    """The constructor path (H given, float32) agrees with the float64 recomputation to float32 accuracy."""
    n, out, inp = 200, 8, 32
    X = _correlated_X(rng, n, inp)
    W_hat = rng.standard_normal((out, inp)).astype(np.float32)
    H = (X.T @ X).astype(np.float32)
    p = LayerProblem(weight=W_hat, hessian=H, sparsity=0.7, pattern="unstructured")
    W = W_hat * (rng.random((out, inp)) < 0.3)
    f, rel = _reference(X, W_hat, W, 0.01)
    assert p.objective(W) == pytest.approx(f, rel=1e-4)
    assert p.relative_error(W) == pytest.approx(rel, rel=1e-4)
    # p.hessian is damped, p.raw_hessian is not and is left untouched.
    np.testing.assert_allclose(np.diag(p.hessian), np.diag(H).astype(np.float64) + p.lam, rtol=1e-6)
    assert p.lam > 0
    np.testing.assert_array_equal(p.raw_hessian, H)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_solve_result_scores_match_recomputation(rng, method):
    n, out, inp = 256, 16, 48
    X = _correlated_X(rng, n, inp)
    W_hat = rng.standard_normal((out, inp)).astype(np.float32)
    p = LayerProblem.from_activations(X, W_hat, sparsity=0.6)
    r = solve(p, method, device="cpu")
    f, rel = _reference(X, W_hat, r.weight, p.damping)
    assert r.objective == pytest.approx(f, rel=1e-9)
    assert r.relative_error == pytest.approx(rel, rel=1e-9)
    assert r.seconds >= 0 and r.method == method and r.pattern == "unstructured"


# -- save / load ---------------------------------------------------------------


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.7), ("row", 0.55), ("2:4", None), ("1:4", 0.75)])
def test_save_load_round_trip(rng, tmp_path, pattern, sparsity):
    out, inp = 6, 16
    X = _correlated_X(rng, 64, inp)
    W = rng.standard_normal((out, inp)).astype(np.float32)
    p = LayerProblem(W, (X.T @ X).astype(np.float32), sparsity=sparsity, pattern=pattern, damping=0.05,
                     name="model.layers.3.mlp.up_proj")
    path = tmp_path / "layer.npz"
    p.save(path)
    q = LayerProblem.load(path)
    np.testing.assert_array_equal(q.weight, p.weight)
    np.testing.assert_array_equal(q.raw_hessian, p.raw_hessian)
    assert q.weight.dtype == p.weight.dtype
    assert (q.sparsity, q.pattern, q.damping, q.name) == (p.sparsity, p.pattern, p.damping, p.name)
    Wp = W * (rng.random(W.shape) < 0.5)
    assert q.objective(Wp) == p.objective(Wp)
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write left no temporary file


def test_load_overrides_sparsity_and_pattern(rng, tmp_path):
    X = _correlated_X(rng, 64, 16)
    p = LayerProblem(rng.standard_normal((4, 16)), X.T @ X, sparsity=0.5)
    p.save(tmp_path / "a.npz")
    assert LayerProblem.load(tmp_path / "a.npz", sparsity=0.8).sparsity == 0.8
    q = LayerProblem.load(tmp_path / "a.npz", pattern="2:4")
    assert (q.pattern.name, q.sparsity) == ("2:4", 0.5)


def _write(path, meta: dict | None, rng):
    arrays = {"weight": rng.standard_normal((4, 8)), "hessian": np.eye(8)}
    if meta is not None:
        arrays["metadata"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_load_without_format_version(rng, tmp_path):
    path = tmp_path / "old.npz"
    _write(path, {"sparsity": 0.5, "pattern": "unstructured"}, rng)
    with pytest.raises(ValueError, match="format_version"):
        LayerProblem.load(path)
    _write(path, None, rng)
    with pytest.raises(ValueError, match="format_version"):
        LayerProblem.load(path)


def test_load_from_a_newer_version(rng, tmp_path):
    path = tmp_path / "new.npz"
    _write(path, {"format_version": 99, "sparsity": 0.5, "pattern": "unstructured"}, rng)
    with pytest.raises(ValueError, match="newer"):
        LayerProblem.load(path)


def test_load_not_a_problem_file(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a LayerProblem file"):
        LayerProblem.load(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        LayerProblem.load(tmp_path / "missing.npz")


# -- bad input -----------------------------------------------------------------


def _good(rng, out: int = 4, inp: int = 8):
    X = _correlated_X(rng, 32, inp)
    return rng.standard_normal((out, inp)), X.T @ X


def test_shape_mismatch(rng):
    W, H = _good(rng)
    with pytest.raises(ValueError, match="shape mismatch"):
        LayerProblem(W, H[:6, :6], sparsity=0.5)
    with pytest.raises(ValueError, match="square"):
        LayerProblem(W, H[:, :6], sparsity=0.5)
    with pytest.raises(ValueError, match="2-D"):
        LayerProblem(W[0], H, sparsity=0.5)
    X = rng.standard_normal((20, 9))
    with pytest.raises(ValueError, match="shape mismatch"):
        LayerProblem.from_activations(X, W, sparsity=0.5)
    p = LayerProblem(W, H, sparsity=0.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        p.objective(W[:, :4])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["weight", "hessian", "X"])
def test_nan_and_inf(rng, bad, where):
    W, H = _good(rng)
    X = rng.standard_normal((20, 8))
    if where == "weight":
        W[1, 2] = bad
        with pytest.raises(ValueError, match="weight contains NaN or Inf"):
            LayerProblem(W, H, sparsity=0.5)
    elif where == "hessian":
        H[3, 3] = bad
        with pytest.raises(ValueError, match="hessian contains NaN or Inf"):
            LayerProblem(W, H, sparsity=0.5)
    else:
        X[5, 1] = bad
        with pytest.raises(ValueError, match="X contains NaN or Inf"):
            LayerProblem.from_activations(X, W, sparsity=0.5)


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval(rng, s):
    W, H = _good(rng)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        LayerProblem(W, H, sparsity=s)


def test_sparsity_required_and_nm_conflict(rng):
    W, H = _good(rng)
    with pytest.raises(ValueError, match="sparsity is required"):
        LayerProblem(W, H, pattern="unstructured")
    with pytest.raises(ValueError, match="2:4 fixes the sparsity at 0.5"):
        LayerProblem(W, H, sparsity=0.7, pattern="2:4")
    assert LayerProblem(W, H, sparsity=0.5, pattern="2:4").sparsity == 0.5
    assert LayerProblem(W, H, pattern="1:4").sparsity == 0.75


def test_non_symmetric_hessian(rng):
    W, H = _good(rng)
    H[0, 5] += 0.5 * np.abs(H).max()
    with pytest.raises(ValueError, match="not symmetric"):
        LayerProblem(W, H, sparsity=0.5)


def test_negative_diagonal(rng):
    W, H = _good(rng)
    H[2, 2] = -1.0
    with pytest.raises(ValueError, match="negative diagonal"):
        LayerProblem(W, H, sparsity=0.5)


def test_zero_hessian(rng):
    W, _ = _good(rng)
    with pytest.raises(ValueError, match="hessian is zero"):
        LayerProblem(W, np.zeros((8, 8)), sparsity=0.5)


def test_bad_damping(rng):
    W, H = _good(rng)
    for d in (-0.01, float("nan")):
        with pytest.raises(ValueError, match="damping"):
            LayerProblem(W, H, sparsity=0.5, damping=d)


def test_non_psd_hessian_in_sparsegpt(rng):
    """Symmetric, positive diagonal, but an eigenvalue far below −λ: SparseGPT's Cholesky names it."""
    inp = 16
    Q, _ = np.linalg.qr(rng.standard_normal((inp, inp)))
    H = (Q * np.r_[np.full(inp - 1, 10.0), -4.0]) @ Q.T
    H = (H + H.T) / 2
    assert np.all(np.diag(H) > 0)
    p = LayerProblem(rng.standard_normal((4, inp)), H, sparsity=0.5)
    assert np.linalg.eigvalsh(p.hessian).min() < 0  # damping does not rescue it
    with pytest.raises(ValueError, match="not positive definite"):
        solve(p, "sparsegpt", device="cpu")


def test_m_not_dividing_the_input_dimension(rng):
    W, H = _good(rng, inp=12)
    with pytest.raises(ValueError, match="M=8 does not divide the input dimension 12"):
        LayerProblem(W, H, pattern="4:8")
    p = LayerProblem(W, H, sparsity=0.5)
    with pytest.raises(ValueError, match="does not divide"):
        p.with_sparsity(None, "4:8")


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "3:3", "dense", ""])
def test_bad_pattern(rng, bad):
    W, H = _good(rng)
    with pytest.raises(ValueError, match="pattern"):
        LayerProblem(W, H, sparsity=0.5, pattern=bad)


def test_unknown_method_lists_the_known_ones(rng):
    W, H = _good(rng)
    p = LayerProblem(W, H, sparsity=0.5)
    with pytest.raises(ValueError, match="unknown method 'obs'") as info:
        solve(p, "obs")
    for name in ("magnitude", "wanda", "sparsegpt"):
        assert name in str(info.value)
    assert {"magnitude", "wanda", "sparsegpt"} <= set(available_methods())


def test_non_numeric_input(rng):
    _, H = _good(rng)
    with pytest.raises(ValueError, match="real numeric"):
        LayerProblem(np.full((4, 8), "a"), H, sparsity=0.5)


# -- torch ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_torch_tensors_in_and_out(rng, method):
    torch.manual_seed(int(rng.integers(1 << 31)))
    out, inp = 8, 32
    X = torch.randn(128, inp) @ (torch.randn(inp, inp) / inp**0.5 + torch.eye(inp))
    W = torch.randn(out, inp)
    p = LayerProblem(weight=W, hessian=X.T @ X, sparsity=0.5, pattern="unstructured")
    r = solve(p, method, device="cpu", keep_array_type=True)
    assert isinstance(r.weight, torch.Tensor) and isinstance(r.mask, torch.Tensor)
    assert r.weight.dtype == torch.float32 and r.mask.dtype == torch.bool
    assert tuple(r.weight.shape) == (out, inp)
    assert int(r.mask.sum()) == out * inp // 2 and r.sparsity == 0.5
    # Same answer as the NumPy path, and NumPy by default.
    q = LayerProblem(W.numpy().copy(), (X.T @ X).numpy(), sparsity=0.5)
    r_np = solve(q, method, device="cpu")
    assert isinstance(r_np.weight, np.ndarray)
    np.testing.assert_allclose(r.weight.numpy(), r_np.weight, rtol=1e-5, atol=1e-6)
    assert r.objective == pytest.approx(r_np.objective, rel=1e-6)
    # from_activations with torch inputs keeps torch too.
    p2 = LayerProblem.from_activations(X, W, sparsity=0.5)
    r2 = solve(p2, method, device="cpu", keep_array_type=True)
    assert isinstance(r2.weight, torch.Tensor)
    assert r2.objective == pytest.approx(_reference(X.numpy(), W.numpy(), r2.weight.numpy(), 0.01)[0], rel=1e-6)


def test_with_weight_shares_the_validated_hessian_and_scores_like_a_fresh_problem():
    rng = np.random.default_rng(21)
    X = rng.standard_normal((64, 24))
    H = X.T @ X
    first = LayerProblem(rng.standard_normal((8, 24)), H, 0.5, pattern="2:4", damping=0.02, name="q")
    w2 = rng.standard_normal((16, 24))
    second = first.with_weight(w2, name="k")
    fresh = LayerProblem(w2, H, 0.5, pattern="2:4", damping=0.02)
    assert second.hessian is first.hessian and second.raw_hessian is first.raw_hessian
    assert (second.shape, second.name, second.pattern.name, second.sparsity) == ((16, 24), "k", "2:4", 0.5)
    W = w2 * (rng.random(w2.shape) < 0.5)
    assert second.objective(W) == pytest.approx(fresh.objective(W), rel=1e-12)
    assert second.dense_energy() == pytest.approx(fresh.dense_energy(), rel=1e-12)
    assert first.dense_energy() != pytest.approx(second.dense_energy())  # energies are per weight


@pytest.mark.parametrize(
    "weight, message",
    [(np.ones((4, 20)), "shape mismatch"), (np.full((4, 24), np.nan), "NaN or Inf"), (np.ones(24), "2-D"),
     (np.ones((4, 22)), "shape mismatch")],
)
def test_with_weight_checks_the_new_weight(weight, message):
    rng = np.random.default_rng(22)
    X = rng.standard_normal((64, 24))
    first = LayerProblem(rng.standard_normal((8, 24)), X.T @ X, 0.5)
    with pytest.raises(ValueError, match=message):
        first.with_weight(weight)
