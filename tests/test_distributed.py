"""Multi-process pruning (layerwise/distributed.py) on CPU with gloo: 2 processes on tiny random models.

The reference for an N-rank run is one process with ``hessian_shards=N`` (the same shards of the
calibration batches, added in the same order): equal bit for bit, for every method. Against the
plain one-process run (one sequential sum of H) the difference is H's float32 summation order:
magnitude, Wanda and SparseGPT keep the same masks with weights within 1e-5 relative (Frobenius;
seen ≤ 1.6e-6); ALPS's support follows H's last bits (seen: 0.9 % of a mask), so there each
layer's relative error is compared, within 1 % (seen ≤ 9.4e-4 relative).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from layerwise_tiny import VOCAB, tiny_model

from layerprune.layerwise.distributed import (
    World,
    check_distributed_device,
    formula_cost,
    lpt_assign,
    makespan,
    shard_range,
    split_inputs,
    unit_costs,
)
from layerprune.layerwise.driver import PruneSettings, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.threads import limit_threads

ROOT = Path(__file__).resolve().parents[1]


# -- pure parts: shards, LPT, costs ----------------------------------------------------------
@pytest.mark.parametrize("n,parts", [(7, 2), (8, 4), (5, 5), (13, 4), (3, 1)])
def test_shard_range_is_numpys_array_split(n, parts):
    expected = [list(a) for a in np.array_split(np.arange(n), parts)]
    assert [list(shard_range(n, parts, k)) for k in range(parts)] == expected


def _optimum(costs, ranks):
    return min(makespan(costs, owner, ranks) for owner in itertools.product(range(ranks), repeat=len(costs)))


def test_lpt_by_hand():
    # sorted 7, 5, 4, 3, 3, 2 onto 2 ranks: 7→0, 5→1, 4→1 (9), 3→0 (10), 3→1 (12), 2→0 (12)
    assert lpt_assign([3, 7, 2, 5, 4, 3], 2) == [0, 0, 0, 1, 1, 1]
    assert makespan([3, 7, 2, 5, 4, 3], [0, 0, 0, 1, 1, 1], 2) == 12
    # Graham's worst case for 2 machines: 3, 3, 2, 2, 2 → LPT 7 against the optimum 6
    owner = lpt_assign([3, 3, 2, 2, 2], 2)
    assert makespan([3, 3, 2, 2, 2], owner, 2) == 7 and _optimum([3, 3, 2, 2, 2], 2) == 6
    # ties: equal costs go round the ranks in order; one rank takes all
    assert lpt_assign([1.0, 1.0, 1.0, 1.0], 3) == [0, 1, 2, 0]
    assert lpt_assign([5, 1, 2], 1) == [0, 0, 0]
    assert lpt_assign([], 4) == []


def test_lpt_within_grahams_bound_of_the_optimum():
    rng = np.random.default_rng(5)
    for _ in range(60):
        ranks = int(rng.integers(2, 4))
        costs = [float(c) for c in rng.exponential(1.0, size=int(rng.integers(1, 8)))]
        owner = lpt_assign(costs, ranks)
        assert sorted(set(owner)) <= list(range(ranks))
        opt = _optimum(costs, ranks)
        assert makespan(costs, owner, ranks) <= (4 / 3 - 1 / (3 * ranks)) * opt + 1e-12
        assert owner == lpt_assign(costs, ranks)  # deterministic: every rank computes the same


def test_lpt_refuses_bad_input():
    with pytest.raises(ValueError, match="ranks"):
        lpt_assign([1.0], 0)
    with pytest.raises(ValueError, match="costs"):
        lpt_assign([1.0, float("nan")], 2)
    with pytest.raises(ValueError, match="costs"):
        lpt_assign([-1.0], 2)


def test_unit_costs_formula_then_measured():
    shapes = {"q": (64, 32), "down": (32, 128), "o": (32, 32)}
    units = [["q"], ["down"], ["o"]]
    assert formula_cost((64, 32), True) == 64 * 32 * 32 and formula_cost((64, 32), False) == 64 * 32
    assert unit_costs(units, shapes, [True, True, False], None) == [64 * 32**2, 32 * 128**2, 32 * 32]
    measured = {"q": 0.5, "down": 2.0, "o": 0.25}
    assert unit_costs(units, shapes, [True] * 3, measured) == [0.5, 2.0, 0.25]
    assert unit_costs([["q", "o"]], shapes, [True], measured) == [0.75]
    # a layer without a time in the previous block: the formula for all (one scale)
    assert unit_costs(units, shapes, [True] * 3, {"q": 0.5}) == [64 * 32**2, 32 * 128**2, 32 * 32**2]


def test_world_of_one_and_checks():
    w = World()
    assert (w.rank, w.size, w.is_main) == (0, 1, True)
    t = torch.arange(6.0)
    w.sum_in_order([t])
    w.broadcast([t], 0)
    assert torch.equal(t, torch.arange(6.0)) and w.gather_objects({"a": 1}) == [{"a": 1}]
    ids = torch.arange(40).reshape(10, 4)
    assert torch.equal(w.shard_ids(ids, 3), ids)
    two = World(rank=1, size=2)
    assert torch.equal(two.shard_ids(ids, 3), ids[6:])  # 4 batches of ≤ 3: batches 2, 3 (rows 6 … 9)
    assert torch.equal(World(rank=0, size=2).shard_ids(ids, 3), ids[:6])
    with pytest.raises(LayerwiseError, match="fewer than the 2 shards"):
        two.check_batches(3, 4)
    with pytest.raises(LayerwiseError, match="fewer than the 3 shards"):
        w.check_batches(4, 2, shards=3)
    with pytest.raises(LayerwiseError, match="hessian_shards=3 with 2 processes"):
        two.check_batches(8, 1, shards=3)
    with pytest.raises(LayerwiseError, match="hessian_shards must be ≥ 1"):
        PruneSettings(method="wanda", sparsity=0.5, hessian_shards=0).validate()
    with pytest.raises(ValueError, match="boom"):
        w.raise_if_any(ValueError("boom"))
    check_distributed_device("cuda:1", 1)  # one process: any device
    for device in ("cpu", "cuda"):
        check_distributed_device(device, 2)
    with pytest.raises(LayerwiseError, match="with 2 processes give 'cuda'"):
        check_distributed_device("cuda:1", 2)


def test_split_inputs_keeps_the_batches():
    from layerprune.layerwise.blocks import BlockInputs

    hidden = [torch.full((1, 2, 3), float(i)) for i in range(5)]
    inputs = BlockInputs(hidden, [((), {"i": i}) for i in range(5)], True)
    parts = split_inputs(inputs, 2)
    assert [len(p.hidden) for p in parts] == [3, 2] and all(p.tuple_output for p in parts)
    assert [p.extras[0][1]["i"] for p in parts] == [0, 3]
    assert all(a is b for a, b in zip([h for p in parts for h in p.hidden], hidden))


# -- two gloo processes ---------------------------------------------------------------------------
def _calib(n: int = 4, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _job_collectives(world: World, job: dict) -> dict:
    import layerprune.layerwise.distributed as distributed
    from layerprune.problems import HessianAccumulator

    distributed.GATHER_CHUNK = 7  # several chunks, one short
    g = torch.Generator().manual_seed(100 + world.rank)
    a = torch.randn(5, 6, generator=g)
    b = torch.randn(6, 5, generator=g).T  # not contiguous
    mine = (a.clone(), b.clone())
    world.sum_in_order([a, b])
    accs = {}
    for name, width in (("q", 4), ("down", 3)):
        acc = HessianAccumulator(width)
        acc.add(torch.randn(world.rank + 2, width, generator=g))
        accs[name] = acc
    before = {n: (acc.H.clone(), acc.count) for n, acc in accs.items()}
    world.reduce_accumulators(accs)
    c = torch.full((3,), float(world.rank + 1))
    world.broadcast([c], src=1)
    err = None
    try:
        world.raise_if_any(RuntimeError("rank 1 broke") if world.rank == 1 else None)
    except Exception as e:  # noqa: BLE001 - the test looks at it
        err = f"{type(e).__name__}: {e}"
    return {"mine": mine, "sums": (a, b), "before": before,
            "after": {n: (acc.H, acc.count) for n, acc in accs.items()}, "c": c, "error": err}


def _prune_one(method: str, settings: dict, world_checkpoint: dict | None = None, no_stack: bool = False):
    import layerprune.solvers.registry as registry

    if no_stack:  # every layer its own unit (the path of large layers)
        registry.STACK_ENTRIES = 0
    with limit_threads(1):
        model = tiny_model("llama", layers=settings.pop("layers", 2))
        settings.setdefault("sequential", "block")  # the path hessian_shards reproduces bit for bit
        settings.setdefault("target", "pruned")
        log = prune_model(model, _calib(settings.pop("nsamples", 4)), PruneSettings(method=method, **settings),
                          progress=False, **(world_checkpoint or {}))
    return {k: v.clone() for k, v in model.state_dict().items()}, log


def _job_prune(world: World, job: dict) -> dict:
    out: dict = {}
    if job.get("record_prepass"):  # the calibration rows each profile pre-pass captures on this rank
        import layerprune.layerwise.profiles as profiles

        real, out["prepass_rows"] = profiles.capture_inputs, []

        def spy(model, ids, *args, **kwargs):
            out["prepass_rows"].append(int(ids.shape[0]))
            return real(model, ids, *args, **kwargs)

        profiles.capture_inputs = spy
    for method in job["methods"]:
        out[method] = _prune_one(method, dict(job["settings"]), no_stack=job.get("no_stack", False))
    return out


def _crash_after(block: int):
    def after(index: int) -> None:
        if index == block:
            raise KeyboardInterrupt  # a kill after the block's checkpoint
    return after


def _job_checkpoint(world: World, job: dict) -> dict:
    import layerprune.layerwise.driver as driver

    writes = []
    real = driver.Checkpoint.save_block

    def counted(self, index, *a, **k):
        writes.append(index)
        return real(self, index, *a, **k)

    driver.Checkpoint.save_block = counted
    kw = {"checkpoint": job["checkpoint"]}
    if job.get("resume"):
        kw["resume"] = True
    else:
        kw["after_block"] = _crash_after(job["crash_after"]) if job.get("crash_after") is not None else None
    try:
        state, log = _prune_one(job["method"], dict(job["settings"]), kw)
    except KeyboardInterrupt:
        return {"crashed": True, "writes": writes}
    return {"state": state, "log": log, "writes": writes}


def _job_failure(world: World, job: dict) -> dict:
    import layerprune.layerwise.driver as driver

    real = driver.solve_many

    def broken(problems, *a, **k):
        if world.rank == 1:
            raise FloatingPointError("the solver diverged on rank 1")
        return real(problems, *a, **k)

    driver.solve_many = broken
    try:
        _prune_one("sparsegpt", {"sparsity": 0.5, "batch_size": 1}, no_stack=True)
    except Exception as e:  # noqa: BLE001 - the test looks at it
        return {"error": f"{type(e).__name__}: {e}"}
    return {"error": None}


JOBS = {"collectives": _job_collectives, "prune": _job_prune, "checkpoint": _job_checkpoint, "failure": _job_failure}


def _worker(rank: int, size: int, init_file: str, job: dict, out: str) -> None:
    import torch.distributed as dist

    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    backend = job.get("backend", "gloo")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=120))
    try:
        result = JOBS[job["name"]](World.current(), job)
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path: Path, job: dict, size: int = 2) -> list:
    """Run ``job`` in ``size`` gloo processes; each rank's result."""
    import torch.multiprocessing as mp

    folder = tmp_path / f"ranks_{job['name']}_{len(list(tmp_path.glob('ranks_*')))}"
    folder.mkdir()
    mp.spawn(_worker, args=(size, str(folder / "init"), job, str(folder)), nprocs=size, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(size)]


def test_collectives_sum_in_rank_order_on_every_rank(tmp_path):
    r0, r1 = run_ranks(tmp_path, {"name": "collectives"})
    for i in range(2):
        expected = r0["mine"][i] + r1["mine"][i]  # ((t₀ + t₁)), float32
        assert torch.equal(r0["sums"][i], expected) and torch.equal(r1["sums"][i], expected)
    for name in ("q", "down"):
        h = r0["before"][name][0] + r1["before"][name][0]
        assert torch.equal(r0["after"][name][0], h) and torch.equal(r1["after"][name][0], h)
        assert r0["after"][name][1] == r1["after"][name][1] == 2 + 3  # the rows of both ranks
    assert torch.equal(r0["c"], torch.full((3,), 2.0)) and torch.equal(r1["c"], r0["c"])
    assert r0["error"] == "LayerwiseError: rank 1 failed: RuntimeError: rank 1 broke"
    assert r1["error"] == "RuntimeError: rank 1 broke"


METHODS = ("magnitude", "wanda", "sparsegpt", "alps")


@pytest.mark.parametrize("no_stack", [False, True], ids=["stacked", "per-layer"])
def test_two_ranks_equal_one_process_bit_for_bit(tmp_path, no_stack):
    settings = {"sparsity": 0.6, "batch_size": 1}
    ranks = run_ranks(tmp_path, {"name": "prune", "methods": METHODS, "settings": settings, "no_stack": no_stack})
    import layerprune.solvers.registry as registry

    stack_entries = registry.STACK_ENTRIES
    try:
        for method in METHODS:
            one_sharded, log1 = _prune_one(method, {**settings, "hessian_shards": 2}, no_stack=no_stack)
            one_plain, log_plain = _prune_one(method, dict(settings), no_stack=no_stack)
            (s0, log0), (s1, _) = ranks[0][method], ranks[1][method]
            for k in one_sharded:
                assert torch.equal(s0[k], one_sharded[k]), (method, k)
                assert torch.equal(s1[k], one_sharded[k]), (method, k)
                if method != "alps":  # the plain sum of H differs in its last bits: same masks, weights ~1e-6
                    assert torch.equal(one_plain[k] != 0, s0[k] != 0), (method, k)
                    diff = float(torch.linalg.norm(one_plain[k] - s0[k]) / torch.linalg.norm(one_plain[k]))
                    assert diff < 1e-5, (method, k, diff)
            # ALPS's support follows H's last bits (seen: 0.9 % of a mask moved): compare the objectives
            for e, p in zip(log0["layers"], log_plain["layers"]):
                assert e["relative_error"] == pytest.approx(p["relative_error"], rel=1e-2), (method, e["layer"])
            assert log0["world_size"] == 2 and log1["world_size"] == 1
            assert [e["relative_error"] for e in log0["layers"]] == [e["relative_error"] for e in log1["layers"]]
            assert [e["layer"] for e in log0["layers"]] == [e["layer"] for e in log1["layers"]]
            used = {e["rank"] for e in log0["layers"]}
            assert used == {0, 1}, (method, used)  # both ranks solved layers
            assert {e["rank"] for e in log1["layers"]} == {0}
            assert all(e["seconds"] >= 0 for e in log0["layers"])
    finally:
        registry.STACK_ENTRIES = stack_entries


@pytest.mark.parametrize("crashed_with,resumed_with", [(1, 2), (2, 1)])
def test_resume_with_another_number_of_processes(tmp_path, crashed_with, resumed_with):
    """A run of N processes killed after block 0 continues with M ≠ N, and ends as an uninterrupted run:
    bit for bit, with hessian_shards=2 in every run (N = 2 needs it equal to the world size)."""
    settings = {"sparsity": 0.6, "batch_size": 1, "layers": 3, "hessian_shards": 2}
    ckpt = str(tmp_path / "ckpt")
    reference, ref_log = _prune_one("sparsegpt", dict(settings))

    def run(size: int, **job):
        job = {"name": "checkpoint", "method": "sparsegpt", "settings": settings, "checkpoint": ckpt, **job}
        if size == 1:
            return [_job_checkpoint(World(), job)]
        return run_ranks(tmp_path, job, size)

    first = run(crashed_with, crash_after=0)
    assert all(r["crashed"] for r in first)
    assert first[0]["writes"] == [0] and all(r["writes"] == [] for r in first[1:])  # rank 0 writes
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["next_block"] == 1
    second = run(resumed_with, resume=True)
    assert second[0]["writes"] == [1, 2] and all(r["writes"] == [] for r in second[1:])
    for r in second:
        for k in reference:
            assert torch.equal(r["state"][k], reference[k]), k
        assert r["log"]["world_size"] == resumed_with
        assert [e["layer"] for e in r["log"]["layers"]] == [e["layer"] for e in ref_log["layers"]]
        assert [e["relative_error"] for e in r["log"]["layers"]] == [e["relative_error"] for e in ref_log["layers"]]
        blocks = [[e["rank"] for e in r["log"]["layers"] if e["block"] == i] for i in range(3)]
        assert set(blocks[0]) == set(range(crashed_with))  # block 0 came from the checkpoint
        assert set(blocks[1] + blocks[2]) == set(range(resumed_with))


def test_an_error_on_one_rank_stops_both(tmp_path):
    r0, r1 = run_ranks(tmp_path, {"name": "failure"})
    assert r1["error"] == "FloatingPointError: the solver diverged on rank 1"
    assert r0["error"] == "LayerwiseError: rank 1 failed: FloatingPointError: the solver diverged on rank 1"


# -- torchrun and the command line ---------------------------------------------------------------
def _save_tiny(folder: Path) -> None:
    from layerwise_tiny import byte_tokenizer

    tiny_model("llama").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)


def _cli(args: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
             "-m", "layerprune.layerwise.cli"] if nproc > 1 else [sys.executable, "-m", "layerprune.layerwise.cli"])
    return subprocess.run(head + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_prune_equals_one_process_and_logs_the_ranks(tmp_path):
    from layerwise_tiny import folder_tensors

    model = tmp_path / "tiny"
    _save_tiny(model)
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"word{i % 37} the of and" for i in range(600)))
    common = ["prune", "--model", str(model), "--method", "alps", "--sparsity", "0.7", "--calib", str(text),
              "--nsamples", "4", "--seqlen", "16", "--batch-size", "1", "--no-eval", "--threads", "1", "--quiet",
              "--sequential", "block", "--target", "pruned"]  # the path --hessian-shards reproduces bit for bit
    two = _cli(common + ["--output", str(tmp_path / "two")], 2, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved to") == 1  # rank 0 reports
    one = _cli(common + ["--output", str(tmp_path / "one"), "--hessian-shards", "2"], 1, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = folder_tensors(tmp_path / "two"), folder_tensors(tmp_path / "one")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "two" / "layerprune_run.json").read_text())
    assert log["world_size"] == 2 and len(log["layers"]) == 14
    assert {e["rank"] for e in log["layers"]} == {0, 1} and all("seconds" in e for e in log["layers"])
    assert not (tmp_path / "two.partial").exists()  # rank 0 removed the checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "one", "tiny", "two"]


@pytest.mark.gpu
def test_nccl_two_gpus_equal_one_gpu(tmp_path):
    """Two GPUs through NCCL (each rank its cuda:LOCAL_RANK, CuPy solvers) against one GPU with hessian_shards=2."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    methods = ("sparsegpt", "alps")
    settings = {"sparsity": 0.6, "batch_size": 1, "device": "cuda"}
    ranks = run_ranks(tmp_path, {"name": "prune", "methods": methods, "settings": settings, "backend": "nccl",
                                 "no_stack": True})
    import layerprune.solvers.registry as registry

    stack_entries = registry.STACK_ENTRIES
    try:
        for method in methods:
            one, log1 = _prune_one(method, {**settings, "hessian_shards": 2}, no_stack=True)
            for r in ranks:
                state, log = r[method]
                assert log["world_size"] == 2 and {e["rank"] for e in log["layers"]} == {0, 1}
                for k in one:
                    assert torch.equal(state[k].cpu(), one[k].cpu()), (method, k)
    finally:
        registry.STACK_ENTRIES = stack_entries


def test_two_ranks_with_sequential_groups_and_dense_targets_equal_one_process(tmp_path):
    """The levers' statistics (H, and C, D of dense targets, per group) are summed over the ranks in rank
    order: two gloo ranks give one process's result up to float32 summation order (same masks here;
    weights and per-layer errors within 1e-4)."""
    settings = {"sparsity": 0.6, "batch_size": 1, "sequential": "groups", "target": "dense"}
    ranks = run_ranks(tmp_path, {"name": "prune", "methods": ("sparsegpt", "magnitude"), "settings": settings})
    for method in ("sparsegpt", "magnitude"):
        one, log_one = _prune_one(method, dict(settings))
        (s0, log0), (s1, _) = ranks[0][method], ranks[1][method]
        # groups are solved one after another: a group's units (here magnitude's q, k, v; SparseGPT stacks
        # them into one) are what the ranks share
        used = {e["rank"] for e in log0["layers"]}
        assert log0["world_size"] == 2 and used == ({0, 1} if method == "magnitude" else {0}), (method, used)
        for k in one:
            assert torch.equal(s0[k], s1[k]), (method, k)  # every rank ends with the same model
            assert torch.equal(one[k] != 0, s0[k] != 0), (method, k)
            diff = float(torch.linalg.norm(one[k] - s0[k]) / max(float(torch.linalg.norm(one[k])), 1e-30))
            assert diff < 1e-4, (method, k, diff)
        for e, p in zip(log0["layers"], log_one["layers"]):
            assert e["layer"] == p["layer"]
            assert e["relative_error"] == pytest.approx(p["relative_error"], rel=1e-4, abs=1e-9), (method, e["layer"])
        # the default profile here is OWL: its pre-pass ran on each rank's shard, the norms summed over the ranks
        assert log0["sparsity_profile"] == log_one["sparsity_profile"] == "owl"
        assert log0["allocation"]["sparsities"] == log_one["allocation"]["sparsities"], method
        assert log0["allocation"]["info"]["owl"]["outlier_ratio"] == log_one["allocation"]["info"]["owl"]["outlier_ratio"]


def test_two_ranks_measure_the_curves_on_their_shards(tmp_path):
    """The curve profile's pre-pass on two ranks: each its shard of the calibration set, H summed in rank
    order, so both ranks allocate alike, and as one process does (the H's float32 summation order aside)."""
    settings = {"sparsity": 0.6, "batch_size": 1, "sparsity_profile": "curve", "curve_offsets": [-0.1, 0.0, 0.1]}
    ranks = run_ranks(tmp_path, {"name": "prune", "methods": ("sparsegpt",), "settings": settings,
                                 "record_prepass": True})
    assert [r["prepass_rows"] for r in ranks] == [[2], [2]]  # 4 samples in batches of 1: each rank its half
    one = _prune_one("sparsegpt", {**settings})[1]["allocation"]
    a0, a1 = (r["sparsegpt"][1]["allocation"] for r in ranks)
    assert a0["sparsities"] == a1["sparsities"] and a0["info"]["kept"] == one["info"]["kept"]
    assert a0["sparsities"].keys() == one["sparsities"].keys()
    for name, s in one["sparsities"].items():
        assert abs(a0["sparsities"][name] - s) < 0.05, name
    points0 = a0["info"]["curve"]["points"]
    for name, pts in one["info"]["curve"]["points"].items():  # the measured errors, to float32 summation order
        assert [p[:2] for p in points0[name]] == [p[:2] for p in pts]
        assert [p[2] for p in points0[name]] == pytest.approx([p[2] for p in pts], rel=1e-3, abs=1e-9), name


def test_hessian_shards_with_the_default_levers_is_refused_up_front():
    """The defaults (groups, blended dense target) are not the path --hessian-shards reproduces: the
    settings say so when validated, before any model is loaded."""
    from layerprune.layerwise.errors import LayerwiseError
    from layerprune.layerwise.settings import PruneSettings

    with pytest.raises(LayerwiseError, match="--sequential block --target pruned"):
        PruneSettings(sparsity=0.5, hessian_shards=2).validate()
    PruneSettings(sparsity=0.5, hessian_shards=2, sequential="block", target="pruned").validate()  # uniform by default
    with pytest.raises(LayerwiseError, match="--sparsity-profile uniform"):  # a profile's pre-pass is summed over ranks
        PruneSettings(sparsity=0.5, hessian_shards=2, sequential="block", target="pruned",
                      sparsity_profile="owl").validate()
