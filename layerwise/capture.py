"""Save real layer problems (``LayerProblem`` files) of chosen blocks of a model.

The calibration batch runs through the *dense* model block by block (as in
``layerprune.layerwise.blocks``); for each chosen block ℓ every linear layer's
(Ŵ, H = XᵀX / n) is written to ``<output>/block{ℓ:02d}.<layer>.npz`` with
``LayerProblem.save``, ready for ``layerprune solve`` and ``layerprune compare``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from layerprune.layerwise.blocks import capture_inputs, collect_hessians, run_block
from layerprune.layerwise.driver import check_seqlen
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears, find_blocks
from layerprune.problems import LayerProblem, parse_pattern
from layerprune.problems.atomic import sweep_temps


def block_numbers(spec: str | Iterable[int]) -> list[int] | None:
    """The block numbers of ``spec`` as given ("0,15,-1" → [0, 15, -1]; "all" → None), checked for
    syntax only: the model's block count is not needed, so it runs before the model loads."""
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return None
        try:
            items = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise LayerwiseError(f"--layers must be block numbers like 0,15,29 or 'all', got {spec!r}") from None
    else:
        items = [int(x) for x in spec]
    if not items:
        raise LayerwiseError("no blocks chosen")
    return items


def parse_blocks(spec: str | Iterable[int], n_blocks: int) -> list[int]:
    """"0,15,29" / "all" / "-1" (Python-style negatives) → sorted block indices, checked against n_blocks."""
    items = block_numbers(spec)
    if items is None:
        return list(range(n_blocks))
    out = set()
    for i in items:
        j = i + n_blocks if i < 0 else i
        if not 0 <= j < n_blocks:
            raise LayerwiseError(f"block {i} is out of range: the model has {n_blocks} blocks (0 … {n_blocks - 1})")
        out.add(j)
    return sorted(out)


@torch.no_grad()
def capture_problems(
    model: nn.Module,
    calib: torch.Tensor,
    blocks: str | Iterable[int],
    output: str | os.PathLike,
    *,
    sparsity: float | None = 0.7,
    pattern: str = "unstructured",
    damping: float = 0.01,
    device: str = "cpu",
    batch_size: int = 8,
) -> list[Path]:
    """Write one ``.npz`` LayerProblem per linear layer of the chosen blocks; returns the paths."""
    if calib.ndim != 2:
        raise LayerwiseError(f"calibration ids must be (nsamples × seqlen), got shape {tuple(calib.shape)}")
    check_seqlen(model, int(calib.shape[1]))
    if parse_pattern(pattern).implied_sparsity() is not None:
        sparsity = None  # N:M fixes it
    _, module_blocks = find_blocks(model)
    chosen = parse_blocks(blocks, len(module_blocks))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    sweep_temps(out)  # what a killed capture left half-written (each file is written atomically)
    inputs = capture_inputs(model, calib, batch_size, device)
    paths: list[Path] = []
    for index in range(chosen[-1] + 1):
        block = module_blocks[index]
        home = next(block.parameters()).device
        block.to(device)
        if index in chosen:
            hessians, groups, inputs = collect_hessians(block, inputs, device, keep_outputs=True, index=index)
            linears = block_linears(block)
            on_cpu: dict[str, torch.Tensor] = {}
            for group in groups:  # one host copy per distinct input
                on_cpu.update(dict.fromkeys(group, hessians[group[0]].cpu()))
            for name in hessians:
                problem = LayerProblem(
                    weight=linears[name].weight.detach().float().cpu(),
                    hessian=on_cpu[name],
                    sparsity=sparsity,
                    pattern=pattern,
                    damping=damping,
                    name=f"block{index}.{name}",
                )
                path = out / f"block{index:02d}.{name}.npz"
                problem.save(path)
                paths.append(path)
        else:
            inputs = run_block(block, inputs)
        block.to(home)
    return paths
