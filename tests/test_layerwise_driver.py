"""The block-by-block driver on tiny random models of four families."""

from __future__ import annotations

import copy

import pytest
import torch
from layerwise_tiny import FAMILIES, Crash, byte_tokenizer, crash_after, one_thread, tiny_model, tiny_text, untimed  # noqa: F401

from layerprune.layerwise import data
from layerprune.layerwise.driver import Checkpoint, PruneSettings, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears, find_blocks, save_model
from layerprune.layerwise.perplexity import perplexity
from layerprune.problems import parse_pattern

SEQLEN = 32


@pytest.fixture(scope="module")
def stream():
    return data.token_stream(byte_tokenizer(), [tiny_text(3000)])


@pytest.fixture(scope="module")
def calib(stream):
    return data.sample_segments(stream, 8, SEQLEN, seed=0)


def _linears(model):
    _, blocks = find_blocks(model)
    return {f"{i}.{n}": lin for i, b in enumerate(blocks) for n, lin in block_linears(b).items()}


def _outside_blocks(model):
    _, blocks = find_blocks(model)
    inside = {id(p) for p in blocks.parameters()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in inside}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_profile_keeps_the_model_wide_count_on_every_family(family, calib):
    model = tiny_model(family)
    log = prune_model(model, calib, PruneSettings(method="sparsegpt", sparsity=0.6, batch_size=3), progress=False)
    assert log["sparsity_profile"] == "owl" and log["allocation"]["profile"] == "owl"
    weights = [lin.weight for lin in _linears(model).values()]
    assert sum(int((w != 0).sum()) for w in weights) == round(0.4 * sum(w.numel() for w in weights))
    for e in log["layers"]:
        assert e["kept"] == e["target_kept"] and 0 <= e["target_sparsity"] < 1


@pytest.mark.parametrize("family", FAMILIES)
def test_every_linear_is_pruned_to_the_exact_target(family, calib, stream, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family)
    before = _outside_blocks(model)
    log = prune_model(model, calib, PruneSettings(method="sparsegpt", sparsity=0.6, batch_size=3,
                                                  sparsity_profile="uniform"), progress=False)
    linears = _linears(model)
    assert len(log["layers"]) == len(linears) and len(linears) >= 8
    for name, lin in linears.items():
        kept = parse_pattern("unstructured").kept_per_layer(tuple(lin.weight.shape), 0.6)
        assert int((lin.weight != 0).sum()) == kept, name
    for e in log["layers"]:
        assert e["kept"] == e["target_kept"] and 0 <= e["relative_error"] < 1 and e["seconds"] >= 0
    after = _outside_blocks(model)  # embeddings, norms and the LM head are left alone
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    out = save_model(model, byte_tokenizer(), tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, attn_implementation="eager").eval()
    ids = calib[:2]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5, rtol=1e-5)
    sd, rd = model.state_dict(), reloaded.state_dict()
    for k in rd:
        assert torch.equal(sd[k], rd[k]), k
    assert perplexity(reloaded, stream, SEQLEN, max_tokens=1024) == pytest.approx(
        perplexity(model, stream, SEQLEN, max_tokens=1024), rel=1e-6
    )


def test_layers_with_one_input_share_a_factorization(calib, monkeypatch):
    import layerprune.layerwise.driver as driver

    calls = []
    real = driver.solve_many
    monkeypatch.setattr(driver, "solve_many", lambda problems, *a, **k: calls.append([p.name for p in problems]) or real(problems, *a, **k))
    prune_model(tiny_model("llama"), calib, PruneSettings(method="sparsegpt", sparsity=0.5), progress=False)
    assert ["block0.self_attn.q_proj", "block0.self_attn.k_proj", "block0.self_attn.v_proj"] in calls
    assert ["block0.mlp.gate_proj", "block0.mlp.up_proj"] in calls
    assert ["block0.mlp.down_proj"] in calls and len(calls) == 8


def test_two_four_pattern(calib):
    model = tiny_model("qwen2")
    log = prune_model(model, calib, PruneSettings(method="wanda", pattern="2:4"), progress=False)
    assert log["settings"]["sparsity"] == 0.5
    for name, lin in _linears(model).items():
        groups = (lin.weight != 0).reshape(lin.weight.shape[0], -1, 4).sum(-1)
        assert int(groups.max()) <= 2 and int((lin.weight != 0).sum()) == lin.weight.numel() // 2, name


def test_alps_prunes_a_tiny_model_better_than_magnitude(calib):
    errs = {}
    for method in ("alps", "magnitude"):
        log = prune_model(tiny_model("llama"), calib, PruneSettings(method=method, sparsity=0.7), progress=False)
        errs[method] = log["mean_relative_error"]
        assert abs(log["sparsity"] - 0.7) < 1e-3
    assert errs["alps"] < errs["magnitude"]


def test_pruned_outputs_feed_the_next_block(calib, monkeypatch):
    """Block 1's Hessians come from the pruned block 0, not the dense one."""
    import layerprune.layerwise.driver as driver

    seen = []
    real = driver.collect_hessians
    monkeypatch.setattr(driver, "collect_hessians", lambda block, inputs, *a, **k: seen.append(torch.cat(inputs.hidden)) or real(block, inputs, *a, **k))
    model = tiny_model("llama")
    dense = copy.deepcopy(model)
    prune_model(model, calib, PruneSettings(method="magnitude", sparsity=0.8, sequential="block", target="pruned"),
                progress=False)
    _, dense_blocks = find_blocks(dense)
    _, blocks = find_blocks(model)
    from layerprune.layerwise.blocks import capture_inputs, run_block

    x0 = capture_inputs(dense, calib, 8)
    assert torch.equal(torch.cat(x0.hidden), seen[0])
    assert torch.allclose(torch.cat(run_block(blocks[0], x0).hidden), seen[1])
    assert not torch.allclose(torch.cat(run_block(dense_blocks[0], x0).hidden), seen[1])



@pytest.mark.parametrize("method", ["sparsegpt", "alps"])
def test_resume_equals_an_uninterrupted_run(method, calib, tmp_path):
    settings = dict(method=method, sparsity=0.6, batch_size=3)
    if method == "alps":
        settings["options"] = {"max_iter": 30}
    full = tiny_model("llama", layers=3)
    log_full = prune_model(full, calib, PruneSettings(**settings), progress=False)

    ckpt = tmp_path / "ckpt"
    part = tiny_model("llama", layers=3)
    with pytest.raises(Crash):
        prune_model(part, calib, PruneSettings(**settings), checkpoint=ckpt, after_block=crash_after(1), progress=False)
    assert Checkpoint(ckpt).read_state()["next_block"] == 2
    # weights only: no activations are written, block 2's inputs are recomputed on resume
    assert sorted(f.name for f in ckpt.iterdir()) == ["block_0000.safetensors", "block_0001.safetensors", "state.json"]
    with pytest.raises(LayerwiseError, match="--resume"):
        prune_model(tiny_model("llama", layers=3), calib, PruneSettings(**settings), checkpoint=ckpt, progress=False)

    resumed = tiny_model("llama", layers=3)  # a fresh process: the dense model again
    calls = []
    log = prune_model(resumed, calib, PruneSettings(**settings), checkpoint=ckpt, resume=True,
                      after_block=calls.append, progress=False)
    assert calls == [2]
    sd_full, sd = full.state_dict(), resumed.state_dict()
    for k in sd_full:
        assert torch.equal(sd_full[k], sd[k]), k
    assert untimed(log["layers"]) == untimed(log_full["layers"])


def test_crash_inside_a_block_resumes_from_the_last_finished_one(calib, tmp_path, monkeypatch):
    import layerprune.layerwise.driver as driver

    full = tiny_model("opt")
    prune_model(full, calib, PruneSettings(method="sparsegpt", sparsity=0.5), progress=False)
    real, count = driver.solve_many, {"n": 0}

    def flaky(problems, *a, **k):
        count["n"] += 1
        if problems[0].name.startswith("block1.") and count["n"] > 5:
            raise Crash("died while solving block 1")
        return real(problems, *a, **k)

    monkeypatch.setattr(driver, "solve_many", flaky)
    part = tiny_model("opt")
    with pytest.raises(Crash):
        prune_model(part, calib, PruneSettings(method="sparsegpt", sparsity=0.5), checkpoint=tmp_path / "c", progress=False)
    monkeypatch.setattr(driver, "solve_many", real)
    resumed = tiny_model("opt")
    prune_model(resumed, calib, PruneSettings(method="sparsegpt", sparsity=0.5), checkpoint=tmp_path / "c", resume=True, progress=False)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resume_refuses_another_runs_checkpoint(calib, tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        prune_model(tiny_model("llama"), calib, PruneSettings(method="wanda", sparsity=0.5), checkpoint=ckpt,
                    after_block=crash_after(0), progress=False)
    with pytest.raises(LayerwiseError, match="made with sparsity=0.5, this run has sparsity=0.6"):
        prune_model(tiny_model("llama"), calib, PruneSettings(method="wanda", sparsity=0.6), checkpoint=ckpt,
                    resume=True, progress=False)
    # the same arguments on another model (other weights): the fingerprint is the backstop
    with pytest.raises(LayerwiseError, match="another run"):
        prune_model(tiny_model("llama", seed=1), calib, PruneSettings(method="wanda", sparsity=0.5), checkpoint=ckpt,
                    resume=True, progress=False)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(method="sparsegpt", sparsity=1.0), r"\[0, 1\)"),
        (dict(method="sparsegpt", sparsity=-0.1), r"\[0, 1\)"),
        (dict(method="sparsegpt", sparsity=0.7, pattern="2:4"), "fixes the sparsity"),
        (dict(method="sparsegpt"), "sparsity is required"),
        (dict(method="nope", sparsity=0.5), "unknown method 'nope'"),
        (dict(method="sparsegpt", sparsity=0.5, pattern="3:2"), "N:M needs"),
        (dict(method="sparsegpt", sparsity=0.5, pattern="blah"), "unknown pattern"),
    ],
)
def test_bad_settings(settings, match, calib):
    with pytest.raises(ValueError, match=match):
        prune_model(tiny_model("llama"), calib, PruneSettings(**settings), progress=False)


def test_seqlen_longer_than_the_context(stream):
    ids = data.sample_segments(stream, 2, 200)
    with pytest.raises(LayerwiseError, match="longer than the model's context of 128"):
        prune_model(tiny_model("llama"), ids, PruneSettings(method="wanda", sparsity=0.5), progress=False)


def test_old_checkpoint_format_is_refused(calib, tmp_path):
    import json

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        prune_model(tiny_model("llama"), calib, PruneSettings(method="wanda", sparsity=0.5), checkpoint=ckpt,
                    after_block=crash_after(0), progress=False)
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps(dict(state, version=1)))
    with pytest.raises(LayerwiseError, match="format 1"):
        prune_model(tiny_model("llama"), calib, PruneSettings(method="wanda", sparsity=0.5), checkpoint=ckpt,
                    resume=True, progress=False)


# -- one Hessian per distinct input ------------------------------------------------------
EXPECTED_GROUPS = {
    "llama": [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]],
    "opt": [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.out_proj"], ["fc1"], ["fc2"]],
    "gpt_neox": [["attention.query_key_value"], ["attention.dense"], ["mlp.dense_h_to_4h"], ["mlp.dense_4h_to_h"]],
}
EXPECTED_GROUPS["qwen2"] = EXPECTED_GROUPS["llama"]


@pytest.mark.parametrize("family", FAMILIES)
def test_one_hessian_per_distinct_input(family, calib):
    """Shared accumulation gives the H of separate accumulation (and of a float64 recomputation
    from the captured inputs) and groups the layers that read one input tensor."""
    from layerprune.layerwise.blocks import capture_inputs, collect_hessians, run_block

    model = tiny_model(family)
    _, blocks = find_blocks(model)
    inputs = capture_inputs(model, calib, 3)
    inputs = run_block(blocks[0], inputs)  # block 1: inputs that went through a block
    block = blocks[1]
    linears = block_linears(block)
    seen = {name: [] for name in linears}
    handles = [lin.register_forward_hook(lambda _m, inp, _o, name=name: seen[name].append(inp[0].detach().clone()))
               for name, lin in linears.items()]
    hessians, groups, outputs = collect_hessians(block, inputs, "cpu", keep_outputs=True)
    for h in handles:
        h.remove()
    separate, singles, _ = collect_hessians(block, inputs, "cpu", share=False)

    assert list(hessians) == list(linears)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, EXPECTED_GROUPS[family]))
    assert singles == [[name] for name in linears]
    X = {name: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double() for name, xs in seen.items()}
    for group in groups:  # a group's layers read equal inputs (layers reading equal copies need not share)
        assert all(torch.equal(X[name], X[group[0]]) for name in group)
    for group in groups:
        assert all(hessians[name] is hessians[group[0]] for name in group)  # one tensor per group
    for name, x in X.items():
        H64 = x.T @ x / x.shape[0]
        assert hessians[name].dtype == torch.float32
        assert torch.equal(hessians[name], separate[name]), name  # same float32 arithmetic, same bits
        assert torch.allclose(hessians[name].double(), H64, rtol=1e-5, atol=1e-5 * float(H64.abs().max())), name
    expected_out = run_block(block, inputs)
    assert all(torch.equal(a, b) for a, b in zip(outputs.hidden, expected_out.hidden))
    # a model loaded whole keeps requires_grad on its weights: the kept outputs (the next block's inputs) must
    # still hold no autograd graph (chained over the blocks, it held 131.5 GiB on SmolLM2's GPU curve pre-pass)
    assert all(p.requires_grad for p in block.parameters())
    assert all(h.grad_fn is None and not h.requires_grad for h in outputs.hidden)


class _Fickle(torch.nn.Module):
    """b reads a's input on even calls and a copy of it on odd calls: the grouping changes between batches."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.a(x).sum() + self.b(x if self.calls % 2 else x + 0.0).sum()


def test_hessian_grouping_that_changes_between_batches_falls_back_to_one_per_layer():
    from layerprune.layerwise.blocks import BlockInputs, collect_hessians

    torch.manual_seed(0)
    xs = [torch.randn(2, 5, 4) for _ in range(3)]
    hessians, groups, _ = collect_hessians(_Fickle(), BlockInputs(xs, [((), {})] * 3), "cpu")
    assert groups == [["a"], ["b"]]
    X = torch.cat([x.reshape(-1, 4) for x in xs]).double()
    for H in hessians.values():
        assert torch.allclose(H.double(), X.T @ X / X.shape[0], atol=1e-5)


@pytest.mark.gpu
def test_prune_on_the_gpu():
    """Blocks, Hessians and solver on the GPU: every layer at its exact target, errors as on the CPU."""
    calib = data.sample_segments(data.token_stream(byte_tokenizer(), [tiny_text(3000)]), 8, SEQLEN, seed=0)
    for method in ("wanda", "sparsegpt", "alps"):
        logs = {}
        for device in ("cpu", "cuda"):
            model = tiny_model("llama")
            logs[device] = prune_model(model, calib, PruneSettings(method=method, sparsity=0.6, device=device),
                                       progress=False)
            assert all(e["kept"] == e["target_kept"] for e in logs[device]["layers"])
            assert all(p.device.type == "cpu" for p in model.parameters())  # blocks go back home
        assert logs["cuda"]["mean_relative_error"] == pytest.approx(logs["cpu"]["mean_relative_error"], rel=0.05)


class _Routed(torch.nn.Module):
    """Expert e1 runs only on batches with a positive mean, e2 on the others (MoE-like routing)."""

    def __init__(self):
        super().__init__()
        self.a, self.e1, self.e2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.e1(h) if float(x.mean()) > 0 else self.e2(h)


class _Twice(torch.nn.Module):
    """b reads a's input, then b runs again on another tensor in the same forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x) + self.b(x)))


@torch.no_grad()
def test_hessians_of_linears_that_run_in_some_batches_or_twice():
    """Per-layer accumulation over every call: a routed expert gets the batches it saw (no endless
    retry), a linear called twice gets both inputs (float64 references)."""
    from layerprune.layerwise.blocks import BlockInputs, collect_hessians

    torch.manual_seed(0)
    xs = [torch.randn(2, 5, 4) + 1, torch.randn(2, 5, 4) - 1]
    block = _Routed()
    hessians, groups, _ = collect_hessians(block, BlockInputs(xs, [((), {})] * 2), "cpu")
    assert sorted(groups) == [["a"], ["e1"], ["e2"]]
    for name, x in [("e1", xs[0]), ("e2", xs[1])]:
        h = block.a(x).reshape(-1, 4).double()
        assert torch.allclose(hessians[name].double(), h.T @ h / h.shape[0], atol=1e-5)

    block = _Twice()
    hessians, _, _ = collect_hessians(block, BlockInputs(xs, [((), {})] * 2), "cpu")
    X = torch.cat([x.reshape(-1, 4) for x in xs]).double()
    Y = torch.cat([torch.tanh(block.a(x) + block.b(x)).reshape(-1, 4) for x in xs]).double()
    both = torch.cat([X, Y])
    assert torch.allclose(hessians["b"].double(), both.T @ both / both.shape[0], atol=1e-5)
    assert torch.allclose(hessians["a"].double(), X.T @ X / X.shape[0], atol=1e-5)
