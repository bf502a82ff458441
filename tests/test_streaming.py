"""Streaming a safetensors folder block by block, model dtypes, exact masks, and cuda:N devices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from layerwise_tiny import byte_tokenizer, folder_tensors, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise.cli import main
from layerprune.layerwise.driver import PruneSettings, prune_model, write_pruned
from layerprune.layerwise.lazy import open_model
from layerprune.layerwise.models import find_blocks, load_model
from layerprune.problems.backend import parse_device, resolve_device


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 3-block tiny Llama saved as bf16 in several shards (with an index), and a text."""
    root = tmp_path_factory.mktemp("stream")
    model = tiny_model("llama", layers=3).to(torch.bfloat16)
    model.save_pretrained(root / "bf16", max_shard_size="30KB")
    byte_tokenizer().save_pretrained(root / "bf16")
    (root / "text.txt").write_text(tiny_text(3000))
    return root


def _ids(tokenizer, files, n=6, seqlen=32):
    from layerprune.layerwise.data import calibration_segments

    return calibration_segments(tokenizer, str(files / "text.txt"), n, seqlen, 0)


def _args(files, out, *extra):
    return ["prune", "--model", str(files / "bf16"), "--calib", str(files / "text.txt"), "--text",
            str(files / "text.txt"), "--nsamples", "6", "--seqlen", "32", "--eval-tokens", "1024",
            "--output", str(out), "--quiet", "--method", "sparsegpt", "--sparsity", "0.6", *extra]


def test_the_folder_is_sharded(files):
    index = json.loads((files / "bf16" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2


def test_streamed_prune_equals_the_in_memory_prune_and_holds_one_block(files, tmp_path):
    lazy, tok = open_model(files / "bf16")
    whole, _ = load_model(files / "bf16")
    assert next(whole.parameters()).dtype == torch.bfloat16  # the checkpoint's own dtype by default
    store = lazy.layerprune_store
    assert all(p.device.type == "meta" for p in find_blocks(lazy)[1].parameters())  # nothing read yet
    ids = _ids(tok, files)
    settings = PruneSettings(method="sparsegpt", sparsity=0.6)
    a = prune_model(lazy, ids, settings, checkpoint=tmp_path / "ckpt", progress=False)
    b = prune_model(whole, ids, PruneSettings(method="sparsegpt", sparsity=0.6), progress=False)
    assert store.peak_live == 1 and store.live == 0
    assert [e["objective"] for e in a["layers"]] == [e["objective"] for e in b["layers"]]
    prefix = find_blocks(whole)[0]
    for index in range(len(store)):
        with store.on(index, "cpu") as block:
            for name, t in block.state_dict().items():
                ref = whole.state_dict()[f"{prefix}.{index}.{name}"]
                assert t.dtype == torch.bfloat16 and torch.equal(t, ref), name


def test_streamed_cli_output_reloads_with_the_same_perplexity(files, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert main(_args(files, out, "--sparsity-profile", "uniform")) == 0  # per-layer counts below
    run = json.loads((out / "layerprune_run.json").read_text())
    assert run["streamed"] and run["dtype"] == "bfloat16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4  # a shard per block + the rest
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.dtype == torch.bfloat16
    saved = folder_tensors(out)
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(state[name], t) for name, t in saved.items())
    for name, t in saved.items():
        if "proj" in name:  # exactly the solver's count of nonzeros, k = round(0.4 · out · in)
            assert int(torch.count_nonzero(t)) == round(0.4 * t.numel()), name
    capsys.readouterr()
    for extra in ([], ["--no-stream"]):  # block by block and whole: the same number
        assert main(["eval", "--model", str(out), "--text", str(files / "text.txt"), "--seqlen", "32",
                     "--max-tokens", "1024", "--quiet", *extra]) == 0
        assert f"perplexity {run['perplexity']:.3f}" in capsys.readouterr().out


def test_streamed_resume_is_bit_identical(files, tmp_path, monkeypatch):
    import layerprune.layerwise.driver as driver

    full = tmp_path / "full"
    assert main(_args(files, full)) == 0
    out = tmp_path / "out"
    real = driver.run_block
    calls = {"n": 0}

    def crash(block, inputs):
        calls["n"] += 1
        if calls["n"] == 3:  # dies in block 2, after blocks 0 and 1 are checkpointed
            raise KeyboardInterrupt
        return real(block, inputs)

    monkeypatch.setattr(driver, "run_block", crash)
    assert main(_args(files, out)) == 130
    monkeypatch.setattr(driver, "run_block", real)
    assert main(_args(files, out, "--resume")) == 0
    a, b = folder_tensors(full), folder_tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((p / "layerprune_run.json").read_text()) for p in (full, out))
    assert ra["perplexity"] == rb["perplexity"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_masks_are_exact_in_the_model_dtype(dtype):
    g = torch.Generator().manual_seed(3)
    solution = torch.randn(16, 32, generator=g)
    solution[0, :8] = torch.tensor([0.0, -1e-42, 3e-41, -5e-9, 2e-8, 1e-30, -1e-39, 4e-45])  # underflow in fp16/bf16
    mask = torch.rand(16, 32, generator=g) < 0.4
    mask[0, :8] = True
    solution[~mask] += 1.0  # pruned positions hold values: they must still come out 0
    weight = torch.empty(16, 32, dtype=dtype)
    write_pruned(weight, solution, mask)
    assert torch.equal(weight != 0, mask)
    signed = mask & (solution != 0)
    assert torch.equal(torch.sign(weight[signed]), torch.sign(solution[signed]).to(dtype))
    assert weight[0, 0] > 0  # a kept exact zero of the solver stays in the support
    far = mask & (solution.abs() > 1e-3)
    assert torch.equal(weight[far], solution[far].to(dtype))


def test_device_names_parse_without_a_gpu():
    assert parse_device("cpu") == ("cpu", None)
    assert parse_device("cuda") == ("cuda", None)
    assert parse_device("CUDA:3") == ("cuda", 3)
    for bad in ("cuda:x", "tpu", "cuda:-1", "cuda:"):
        with pytest.raises(ValueError, match="unknown device"):
            parse_device(bad)


def test_an_absent_gpu_is_a_clear_error(monkeypatch):
    import layerprune.problems.backend as backend

    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with pytest.raises(RuntimeError, match="no GPU is usable"):
        resolve_device("cuda:1")
    assert resolve_device("cpu") == "cpu"


def test_settings_keep_the_gpu_index_for_the_solver():
    assert PruneSettings(device="cuda:1").solve_device == "cuda:1"
    assert PruneSettings(device="cpu").solve_device == "cpu"
    assert PruneSettings(device="cuda:1", solver_device="cpu").solve_device == "cpu"


@pytest.mark.gpu
def test_cuda_index_runs_torch_and_cupy_on_that_device():
    import cupy

    from layerprune import LayerProblem, solve

    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 64)).astype(np.float32)
    W = torch.from_numpy(rng.standard_normal((32, 64)).astype(np.float32)).to("cuda:0")
    H = torch.from_numpy(X.T @ X).to("cuda:0")
    p = LayerProblem(weight=W, hessian=H, sparsity=0.7)
    r = solve(p, "alps", device="cuda:0", keep_array_type=True)
    assert r.device == "cuda:0" and r.weight.device == torch.device("cuda:0")
    assert cupy.cuda.runtime.getDevice() == 0
    with pytest.raises(ValueError, match="does not exist"):
        resolve_device(f"cuda:{cupy.cuda.runtime.getDeviceCount()}")



def _tiny_prune_weights(activations: str, device: str) -> list:
    from layerprune.layerwise.models import block_linears

    model = tiny_model("llama", seed=0)
    ids = torch.randint(0, model.config.vocab_size, (5, 16), generator=torch.Generator().manual_seed(3))
    prune_model(model, ids, PruneSettings(method="sparsegpt", sparsity=0.6, batch_size=2, device=device,
                                          activations=activations), progress=False)
    return [lin.weight.detach().cpu().clone() for b in find_blocks(model)[1] for lin in block_linears(b).values()]


def test_activations_in_host_memory_prune_bit_for_bit_like_on_the_device():
    """``activations="host"`` (HostBatches: each mini-batch copied out after it is computed and back in
    ahead of its forward) gives exactly the weights of activations kept where they are computed."""
    from layerprune.layerwise.activations import HostBatches
    from layerprune.layerwise.blocks import capture_inputs, run_block

    model = tiny_model("llama", seed=0)
    inputs = capture_inputs(model, torch.randint(0, 50, (5, 16)), 2, "cpu", "host")
    assert isinstance(inputs.hidden, HostBatches) and len(inputs.hidden) == 3
    assert isinstance(run_block(find_blocks(model)[1][0], inputs).hidden, HostBatches)  # outputs follow
    device, host = _tiny_prune_weights("device", "cpu"), _tiny_prune_weights("host", "cpu")
    assert len(device) == len(host) > 0 and all(torch.equal(a, b) for a, b in zip(device, host))


@pytest.mark.gpu
def test_pinned_host_activations_on_the_gpu_match_device_activations_bit_for_bit():
    device, pinned = _tiny_prune_weights("device", "cuda"), _tiny_prune_weights("host", "cuda")
    assert len(device) == len(pinned) > 0 and all(torch.equal(a, b) for a, b in zip(device, pinned))


def test_host_batches_hand_out_what_was_appended_in_order():
    from layerprune.layerwise.activations import HostBatches, batches_like, on_device
    from layerprune.layerwise.errors import LayerwiseError

    store = HostBatches("cpu")
    parts = [torch.randn(2, 3, 4) for _ in range(3)]
    for p in parts:
        store.append(p)
    assert len(store) == 3 and all(torch.equal(a, b) for a, b in zip(store, parts))
    assert torch.equal(store[1], parts[1]) and isinstance(batches_like(store), HostBatches)
    assert batches_like(parts) == [] and on_device("auto", torch.device("cpu"), 1 << 40)
    with pytest.raises(LayerwiseError, match="activations must be one of auto, device, host"):
        on_device("gpu", torch.device("cpu"), 1)


def test_host_batches_slices_are_host_batches_of_the_same_items():
    """``distributed.split_inputs`` slices the activations: a slice stays in host memory (no list)."""
    from layerprune.layerwise.activations import HostBatches

    store = HostBatches("cpu")
    parts = [torch.randn(1, 2, 3) for _ in range(4)]
    for p in parts:
        store.append(p)
    view = store[1:3]
    assert isinstance(view, HostBatches) and len(view) == 2 and view.items[0] is store.items[1]
    assert all(torch.equal(a, b) for a, b in zip(view, parts[1:3]))


def test_dense_target_stream_stays_in_host_memory_and_resume_may_change_the_placement(tmp_path, monkeypatch):
    """With ``activations="host"`` the dense model's stream (target="dense") stays in host memory block after
    block; ``activations`` only places data, so a resume may change it and ends bit for bit as a run without."""
    from layerwise_tiny import Crash, crash_after

    import layerprune.layerwise.driver as driver
    from layerprune.layerwise.activations import HostBatches
    from layerprune.layerwise.models import block_linears

    kinds = []
    real = driver.prune_block

    def spy(block, inputs, dense_inputs, **kw):
        out = real(block, inputs, dense_inputs, **kw)
        kinds.append((type(inputs.hidden), type(dense_inputs.hidden), type(out[0].hidden)))
        return out

    monkeypatch.setattr(driver, "prune_block", spy)
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(5))
    settings = dict(method="sparsegpt", sparsity=0.6, batch_size=2, target="dense")

    def weights(model):
        return [lin.weight.detach().clone() for b in find_blocks(model)[1] for lin in block_linears(b).values()]

    model = tiny_model("llama", seed=1, layers=3)
    prune_model(model, ids, PruneSettings(**settings, activations="host"), progress=False)
    assert kinds == [(HostBatches, HostBatches, HostBatches)] * 3
    reference = weights(model)
    crashed = tiny_model("llama", seed=1, layers=3)
    with pytest.raises(Crash):
        prune_model(crashed, ids, PruneSettings(**settings, activations="device"), checkpoint=tmp_path / "c",
                    after_block=crash_after(0), progress=False)
    resumed = tiny_model("llama", seed=1, layers=3)
    prune_model(resumed, ids, PruneSettings(**settings, activations="host"), checkpoint=tmp_path / "c", resume=True,
                progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(resumed), reference))
