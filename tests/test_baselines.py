"""Baselines: feasibility and exact counts, the quality ordering, and SparseGPT against references."""

import numpy as np
import pytest

from layerprune import LayerProblem, solve
from layerprune.problems import synthetic_problem

METHODS = ["magnitude", "wanda", "sparsegpt"]
PATTERNS = [("unstructured", 0.5), ("unstructured", 0.7), ("unstructured", 0.9),
            ("row", 0.5), ("row", 0.7), ("row", 0.9),
            ("2:4", None), ("1:4", None), ("4:8", None)]


def _random_problem(rng, out: int, inp: int, sparsity, pattern: str, damping: float = 0.01) -> LayerProblem:
    """Fresh correlated activations and weights (not identity-like, never zero)."""
    mix = rng.standard_normal((inp, inp)) / np.sqrt(inp) + 0.5 * np.eye(inp)
    X = (rng.standard_normal((2 * inp, inp)) @ mix) * np.exp(rng.standard_normal(inp))[None, :]
    W = rng.standard_normal((out, inp)).astype(np.float32)
    return LayerProblem.from_activations(X, W, sparsity=sparsity, pattern=pattern, damping=damping)


@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
@pytest.mark.parametrize("method", METHODS)
def test_feasible_and_exact_sparsity(rng, method, pattern, sparsity):
    out, inp = 24, 192  # 192 columns: SparseGPT sweeps two blocks (128 + 64)
    p = _random_problem(rng, out, inp, sparsity, pattern)
    r = solve(p, method, device="cpu")
    nz = r.weight != 0
    assert p.check_feasible(r.weight)
    np.testing.assert_array_equal(nz, r.mask)  # every kept weight is nonzero, every pruned one zero
    s = p.sparsity
    if pattern == "unstructured":
        assert nz.sum() == round((1 - s) * out * inp)
    elif pattern == "row":
        assert np.all(nz.sum(axis=1) == round((1 - s) * inp))
    else:
        n, m = map(int, pattern.split(":"))
        assert np.all(nz.reshape(out, inp // m, m).sum(axis=-1) == n)
        assert s == pytest.approx(1 - n / m)
    assert r.sparsity == pytest.approx(1 - nz.sum() / nz.size, abs=0)
    assert r.sparsity == pytest.approx(s, abs=0.5 / inp)
    assert r.objective == pytest.approx(p.objective(r.weight), rel=1e-12)
    if method in ("magnitude", "wanda"):  # no weight update: the kept weights are Ŵ's
        np.testing.assert_array_equal(r.weight[nz], p.weight[nz])


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.6), ("row", 0.6), ("2:4", None)])
def test_magnitude_and_wanda_keep_the_largest_scores(rng, pattern, sparsity):
    """Every kept score ≥ every pruned score within the comparison group (layer, row or N:M group)."""
    out, inp = 16, 64
    # Large damping: an implementation scoring with the damped diagonal would choose differently.
    p = _random_problem(rng, out, inp, sparsity, pattern, damping=0.5)
    W = p.weight.astype(np.float64)
    col_norm = np.sqrt(np.sum(np.asarray(p.raw_hessian) * np.eye(inp), axis=0))  # ‖X_j‖₂
    for method, score in [("magnitude", np.abs(W)), ("wanda", np.abs(W) * col_norm[None, :])]:
        keep = solve(p, method, device="cpu").mask
        if pattern == "unstructured" and method == "magnitude":
            groups = [(score.ravel(), keep.ravel())]
        elif pattern == "2:4":
            groups = list(zip(score.reshape(-1, 4), keep.reshape(-1, 4)))
        else:  # row pattern, and Wanda's per-output-row comparison for unstructured
            groups = list(zip(score, keep))
        for sc, kp in groups:
            assert sc[kp].min() >= sc[~kp].max(), method
    # Wanda on unstructured splits the layer's count evenly over the rows.
    counts = solve(p.with_sparsity(0.6, "unstructured"), "wanda", device="cpu").mask.sum(axis=1)
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7, 0.8])
def test_quality_ordering_on_correlated_problems(sparsity):
    """SparseGPT well below Wanda, Wanda well below magnitude.

    Measured on synthetic_problem 64×256 and 96×384, seeds 0–5 (48 problems):
    SparseGPT/Wanda objective ratio 0.50 / 0.52 / 0.57 / 0.64 on average at 50/60/70/80 %,
    at worst 0.58 / 0.58 / 0.64 / 0.70; Wanda/magnitude 0.29–0.33 on average, at worst 0.50.
    The bounds below leave that worst case some slack.
    """
    for seed in range(3):
        p = synthetic_problem(64, 256, sparsity, seed=seed)
        f = {m: solve(p, m, device="cpu").objective for m in METHODS}
        assert f["sparsegpt"] < 0.8 * f["wanda"], (seed, f)
        assert f["wanda"] < 0.65 * f["magnitude"], (seed, f)


def _exact_refit(p: LayerProblem, keep: np.ndarray) -> np.ndarray:
    """argmin f(W) s.t. supp W ⊆ keep, per row: H[S,S] w_S = (H ŵ)[S] (float64)."""
    H = np.asarray(p.hessian, dtype=np.float64)
    W_hat = np.asarray(p.weight, dtype=np.float64)
    g = W_hat @ H
    W = np.zeros_like(W_hat)
    for r in range(W.shape[0]):
        S = keep[r]
        W[r, S] = np.linalg.solve(H[np.ix_(S, S)], g[r, S])
    return W


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.8), ("row", 0.6),
                                              ("2:4", None), ("1:4", None)])
def test_sparsegpt_against_exact_refit_on_its_mask(pattern, sparsity):
    """SparseGPT never beats the least-squares optimum on its own mask, and stays near it.

    Measured (synthetic 32×256, seeds 0–2, these five patterns): SparseGPT / optimum =
    1.31–1.48 (float64); pruning the same mask with no weight update is 1.37–1.92× worse than
    SparseGPT. The greedy sweep never revisits weights already fixed, hence the gap the
    refit closes; the bounds below leave room around those ranges.
    """
    for seed in range(2):
        p = synthetic_problem(32, 256, sparsity, pattern, seed=seed)
        r = solve(p, "sparsegpt", device="cpu", dtype="float64")
        W_opt = _exact_refit(p, r.mask)
        f_opt, f = p.objective(W_opt), r.objective
        # W_opt is optimal: the gradient vanishes on the support.
        grad = (W_opt - np.asarray(p.weight, dtype=np.float64)) @ np.asarray(p.hessian, dtype=np.float64)
        assert np.abs(grad[r.mask]).max() < 1e-8 * np.abs(np.asarray(p.weight) @ np.asarray(p.hessian)).max()
        assert f >= f_opt * (1 - 1e-9)
        assert f <= 1.75 * f_opt, f / f_opt
        f_no_update = p.objective(np.asarray(p.weight) * r.mask)
        assert f_no_update > 1.2 * f


def _reference_sparsegpt(p: LayerProblem, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """Unblocked float64 OBS sweep written from the paper, with explicit inverses (no Cholesky).

    Columns j = 0..in−1 in order. The OBS saliency of column j is w²/[(H_{F,F})⁻¹]_{00} with
    F = {j, …, in−1} (the paper's [H_F⁻¹]_jj). The mask is chosen per block of ``blocksize``
    columns from the current weights at the block start (unstructured: the layer's count
    split by cumulative width; row: per row; N:M: per group when the sweep reaches it).
    Pruning column j, then W[:, j+1:] ← argmin f given columns ≤ j fixed, which is what
    the OBS update does.
    """
    H = np.asarray(p.hessian, dtype=np.float64)
    W_hat = np.asarray(p.weight, dtype=np.float64)
    W = W_hat.copy()
    out, inp = W.shape
    hinv_jj = np.array([np.linalg.inv(H[j:, j:])[0, 0] for j in range(inp)])
    keep = np.zeros((out, inp), dtype=bool)
    kind = p.pattern.name
    if kind == "unstructured":
        total = round((1 - p.sparsity) * out * inp)
    elif kind == "row":
        total = round((1 - p.sparsity) * inp)
    else:
        n, m = p.pattern.n, p.pattern.m
        blocksize = max(m, blocksize // m * m)

    def top(scores, k):  # k largest, ties to the lower index
        order = np.lexsort((np.arange(scores.size), -scores.ravel()))
        t = np.zeros(scores.size, dtype=bool)
        t[order[:k]] = True
        return t.reshape(scores.shape)

    for b1 in range(0, inp, blocksize):
        b2 = min(b1 + blocksize, inp)
        share = round(total * b2 / inp) - round(total * b1 / inp) if kind in ("unstructured", "row") else 0
        score = W[:, b1:b2] ** 2 / hinv_jj[None, b1:b2]
        if kind == "unstructured":
            keep[:, b1:b2] = top(score, share)
        elif kind == "row":
            keep[:, b1:b2] = np.stack([top(s, share) for s in score])
        for j in range(b1, b2):
            if kind not in ("unstructured", "row") and j % m == 0:
                g = W[:, j:j + m] ** 2 / hinv_jj[None, j:j + m]
                keep[:, j:j + m] = np.stack([top(s, n) for s in g])
            W[:, j] *= keep[:, j]
            P, F = slice(0, j + 1), slice(j + 1, inp)
            if j + 1 < inp:
                W[:, F] = W_hat[:, F] - (W[:, P] - W_hat[:, P]) @ H[P, F] @ np.linalg.inv(H[F, F])
    return W * keep, keep


@pytest.mark.parametrize("pattern,sparsity,blocksize", [
    ("unstructured", 0.6, 16), ("unstructured", 0.75, 48), ("unstructured", 0.5, 1),
    ("row", 0.6, 16), ("2:4", None, 16), ("1:4", None, 8), ("4:8", None, 128), ("1:3", None, 16),
])
def test_sparsegpt_matches_unblocked_reference(rng, pattern, sparsity, blocksize):
    """The blocked lazy update equals the unblocked sweep: same mask, same weights (float64)."""
    out, inp = 10, 48
    p = _random_problem(rng, out, inp, sparsity, pattern)
    r = solve(p, "sparsegpt", device="cpu", dtype="float64", blocksize=blocksize)
    W_ref, keep_ref = _reference_sparsegpt(p, blocksize)
    np.testing.assert_array_equal(r.mask, keep_ref)
    # r.weight comes back in the problem's float32; the objective is taken before that cast.
    scale = np.abs(W_ref).max()
    np.testing.assert_allclose(r.weight, W_ref, rtol=0, atol=1e-6 * scale)
    assert r.objective == pytest.approx(p.objective(W_ref), rel=1e-9)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_sparsegpt_nm_does_not_depend_on_blocksize(rng, pattern):
    """For N:M the mask rule is per group, so every block size must give the same answer."""
    p = _random_problem(rng, 12, 64, None, pattern)
    results = [solve(p, "sparsegpt", device="cpu", dtype="float64", blocksize=b) for b in (1, 8, 24, 128)]
    for r in results[1:]:
        np.testing.assert_array_equal(r.mask, results[0].mask)
        np.testing.assert_allclose(r.weight, results[0].weight, rtol=1e-6, atol=1e-7)
        assert r.objective == pytest.approx(results[0].objective, rel=1e-10)


def test_sparsegpt_float32_close_to_float64(rng):
    p = _random_problem(rng, 16, 128, 0.6, "unstructured")
    f32 = solve(p, "sparsegpt", device="cpu").objective
    f64 = solve(p, "sparsegpt", device="cpu", dtype="float64").objective
    assert f32 == pytest.approx(f64, rel=1e-3)


def test_unknown_options_are_rejected(rng):
    p = _random_problem(rng, 4, 16, 0.5, "unstructured")
    for method in METHODS:
        with pytest.raises(TypeError, match="bogus"):
            solve(p, method, device="cpu", bogus=1)


@pytest.mark.gpu
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.7), ("row", 0.5), ("2:4", None), ("1:4", None)])
@pytest.mark.parametrize("method", METHODS)
def test_cupy_matches_numpy(method, pattern, sparsity):
    """The GPU path (radix-select top-k, cupyx triangular solves) gives the CPU answer."""
    p = synthetic_problem(96, 384, sparsity, pattern, seed=7)
    cpu = solve(p, method, device="cpu", dtype="float64")
    gpu = solve(p, method, device="cuda", dtype="float64")
    assert isinstance(gpu.weight, np.ndarray) and gpu.device == "cuda"
    assert (cpu.mask != gpu.mask).mean() < 1e-3
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-6)
    assert p.check_feasible(gpu.weight) and (gpu.weight != 0).sum() == (cpu.weight != 0).sum()


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_torch_cuda_problem_keeps_torch(method):
    import torch

    p0 = synthetic_problem(32, 128, 0.6, seed=4)
    p = LayerProblem(torch.as_tensor(p0.weight, device="cuda"), torch.as_tensor(p0.raw_hessian, device="cuda"), 0.6)
    r = solve(p, method, keep_array_type=True)
    assert isinstance(r.weight, torch.Tensor) and r.weight.is_cuda and r.mask.dtype == torch.bool
    assert r.objective == pytest.approx(solve(p0, method, device="cpu").objective, rel=1e-4)
