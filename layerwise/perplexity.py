"""Perplexity on a token stream in non-overlapping windows (the WikiText-2 protocol of SparseGPT/ALPS).

The stream (first ``max_tokens`` tokens if given) is cut into ⌊n / seqlen⌋ windows of
``seqlen`` tokens (the remainder is dropped); each window is scored on its own:

    PPL = exp( Σ_windows Σ_{t=1}^{seqlen−1} −log p(x_t | x_<t) / (windows · (seqlen − 1)) ).

With a BOS token (``eval_windows(..., bos=id)``) each window is [BOS] + seqlen − 1 stream tokens,
so every stream token in a window is scored and the BOS is not. A 2-D tensor of windows
(``layerwise.data.evaluation_windows``) is scored as given.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.tokens import text_length, with_bos


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

    ids = eval_windows(stream, seqlen, max_tokens)
    if getattr(model, "layerprune_store", None) is not None:
        return perplexity_by_block(model, ids, device=device, batch_size=batch_size, progress=progress)
    windows = ids.shape[0]
    home = next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    nll, count = 0.0, 0
    try:
        for start in tqdm(range(0, windows, batch_size), desc="perplexity", unit="batch", disable=not progress):
            batch = ids[start : start + batch_size].to(device)
            nll += next_token_nll(model(input_ids=batch, use_cache=False).logits, batch)
            count += batch[:, 1:].numel()
    finally:
        model.to(home)
        model.train(was_training)
    return math.exp(nll / count)


def eval_windows(stream: torch.Tensor, seqlen: int, max_tokens: int | None = None, bos: int | None = None) -> torch.Tensor:
    """The (windows × seqlen) non-overlapping windows of the stream's first ``max_tokens`` tokens;
    with ``bos``, [bos] + seqlen − 1 stream tokens each. A 2-D ``stream`` is windows already."""
    if seqlen < 2:
        raise LayerwiseError(f"seqlen must be ≥ 2, got {seqlen}")
    if stream.ndim == 2:
        if stream.shape[1] != seqlen or stream.shape[0] == 0 or max_tokens is not None:
            raise LayerwiseError(f"evaluation windows of shape {tuple(stream.shape)} do not match seqlen={seqlen}"
                                 + (" (max_tokens applies to a 1-D stream)" if max_tokens is not None else ""))
        return stream
    ids = stream.reshape(-1)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    length = text_length(seqlen, bos)
    windows = ids.numel() // length
    if windows == 0:
        raise LayerwiseError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}"
                             + (" (BOS + seqlen − 1 text tokens)" if bos is not None else ""))
    return with_bos(ids[: windows * length].reshape(windows, length), bos)


def next_token_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """Σ −log p(x_t | x_<t) over the batch's windows (float32 log-softmax)."""
    logits = logits.float()
    return float(nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].to(logits.device).reshape(-1), reduction="sum"))


@torch.no_grad()
def perplexity_by_block(model: nn.Module, ids: torch.Tensor, *, device: str | torch.device = "cpu",
                        batch_size: int = 1, progress: bool = False) -> float:
    """Perplexity of a model whose blocks live on disk (``layerprune_store``): every window's hidden
    states go through one block at a time (the SparseGPT reference's ``llama_eval``), then the
    model's head. Memory: the windows' hidden states (windows × seqlen × hidden, twice) on ``device``."""
    from tqdm.auto import tqdm

    from layerprune.layerwise.blocks import capture_inputs, head_logits, run_block

    store = model.layerprune_store
    inputs = capture_inputs(model, ids, batch_size, device)
    for index in tqdm(range(len(store)), desc="perplexity", unit="block", disable=not progress):
        with store.on(index, device) as block:
            inputs = run_block(block, inputs)
    nll = 0.0
    for start, logits in zip(range(0, ids.shape[0], batch_size), head_logits(model, ids, inputs, batch_size, device)):
        nll += next_token_nll(logits, ids[start : start + batch_size])
    return math.exp(nll / (ids.shape[0] * (ids.shape[1] - 1)))
