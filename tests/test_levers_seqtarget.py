"""Sequential groups (``sequential="groups"``) and dense targets (``target="dense"``).

The asymmetric objective against float64 recomputations from X_p and X_d, its transformed
problem's optimum against enumeration, the X_p = X_d case against today's problem, save/load;
the driver's Hessians and cross terms against hand computations on a tiny Llama, and resume.
"""

from __future__ import annotations

import copy
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
from layerwise_tiny import (  # noqa: F401
    Crash,
    byte_tokenizer,
    crash_after,
    folder_tensors,
    one_thread,
    tiny_model,
    tiny_text,
    untimed,
)

import layerprune.layerwise.driver as driver
from layerprune import LayerProblem, solve
from layerprune.layerwise import data
from layerprune.layerwise.blocks import capture_inputs, run_block
from layerprune.layerwise.cli import build_parser, prune_settings_given
from layerprune.layerwise.driver import PruneSettings, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears, find_blocks
from layerprune.problems import CrossAccumulator, HessianAccumulator
from layerprune.problems.targets import blend_statistics

METHODS = ("alps", "sparsegpt", "wanda", "magnitude", "admm_gradual")
SEQLEN = 32


# -- the asymmetric problem ------------------------------------------------------------
def _pair(rng, n=40, inp=6, out=3, noise=0.3, dead=()):
    """Correlated X_d (n × in), X_p = X_d + noise, a dense Ŵ; columns ``dead`` of X_p zero."""
    X_d = rng.standard_normal((n, inp)) @ rng.standard_normal((inp, inp))
    X_p = X_d + noise * rng.standard_normal((n, inp))
    X_p[:, list(dead)] = 0.0
    W = rng.standard_normal((out, inp))
    return X_p, X_d, W


def _problem(X_p, X_d, W, sparsity=0.5, damping=0.05, **kw):
    return LayerProblem(W, X_p.T @ X_p, sparsity=sparsity, damping=damping, cross=X_p.T @ X_d,
                        target_hessian=X_d.T @ X_d, **kw)


def _direct(X_p, X_d, W_hat, W, lam):
    """‖X_p Wᵀ − X_d Ŵᵀ‖² + λ‖W − Ŵ‖² in float64."""
    return float(np.sum((X_p @ W.T - X_d @ W_hat.T) ** 2) + lam * np.sum((W - W_hat) ** 2))


@pytest.mark.parametrize("dead", [(), (2,)])
def test_asymmetric_objective_against_a_float64_recomputation(dead):
    rng = np.random.default_rng(11)
    X_p, X_d, W_hat = _pair(rng, dead=dead)
    p = _problem(X_p, X_d, W_hat, damping=0.05)
    lam = 0.05 * float(np.mean(np.diag(X_p.T @ X_p)))
    assert p.has_target and p.lam == pytest.approx(lam, rel=1e-12)
    np.testing.assert_array_equal(p.target_weight, W_hat)
    for _ in range(5):
        W = rng.standard_normal(W_hat.shape) * (rng.random(W_hat.shape) < 0.5)
        W[:, list(dead)] = 0.0  # every solution has the dead columns pruned
        want = _direct(X_p, X_d, W_hat, W, lam)
        assert p.objective(W) == pytest.approx(want, rel=1e-10)
        energy = _direct(X_p, X_d, W_hat, np.zeros_like(W), lam)  # ‖X_d Ŵᵀ‖² + λ‖Ŵ‖²
        assert p.dense_energy() == pytest.approx(energy, rel=1e-12)
        assert p.relative_error(W) == pytest.approx(want / energy, rel=1e-10)
        # the solvers' symmetric problem differs by a constant: f_λ(W) − tr((W − Ŵ′) H_λ (W − Ŵ′)ᵀ)
        t = p.transformed()
        assert t.cross is None and t.weight is p.weight
        const = p.objective(np.zeros_like(W)) - t.objective(np.zeros_like(W))
        assert p.objective(W) == pytest.approx(t.objective(W) + const, rel=1e-9)
    # Ŵ′ = Ŵ (C + λI)ᵀ H_λ⁻¹ (live columns; the dead ones are pruned), against an explicit inverse here
    H_l = p.hessian.astype(np.float64)
    ref = W_hat @ (X_p.T @ X_d + lam * np.eye(W_hat.shape[1])).T @ np.linalg.inv(H_l)
    ref[:, list(dead)] = 0.0
    np.testing.assert_allclose(p.weight, ref, rtol=1e-9, atol=1e-12)


def _support_optimum(objective, H, G, supports, shape):
    """min over layer supports of min over W with that support of ``objective``; per row
    w_S = H_SS⁻¹ G_S (G: out × in, the linear term)."""
    best, arg = np.inf, None
    for flat in supports:
        mask = np.zeros(shape, dtype=bool)
        mask.flat[list(flat)] = True
        W = np.zeros(shape)
        for i in range(shape[0]):
            S = np.flatnonzero(mask[i])
            if S.size:
                W[i, S] = np.linalg.solve(H[np.ix_(S, S)], G[i, S])
        value = objective(W)
        if value < best:
            best, arg = value, (mask, W)
    return best, arg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformed_optimum_equals_the_direct_asymmetric_optimum(seed):
    rng = np.random.default_rng(seed)
    X_p, X_d, W_hat = _pair(rng, n=30, inp=5, out=2, noise=0.5)
    damping = 0.02
    p = _problem(X_p, X_d, W_hat, sparsity=0.6, damping=damping)
    lam = p.lam
    k = p.kept
    assert k == 4
    supports = list(itertools.combinations(range(W_hat.size), k))
    H_l = X_p.T @ X_p + lam * np.eye(5)
    # the direct problem: min ‖X_p Wᵀ − X_d Ŵᵀ‖² + λ‖W − Ŵ‖², linear term Ŵ (C + λI)ᵀ
    G_direct = W_hat @ (X_p.T @ X_d + lam * np.eye(5)).T
    direct, (mask_d, W_d) = _support_optimum(lambda W: _direct(X_p, X_d, W_hat, W, lam), H_l, G_direct, supports,
                                             W_hat.shape)
    # the transformed problem: min tr((W − Ŵ′) H_λ (W − Ŵ′)ᵀ), linear term Ŵ′ H_λ
    t = p.transformed()
    G_t = np.asarray(p.weight, dtype=np.float64) @ np.asarray(p.hessian, dtype=np.float64)
    _, (mask_t, W_t) = _support_optimum(t.objective, np.asarray(p.hessian, dtype=np.float64), G_t, supports,
                                        W_hat.shape)
    np.testing.assert_array_equal(mask_t, mask_d)
    assert p.objective(W_t) == pytest.approx(direct, rel=1e-9)
    np.testing.assert_allclose(W_t, W_d, rtol=1e-7, atol=1e-9)
    # the solvers run on (Ŵ′, H) and are scored by the asymmetric objective: never below the optimum
    for method in METHODS:
        r = solve(p, method, device="cpu")
        assert r.objective >= direct * (1 - 1e-9), method
        assert r.objective == pytest.approx(_direct(X_p, X_d, W_hat, r.weight.astype(np.float64), lam), rel=1e-6)
    assert solve(p, "alps", device="cpu").objective == pytest.approx(direct, rel=1e-5)


def test_a_singular_hessian_at_damping_zero_is_jittered_with_a_warning():
    """Fewer rows than inputs at damping 0: Ŵ′ comes from H + τI (warned), and every method's
    answer is finite, feasible and scored by the asymmetric objective recomputed in float64."""
    rng = np.random.default_rng(7)
    X_p, X_d, W_hat = _pair(rng, n=4, inp=8, out=3, noise=0.5)
    with pytest.warns(RuntimeWarning, match="dense target: the hessian is singular"):
        p = _problem(X_p, X_d, W_hat, sparsity=0.5, damping=0.0)
    assert np.isfinite(np.asarray(p.weight)).all()
    for method in METHODS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # SparseGPT's own jitter warning
            r = solve(p, method, device="cpu")
        assert np.isfinite(r.weight).all() and int((r.weight != 0).sum()) <= p.kept, method
        assert r.objective == pytest.approx(_direct(X_p, X_d, W_hat, r.weight.astype(np.float64), 0.0), rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_equal_inputs_are_todays_problem_exactly(method):
    rng = np.random.default_rng(5)
    X, _, W = _pair(rng, n=64, inp=16, out=8)
    X, W = X.astype(np.float32), W.astype(np.float32)
    H = X.T @ X
    today = LayerProblem(W, H, sparsity=0.5)
    same = LayerProblem(W, H, sparsity=0.5, cross=H.copy(), target_hessian=H.copy())
    assert not same.has_target
    np.testing.assert_array_equal(same.weight, today.weight)
    a, b = solve(today, method, device="cpu"), solve(same, method, device="cpu")
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.objective == b.objective and a.relative_error == b.relative_error
    # through the Cholesky path (a cross term a rounding away from H): Ŵ′ = Ŵ to rounding
    near = LayerProblem(W.astype(np.float64), H.astype(np.float64), sparsity=0.5,
                        cross=H.astype(np.float64) * (1 + 1e-15), target_hessian=H.astype(np.float64))
    assert near.has_target
    np.testing.assert_allclose(near.weight, W, rtol=1e-9, atol=1e-9)
    assert near.objective(a.weight) == pytest.approx(a.objective, rel=1e-6)


def test_save_load_round_trip_with_a_cross_term(tmp_path):
    rng = np.random.default_rng(3)
    X_p, X_d, W_hat = _pair(rng, n=50, inp=8, out=4)
    p = _problem(X_p.astype(np.float32), X_d.astype(np.float32), W_hat.astype(np.float32), name="block1.o_proj")
    p.save(tmp_path / "p.npz")
    q = LayerProblem.load(tmp_path / "p.npz")
    assert q.name == p.name and q.has_target and q.damping == p.damping and q.sparsity == p.sparsity
    for attr in ("weight", "target_weight", "cross", "target_hessian", "raw_hessian"):
        np.testing.assert_array_equal(getattr(q, attr), getattr(p, attr))
    W = rng.standard_normal(W_hat.shape)
    assert q.objective(W) == p.objective(W) and q.dense_energy() == p.dense_energy()
    with np.load(tmp_path / "p.npz") as f:
        assert json.loads(str(f["metadata"]))["format_version"] == 2
    plain = LayerProblem(W_hat.astype(np.float32), (X_p.T @ X_p).astype(np.float32), sparsity=0.5)
    plain.save(tmp_path / "plain.npz")  # a problem without a cross term is written as before
    with np.load(tmp_path / "plain.npz") as f:
        assert json.loads(str(f["metadata"]))["format_version"] == 1 and "cross" not in f.files
    with pytest.raises(ValueError, match="go together"):
        LayerProblem(W_hat, X_p.T @ X_p, sparsity=0.5, cross=X_p.T @ X_d)
    with pytest.raises(ValueError, match="cross must be"):
        LayerProblem(W_hat, X_p.T @ X_p, sparsity=0.5, cross=np.eye(3), target_hessian=X_d.T @ X_d)


def test_cross_accumulator_pairs_batches():
    g = torch.Generator().manual_seed(0)
    xs = [(torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 5, generator=g)) for _ in range(3)]
    acc, h = CrossAccumulator(5), HessianAccumulator(5)
    for a, b in xs:
        acc.add(a, b)
        h.add(a)
    X_p = torch.cat([a.reshape(-1, 5) for a, _ in xs]).double()
    X_d = torch.cat([b.reshape(-1, 5) for _, b in xs]).double()
    assert acc.count == 42
    torch.testing.assert_close(acc.cross().double(), X_p.T @ X_d, rtol=1e-5, atol=1e-5)
    same = CrossAccumulator(5)
    for a, _ in xs:
        same.add(a, a.clone())
    assert torch.equal(same.cross(), h.hessian())  # x_p = x_d: H bit for bit


# -- the driver ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calib():
    stream = data.token_stream(byte_tokenizer(), [tiny_text(3000)])
    return data.sample_segments(stream, 8, SEQLEN, seed=0)


def _record(monkeypatch):
    """Every group solve of the driver: (block, groups, H by layer, cross by layer)."""
    calls = []
    real = driver._solve_block

    def spy(block, hessians, groups, settings, index, plans, on_layer=None, cross=None, **kw):
        calls.append((index, [list(g) for g in groups], {k: v.clone() for k, v in hessians.items()},
                      None if cross is None else {k: (c.clone(), d.clone()) for k, (c, d) in cross.items()}))
        return real(block, hessians, groups, settings, index, plans, on_layer=on_layer, cross=cross, **kw)

    monkeypatch.setattr(driver, "_solve_block", spy)
    return calls


def _layer_inputs(model, calib, index, name, batch_size=3):
    """The input X (n × in, float64) of layer ``name`` of block ``index`` in ``model`` as it is."""
    _, blocks = find_blocks(model)
    x = capture_inputs(model, calib, batch_size)
    for i in range(index):
        x = run_block(blocks[i], x)
    rows = []
    lin = block_linears(blocks[index])[name]
    handle = lin.register_forward_hook(lambda _m, inp, _o: rows.append(inp[0].detach().reshape(-1, inp[0].shape[-1])))
    try:
        run_block(blocks[index], x)
    finally:
        handle.remove()
    return torch.cat(rows).double()


def _with_weights(dense, pruned, layers):
    """A copy of the dense model with the named linears (``"0.self_attn.q_proj"``) of ``pruned``."""
    model = copy.deepcopy(dense)
    _, blocks = find_blocks(model)
    _, src = find_blocks(pruned)
    with torch.no_grad():
        for full in layers:
            i, name = full.split(".", 1)
            block_linears(blocks[int(i)])[name].weight.copy_(block_linears(src[int(i)])[name].weight)
    return model


QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
MLP_IN = ["mlp.gate_proj", "mlp.up_proj"]


def test_sequential_groups_hessians_by_hand(calib, monkeypatch):
    calls = _record(monkeypatch)
    dense = tiny_model("llama", layers=2)
    model = copy.deepcopy(dense)
    prune_model(model, calib, PruneSettings(method="sparsegpt", sparsity=0.6, batch_size=3, sequential="groups"),
                progress=False)
    # one solve per group, in forward order
    assert [(i, g) for i, g, _, _ in calls] == [(i, [g]) for i in range(2)
                                                 for g in (QKV, ["self_attn.o_proj"], MLP_IN, ["mlp.down_proj"])]
    H = {(i, name): h for i, _, hs, _ in calls for name, h in hs.items()}
    block0 = [f"0.{n}" for n in (*QKV, "self_attn.o_proj", *MLP_IN, "mlp.down_proj")]
    cases = [  # (block, layer, the layers already pruned when its H is accumulated)
        (0, "self_attn.o_proj", block0[:3]),
        (0, "mlp.down_proj", block0[:6]),
        (1, "self_attn.o_proj", block0 + [f"1.{n}" for n in QKV]),
        (1, "mlp.down_proj", block0 + [f"1.{n}" for n in (*QKV, "self_attn.o_proj", *MLP_IN)]),
    ]
    for index, name, earlier in cases:
        X = _layer_inputs(_with_weights(dense, model, earlier), calib, index, name)
        want = X.T @ X / X.shape[0]
        got = H[(index, name)].double()
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
        # not the H of the block with its dense weights (what sequential="block" uses)
        X_b = _layer_inputs(_with_weights(dense, model, [e for e in earlier if not e.startswith(f"{index}.")]),
                            calib, index, name)
        assert float((X_b.T @ X_b / X_b.shape[0] - want).abs().max()) > 1e-3 * float(want.abs().max())


@pytest.mark.parametrize("sequential,blend", [("block", 1.0), ("groups", 1.0), ("groups", 0.3)])
def test_dense_target_cross_term_by_hand(sequential, blend, calib, monkeypatch):
    """C = X_pᵀX_t and D = X_tᵀX_t with X_t = (1 − β) X_p + β X_d (β = 1: the dense inputs), recomputed
    in float64 from both models' layer inputs."""
    calls = _record(monkeypatch)
    dense = tiny_model("llama", layers=2)
    model = copy.deepcopy(dense)
    prune_model(model, calib, PruneSettings(method="sparsegpt", sparsity=0.6, batch_size=3, sequential=sequential,
                                            target="dense", target_blend=blend), progress=False)
    cross = {(i, name): cd for i, _, _, c in calls for name, cd in c.items()}
    H = {(i, name): h for i, _, hs, _ in calls for name, h in hs.items()}
    block0 = [f"0.{n}" for n in (*QKV, "self_attn.o_proj", *MLP_IN, "mlp.down_proj")]
    for name, earlier1 in (("self_attn.q_proj", []), ("self_attn.o_proj", QKV), ("mlp.down_proj",
                                                                                  [*QKV, "self_attn.o_proj", *MLP_IN])):
        pruned_before = block0 + ([f"1.{n}" for n in earlier1] if sequential == "groups" else [])
        X_p = _layer_inputs(_with_weights(dense, model, pruned_before), calib, 1, name)
        X_t = (1 - blend) * X_p + blend * _layer_inputs(dense, calib, 1, name)
        n = X_p.shape[0]
        C, D = cross[(1, name)]
        scale = float((X_t.T @ X_t / n).abs().max())
        torch.testing.assert_close(C.double(), X_p.T @ X_t / n, rtol=2e-5, atol=2e-5 * scale)
        torch.testing.assert_close(D.double(), X_t.T @ X_t / n, rtol=2e-5, atol=2e-5 * scale)
        torch.testing.assert_close(H[(1, name)].double(), X_p.T @ X_p / n, rtol=2e-5, atol=2e-5 * scale)
        assert float((C.double() - X_t.T @ X_t / n).abs().max()) > 1e-3 * scale  # X_p ≠ X_t in block 1
    # block 0's first group reads the same inputs in both models: C = D = H bit for bit, at any β
    C, D = cross[(0, "self_attn.q_proj")]
    assert torch.equal(C, H[(0, "self_attn.q_proj")]) and torch.equal(D, H[(0, "self_attn.q_proj")])


def test_dense_target_first_group_equals_the_pruned_target(calib):
    runs = {}
    for target in ("pruned", "dense"):
        model = tiny_model("llama", layers=2)
        log = prune_model(model, calib, PruneSettings(method="sparsegpt", sparsity=0.6, batch_size=3, target=target,
                                                      sequential="block", sparsity_profile="uniform"), progress=False)
        runs[target] = (block_linears(find_blocks(model)[1][0]), log)
    for name in QKV:  # X_p = X_d there: today's problem exactly
        assert torch.equal(runs["pruned"][0][name].weight, runs["dense"][0][name].weight), name
    e_p = {e["layer"]: e for e in runs["pruned"][1]["layers"] if e["block"] == 0}
    e_d = {e["layer"]: e for e in runs["dense"][1]["layers"] if e["block"] == 0}
    assert all(e_p[n]["objective"] == e_d[n]["objective"] for n in QKV)
    assert runs["dense"][1]["settings"]["target"] == "dense" and runs["pruned"][1]["settings"]["sequential"] == "block"



@pytest.mark.parametrize("sequential,target,method", [("groups", "pruned", "sparsegpt"), ("block", "dense", "alps"),
                                                      ("groups", "dense", "sparsegpt")])
def test_resume_under_the_levers_is_bit_identical(sequential, target, method, calib, tmp_path):
    settings = dict(method=method, sparsity=0.6, batch_size=3, sequential=sequential, target=target)
    if method == "alps":
        settings["options"] = {"max_iter": 30}
    full = tiny_model("llama", layers=3)
    log_full = prune_model(full, calib, PruneSettings(**settings), progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        prune_model(tiny_model("llama", layers=3), calib, PruneSettings(**settings), checkpoint=ckpt,
                    after_block=crash_after(1), progress=False)
    with pytest.raises(LayerwiseError, match="sequential"):  # another lever is refused, naming it
        other = {**settings, "sequential": "block" if sequential == "groups" else "groups"}
        prune_model(tiny_model("llama", layers=3), calib, PruneSettings(**other), checkpoint=ckpt, resume=True,
                    progress=False)
    resumed = tiny_model("llama", layers=3)
    log = prune_model(resumed, calib, PruneSettings(**settings), checkpoint=ckpt, resume=True, progress=False)
    sd_full, sd = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sd_full[k], sd[k]) for k in sd_full)
    assert untimed(log["layers"]) == untimed(log_full["layers"])


def test_streamed_store_with_both_levers_and_resume(tmp_path):
    from layerprune.layerwise.data import calibration_segments
    from layerprune.layerwise.lazy import open_model
    from layerprune.layerwise.models import load_model

    model = tiny_model("llama", layers=3).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16", max_shard_size="30KB")
    byte_tokenizer().save_pretrained(tmp_path / "bf16")
    (tmp_path / "text.txt").write_text(tiny_text(3000))
    settings = dict(method="sparsegpt", sparsity=0.6, sequential="groups", target="dense", batch_size=3)
    lazy, tok = open_model(tmp_path / "bf16")
    ids = calibration_segments(tok, str(tmp_path / "text.txt"), 6, SEQLEN, 0)
    a = prune_model(lazy, ids, PruneSettings(**settings), checkpoint=tmp_path / "a", progress=False)
    assert lazy.layerprune_store.peak_live == 1
    whole, _ = load_model(tmp_path / "bf16")
    b = prune_model(whole, ids, PruneSettings(**settings), progress=False)
    assert [e["objective"] for e in a["layers"]] == [e["objective"] for e in b["layers"]]
    lazy2, _ = open_model(tmp_path / "bf16")
    with pytest.raises(Crash):
        prune_model(lazy2, ids, PruneSettings(**settings), checkpoint=tmp_path / "c", after_block=crash_after(1),
                    progress=False)
    lazy3, _ = open_model(tmp_path / "bf16")
    c = prune_model(lazy3, ids, PruneSettings(**settings), checkpoint=tmp_path / "c", resume=True, progress=False)
    assert [e["objective"] for e in c["layers"]] == [e["objective"] for e in a["layers"]]
    fa, fc = folder_tensors(tmp_path / "a"), folder_tensors(tmp_path / "c")
    assert fa.keys() == fc.keys() and all(torch.equal(fa[k], fc[k]) for k in fa)


@pytest.mark.parametrize("field,value", [("sequential", "layer"), ("target", "teacher"), ("target_blend", 0.0),
                                         ("target_blend", 1.5), ("target_blend", "half")])
def test_bad_lever_values(field, value, calib):
    extra = {"target": "dense"} if field == "target_blend" else {}
    with pytest.raises(LayerwiseError, match=field):
        prune_model(tiny_model("llama"), calib, PruneSettings(sparsity=0.5, **extra, **{field: value}), progress=False)


def test_the_blend_is_not_used_by_the_pruned_target(calib):
    runs = []
    for blend in (0.5, 1.0):
        model = tiny_model("llama")
        prune_model(model, calib, PruneSettings(method="sparsegpt", sparsity=0.5, batch_size=3, target="pruned",
                                                target_blend=blend), progress=False)
        runs.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_blend_statistics_against_the_blended_inputs():
    """(C_t, D_t) = (X_pᵀX_t, X_tᵀX_t) for X_t = (1 − β) X_p + β X_d, in float64 on fresh inputs."""
    rng = np.random.default_rng(3)
    X_p = rng.standard_normal((50, 6))
    X_d = X_p + 0.4 * rng.standard_normal((50, 6))
    H, C, D = X_p.T @ X_p, X_p.T @ X_d, X_d.T @ X_d
    for beta in (0.0, 0.25, 0.8, 1.0):
        X_t = (1 - beta) * X_p + beta * X_d
        C_t, D_t = blend_statistics(H.copy(), C.copy(), D.copy(), beta)
        np.testing.assert_allclose(C_t, X_p.T @ X_t, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(D_t, X_t.T @ X_t, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="blend"):
        blend_statistics(H, C, D, 1.2)


def test_cli_flags_reach_the_settings():
    a = build_parser().parse_args(["prune", "--model", "m", "--output", "o", "--sequential", "groups",
                                   "--target", "dense", "--target-blend", "0.25"])
    given = prune_settings_given(a)
    assert given["sequential"] == "groups" and given["target"] == "dense" and given["target_blend"] == 0.25
    assert "sequential" not in prune_settings_given(build_parser().parse_args(["prune", "--model", "m", "--output", "o"]))
    s = PruneSettings.build(None, **given)
    assert (s.sequential, s.target) == ("groups", "dense")


def test_python_prune_takes_the_levers(calib):
    import layerprune

    model = tiny_model("llama")
    res = layerprune.prune(model, byte_tokenizer(), calib_ids=calib, method="magnitude", sparsity=0.5, eval_text=None,
                           sequential="groups", target="dense", batch_size=3, progress=False)
    assert res.log["sequential"] == "groups" and res.log["target"] == "dense"
    assert res.log["settings"]["sequential"] == "groups"


def test_demo_rows_per_lever(tmp_path, capsys):
    from layerprune.layerwise.cli import main
    from layerprune.layerwise.levers import parse_levers
    from layerprune.layerwise.models import save_model
    from layerprune.layerwise.pipeline import run_demo

    assert parse_levers("block:pruned:uniform, groups:dense") == [("block", "pruned", "uniform"),
                                                                  ("groups", "dense", None)]
    for bad in ("groups", "groups:teacher", "", "block:pruned:owls", "block:pruned:owl:x"):
        with pytest.raises(LayerwiseError, match="levers|target"):
            parse_levers(bad)
    save_model(tiny_model("llama"), byte_tokenizer(), tmp_path / "tiny")
    (tmp_path / "text.txt").write_text(tiny_text(3000))
    kw = dict(calib=str(tmp_path / "text.txt"), text=str(tmp_path / "text.txt"), nsamples=4, seqlen=SEQLEN,
              eval_tokens=512, progress=False, echo=lambda *a: None)
    result = run_demo(str(tmp_path / "tiny"), ("sparsegpt",), settings="0.6",
                      levers=[("block", "pruned", "uniform"), ("groups", "dense", None)], **kw)
    rows = result["rows"]
    assert [(r["setting"], r["sequential"], r["target"], r["sparsity_profile"]) for r in rows] == [  # the defaults' row unlabelled
        ("0.6 unstructured block/pruned/uniform", "block", "pruned", "uniform"),
        ("0.6 unstructured", "groups", "dense", "owl")]
    alone = run_demo(str(tmp_path / "tiny"), ("sparsegpt",), settings="0.6", levers=[("groups", "dense", None)], **kw)
    assert alone["rows"][0]["perplexity"] == rows[1]["perplexity"]  # each row starts from the dense model
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--calib", kw["calib"], "--text", kw["text"],
                 "--nsamples", "4", "--seqlen", str(SEQLEN), "--eval-tokens", "512", "--quiet", "--methods", "magnitude",
                 "--settings", "0.5", "--levers", "block:pruned"]) == 0
    assert "| 0.5 unstructured block/pruned/uniform | magnitude | 0.50 |" in capsys.readouterr().out  # pruned: uniform


@pytest.mark.parametrize("family", ["llama", "qwen2", "opt", "gpt_neox"])
def test_levers_on_every_family_find_the_groups_in_forward_order(family, calib, monkeypatch):
    from layerprune.layerwise.levers import forward_groups
    from layerprune.problems import parse_pattern

    model = tiny_model(family)
    x = capture_inputs(model, calib, 3)
    groups = forward_groups(find_blocks(model)[1][0], x)
    assert sorted(n for g in groups for n in g) == sorted(block_linears(find_blocks(model)[1][0]))
    want = {"llama": [QKV, ["self_attn.o_proj"], MLP_IN, ["mlp.down_proj"]],
            "qwen2": [QKV, ["self_attn.o_proj"], MLP_IN, ["mlp.down_proj"]],
            "opt": [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.out_proj"], ["fc1"],
                    ["fc2"]],
            "gpt_neox": [["attention.query_key_value"], ["attention.dense"], ["mlp.dense_h_to_4h"],
                         ["mlp.dense_4h_to_h"]]}[family]
    assert [sorted(g) for g in groups] == [sorted(g) for g in want]  # the groups, in forward order
    calls = _record(monkeypatch)
    log = prune_model(model, calib, PruneSettings(method="sparsegpt", sparsity=0.6, batch_size=3, sequential="groups",
                                                  target="dense", sparsity_profile="uniform"), progress=False)
    assert [g for i, g, _, _ in calls if i == 0] == [[g] for g in groups]
    for e in log["layers"]:
        assert e["kept"] == e["target_kept"] == parse_pattern("unstructured").kept_per_layer(tuple(e["shape"]), 0.6)
        assert 0 <= e["relative_error"] < 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_levers_on_the_gpu(dtype, calib):
    """Blocks, H, C, D, Ŵ′ (CuPy Cholesky) and the solver on the GPU: exact counts, errors as on the CPU."""
    for method in ("sparsegpt", "alps", "wanda"):
        logs = {}
        for device in ("cpu", "cuda"):
            model = tiny_model("llama", layers=3).to(dtype)
            logs[device] = prune_model(model, calib, PruneSettings(method=method, sparsity=0.6, device=device,
                                                                   batch_size=3, sequential="groups", target="dense"),
                                       progress=False)
            assert all(e["kept"] == e["target_kept"] for e in logs[device]["layers"])
        assert logs["cuda"]["mean_relative_error"] == pytest.approx(logs["cpu"]["mean_relative_error"], rel=0.05)
