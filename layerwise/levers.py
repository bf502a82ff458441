"""Two levers of the block driver: sequential groups, and dense (asymmetric) targets.

A *group* is the linears of a block that read one input tensor (q/k/v; gate/up), found from
the hooks of one forward in the order they run (:func:`forward_groups`), not per family.

* ``sequential="groups"``: the groups are solved in forward order (q/k/v, o, gate/up, down),
  and each group's H = X_pᵀX_p / n is accumulated with the earlier groups already pruned (as
  the SparseGPT reference's LLaMA script does). Cost: one partial forward per group and
  mini-batch, stopped (an exception from the hook) once the group's last layer has run.
  ``"block"``: every H from one pass with the dense block weights (``collect_hessians``).
* ``target="dense"``: each layer fits the dense model's outputs, f(W) = ‖X_p Wᵀ − X_d Ŵᵀ‖² +
  λ‖W − Ŵ‖² (:mod:`layerprune.problems.targets`), X_d the layer's inputs in the fully dense
  model. The driver keeps a second :class:`~layerprune.layerwise.blocks.BlockInputs` stream,
  the dense model's block inputs, propagated by a copy of each block's dense weights taken
  before it is pruned; C = X_pᵀX_d / n and D = X_dᵀX_d / n are accumulated per group with
  hooks pairing each mini-batch's pruned and dense layer inputs (float32).

Memory of ``target="dense"``: one more activation buffer, nsamples × seqlen × hidden × the
dtype's bytes (SmolLM2 at 128 × 2048 in float32: 0.56 GiB; Llama-3-8B in bf16: 2 GiB), on the
block device; while a block is pruned, a copy of its weights, the dense layer inputs of one
mini-batch for the groups being solved, and C and D (in × in, float32) per group beside H.
A resume replays the checkpoint's blocks on the pruned stream and the original (dense) blocks
on the dense stream (:func:`replay`), before the checkpoint's blocks replace them in the store.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from layerprune.layerwise.activations import batches_like
from layerprune.layerwise.blocks import (
    BlockInputs,
    check_finite_parameters,
    non_finite_activation,
    run_block,
    same_input,
)
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears
from layerprune.problems import CrossAccumulator, HessianAccumulator
from layerprune.problems.targets import blend_statistics

SEQUENTIAL = ("block", "groups")
TARGETS = ("pruned", "dense")


def check_levers(sequential: str, target: str, blend: float) -> None:
    """LayerwiseError naming a ``sequential`` or ``target`` value that is not one of the choices, or a
    ``target_blend`` outside (0, 1]."""
    if sequential not in SEQUENTIAL:
        raise LayerwiseError(f"sequential must be one of {', '.join(SEQUENTIAL)}, got {sequential!r}")
    if target not in TARGETS:
        raise LayerwiseError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if isinstance(blend, bool) or not isinstance(blend, (int, float)) or not 0.0 < blend <= 1.0:
        raise LayerwiseError(f"target_blend must lie in (0, 1] (1: the dense outputs), got {blend!r}")


def parse_levers(text: str) -> list[tuple[str, str, str | None]]:
    """``"block:pruned:uniform,groups:dense"`` → [("block", "pruned", "uniform"), ("groups", "dense", None)]
    (the demo's ``--levers``: SEQUENTIAL:TARGET[:PROFILE]; no profile: the settings' default for the pattern)."""
    from layerprune.layerwise.allocation import PROFILES

    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if item:
            parts = item.split(":")
            if len(parts) not in (2, 3):
                raise LayerwiseError(f"--levers: {item!r} is not SEQUENTIAL:TARGET[:PROFILE] (e.g. groups:dense, "
                                     "block:pruned:uniform)")
            check_levers(parts[0], parts[1], 1.0)  # the names; a row takes target_blend from the settings
            profile = parts[2] if len(parts) == 3 else None
            if profile is not None and profile not in PROFILES:
                raise LayerwiseError(f"--levers: unknown sparsity profile {profile!r} in {item!r}; the profiles are "
                                     + ", ".join(PROFILES))
            out.append((parts[0], parts[1], profile))
    if not out:
        raise LayerwiseError("--levers: no SEQUENTIAL:TARGET pair given")
    return out


def uses_levers(sequential: str, target: str) -> bool:
    """Whether a block needs this module (anything but the one-pass, pruned-input default)."""
    return sequential != "block" or target != "pruned"


class _GroupDone(Exception):
    """Raised by a hook once the last layer a partial forward needs has run."""


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class _Tap:
    """Forward hooks on a block's linears that find each call's group leader (the first layer
    reading that input tensor) and hand the leaders' inputs to ``on_input``.

    leader_of : the expected leader of every layer (None: record it, ``seen``); another leader
        in a later forward is an error. stop_at : raise :class:`_GroupDone` after that layer ran.
    """

    def __init__(self, block: nn.Module, on_input: Callable[[str, torch.Tensor], None] | None = None,
                 leader_of: dict[str, str] | None = None, wanted: set[str] | None = None,
                 stop_at: str | None = None) -> None:
        self.on_input, self.leader_of, self.wanted, self.stop_at = on_input, leader_of, wanted, stop_at
        self.seen: dict[str, str] = {}
        self.twice: list[str] = []
        self._last: torch.Tensor | None = None
        self._leader: str | None = None
        self.handles = [lin.register_forward_hook(self._hook(name)) for name, lin in block_linears(block).items()]

    def _hook(self, name: str):
        def fn(_m, inp, _out) -> None:
            x = inp[0]
            if name in self.seen:
                self.twice.append(name)
            if self._last is not None and same_input(x, self._last):
                leader = self._leader
            else:
                leader, self._last, self._leader = name, x, name
            self.seen[name] = leader
            if self.leader_of is not None and self.leader_of.get(name) != leader:
                raise LayerwiseError(f"layer {name} read another input than in the first mini-batch (its group "
                                     "changed between forwards): sequential groups and dense targets need one "
                                     "grouping")
            if self.on_input is not None and name == leader and (self.wanted is None or name in self.wanted):
                self.on_input(name, x)
            if name == self.stop_at:
                raise _GroupDone

        return fn

    def run(self, block: nn.Module, h: torch.Tensor, extras: tuple[tuple, dict]) -> torch.Tensor | None:
        """One forward on a mini-batch; its output, or None when stopped early."""
        self.seen, self._last, self._leader = {}, None, None
        args, kwargs = extras
        try:
            return _first(block(h, *args, **kwargs))
        except _GroupDone:
            return None
        finally:
            self._last = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def forward_groups(block: nn.Module, inputs: BlockInputs, index: int | None = None) -> list[list[str]]:
    """The block's groups in forward order, each in forward order (its first layer the leader),
    from one forward of the first mini-batch. A layer that runs twice, or never, is an error."""
    tap = _Tap(block)
    try:
        tap.run(block, inputs.hidden[0], inputs.extras[0])
    finally:
        tap.remove()
    where = "the block" if index is None else f"block {index}"
    if tap.twice:
        raise LayerwiseError(f"{where}: layer(s) {', '.join(sorted(set(tap.twice)))} run more than once per forward; "
                             "sequential groups and dense targets need each linear to run once")
    missing = [name for name in block_linears(block) if name not in tap.seen]
    if missing:
        raise LayerwiseError(f"{where}: the linear layer(s) {', '.join(missing)} never ran in the block's forward pass")
    groups: dict[str, list[str]] = {}
    for name, leader in tap.seen.items():
        groups.setdefault(leader, []).append(name)
    return list(groups.values())


@torch.no_grad()
def group_statistics(block: nn.Module, inputs: BlockInputs, groups: list[list[str]], device: str | torch.device,
                     leader_of: dict[str, str], *, dense_block: nn.Module | None = None,
                     dense_inputs: BlockInputs | None = None, keep_dense_outputs: bool = False,
                     index: int | None = None, reduce: Callable[[dict], None] | None = None,
                     blend: float):
    """H (and with a dense block, C and D) of ``groups`` on ``block`` as it is now.

    Per mini-batch: the dense block runs on the dense stream first (stopped after the groups'
    last layer unless ``keep_dense_outputs``), its leaders' inputs X_d kept (a copy) and
    D += X_dᵀX_d; then the block runs on the pruned stream, stopped after that layer:
    H += X_pᵀX_p and C += X_pᵀX_d. Returns (H by layer name, (C, D) by layer name or None, the
    dense block's outputs when kept else None); each group's members share one tensor each,
    divided by the row count n. ``reduce`` (several ranks: ``World.reduce_accumulators``) sums the
    accumulators over the ranks' mini-batches before that. ``blend`` β < 1 returns the (C, D) of the
    blended target (1 − β) X_p + β X_d instead (``problems.targets.blend_statistics``).
    """
    wanted = {g[0] for g in groups}
    last = groups[-1][-1]
    width = {name: lin.in_features for name, lin in block_linears(block).items()}
    H = {g: HessianAccumulator(width[g], device=device) for g in wanted}
    dense = dense_block is not None
    C = {g: CrossAccumulator(width[g], device=device) for g in wanted} if dense else {}
    D = {g: HessianAccumulator(width[g], device=device) for g in wanted} if dense else {}
    x_dense: dict[str, torch.Tensor] = {}

    def on_dense(leader: str, x: torch.Tensor) -> None:
        x_dense[leader] = x.detach().clone()
        D[leader].add(x)

    def on_pruned(leader: str, x: torch.Tensor) -> None:
        H[leader].add(x)
        if dense:
            C[leader].add(x, x_dense[leader])

    tap = _Tap(block, on_pruned, leader_of, wanted, stop_at=last)
    dtap = _Tap(dense_block, on_dense, leader_of, wanted, stop_at=None if keep_dense_outputs else last) if dense else None
    outs = batches_like(dense_inputs.hidden) if dense else []  # where the dense stream lives (device or host)
    try:
        for b, (h, extras) in enumerate(zip(inputs.hidden, inputs.extras)):
            if dense:
                x_dense.clear()
                out = dtap.run(dense_block, dense_inputs.hidden[b], dense_inputs.extras[b])
                if keep_dense_outputs:
                    outs.append(out)
            tap.run(block, h, extras)
    finally:
        x_dense.clear()
        tap.remove()
        if dtap is not None:
            dtap.remove()
    if reduce is not None:
        reduce({**{f"H:{g}": a for g, a in H.items()}, **{f"C:{g}": a for g, a in C.items()},
                **{f"D:{g}": a for g, a in D.items()}})
    hessians: dict[str, torch.Tensor] = {}
    cross: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for group in groups:
        leader = group[0]
        accs = [H[leader]] + ([C[leader], D[leader]] if dense else [])
        if not all(acc.is_finite() for acc in accs):
            raise non_finite_activation(index, group, H[leader].count, inputs)
        n = H[leader].count
        h_ = H[leader].hessian() / n
        pair = blend_statistics(h_, C[leader].cross() / n, D[leader].hessian() / n, blend) if dense else None
        for name in group:
            hessians[name] = h_
            if pair is not None:
                cross[name] = pair
    kept = BlockInputs(outs, dense_inputs.extras, dense_inputs.tuple_output) if keep_dense_outputs and dense else None
    return hessians, (cross if dense else None), kept


@torch.no_grad()
def prune_block(block: nn.Module, inputs: BlockInputs, dense_inputs: BlockInputs | None, *, sequential: str,
                device: str | torch.device, planned: set[str], solve: Callable[..., Any],
                index: int | None = None, reduce: Callable[[dict], None] | None = None,
                blend: float) -> tuple[BlockInputs | None, float]:
    """Prune one block in place with the levers on; returns (the dense stream's next inputs or
    None, seconds spent on the statistics).

    dense_inputs : the dense model's inputs of this block (None: ``target="pruned"``).
    planned : the block's layers that are pruned (groups with none are skipped).
    solve : ``solve(hessians, groups, cross=cross)`` prunes those groups in place (the driver's solver).
    reduce : sums the statistics over ranks (see :func:`group_statistics`; None: one process).
    blend : the dense target's β (``target_blend``: fit (1 − β) X_p + β X_d).
    """
    check_finite_parameters(block, index)
    groups = forward_groups(block, inputs, index)
    leader_of = {name: g[0] for g in groups for name in g}
    todo = [g for g in groups if any(name in planned for name in g)]
    dense_block = copy.deepcopy(block) if dense_inputs is not None else None  # the dense weights, before pruning
    passes = [[g] for g in todo] if sequential == "groups" else ([todo] if todo else [])
    dense_next, stats = None, 0.0
    for i, wanted in enumerate(passes):
        t = time.perf_counter()
        last = i == len(passes) - 1  # the last dense pass runs the whole block: the dense stream's next inputs
        hessians, cross, kept = group_statistics(block, inputs, wanted, device, leader_of, dense_block=dense_block,
                                                 dense_inputs=dense_inputs, keep_dense_outputs=last, index=index,
                                                 reduce=reduce, blend=blend)
        if kept is not None:
            dense_next = kept
        stats += time.perf_counter() - t
        solve(hessians, wanted, cross=cross)
        del hessians, cross
    if dense_inputs is not None and dense_next is None:
        dense_next = run_block(dense_block, dense_inputs)
    return dense_next, stats


@torch.no_grad()
def replay(store, stop: int, inputs: BlockInputs, device: str | torch.device) -> BlockInputs:
    """Block ``stop``'s inputs: blocks 0 … stop−1 of ``store`` as they are now run on ``inputs``."""
    for index in range(stop):
        with store.on(index, device) as block:
            inputs = run_block(block, inputs)
    return inputs
