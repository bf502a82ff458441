"""Sparsity allocated across layers: exact counts, OWL, curve allocation, the driver hook, resume, CLI."""

from __future__ import annotations

import json

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

from layerprune.layerwise import data
from layerprune.layerwise.allocation import (
    Curve,
    Slot,
    allocate_curves,
    curve_grid,
    curve_objective,
    curve_weights,
    kept_counts,
    outlier_ratio,
    owl_sparsities,
    sparsities_of,
    target_kept,
    wanda_scores,
)
from layerprune.layerwise.driver import Checkpoint, PruneSettings, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears, find_blocks, save_model
from layerprune.problems import parse_pattern

SEQLEN = 32
FAST = dict(method="sparsegpt", sparsity=0.6, batch_size=3)


@pytest.fixture(scope="module")
def calib():
    stream = data.token_stream(byte_tokenizer(), [tiny_text(3000)])
    return data.sample_segments(stream, 8, SEQLEN, seed=0)


# -- pure functions ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_kept_counts_sum_exactly_and_stay_in_range(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 30))
    slots = [Slot(int(rng.integers(2, 5000))) for _ in range(n)]
    s = float(rng.uniform(0.3, 0.9))
    wanted = np.clip(s + rng.normal(0, 0.2, n), 0.0, 0.999)  # some pushed to the ends: the clipping and shift work
    total = target_kept(slots, s)
    kept = kept_counts(slots, wanted, total)
    assert int(kept.sum()) == total == round((1 - s) * sum(x.size for x in slots))
    sizes = np.array([x.size for x in slots])
    assert np.all(kept >= 1) and np.all(kept <= sizes)
    for x, k, sp in zip(slots, kept, sparsities_of(slots, kept)):
        assert 0.0 <= sp < 1.0 and parse_pattern("unstructured").kept_per_layer((1, x.size), sp) == k
    # already consistent densities come back (up to one weight per layer)
    exact = kept_counts(slots, sparsities_of(slots, kept), total)
    assert np.abs(exact - kept).max() <= 1


def test_kept_counts_of_row_slots_are_whole_rows():
    slots = [Slot(8 * 16, 8), Slot(4 * 16, 4), Slot(16 * 32, 16)]
    total = target_kept(slots, 0.7)
    kept = kept_counts(slots, [0.6, 0.7, 0.8], total)
    assert all(k % x.unit == 0 for k, x in zip(kept, slots))
    assert 0 <= total - kept.sum() < min(x.unit for x in slots)
    with pytest.raises(ValueError, match="out of reach"):
        kept_counts(slots, [0.5] * 3, 1)


def test_owl_sparsities_by_hand():
    d = [0.01, 0.02, 0.04, 0.03]  # fractions; OWL's percent would give the same result
    s, lam = 0.7, 0.08
    got = owl_sparsities(d, s, lam)
    dn = [(x - 0.01) / 0.03 * 0.16 for x in d]  # [0, 0.0533, 0.16, 0.1067], mean 0.08
    mean = sum(dn) / 4
    want = [1 - (x - mean + (1 - s)) for x in dn]  # the OWL reference code's formula
    assert np.allclose(got, want, rtol=0, atol=1e-15)
    assert np.allclose(got, [0.78, 0.78 - 0.16 / 3, 0.62, 0.78 - 0.32 / 3])
    assert got.mean() == pytest.approx(s)
    assert np.allclose(owl_sparsities([100 * x for x in d], s, lam), got)  # the unit does not matter
    assert np.all(owl_sparsities([0.2, 0.2], s, lam) == s) and np.all(owl_sparsities(d, s, 0.0) == s)
    # at 97 % the sparsest block would pass 100 % (0.97 + 0.08): the spread is scaled so it keeps half the mean density
    high = owl_sparsities(d, 0.97, lam)
    scale = 0.015 / 0.08
    assert np.allclose(high, [0.97 + scale * (mean - x) for x in dn], rtol=0, atol=1e-15)
    assert high.max() == pytest.approx(0.985) and high.mean() == pytest.approx(0.97)
    assert np.allclose(owl_sparsities(d, 0.84, lam), [0.84 + (mean - x) for x in dn])  # at the edge: as the reference


def test_a_default_run_at_high_sparsity_keeps_every_layer_alive(calib):
    """At 97 % unstructured (OWL by default) no block passes 100 %: the run completes, exact in count."""
    model, log = _run(calib, layers=3, sparsity=0.97)
    assert log["sparsity_profile"] == "owl"
    assert max(e["target_sparsity"] for e in log["layers"]) < 0.99  # blocks at ≤ 0.985, shifted by the exact count
    _, blocks = find_blocks(model)
    weights = [lin.weight for block in blocks for lin in block_linears(block).values()]
    assert sum(int((w != 0).sum()) for w in weights) == round(0.03 * sum(w.numel() for w in weights))


def test_outlier_ratio_by_hand():
    scores = [np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 20.0]]), np.array([1.0, 30.0])]
    # mean = 57 / 8 = 7.125; m = 2 → threshold 14.25: the entries 20 and 30 → 2 of 8
    assert outlier_ratio(scores, 2.0) == 2 / 8
    assert outlier_ratio(scores, 5.0) == 0.0  # threshold 35.6
    w, norms = np.array([[1.0, -2.0], [0.5, 4.0]]), np.array([4.0, 9.0])
    assert np.array_equal(wanda_scores(w, norms), [[2.0, 6.0], [1.0, 12.0]])


def _convex_curve(rng, size, grid_sparsities):
    kept = [parse_pattern("unstructured").kept_per_layer((1, size), s) for s in grid_sparsities]
    a, p = rng.uniform(0.01, 1.0), rng.uniform(1.5, 4.0)
    err = [a * (s ** p) for s in grid_sparsities]  # convex increasing in s: convex decreasing in kept
    return Curve.from_points(kept, err)


def _lp_optimum(curves, weights, total):
    """min Σ w g(k) s.t. Σ k = total over the lower convex hulls, as a linear program (epigraph form)."""
    from scipy.optimize import linprog

    from layerprune.layerwise.allocation import lower_hull

    n = len(curves)
    c = np.r_[np.zeros(n), np.ones(n)]
    rows, rhs = [], []
    bounds = []
    for i, (cv, w) in enumerate(zip(curves, weights)):
        x, y = cv.kept.astype(float), w * cv.error
        h = lower_hull(x, y)
        for a, b in zip(h[:-1], h[1:]):
            slope = (y[b] - y[a]) / (x[b] - x[a])
            row = np.zeros(2 * n)
            row[i], row[n + i] = slope, -1.0  # slope·k − t ≤ slope·x_a − y_a
            rows.append(row)
            rhs.append(slope * x[a] - y[a])
        bounds.append((x[0], x[-1]))
    bounds += [(None, None)] * n
    eq = np.r_[np.ones(n), np.zeros(n)][None, :]
    res = linprog(c, A_ub=np.array(rows), b_ub=np.array(rhs), A_eq=eq, b_eq=[total], bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("seed", range(6))
def test_curve_allocation_is_optimal_on_convex_curves_and_never_worse_than_uniform(seed):
    rng = np.random.default_rng(seed)
    n, s = int(rng.integers(3, 12)), 0.7
    slots = [Slot(int(rng.integers(500, 5000))) for _ in range(n)]
    grid = curve_grid(s, (-0.15, -0.1, -0.05, 0, 0.05, 0.1, 0.15))
    curves = [_convex_curve(rng, x.size, grid) for x in slots]
    weights = curve_weights("size", [x.size for x in slots], [1.0] * n)
    total = target_kept(slots, s)
    kept, info = allocate_curves(curves, weights, slots, total)
    assert int(kept.sum()) == total and not info["fallback"]
    obj = curve_objective(curves, weights, kept)
    uniform = curve_objective(curves, weights, kept_counts(slots, [s] * n, total))
    assert obj <= uniform and obj == pytest.approx(info["objective"])
    assert obj < 0.999 * uniform  # different curves: something to gain
    # the exact optimum on the convexified curves, up to the rounding to whole weights (≤ 1 weight per layer)
    slack = sum(w * float(np.max(np.abs(np.diff(c.error) / np.diff(c.kept)))) for c, w in zip(curves, weights))
    assert obj <= _lp_optimum(curves, weights, total) + slack + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_curve_allocation_never_worse_than_uniform_on_non_convex_curves(seed):
    rng = np.random.default_rng(100 + seed)
    n, s = int(rng.integers(2, 10)), 0.6
    slots = [Slot(int(rng.integers(200, 3000))) for _ in range(n)]
    grid = curve_grid(s, (-0.2, -0.1, -0.05, 0, 0.05, 0.1, 0.2))
    curves = []
    for x in slots:  # random, not monotone nor convex
        kept = [parse_pattern("unstructured").kept_per_layer((1, x.size), g) for g in grid]
        curves.append(Curve.from_points(kept, rng.uniform(0, 1, len(grid))))
    for weighting in ("relative", "size", "objective"):
        weights = curve_weights(weighting, [x.size for x in slots], rng.uniform(0.1, 10, n))
        total = target_kept(slots, s)
        kept, info = allocate_curves(curves, weights, slots, total)
        assert int(kept.sum()) == total
        assert curve_objective(curves, weights, kept) <= curve_objective(curves, weights, kept_counts(slots, [s] * n, total))


def test_curve_grid_clips_and_keeps_the_run_sparsity():
    assert curve_grid(0.9, (-0.15, 0, 0.05, 0.1, 0.15)) == [0.75, 0.9, 0.95]
    assert curve_grid(0.05, (-0.1, 0.1)) == [0.05, 0.15]


@pytest.mark.parametrize("fields, match", [
    (dict(sparsity_profile="owll"), "did you mean 'owl'"),
    (dict(sparsity_profile="curves"), "did you mean 'curve'"),
    (dict(sparsity_profile="owl", pattern="2:4", sparsity=None), "N:M"),
    (dict(sparsity_profile="owl", owl_m=0), "owl_m"),
    (dict(sparsity_profile="owl", owl_m=float("nan")), "owl_m"),
    (dict(sparsity_profile="owl", owl_lmbda=0.5), "owl_lmbda"),
    (dict(sparsity_profile="owl", owl_lmbda=-0.01), "owl_lmbda"),
    (dict(sparsity_profile="curve", curve_offsets=()), "curve_offsets"),
    (dict(sparsity_profile="curve", curve_offsets=(0.0, 1.5)), "curve_offsets"),
    (dict(sparsity_profile="curve", curve_weighting="sizes"), "did you mean 'size'"),
])
def test_bad_profile_settings_are_named(fields, match):
    s = PruneSettings(**{"sparsity": 0.7, **fields})
    with pytest.raises(LayerwiseError, match=match):
        s.validate()


def test_uniform_with_two_four_is_fine_and_offsets_become_a_sorted_tuple():
    s = PruneSettings(pattern="2:4")
    s.validate()
    s = PruneSettings(sparsity=0.5, sparsity_profile="curve", curve_offsets=[0.1, -0.1, 0])
    s.validate()
    assert s.curve_offsets == (-0.1, 0.0, 0.1)


# -- on a tiny model ----------------------------------------------------------------------------
def _run(calib, layers=3, **fields):
    model = tiny_model("llama", layers=layers)
    log = prune_model(model, calib, PruneSettings(**{**FAST, **fields}), progress=False)
    return model, log


@pytest.mark.parametrize("profile", ["owl", "curve"])
def test_exact_global_count_in_the_saved_model(profile, calib, tmp_path):
    model, log = _run(calib, sparsity_profile=profile, curve_offsets=(-0.1, 0, 0.1))
    tensors = folder_tensors(save_model(model, byte_tokenizer(), tmp_path / "out"))
    path, blocks = find_blocks(model)
    names = [f"{path}.{i}.{n}.weight" for i, b in enumerate(blocks) for n in block_linears(b)]
    total = sum(tensors[n].numel() for n in names)
    nonzero = sum(int(torch.count_nonzero(tensors[n])) for n in names)
    assert nonzero == round((1 - 0.6) * total)
    targets = [e["target_sparsity"] for e in log["layers"]]
    assert all(0 <= t < 1 for t in targets) and max(targets) - min(targets) > 0.01  # not uniform
    assert all(e["kept"] == e["target_kept"] for e in log["layers"])
    assert log["sparsity_profile"] == profile and log["allocation"]["info"]["kept"] == nonzero
    assert {f"{path}.{e['block']}.{e['layer']}": e["target_sparsity"] for e in log["layers"]} == \
        log["allocation"]["sparsities"]


def _dense_inputs(model, calib, batch_size):
    """Every block linear's inputs on the calibration ids from plain forwards of the dense model (float64)."""
    path, blocks = find_blocks(model)
    xs: dict = {}
    handles = []
    for i, b in enumerate(blocks):
        for n, lin in block_linears(b).items():
            def hook(_m, inp, _o, key=(i, n)):
                xs.setdefault(key, []).append(inp[0].detach().reshape(-1, inp[0].shape[-1]).double())
            handles.append(lin.register_forward_hook(hook))
    with torch.no_grad():
        for start in range(0, calib.shape[0], batch_size):
            model(input_ids=calib[start:start + batch_size], use_cache=False)
    for h in handles:
        h.remove()
    return {k: torch.cat(v).numpy() for k, v in xs.items()}


def test_owl_ratios_match_a_hand_computation(calib):
    dense = tiny_model("llama", layers=3)
    X = _dense_inputs(dense, calib, FAST["batch_size"])
    m = 3.0
    _, log = _run(calib, sparsity_profile="owl", owl_m=m, owl_lmbda=0.05)
    owl = log["allocation"]["info"]["owl"]
    _, blocks = find_blocks(dense)
    ratios = []
    for i, b in enumerate(blocks):
        scores = [np.abs(lin.weight.detach().double().numpy()) * np.linalg.norm(X[(i, n)], axis=0)[None, :]
                  for n, lin in block_linears(b).items()]
        flat = np.concatenate([s.ravel() for s in scores])
        ratio = np.count_nonzero(flat > m * flat.mean()) / flat.size
        assert ratio > 0
        assert owl["outlier_ratio"][str(i)] == pytest.approx(ratio, abs=1.5 / flat.size)  # at most one entry on the edge
        ratios.append(owl["outlier_ratio"][str(i)])
    want = owl_sparsities(ratios, 0.6, 0.05)
    assert np.allclose([owl["block_sparsity"][str(i)] for i in range(3)], want)
    # blocks are the same size: each layer's target is its block's, up to the rounding to whole weights
    for e in log["layers"]:
        assert abs(e["target_sparsity"] - want[e["block"]]) < 2e-3


def test_curves_are_measured_on_the_dense_model_and_the_allocation_beats_uniform(calib):
    from layerprune import LayerProblem, solve

    dense = tiny_model("llama", layers=3)
    X = _dense_inputs(dense, calib, FAST["batch_size"])
    _, log = _run(calib, sparsity_profile="curve", curve_weighting="relative", curve_offsets=(-0.1, -0.05, 0, 0.05, 0.1))
    info = log["allocation"]["info"]["curve"]
    path, blocks = find_blocks(dense)
    name = f"{path}.2.mlp.down_proj"  # the last block: its dense inputs differ from the pruned run's
    x = X[(2, "mlp.down_proj")]
    w = block_linears(blocks[2])["mlp.down_proj"].weight.detach().float()
    H = torch.from_numpy(x.T @ x / x.shape[0]).float()
    for s, _kept, err in info["points"][name]:
        r = solve(LayerProblem(weight=w, hessian=H, sparsity=s, damping=0.01), "sparsegpt", device="cpu")
        assert r.relative_error == pytest.approx(err, rel=1e-3)
    names = list(info["points"])
    slots = [Slot(int(np.prod(block_linears(blocks[int(n.split('.')[2])])[".".join(n.split(".")[3:])].weight.shape)))
             for n in names]
    curves = [Curve.from_points([p[1] for p in info["points"][n]], [p[2] for p in info["points"][n]]) for n in names]
    weights = np.ones(len(names))
    kept = [log["allocation"]["sparsities"][n] for n in names]
    kept = [round((1 - s) * x.size) for s, x in zip(kept, slots)]
    total = target_kept(slots, 0.6)
    assert sum(kept) == total
    uniform = curve_objective(curves, weights, kept_counts(slots, [0.6] * len(slots), total))
    assert curve_objective(curves, weights, kept) <= uniform
    assert info["objective"] == pytest.approx(curve_objective(curves, weights, kept))
    assert info["solve_seconds"] > 0


def test_curve_prepass_carries_no_autograd_graph_from_block_to_block(calib, monkeypatch):
    """The pre-pass feeds each block's kept outputs to the next: with the weights requiring grad (a model
    loaded whole), those outputs must hold no graph, or it chains over the blocks (131.5 GiB on SmolLM2's GPU)."""
    from layerprune.layerwise import profiles

    real, seen = profiles.measure_curves, []

    def spy(block, inputs, *a, **k):
        seen.append(all(h.grad_fn is None and not h.requires_grad for h in inputs.hidden))
        out = real(block, inputs, *a, **k)
        seen.append(all(h.grad_fn is None and not h.requires_grad for h in out[1].hidden))
        return out

    monkeypatch.setattr(profiles, "measure_curves", spy)
    model = tiny_model("llama", layers=3)
    assert all(p.requires_grad for p in model.parameters())
    prune_model(model, calib, PruneSettings(**{**FAST, "sparsity_profile": "curve", "curve_offsets": (-0.1, 0, 0.1)}),
                progress=False)
    assert seen == [True] * 6  # three blocks, their inputs and outputs


def test_overrides_keep_their_sparsity_and_the_profile_spreads_the_rest(calib):
    overrides = [{"targets": ["re:.*down_proj$"], "sparsity": 0.5}, {"targets": ["re:.*\\.0\\.self_attn\\.q_proj$"],
                                                                    "pattern": "2:4"}]
    _, log = _run(calib, sparsity_profile="owl", owl_m=3.0, overrides=overrides)
    fixed = [e for e in log["layers"] if e["layer"] == "mlp.down_proj" or (e["block"] == 0 and e["layer"] == "self_attn.q_proj")]
    free = [e for e in log["layers"] if e not in fixed]
    assert len(fixed) == 4 and all(e["target_sparsity"] == 0.5 for e in fixed)
    assert [e["pattern"] for e in fixed if e["layer"] == "self_attn.q_proj"] == ["2:4"]
    size = sum(e["shape"][0] * e["shape"][1] for e in free)
    assert sum(e["kept"] for e in free) == round(0.4 * size)
    assert len({round(e["target_sparsity"], 6) for e in free}) > 1
    info = log["allocation"]["info"]
    assert info["free_layers"] == len(free) and info["fixed_layers"] == 4


def test_every_layer_fixed_leaves_nothing_to_allocate(calib):
    _, log = _run(calib, layers=2, sparsity_profile="curve", overrides=[{"targets": ["Linear"], "sparsity": 0.5}])
    assert log["allocation"]["sparsities"] == {} and "nothing to allocate" in log["allocation"]["info"]["note"]
    assert all(e["target_sparsity"] == 0.5 for e in log["layers"])


@pytest.mark.parametrize("profile", ["owl", "curve"])
def test_resume_reuses_the_stored_allocation_bit_for_bit(profile, calib, tmp_path, monkeypatch):
    import layerprune.layerwise.driver as driver

    fields = dict(**FAST, sparsity_profile=profile, curve_offsets=(-0.1, 0, 0.1))
    full = tiny_model("llama", layers=3)
    log_full = prune_model(full, calib, PruneSettings(**fields), progress=False)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        prune_model(tiny_model("llama", layers=3), calib, PruneSettings(**fields), checkpoint=ckpt,
                    after_block=crash_after(0), progress=False)
    state = Checkpoint(ckpt).read_state()
    assert state["allocation"]["sparsities"] == log_full["allocation"]["sparsities"]

    def no_prepass(*a, **k):
        raise AssertionError("the resume ran the pre-pass again")

    monkeypatch.setattr(driver, "allocate_sparsity", no_prepass)
    resumed = tiny_model("llama", layers=3)
    log = prune_model(resumed, calib, PruneSettings(**fields), checkpoint=ckpt, resume=True, progress=False)
    sd_full, sd = full.state_dict(), resumed.state_dict()
    for k in sd_full:
        assert torch.equal(sd_full[k], sd[k]), k
    assert untimed(log["layers"]) == untimed(log_full["layers"])


def test_uniform_runs_are_unchanged(calib):
    _, log = _run(calib, layers=2, sparsity_profile="uniform")
    assert log["sparsity_profile"] == "uniform" and log["allocation"] is None
    assert all(e["target_sparsity"] == 0.6 for e in log["layers"])


@pytest.mark.parametrize("pattern, want", [("unstructured", "owl"), ("row", "uniform"), ("2:4", "uniform")])
def test_the_default_profile_follows_the_pattern(pattern, want):
    s = PruneSettings(method="sparsegpt", sparsity=None if ":" in pattern else 0.6, pattern=pattern)
    assert s.sparsity_profile is None
    s.validate()
    assert s.sparsity_profile == want
    with pytest.raises(LayerwiseError, match="cannot be used with the N:M pattern"):  # asked for explicitly: refused
        PruneSettings(method="sparsegpt", pattern="2:4", sparsity_profile="owl").validate()


def test_a_default_run_allocates_by_owl_with_the_exact_count(calib):
    model, log = _run(calib, layers=3)
    assert log["sparsity_profile"] == "owl" and log["allocation"]["profile"] == "owl"
    _, blocks = find_blocks(model)
    weights = [lin.weight for block in blocks for lin in block_linears(block).values()]
    size = sum(w.numel() for w in weights)
    assert sum(int((w != 0).sum()) for w in weights) == round(0.4 * size)  # model-wide: exactly (1 − s)·n
    assert len({e["target_sparsity"] for e in log["layers"]}) > 1


def test_command_line_profile_writes_the_plot_and_an_exact_count(tmp_path, capsys):
    from layerprune.layerwise.cli import main

    save_model(tiny_model("llama", layers=3), byte_tokenizer(), tmp_path / "tiny")
    (tmp_path / "text.txt").write_text(tiny_text(3000))
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tmp_path / "tiny"), "--calib", str(tmp_path / "text.txt"), "--no-eval",
            "--nsamples", "6", "--seqlen", "32", "--output", str(out), "--quiet", "--method", "wanda",
            "--sparsity", "0.7", "--sparsity-profile", "curve", "--curve-offsets=-0.1,0,0.1",
            "--curve-weighting", "objective"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "layer_sparsity.png" in printed and (out / "layer_sparsity.png").stat().st_size > 1000
    run = json.loads((out / "layerprune_run.json").read_text())
    assert run["sparsity_profile"] == "curve" and run["settings"]["curve_weighting"] == "objective"
    assert run["settings"]["curve_offsets"] == [-0.1, 0.0, 0.1] and run["sparsity_plot"] == "layer_sparsity.png"
    tensors = folder_tensors(out)
    names = [n for n in tensors if ".layers." in n and n.endswith("_proj.weight")]
    total = sum(tensors[n].numel() for n in names)
    assert sum(int(torch.count_nonzero(tensors[n])) for n in names) == round(0.3 * total)
    base = args[:-7] + ["--output", str(tmp_path / "other")]
    assert main(base + ["--sparsity-profile", "owl", "--pattern", "2:4", "--sparsity", "0.5"]) == 2
    assert "N:M" in capsys.readouterr().err
    assert main(base + ["--sparsity", "0.7", "--sparsity-profile", "uniformm"]) == 2
    assert "did you mean 'uniform'" in capsys.readouterr().err
    # the default profile (OWL) with every layer given its own sparsity: nothing allocated, so no plot
    capsys.readouterr()
    assert main(base + ["--sparsity", "0.7", "--recipe", _recipe(tmp_path, "overrides:\n  - targets: ['re:.*']\n"
                                                                         "    sparsity: 0.6\n")]) == 0
    run = json.loads((tmp_path / "other" / "layerprune_run.json").read_text())
    assert run["sparsity_profile"] == "owl" and run["allocation"]["sparsities"] == {}
    assert run["sparsity_plot"] is None and not (tmp_path / "other" / "layer_sparsity.png").exists()


def _recipe(folder, text: str) -> str:
    path = folder / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_python_api_and_recipe_take_the_profile(tmp_path):
    import layerprune

    text = tmp_path / "text.txt"
    text.write_text(tiny_text(3000))
    res = layerprune.prune(tiny_model("llama", layers=2), byte_tokenizer(), recipe={"sparsity_profile": "owl",
                           "owl_lmbda": 0.1, "owl_m": 3}, method="wanda", sparsity=0.7, calib=str(text), nsamples=4,
                           seqlen=SEQLEN, eval_text=None, progress=False)
    assert res.settings.sparsity_profile == "owl" and res.log["allocation"]["info"]["owl"]["lmbda"] == 0.1
    size = sum(e["shape"][0] * e["shape"][1] for e in res.log["layers"])
    assert sum(e["kept"] for e in res.log["layers"]) == round(0.3 * size)
    with pytest.raises(LayerwiseError, match="did you mean 'owl'"):
        layerprune.prune(tiny_model("llama", layers=2), byte_tokenizer(), sparsity=0.7, sparsity_profile="OWL",
                         calib=str(text), eval_text=None)


def test_row_pattern_keeps_whole_rows_within_one_row_of_the_count(calib):
    model, log = _run(calib, method="wanda", pattern="row", sparsity=0.7, sparsity_profile="owl", owl_m=3.0)
    size = sum(e["shape"][0] * e["shape"][1] for e in log["layers"])
    kept = sum(e["kept"] for e in log["layers"])
    assert 0 <= round(0.3 * size) - kept < min(e["shape"][0] for e in log["layers"])
    _, blocks = find_blocks(model)
    for e in log["layers"]:
        w = block_linears(blocks[e["block"]])[e["layer"]].weight
        per_row = (w != 0).sum(dim=1)
        assert torch.all(per_row == per_row[0]) and int(per_row.sum()) == e["kept"] and e["pattern"] == "row"
    assert len({e["target_sparsity"] for e in log["layers"]}) > 1
