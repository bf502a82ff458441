"""Running a model one transformer block at a time.

The calibration batch X₀ (nsamples × seqlen token ids) is pushed through the model's
embeddings until it reaches block 0, where a stand-in block records the hidden states
(nsamples × seqlen × hidden) and the other arguments the model passes to every block
(attention mask, rotary position embeddings, …) and stops the forward pass. From then
on each block is moved to the device on its own, run on the recorded inputs, and its
outputs become the next block's inputs: the whole model never needs to fit on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from layerprune.layerwise.activations import HostBatches, batches_like, check_place, on_device
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears, find_blocks
from layerprune.problems import HessianAccumulator


class _Stop(Exception):
    """Raised by the stand-in block once block 0's inputs are recorded."""


class _Catcher(nn.Module):
    """Stands in for block 0: records (hidden, args, kwargs) and stops the forward pass.

    The real block is held outside the module tree (so ``model.to`` leaves it alone) and
    unknown attributes are read from it (models read e.g. ``layer.attention_type``).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
        self.record: list[tuple[torch.Tensor, tuple, dict]] = []

    def forward(self, *args: Any, **kwargs: Any):
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        self.record.append((hidden, args, kwargs))
        raise _Stop

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


@dataclass
class BlockInputs:
    """The inputs of one block for the whole calibration batch, split in mini-batches.

    hidden : per mini-batch, (b × seqlen × hidden) tensors: a list on the device, or
        ``HostBatches`` in pinned host memory handing them out on the device (``layerwise.activations``)
    extras : per mini-batch, (args, kwargs) the model passes every block besides the hidden
        states; mini-batches of one size share one entry (the inputs are unpadded windows,
        so masks and positions depend only on the shape).
    """

    hidden: list[torch.Tensor]
    extras: list[tuple[tuple, dict]] = field(default_factory=list)
    tuple_output: bool = False  # whether the blocks that produced ``hidden`` returned tuples


def _parent_and_attr(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent: nn.Module = model
    *head, attr = path.split(".")
    for part in head:
        parent = getattr(parent, part)
    return parent, attr


@torch.no_grad()
def capture_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int = 8, device: str | torch.device = "cpu",
                   activations: str = "auto", streams: int = 1) -> BlockInputs:
    """Block 0's inputs for the token ids (n × seqlen), computed with the non-block parts on ``device``;
    kept there or in pinned host memory as ``activations`` says (``layerwise.activations``: the blocks'
    outputs follow their inputs; ``streams``: how many such streams the run keeps, 2 with dense targets)."""
    if ids.ndim != 2:
        raise LayerwiseError(f"calibration ids must be (nsamples × seqlen), got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise LayerwiseError(f"batch_size must be ≥ 1, got {batch_size}")
    path, blocks = find_blocks(model)
    parent, attr = _parent_and_attr(model, path)
    catcher = _Catcher(blocks[0])
    home = next(model.parameters()).device
    setattr(parent, attr, nn.ModuleList([catcher]))  # blocks leave the tree: model.to moves the rest only
    check_place(activations)
    hidden: list[torch.Tensor] | HostBatches = []
    extras: list[tuple[tuple, dict]] = []
    by_size: dict[int, tuple[tuple, dict]] = {}
    try:
        model.to(device)
        for start in range(0, ids.shape[0], batch_size):
            batch = ids[start : start + batch_size].to(device)
            catcher.record.clear()
            try:
                model(input_ids=batch, use_cache=False)
            except _Stop:
                pass
            if not catcher.record:
                raise LayerwiseError(f"{type(model).__name__}: the forward pass never reached block 0 of {path}")
            h, args, kwargs = catcher.record[0]
            kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values", "use_cache")}
            nbytes = h.nbytes * -(-ids.shape[0] // batch_size)
            if start == 0 and not on_device(activations, torch.device(device), nbytes, streams):
                hidden = HostBatches(device)
            hidden.append(h.detach())
            if h.shape[0] not in by_size:
                by_size[h.shape[0]] = (args, kwargs)
            extras.append(by_size[h.shape[0]])
    finally:
        catcher.record.clear()
        model.to(home)
        setattr(parent, attr, blocks)
    return BlockInputs(hidden, extras)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """The block's outputs on ``inputs`` (the next block's inputs); the block must be on the inputs' device."""
    outs, tuple_output = batches_like(inputs.hidden), False
    for h, (args, kwargs) in zip(inputs.hidden, inputs.extras):
        out = block(h, *args, **kwargs)
        tuple_output = isinstance(out, (tuple, list))
        outs.append(_first(out))
    return BlockInputs(outs, inputs.extras, tuple_output)


class _Inject(nn.Module):
    """Stands in for the blocks: returns the given last hidden states, in the blocks' output form
    (unknown attributes read from the real last block, as :class:`_Catcher` does)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
        self.hidden: torch.Tensor | None = None
        self.as_tuple = False

    def forward(self, *args: Any, **kwargs: Any):
        return (self.hidden,) if self.as_tuple else self.hidden

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


@torch.no_grad()
def head_logits(model: nn.Module, ids: torch.Tensor, last: BlockInputs, batch_size: int, device: str | torch.device):
    """Logits (b × seqlen × vocab) per mini-batch of ``ids`` from the last block's outputs ``last``: the
    model's forward runs with its blocks replaced by one stand-in that returns those outputs, so
    whatever follows the blocks (final norm, projections, LM head) is the model's own code."""
    path, blocks = find_blocks(model)
    parent, attr = _parent_and_attr(model, path)
    inject = _Inject(blocks[len(blocks) - 1])
    inject.as_tuple = last.tuple_output
    home = next(model.parameters()).device
    setattr(parent, attr, nn.ModuleList([inject]))
    try:
        model.to(device)
        for i, start in enumerate(range(0, ids.shape[0], batch_size)):
            inject.hidden = last.hidden[i]
            yield model(input_ids=ids[start : start + batch_size].to(device), use_cache=False).logits
    finally:
        inject.hidden = None
        model.to(home)
        setattr(parent, attr, blocks)


def same_input(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two layer inputs are the same data: the same tensor, or a view of the same
    memory with the same shape, strides and dtype that was not written to in between."""
    return a is b or (
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
        and a.dtype == b.dtype and a.device == b.device and a._version == b._version
    )


def _block_name(index: int | None) -> str:
    return "the block" if index is None else f"block {index}"


@torch.no_grad()
def check_finite_parameters(block: nn.Module, index: int | None = None) -> None:
    """LayerwiseError naming the block and the layer (or parameter) when a weight holds NaN/Inf.

    Checked before the block runs, so a bad weight is named as such rather than seen later as
    a non-finite activation of the layers after it.
    """
    linears = {f"{name}.weight": name for name in block_linears(block)}
    for pname, param in block.named_parameters():
        finite = torch.isfinite(param.detach())
        if not bool(finite.all()):
            bad = int(finite.numel() - int(finite.sum()))
            where = f"layer {linears[pname]}" if pname in linears else f"parameter {pname}"
            raise LayerwiseError(
                f"non-finite weight (NaN/Inf) in {_block_name(index)}, {where} ({bad} of {param.numel()} entries): "
                "the model is damaged or was loaded in a dtype that overflows"
            )


def non_finite_activation(index: int | None, members: list[str], rows: int, inputs: BlockInputs) -> LayerwiseError:
    """The error for a group (``members``, its first the leader) whose accumulated H = XᵀX over ``rows``
    rows is not finite, with where the NaN/Inf comes from (``inputs``: the block's)."""
    block = _block_name(index)
    shared = f" (the input it shares with {', '.join(members[1:])})" if len(members) > 1 else ""
    if all(bool(torch.isfinite(h).all()) for h in inputs.hidden):
        cause = (f"the input of {block} is finite, so it arises inside the block before this layer (an fp16/bf16 "
                 "overflow, or a NaN from an attention or norm), or XᵀX overflowed float32 (activations ≳ 1e19)")
    else:
        source = "the embeddings" if index in (None, 0) else f"the output of block {index - 1}"
        cause = f"the input of {block} is already non-finite: it comes from {source}"
    return LayerwiseError(
        f"non-finite activation (NaN/Inf) in the input of {block}, layer {members[0]}{shared}: "
        f"H = XᵀX over {rows} rows is not finite; {cause}"
    )


# kept outputs feed the next block: with autograd on they would chain the graph of every block so far
@torch.no_grad()
def collect_hessians(
    block: nn.Module, inputs: BlockInputs, device: str | torch.device, keep_outputs: bool = False, *, share: bool = True,
    index: int | None = None, reduce: Callable[[dict[str, HessianAccumulator]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[list[str]], BlockInputs | None]:
    """Each linear's H = XᵀX / n (in × in, float32) from its inputs X (n × in), with forward hooks.

    Linears that read the very same input tensor in a forward call (q/k/v, gate/up: the
    hook sees the tensor the previous linear saw) share one accumulator, so XᵀX is formed
    once per distinct input; they form a *group* and map to one H tensor (the same object).
    Returns (H by layer name in module order, the groups in layer order, the block's
    outputs from the same pass when ``keep_outputs`` else None). Should the grouping differ
    between mini-batches (it never does for a deterministic forward), or a linear run twice
    in one forward, the pass is repeated with one accumulator per layer (``share=False``),
    which accumulates every call of every linear over all mini-batches.

    ``index`` (the block's number) goes into the errors: a NaN/Inf weight in the block
    (``check_finite_parameters``), and a non-finite H (one ``isfinite`` per accumulated H at
    the end, not per batch), which names the first such layer in module order and whether
    the block's input was already non-finite.

    ``reduce``, when given, is called with the accumulators (by leader name) after the pass and
    before the check and the division: ``layerwise.distributed`` sums them over ranks there.
    """
    check_finite_parameters(block, index)
    linears = block_linears(block)
    accs: dict[str, HessianAccumulator] = {}
    state: dict[str, Any] = {"last": None, "leader": None, "seen": {}, "twice": False}

    def hook(name: str, lin: nn.Linear):
        def fn(_m, inp, _out) -> None:
            x = inp[0]
            if share and name in state["seen"]:  # a second call in one forward: grouping is unsafe
                state["twice"] = True
            if share and state["last"] is not None and same_input(x, state["last"]):
                leader = state["leader"]
            else:
                # keep a reference: its memory cannot be reused by another tensor while we compare against it
                leader, state["last"], state["leader"] = name, x, name
            state["seen"][name] = leader
            if leader == name:
                if name not in accs:
                    accs[name] = HessianAccumulator(lin.in_features, device=device)
                accs[name].add(x)

        return fn

    handles = [lin.register_forward_hook(hook(name, lin)) for name, lin in linears.items()]
    leaders: dict[str, str] | None = None
    outs = batches_like(inputs.hidden)
    consistent = True
    try:
        for h, (args, kwargs) in zip(inputs.hidden, inputs.extras):
            state.update(last=None, leader=None, seen={})
            out = _first(block(h, *args, **kwargs))
            if keep_outputs:
                outs.append(out)
            if not share:  # one accumulator per layer: the layers seen in any mini-batch
                leaders = {**(leaders or {}), **state["seen"]}
            elif leaders is None and not state["twice"]:
                leaders = dict(state["seen"])
            elif state["twice"] or state["seen"] != leaders:
                consistent = False
                break
    finally:
        state.update(last=None, leader=None, seen={})
        for handle in handles:
            handle.remove()
    if not consistent:
        return collect_hessians(block, inputs, device, keep_outputs, share=False, index=index, reduce=reduce)
    if reduce is not None:
        reduce(accs)
    leaders = leaders or {}
    missing = [name for name in linears if name not in leaders]
    if missing:
        raise LayerwiseError(f"{type(block).__name__}: the linear layer(s) {', '.join(missing)} never ran in the block's forward pass")
    groups: dict[str, list[str]] = {}
    for name in linears:
        groups.setdefault(leaders[name], []).append(name)
    hessians: dict[str, torch.Tensor] = {}
    for leader, members in groups.items():
        if not accs[leader].is_finite():
            raise non_finite_activation(index, members, accs[leader].count, inputs)
        H = accs[leader].hessian() / accs[leader].count
        for name in members:
            hessians[name] = H
    return hessians, list(groups.values()), (BlockInputs(outs, inputs.extras) if keep_outputs else None)
