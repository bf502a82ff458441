"""Tokenizing text, and the BOS convention of calibration and evaluation windows.

Text is tokenized without special tokens; when the tokenizer adds a BOS token by default
(:func:`bos_id`), every window is ``[BOS] + (seqlen − 1)`` text tokens (:func:`with_bos`), as
lm-evaluation-harness prefixes its rolling-perplexity windows, so no BOS appears mid-stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (HF tokenizers, or any callable text → ids)."""
    if hasattr(tokenizer, "model_input_names"):  # a transformers tokenizer
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [list(tokenizer(t)) for t in texts]


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer adds BOS by default (``tokenizer("x")`` starts with it, or
    ``add_bos_token`` is set), else None (also for a plain callable text → ids)."""
    if not hasattr(tokenizer, "model_input_names"):
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("x")["input_ids"]
    if (ids and ids[0] == bos) or getattr(tokenizer, "add_bos_token", False) is True:
        return int(bos)
    return None


def text_length(seqlen: int, bos: int | None) -> int:
    """Text tokens in a window of ``seqlen`` tokens: seqlen − 1 when a BOS leads it."""
    return seqlen - (bos is not None)


def with_bos(windows: torch.Tensor, bos: int | None) -> torch.Tensor:
    """(n, L) text windows → (n, L + 1) with ``bos`` first; unchanged when ``bos`` is None."""
    if bos is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), int(bos), dtype=windows.dtype), windows], dim=1)
