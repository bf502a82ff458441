"""Running a model one transformer block at a time.

The calibration batch X₀ (nsamples × seqlen token ids) is pushed through the model's
embeddings until it reaches block 0, where a stand-in block records the hidden states
(nsamples × seqlen × hidden) and the other arguments the model passes to every block
(attention mask, rotary position embeddings, …) and stops the forward pass. From then
on each block is moved to the device on its own, run on the recorded inputs, and its
outputs become the next block's inputs: the whole model never needs to fit on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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

    hidden : per mini-batch, (b × seqlen × hidden) tensors on the device
    extras : per mini-batch, (args, kwargs) the model passes every block besides the hidden
        states; mini-batches of one size share one entry (the inputs are unpadded windows,
        so masks and positions depend only on the shape).
    """

    hidden: list[torch.Tensor]
    extras: list[tuple[tuple, dict]] = field(default_factory=list)


def _parent_and_attr(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent: nn.Module = model
    *head, attr = path.split(".")
    for part in head:
        parent = getattr(parent, part)
    return parent, attr


@torch.no_grad()
def capture_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int = 8, device: str | torch.device = "cpu") -> BlockInputs:
    """Block 0's inputs for the token ids (n × seqlen), computed with the non-block parts on ``device``."""
    if ids.ndim != 2:
        raise LayerwiseError(f"calibration ids must be (nsamples × seqlen), got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise LayerwiseError(f"batch_size must be ≥ 1, got {batch_size}")
    path, blocks = find_blocks(model)
    parent, attr = _parent_and_attr(model, path)
    catcher = _Catcher(blocks[0])
    home = next(model.parameters()).device
    setattr(parent, attr, nn.ModuleList([catcher]))  # blocks leave the tree: model.to moves the rest only
    hidden: list[torch.Tensor] = []
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
    outs = []
    for h, (args, kwargs) in zip(inputs.hidden, inputs.extras):
        outs.append(_first(block(h, *args, **kwargs)))
    return BlockInputs(outs, inputs.extras)


@torch.no_grad()
def collect_hessians(
    block: nn.Module, inputs: BlockInputs, device: str | torch.device, keep_outputs: bool = False
) -> tuple[dict[str, torch.Tensor], BlockInputs | None]:
    """Each linear's H = XᵀX / n (in × in, float32) from its inputs X (n × in), with forward hooks;
    with ``keep_outputs`` also the block's outputs from the same pass (else None)."""
    linears = block_linears(block)
    accs = {name: HessianAccumulator(lin.in_features, device=device) for name, lin in linears.items()}
    handles = [
        lin.register_forward_hook(lambda _m, inp, _out, acc=accs[name]: acc.add(inp[0]))
        for name, lin in linears.items()
    ]
    try:
        outputs = run_block(block, inputs)
        if not keep_outputs:
            outputs = None
    finally:
        for handle in handles:
            handle.remove()
    return {name: acc.hessian() / acc.count for name, acc in accs.items()}, outputs


def share_groups(hessians: dict[str, torch.Tensor]) -> list[list[str]]:
    """Layers whose Hessians are identical (they read the same input: q/k/v, gate/up), in layer order."""
    groups: list[list[str]] = []
    for name, H in hessians.items():
        for group in groups:
            ref = hessians[group[0]]
            if ref.shape == H.shape and torch.equal(ref, H):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups
