"""WikiText-2 and C4 as the SparseGPT paper reads them (IST-DASLab/sparsegpt ``datautils.py``).

* WikiText-2 evaluation: the test split's lines joined with ``"\\n\\n"``, tokenized as one stream.
* WikiText-2 calibration: the train split's lines joined with ``" "`` (as the reference joins
  them), tokenized as one stream; ``nsamples`` windows at ``randint(0, n − L − 1)``.
* C4 calibration: from the first train shard, draw a document at ``randint(0, docs − 1)`` until
  one has more than L tokens, then a window at ``randint(0, n − L − 1)`` of it.
* C4 evaluation: the validation shard's first 1100 documents joined with ``" "``, tokenized as
  one stream, cut at 256 windows.

Draws come from ``random.Random(seed)`` in the reference's order, so with the same seed and a
tokenizer that adds no BOS the windows are the reference's. L is the window's text length:
seqlen, or seqlen − 1 when the window starts with BOS (:mod:`layerprune.layerwise.tokens`;
the reference instead counts the BOS its tokenizer puts at the start of the whole text).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.tokens import encode

WIKITEXT_NAMES = ("wikitext", "Salesforce/wikitext")
WIKITEXT2_DEFAULT_CONFIG = "wikitext-2-raw-v1"
C4_NAMES = ("allenai/c4", "c4")
C4_SHARDS = {"train": "c4-train.00000-of-01024.json.gz", "validation": "c4-validation.00000-of-00008.json.gz"}
C4_EVAL_DOCUMENTS = 1100
C4_EVAL_WINDOWS = 256
C4_MAX_DRAWS = 100_000  # documents drawn for one sample before giving up (no document long enough)

WIKITEXT2_EVAL_SEPARATOR = "\n\n"
WIKITEXT2_CALIB_SEPARATOR = " "
C4_EVAL_SEPARATOR = " "


def joined_stream(tokenizer: Any, texts: Sequence[str], separator: str) -> torch.Tensor:
    """The texts joined with ``separator`` and tokenized as one string (1-D LongTensor)."""
    ids = encode(tokenizer, [separator.join(texts)])[0]
    if not ids:
        raise LayerwiseError("the text tokenizes to no tokens")
    return torch.tensor(ids, dtype=torch.long)


def reference_windows(stream: torch.Tensor, nsamples: int, length: int, seed: int) -> torch.Tensor:
    """(nsamples, length) windows of ``stream`` at the reference's ``randint(0, n − length − 1)`` starts."""
    n = int(stream.numel())
    if n < length + 1:
        raise LayerwiseError(f"the calibration text has {n} tokens; windows of {length} text tokens need more")
    rng = random.Random(seed)
    starts = [rng.randint(0, n - length - 1) for _ in range(nsamples)]
    return torch.stack([stream[s : s + length] for s in starts])


def wikitext2_calibration(tokenizer: Any, texts: Sequence[str], nsamples: int, length: int, seed: int = 0) -> torch.Tensor:
    """(nsamples, length) calibration windows of WikiText-2's train lines."""
    return reference_windows(joined_stream(tokenizer, texts, WIKITEXT2_CALIB_SEPARATOR), nsamples, length, seed)


def wikitext2_evaluation(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """The evaluation stream of WikiText-2's test lines (1-D)."""
    return joined_stream(tokenizer, texts, WIKITEXT2_EVAL_SEPARATOR)


def c4_calibration(tokenizer: Any, texts: Sequence[str], nsamples: int, length: int, seed: int = 0) -> torch.Tensor:
    """(nsamples, length) windows, each of a random document longer than ``length`` tokens."""
    if len(texts) == 0:
        raise LayerwiseError("the C4 calibration shard holds no documents")
    rng = random.Random(seed)
    windows = []
    for _ in range(nsamples):
        for _draw in range(C4_MAX_DRAWS):
            ids = encode(tokenizer, [texts[rng.randint(0, len(texts) - 1)]])[0]
            if len(ids) > length:
                break
        else:
            raise LayerwiseError(f"no C4 document with more than {length} tokens in {C4_MAX_DRAWS} draws")
        start = rng.randint(0, len(ids) - length - 1)
        windows.append(torch.tensor(ids[start : start + length], dtype=torch.long))
    return torch.stack(windows)


def c4_evaluation(tokenizer: Any, texts: Sequence[str], length: int) -> torch.Tensor:
    """The first 256 windows' worth (256 × ``length`` tokens) of the first 1100 validation documents."""
    stream = joined_stream(tokenizer, texts[:C4_EVAL_DOCUMENTS], C4_EVAL_SEPARATOR)
    return stream[: C4_EVAL_WINDOWS * length]
