"""The sequential block-by-block pruner.

For block ℓ = 0, 1, …, with X_ℓ its calibration inputs (the *pruned* model's, from block ℓ−1):

1. run the block on X_ℓ with forward hooks: H = XᵀX / n (float32, in × in) once per distinct
   input, so layers reading the same tensor (q/k/v; gate/up) form a group sharing one H;
2. one ``LayerProblem(Ŵ, H, sparsity, pattern, damping)`` per linear (embeddings and the LM
   head are not in any block, so they are skipped, as in SparseGPT/Wanda/ALPS), on the
   solver's device (a GPU solver reads the torch tensors through DLPack, no copies);
3. each group is solved by ``solve_many`` with one shared cache, so the factorization of
   the common H (ALPS's eigendecomposition, SparseGPT's Cholesky factor) is computed once
   (and small ALPS groups are solved as one stack of rows);
4. the pruned weights are written back on the device and the *pruned* block is run on X_ℓ:
   X_{ℓ+1}.

With ``sequential="groups"`` and/or ``target="dense"`` steps 1–3 are ``levers.prune_block``:
the groups solved in forward order, each H with the earlier groups pruned, and/or each layer
fit to the dense model's outputs from a second stream of the dense model's block inputs.

With a checkpoint folder, after every block that block's tensors under their model names
(``block_XXXX.safetensors``, the output's shard for a streamed model) are written, then
``state.json`` (the run log so far, the run's arguments and a sparsity profile's per-layer sparsities,
``layerwise.profiles``) is replaced atomically to point past it. No activations are saved: ``resume`` reloads the
pruned blocks 0 … next−1, captures block 0's inputs again and replays the pruned blocks
on them with ``run_block``, exactly the computation an uninterrupted run does, then goes on.
The replay is bit-for-bit the same on the same device with the same thread count (tested).
A resume with other settings (the device and batch size included) is refused, naming them
(``check_resume_arguments``); another ``--threads`` is allowed, and may change the last bits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from layerprune.layerwise.blocks import capture_inputs, collect_hessians, run_block
from layerprune.layerwise.distributed import World, block_hessians, lpt_assign, unit_costs
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.levers import prune_block, replay, uses_levers
from layerprune.layerwise.models import block_linears, context_length
from layerprune.layerwise.profiles import allocate_sparsity, with_allocation
from layerprune.layerwise.recipe import plan_layers
from layerprune.layerwise.settings import PruneSettings
from layerprune.layerwise.stores import block_tensors, store_for
from layerprune.problems import LayerProblem
from layerprune.problems.atomic import atomic_write, atomic_write_json
from layerprune.solvers import get_method, solve_many, stacks_by_default

CHECKPOINT_VERSION = 3  # 3: every tensor of a pruned block under its model name (the output's shards); no activations


def check_seqlen(model: nn.Module, seqlen: int) -> None:
    """A clear error when seqlen exceeds the model's context (or is too short)."""
    if seqlen < 2:
        raise LayerwiseError(f"seqlen must be ≥ 2, got {seqlen}")
    ctx = context_length(model)
    if ctx is not None and seqlen > ctx:
        raise LayerwiseError(f"seqlen {seqlen} is longer than the model's context of {ctx} tokens")


def fingerprint(model: nn.Module, calib: torch.Tensor, settings: PruneSettings) -> str:
    """Identifies a run: settings, calibration ids, the model's config and its dense block-0 weights."""
    h = hashlib.sha256()
    h.update(json.dumps(result_settings(settings), sort_keys=True, default=str).encode())
    h.update(calib.to(torch.int64).cpu().numpy().tobytes())
    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    with store_for(model).on(0, "cpu") as block:
        for name, lin in block_linears(block).items():
            h.update(name.encode())
            h.update(lin.weight.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


PLACEMENT_ONLY = ("activations",)  # settings that move data but leave every result bit as it is (tested)


def result_settings(settings: PruneSettings) -> dict:
    """The settings a checkpoint is tied to: all but ``PLACEMENT_ONLY`` (a resume may change those),
    and ``target_blend`` only where it is used (``target="dense"``; checkpoints from before it
    existed were β = 1 and carry no key, so β = 1 is left out too)."""
    out = {k: v for k, v in asdict(settings).items() if k not in PLACEMENT_ONLY}
    if settings.target != "dense" or settings.target_blend == 1.0:
        out.pop("target_blend")
    return out


def resume_arguments(settings: PruneSettings, nsamples: int, seqlen: int, extra: dict | None = None) -> dict:
    """The arguments a checkpoint records and ``--resume`` compares key by key: the settings,
    nsamples and seqlen, and ``extra`` (the pipeline adds model, calib, seed, eval text and tokens).
    Normalized through JSON, as they are read back from ``state.json``."""
    args = {**result_settings(settings), "nsamples": int(nsamples), "seqlen": int(seqlen), **(extra or {})}
    return json.loads(json.dumps(args, sort_keys=True, default=str))


def check_resume_arguments(state: dict, arguments: dict, folder: str | os.PathLike) -> None:
    """Refuse to resume when an argument differs from the checkpoint's, naming each one.

    A checkpoint without recorded arguments (an older run) is left to the fingerprint check.
    """
    saved = state.get("arguments")
    if saved is None:
        return
    missing = "(not set)"
    keys = sorted(k for k in set(saved) | set(arguments) if saved.get(k, missing) != arguments.get(k, missing))
    if keys:
        was = ", ".join(f"{k}={saved.get(k, missing)!r}" for k in keys)
        now = ", ".join(f"{k}={arguments.get(k, missing)!r}" for k in keys)
        raise LayerwiseError(f"--resume: the checkpoint in {folder} was made with {was}, this run has {now}; "
                             "run with the checkpoint's arguments, or delete the checkpoint to start over")


# -- checkpoints ---------------------------------------------------------------------
class Checkpoint:
    """A folder holding a run's progress: the pruned blocks' weights and ``state.json``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def check_resumable(self, resume: bool) -> None:
        """An existing checkpoint is continued only when asked to (never silently overwritten)."""
        if self.exists() and not resume:
            raise LayerwiseError(
                f"a checkpoint of an interrupted run is in {self.folder}: pass --resume to continue it, or delete it"
            )

    def read_state(self) -> dict:
        with open(self.state_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("version") != CHECKPOINT_VERSION:
            raise LayerwiseError(f"checkpoint {self.folder} has format {state.get('version')}, not {CHECKPOINT_VERSION}")
        return state

    def block_file(self, index: int) -> Path:
        return self.folder / f"block_{index:04d}.safetensors"

    def save_block(self, index: int, block: nn.Module, prefix: str, state: dict) -> None:
        """Write block ``index``'s tensors (under their model names, ``prefix`` + local name: a shard
        of the output), then point ``state.json`` past it (both atomically)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = block_tensors(block, prefix)
        atomic_write(self.block_file(index), lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write_json(self.state_path, dict(state, version=CHECKPOINT_VERSION, next_block=index + 1))

    def restore(self, store, state: dict) -> int:
        """Make the pruned blocks 0 … next−1 the store's blocks; returns next."""
        for index in range(state["next_block"]):
            store.restore(index, self.block_file(index))
        return int(state["next_block"])

    def remove(self) -> None:
        """Delete the checkpoint: ``state.json`` first, so a kill half-way leaves no resumable remains."""
        import shutil

        self.state_path.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the driver ------------------------------------------------------------------------
def host_rss_gib() -> float | None:
    """This process's resident memory now (GiB; Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        return None


def host_peak_gib() -> float | None:
    """This process's peak resident memory so far (GiB; Linux ``VmHWM``), None elsewhere. Unlike
    ``ru_maxrss`` it starts afresh at ``exec``: a child does not inherit its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


class BlockClock:
    """Seconds of one block's phases (load, hessians, solve, forward, save), the device synchronized
    at each lap, and the peak device memory of torch's allocator and CuPy's pool after the block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: dict[str, float] = {}
        self._sync()
        self._t0 = self._t = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lap(self, name: str) -> float:
        self._sync()
        t = time.perf_counter()
        self.laps[name] = t - self._t
        self._t = t
        return self.laps[name]

    @property
    def total(self) -> float:
        return self._t - self._t0

    def entry(self, index: int) -> dict:
        entry: dict = {"block": index, **self.laps, "host_rss_gib": host_rss_gib(), "host_peak_gib": host_peak_gib()}
        if self.device.type == "cuda":
            from layerprune.problems.backend import cupy_or_none

            entry["torch_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            cp = cupy_or_none()
            if cp is not None:
                entry["cupy_pool_gib"] = cp.get_default_memory_pool().total_bytes() / 2**30
        return entry



def polish_seconds(result) -> float:
    """A layer's seconds in the polish (0: not polished); a stacked layer's share of the joint polish,
    in proportion to rows as its ``seconds`` (``solve_many``)."""
    joint = result.info.get("joint_seconds")
    share = result.seconds / joint if joint else 1.0
    return float(result.info.get("seconds_polish", 0.0)) * share


def _solve_block(block: nn.Module, hessians: dict[str, torch.Tensor], groups: list[list[str]],
                 settings: PruneSettings, index: int, plans: dict[str, dict], on_layer=None,
                 world: World | None = None, measured: dict[str, float] | None = None,
                 cross: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[dict]:
    """Prune the planned linears of one block in place; one log entry per pruned layer.

    plans : local layer name → its override values (``recipe.plan_layers``); a layer not in it
        stays dense. Each group's H (one tensor, on the solver's device) is shared by the
        group's problems; layers of a group with one method and options are solved with one
        cache (the factorization once), and together as one stack where ``solve_many`` would
        stack them. cross : layer name → (C, D) of a dense target (``layerwise.levers``; None:
        none); a group without an H in ``hessians`` is skipped. The results come back as torch tensors on that device
        (``keep_array_type``: DLPack from CuPy, a view of NumPy) and are copied into the weights.
    world, measured : with several ranks (``layerwise.distributed``) each solve unit goes to the
        rank :func:`lpt_assign` picks on its cost (``measured``: the layers' seconds in the
        previous block, else a formula); the pruned weights are then broadcast from their
        solvers and the entries gathered, in the order one process makes them.
    """
    world = world or World()
    linears = block_linears(block)
    solver_dev = settings.solve_device
    units: list[tuple[int, str, list[str], str, dict]] = []  # (group, method key, layers, method, options)
    layer: dict[str, tuple] = {}
    order: list[str] = []
    for gi, group in enumerate(groups):
        group = [name for name in group if name in plans]
        if not group or group[0] not in hessians:
            continue
        order += group
        layer.update({name: settings.layer(plans[name]) for name in group})
        by_method: dict[str, tuple[str, dict, list[str]]] = {}  # layers with one method and options: one cache
        for name in group:
            method, options = layer[name][:2]
            key = json.dumps([method, options], sort_keys=True, default=str)
            by_method.setdefault(key, (method, options, []))[2].append(name)
        for key, (method, options, names) in by_method.items():
            shapes = [SimpleNamespace(weight=SimpleNamespace(size=linears[n].weight.numel()), pattern=layer[n][3],
                                      sparsity=layer[n][2]) for n in names]  # what the stacking rule reads
            whole = world.size == 1 or len(names) == 1 or stacks_by_default(shapes, method)  # one unit, or one per layer
            units += [(gi, key, names, method, options)] if whole else [(gi, key, [n], method, options) for n in names]
    if world.size > 1:
        shape = {n: tuple(linears[n].weight.shape) for n in order}
        owner = lpt_assign(unit_costs([u[2] for u in units], shape, [get_method(u[3]).needs_hessian for u in units],
                                      measured), world.size)
    else:
        owner = [0] * len(units)
    solved: dict[str, dict] = {}
    caches: dict[tuple[int, str], dict] = {}
    first: tuple[int, LayerProblem] | None = None  # this rank's first problem of the current group: its H is shared
    error = None
    try:
        for (gi, key, names, method, options), rank in zip(units, owner):
            if rank != world.rank:
                continue
            # a copy of each weight: the problem's Ŵ stays the dense weight whatever is written into the layer
            problems = []
            for name in names:
                dense = linears[name].weight.detach().to(device=torch.device(solver_dev), dtype=torch.float32, copy=True)
                _, _, sparsity, pattern = layer[name]
                if first is None or first[0] != gi:
                    H = hessians[name].to(torch.device(solver_dev))  # no copy when it is there already
                    target = {} if cross is None else dict(zip(("cross", "target_hessian"),
                                                               (t.to(H.device) for t in cross[name])))
                    first = (gi, LayerProblem(weight=dense, hessian=H, sparsity=sparsity, pattern=pattern,
                                              damping=settings.damping, name=f"block{index}.{name}", **target))
                    problems.append(first[1])
                else:  # the group's other layers share the first's validated, damped Hessian
                    problems.append(first[1].with_weight(dense, name=f"block{index}.{name}", sparsity=sparsity,
                                                         pattern=pattern))
            results = solve_many(problems, method, cache=caches.setdefault((gi, key), {}), device=solver_dev,
                                 keep_array_type=True, polish=settings.local_search, **options)
            for name, problem, r in zip(names, problems, results):
                lin = linears[name]
                write_pruned(lin.weight, r.weight, r.mask)
                nonzero = int(torch.count_nonzero(lin.weight))
                solved[name] = {
                    "block": index,
                    "layer": name,
                    "shape": list(problem.shape),
                    "group": gi,
                    "method": r.method,
                    "pattern": r.pattern,
                    "target_sparsity": float(problem.sparsity),
                    "relative_error": float(r.relative_error),
                    "objective": float(r.objective),
                    "sparsity": 1.0 - nonzero / lin.weight.numel(),
                    "kept": nonzero,
                    "target_kept": int(problem.kept),
                    "seconds": float(r.seconds),
                    "iterations": int(r.iterations),
                    "success": bool(r.success),
                    "status": int(r.status),
                    "message": r.message,
                    "polish_seconds": polish_seconds(r),
                    "rank": world.rank,
                }
            del problems, results
    except Exception as e:  # every rank stops with it (a world of one: raised as it is)
        error = e
    first = None
    world.raise_if_any(error)
    if world.size > 1:
        for (_, _, names, _, _), rank in zip(units, owner):
            world.broadcast([linears[n].weight for n in names], src=rank)
        for part in world.gather_objects(solved):
            solved.update(part)
    entries = [solved[name] for name in order]
    for entry in entries:
        if on_layer is not None:
            on_layer(entry)
    return entries


@torch.no_grad()
def write_pruned(weight: torch.Tensor, solution: torch.Tensor, mask: torch.Tensor) -> None:
    """Copy a solver's float32 ``solution`` (out × in) into ``weight`` in the weight's own dtype
    with the support exact: entries off ``mask`` are 0, and a kept entry that rounds to 0 in a
    narrow dtype (|w| below fp16's 6e-8, bf16's 9e-41) becomes the smallest subnormal of its sign,
    so the saved model has exactly the solver's support."""
    mask = mask.to(device=weight.device, dtype=torch.bool)
    value = solution.to(device=weight.device, dtype=weight.dtype)
    value = torch.where(mask, value, torch.zeros((), dtype=value.dtype, device=value.device))  # +0.0, never -0.0
    lost = mask & (value == 0)
    if bool(lost.any()):
        info = torch.finfo(weight.dtype)
        tiny = torch.tensor(info.smallest_normal * info.eps, dtype=weight.dtype, device=weight.device)
        sign = torch.sign(solution.to(weight.device)[lost]).to(weight.dtype)
        value[lost] = torch.where(sign == 0, tiny, sign * tiny)
    weight.copy_(value)


def unconverged(layers: list[dict]) -> int:
    """How many layer entries of a run log did not converge (``success`` False; older logs lack it: converged)."""
    return sum(1 for e in layers if not e.get("success", True))




@torch.no_grad()
def prune_model(
    model: nn.Module,
    calib: torch.Tensor,
    settings: PruneSettings,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    after_block=None,
    extra_state: dict | None = None,
    arguments: dict | None = None,
) -> dict:
    """Prune every linear layer inside the model's blocks, in place, block by block.

    calib : (nsamples × seqlen) calibration token ids.
    checkpoint : folder for per-block checkpoints (None: none). An existing checkpoint
        is continued with ``resume=True`` and is an error otherwise.
    after_block : called as ``after_block(index)`` after each block is checkpointed (tests
        use it to simulate a crash).
    extra_state : kept in the checkpoint's ``state.json`` (e.g. the dense perplexity).
    arguments : more run arguments recorded in the checkpoint beside the settings, nsamples and
        seqlen (:func:`resume_arguments`); a resume with any of them different is refused.
    Returns the run log: settings, per-layer entries, seconds.
    """
    from tqdm.auto import tqdm

    settings.validate()
    if calib.ndim != 2 or calib.numel() == 0:
        raise LayerwiseError(f"calibration ids must be a non-empty (nsamples × seqlen) tensor, got {tuple(calib.shape)}")
    check_seqlen(model, int(calib.shape[1]))
    world = World.current()  # several ranks under torchrun (layerwise.distributed); one otherwise
    world.check_batches(int(calib.shape[0]), settings.batch_size, settings.hessian_shards)
    world.use_device(settings.device)
    store = store_for(model)
    if store.streamed and checkpoint is None:
        raise LayerwiseError("a model read block by block from disk needs a checkpoint folder: the pruned blocks are "
                             "written there")
    device = torch.device(settings.device)
    layer_names = [(store.prefix(i) + local, type(lin).__name__)
                   for i in range(len(store)) for local, lin in block_linears(store.blocks[i]).items()]
    plans = plan_layers(layer_names, settings.targets, settings.ignore, settings.overrides)  # before any work
    ckpt = Checkpoint(checkpoint) if checkpoint is not None else None
    fp = fingerprint(model, calib, settings) if ckpt is not None else None
    args = resume_arguments(settings, calib.shape[0], calib.shape[1], arguments)
    layers: list[dict] = []
    block_log: list[dict] = []
    start, seconds_before = 0, 0.0

    t0 = time.perf_counter()
    state = None
    if ckpt is not None and ckpt.exists():
        ckpt.check_resumable(resume)
        state = ckpt.read_state()
        check_resume_arguments(state, args, ckpt.folder)
        if state.get("fingerprint") != fp:  # the backstop: calibration ids, model config, block-0 weights
            raise LayerwiseError(
                f"the checkpoint in {ckpt.folder} belongs to another run (model, calibration or settings differ); "
                "delete it to start over"
            )
    # a sparsity profile: per-layer sparsities from a dense pre-pass (layerwise.profiles), kept in the checkpoint
    allocation = state.get("allocation") if state is not None else None
    if allocation is None and settings.sparsity_profile != "uniform":
        allocation = allocate_sparsity(model, store, calib, settings, plans, progress=progress, world=world)
    if allocation is not None:
        plans = with_allocation(plans, allocation["sparsities"])
    inputs = capture_inputs(model, world.shard_ids(calib, settings.batch_size), settings.batch_size, device,
                            settings.activations, streams=2 if settings.target == "dense" else 1)
    dense_inputs = inputs if settings.target == "dense" else None  # the dense model's block inputs (levers)
    if state is not None:
        if dense_inputs is not None:  # the dense blocks, before the checkpoint's pruned ones replace them
            dense_inputs = replay(store, int(state["next_block"]), dense_inputs, device)
        start = ckpt.restore(store, state)
        layers, seconds_before = list(state["layers"]), float(state.get("seconds", 0.0))
        for index in range(start):  # block `start`'s inputs: replay the pruned blocks, as the run did
            with store.on(index, device) as block:
                inputs = run_block(block, inputs)

    bar = tqdm(range(start, len(store)), initial=start, total=len(store), unit="block",
               desc=f"{settings.method} {settings.pattern} {settings.sparsity:g}", disable=not (progress and world.is_main))

    def on_layer(entry: dict) -> None:
        layers.append(entry)
        bar.set_postfix(layer=entry["layer"], rel_err=f"{entry['relative_error']:.4f}",
                        unconverged=unconverged(layers), refresh=False)

    for index in bar:
        clock = BlockClock(device)
        with store.on(index, device) as block:
            clock.lap("load")
            prefix = store.prefix(index)
            block_plans = {name[len(prefix):]: plan for name, plan in plans.items() if name.startswith(prefix)}
            measured = {e["layer"]: e["seconds"] for e in layers if e["block"] == index - 1}  # the cost model's
            if uses_levers(settings.sequential, settings.target):  # groups in turn, and/or dense targets
                dense_inputs, stats = prune_block(
                    block, inputs, dense_inputs, sequential=settings.sequential, device=device,
                    planned=set(block_plans), index=index,
                    reduce=world.reduce_accumulators if world.size > 1 else None, blend=settings.target_blend,
                    solve=functools.partial(_solve_block, block, settings=settings, index=index, plans=block_plans,
                                            on_layer=on_layer, world=world, measured=measured))
                both = clock.lap("solve")
                clock.laps.update(hessians=stats, solve=both - stats)
            else:
                hessians, groups, _ = block_hessians(world, block, inputs, device, index, settings.hessian_shards,
                                                     collect=collect_hessians)
                clock.lap("hessians")
                _solve_block(block, hessians, groups, settings, index, block_plans, on_layer=on_layer, world=world,
                             measured=measured)
                clock.lap("solve")
                del hessians
            inputs = run_block(block, inputs)  # the pruned block's outputs feed the next block
            clock.lap("forward")
            block_log.append(clock.entry(index))
            if ckpt is not None:  # rank 0 writes, the others wait for it
                world.main_first(functools.partial(ckpt.save_block, index, block, store.prefix(index), {
                    **(extra_state or {}), "fingerprint": fp, "model_blocks": store.path, "layers": layers,
                    "seconds": seconds_before + time.perf_counter() - t0, "settings": asdict(settings),
                    "arguments": args, "allocation": allocation,
                }))
                if store.streamed:  # the pruned block is read back from its file from now on
                    store.restore(index, ckpt.block_file(index))
        block_log[-1]["save"] = clock.lap("save")
        block_log[-1]["seconds"] = clock.total
        if after_block is not None:
            after_block(index)
    bar.close()
    return {
        "settings": asdict(settings),
        "sequential": settings.sequential,
        "target": settings.target,
        "target_blend": settings.target_blend if settings.target == "dense" else None,
        "nsamples": int(calib.shape[0]),
        "seqlen": int(calib.shape[1]),
        "blocks": len(store),
        "block_path": store.path,
        "layers": layers,
        "dense_layers": [name for name, _ in layer_names if name not in plans],  # ignored or not targeted
        "block_seconds": block_log,
        "mean_relative_error": sum(e["relative_error"] for e in layers) / max(len(layers), 1),
        "unconverged_layers": unconverged(layers),
        "polished_layers": sum(1 for e in layers if e.get("polish_seconds", 0.0) > 0),  # older logs lack the field
        "polish_seconds": sum(e.get("polish_seconds", 0.0) for e in layers),
        "sparsity": 1.0 - sum(e["kept"] for e in layers) / max(sum(e["shape"][0] * e["shape"][1] for e in layers), 1),
        "seconds": seconds_before + time.perf_counter() - t0,
        "world_size": world.size,
        "sparsity_profile": settings.sparsity_profile,
        "allocation": allocation,  # the profile's per-layer sparsities and what produced them (None: uniform)
    }
