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

With a checkpoint folder, after every block the pruned weights of that block
(``block_XXXX.safetensors``) are written, then ``state.json`` (the run log so far) is
replaced atomically to point past it. No activations are saved: ``resume`` reloads the
pruned blocks 0 … next−1, captures block 0's inputs again and replays the pruned blocks
on them with ``run_block``, exactly the computation an uninterrupted run does, then goes on.
The replay is bit-for-bit the same on the same device with the same thread count (tested);
resumed on another GPU or with another ``--threads``, the block inputs may differ in the
last bits, as two uninterrupted runs there would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from layerprune.layerwise.blocks import capture_inputs, collect_hessians, run_block
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears, context_length, find_blocks
from layerprune.problems import LayerProblem, parse_pattern
from layerprune.problems.atomic import atomic_write, atomic_write_json
from layerprune.solvers import get_method, solve_many

CHECKPOINT_VERSION = 2  # 2: pruned weights only; block inputs are recomputed on resume


@dataclass
class PruneSettings:
    """What to prune and how.

    method : a registered method (``layerprune.available_methods()``).
    sparsity : fraction removed per layer in [0, 1); None for N:M patterns (1 − N/M).
    pattern : "unstructured", "row" or "N:M".
    damping : λ = damping · mean(diag H).
    device : where each block runs while it is pruned ("cpu", "cuda", …).
    solver_device : where the solver runs ("cpu"/"cuda"; None: "cuda" when ``device`` is a GPU).
    batch_size : calibration sequences per block forward.
    options : passed to the method (e.g. ``{"max_iter": 100}`` for ALPS).
    """

    method: str = "alps"
    sparsity: float | None = None
    pattern: str = "unstructured"
    damping: float = 0.01
    device: str = "cpu"
    solver_device: str | None = None
    batch_size: int = 8
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        get_method(self.method)  # ValueError naming the known methods
        try:
            pat = parse_pattern(self.pattern)
        except ValueError as e:
            raise LayerwiseError(str(e)) from e
        implied = pat.implied_sparsity()
        if self.sparsity is None:
            if implied is None:
                raise LayerwiseError(f"--sparsity is required for pattern {pat.name!r}")
            self.sparsity = implied
        s = float(self.sparsity)
        if not 0.0 <= s < 1.0 or s != s:
            raise LayerwiseError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if implied is not None and abs(s - implied) > 1e-9:
            raise LayerwiseError(f"pattern {pat.name} fixes the sparsity at {implied:g}; got sparsity={s:g}")
        self.sparsity = s
        if self.damping < 0:
            raise LayerwiseError(f"damping must be ≥ 0, got {self.damping}")
        if self.batch_size < 1:
            raise LayerwiseError(f"batch_size must be ≥ 1, got {self.batch_size}")

    @property
    def solve_device(self) -> str:
        if self.solver_device is not None:
            return self.solver_device
        return "cuda" if str(self.device).startswith("cuda") else "cpu"


def check_seqlen(model: nn.Module, seqlen: int) -> None:
    """A clear error when seqlen exceeds the model's context (or is too short)."""
    if seqlen < 2:
        raise LayerwiseError(f"seqlen must be ≥ 2, got {seqlen}")
    ctx = context_length(model)
    if ctx is not None and seqlen > ctx:
        raise LayerwiseError(f"seqlen {seqlen} is longer than the model's context of {ctx} tokens")


def fingerprint(model: nn.Module, calib: torch.Tensor, settings: PruneSettings) -> str:
    """Identifies a run: settings, calibration ids, the model's config and its block-0 weights."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(settings), sort_keys=True, default=str).encode())
    h.update(calib.to(torch.int64).cpu().numpy().tobytes())
    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    _, blocks = find_blocks(model)
    for name, lin in block_linears(blocks[0]).items():
        h.update(name.encode())
        h.update(lin.weight.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def resume_arguments(settings: PruneSettings, nsamples: int, seqlen: int, extra: dict | None = None) -> dict:
    """The arguments a checkpoint records and ``--resume`` compares key by key: the settings,
    nsamples and seqlen, and ``extra`` (the pipeline adds model, calib, seed, eval text and tokens).
    Normalized through JSON, as they are read back from ``state.json``."""
    args = {**asdict(settings), "nsamples": int(nsamples), "seqlen": int(seqlen), **(extra or {})}
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

    def save_block(self, index: int, block: nn.Module, state: dict) -> None:
        """Write block ``index``'s pruned weights, then point ``state.json`` past it (both atomically)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {f"{name}.weight": lin.weight.detach().cpu().contiguous() for name, lin in block_linears(block).items()}
        atomic_write(self.folder / f"block_{index:04d}.safetensors", lambda p: save_file(weights, p))
        atomic_write_json(self.state_path, dict(state, version=CHECKPOINT_VERSION, next_block=index + 1))

    def restore(self, blocks: nn.ModuleList, state: dict) -> int:
        """Load the pruned blocks 0 … next−1 into ``blocks``; returns next."""
        from safetensors.torch import load_file

        for index in range(state["next_block"]):
            saved = load_file(str(self.folder / f"block_{index:04d}.safetensors"))
            linears = block_linears(blocks[index])
            for key, value in saved.items():
                linears[key[: -len(".weight")]].weight.data.copy_(value)
        return int(state["next_block"])

    def remove(self) -> None:
        """Delete the checkpoint: ``state.json`` first, so a kill half-way leaves no resumable remains."""
        import shutil

        self.state_path.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the driver ------------------------------------------------------------------------
def _solve_block(block: nn.Module, hessians: dict[str, torch.Tensor], groups: list[list[str]],
                 settings: PruneSettings, index: int, on_layer=None) -> list[dict]:
    """Prune every linear of one block in place; one log entry per layer.

    Each group's H (one tensor, on the solver's device) is shared by the group's problems;
    the results come back as torch tensors on that device (``keep_array_type``: DLPack from
    CuPy, a view of NumPy) and are copied into the weights where they live.
    """
    linears = block_linears(block)
    entries = []
    solver_dev = settings.solve_device
    for gi, group in enumerate(groups):
        H = hessians[group[0]]
        if solver_dev == "cuda":
            H = H if H.is_cuda else H.cuda()
        else:
            H = H.cpu()
        # a copy of each weight: the problem's Ŵ stays the dense weight whatever is written into the layer
        dense = [linears[name].weight.detach().to(device=H.device, dtype=torch.float32, copy=True) for name in group]
        first = LayerProblem(weight=dense[0], hessian=H, sparsity=settings.sparsity, pattern=settings.pattern,
                             damping=settings.damping, name=f"block{index}.{group[0]}")
        # the group's other layers share the first's validated, damped Hessian
        problems = [first] + [first.with_weight(w, name=f"block{index}.{name}") for name, w in zip(group[1:], dense[1:])]
        results = solve_many(problems, settings.method, cache={}, device=solver_dev, keep_array_type=True,
                             **settings.options)
        for name, problem, r in zip(group, problems, results):
            lin = linears[name]
            lin.weight.data.copy_(r.weight)
            nonzero = int(torch.count_nonzero(lin.weight))
            entry = {
                "block": index,
                "layer": name,
                "shape": list(problem.shape),
                "group": gi,
                "relative_error": float(r.relative_error),
                "objective": float(r.objective),
                "sparsity": 1.0 - nonzero / lin.weight.numel(),
                "kept": nonzero,
                "target_kept": int(problem.kept),
                "seconds": float(r.seconds),
                "iterations": int(r.iterations),
                "message": r.message,
            }
            entries.append(entry)
            if on_layer is not None:
                on_layer(entry)
    return entries


@contextlib.contextmanager
def _on_device(block: nn.Module, device: torch.device):
    """The block moved to ``device`` for the ``with`` body and back to where it lived after."""
    home = next(block.parameters()).device
    block.to(device)
    try:
        yield block
    finally:
        block.to(home)


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
    path, blocks = find_blocks(model)
    device = torch.device(settings.device)
    ckpt = Checkpoint(checkpoint) if checkpoint is not None else None
    fp = fingerprint(model, calib, settings) if ckpt is not None else None
    args = resume_arguments(settings, calib.shape[0], calib.shape[1], arguments)
    layers: list[dict] = []
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
    inputs = capture_inputs(model, calib, settings.batch_size, device)
    if state is not None:
        start = ckpt.restore(blocks, state)
        layers, seconds_before = list(state["layers"]), float(state.get("seconds", 0.0))
        for index in range(start):  # block `start`'s inputs: replay the pruned blocks, as the run did
            with _on_device(blocks[index], device) as block:
                inputs = run_block(block, inputs)

    bar = tqdm(range(start, len(blocks)), initial=start, total=len(blocks), unit="block",
               desc=f"{settings.method} {settings.pattern} {settings.sparsity:g}", disable=not progress)
    for index in bar:
        with _on_device(blocks[index], device) as block:
            hessians, groups, _ = collect_hessians(block, inputs, device)
            _solve_block(block, hessians, groups, settings, index,
                         on_layer=lambda e: (layers.append(e), bar.set_postfix(layer=e["layer"], rel_err=f"{e['relative_error']:.4f}", refresh=False)))
            del hessians
            inputs = run_block(block, inputs)  # the pruned block's outputs feed the next block
        if ckpt is not None:
            ckpt.save_block(index, block, {
                **(extra_state or {}), "fingerprint": fp, "model_blocks": path, "layers": layers,
                "seconds": seconds_before + time.perf_counter() - t0, "settings": asdict(settings),
                "arguments": args,
            })
        if after_block is not None:
            after_block(index)
    bar.close()
    return {
        "settings": asdict(settings),
        "nsamples": int(calib.shape[0]),
        "seqlen": int(calib.shape[1]),
        "blocks": len(blocks),
        "block_path": path,
        "layers": layers,
        "mean_relative_error": sum(e["relative_error"] for e in layers) / max(len(layers), 1),
        "sparsity": 1.0 - sum(e["kept"] for e in layers) / max(sum(e["shape"][0] * e["shape"][1] for e in layers), 1),
        "seconds": seconds_before + time.perf_counter() - t0,
    }
