"""Perplexity on a token stream in non-overlapping windows (the WikiText-2 protocol of SparseGPT/ALPS).

The stream (first ``max_tokens`` tokens if given) is cut into ⌊n / seqlen⌋ windows of
``seqlen`` tokens (the remainder is dropped); each window is scored on its own:

    PPL = exp( Σ_windows Σ_{t=1}^{seqlen−1} −log p(x_t | x_<t) / (windows · (seqlen − 1)) ).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerprune.layerwise.errors import LayerwiseError


@torch.no_grad()
def perplexity(
    model: nn.Module,
    stream: torch.Tensor,
    seqlen: int,
    *,
    max_tokens: int | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool = False,
) -> float:
    """exp(mean next-token negative log-likelihood) over non-overlapping windows of ``seqlen`` tokens."""
    from tqdm.auto import tqdm

    ids = stream.reshape(-1)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    if seqlen < 2:
        raise LayerwiseError(f"seqlen must be ≥ 2, got {seqlen}")
    windows = ids.numel() // seqlen
    if windows == 0:
        raise LayerwiseError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    ids = ids[: windows * seqlen].reshape(windows, seqlen)
    home = next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    nll, count = 0.0, 0
    try:
        for start in tqdm(range(0, windows, batch_size), desc="perplexity", unit="batch", disable=not progress):
            batch = ids[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            nll += float(loss)
            count += batch[:, 1:].numel()
    finally:
        model.to(home)
        model.train(was_training)
    return math.exp(nll / count)
