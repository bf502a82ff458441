"""``layerprune.prune``: the whole-model pipeline on a transformers model already in memory.

    from layerprune import prune
    res = prune(model, tokenizer, method="alps", sparsity=0.7, calib="wiki", device="cuda")
    res.model is model          # pruned in place
    res.log["layers"]           # per-layer relative error, sparsity, seconds, status

the counterpart of llm-compressor's ``oneshot(model=…, dataset=…, recipe=…)``: the run is one
:class:`~layerprune.layerwise.settings.PruneSettings`, built from ``recipe`` (a YAML file or a
dict) and the keyword arguments, checked before any work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layerprune.layerwise.data import calibration_segments, evaluation_stream
from layerprune.layerwise.driver import check_seqlen, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.perplexity import perplexity
from layerprune.layerwise.settings import PruneSettings


@dataclass
class PruneResult:
    """What :func:`prune` did.

    model : the model it was given, pruned in place (its blocks' linear weights)
    log : the run log (settings, per-layer entries, sparsity, seconds; ``dense_perplexity`` and
        ``perplexity`` when ``eval_text`` is set)
    settings : the checked settings of the run
    """

    model: nn.Module
    log: dict
    settings: PruneSettings

    @property
    def sparsity(self) -> float:
        return float(self.log["sparsity"])

    @property
    def mean_relative_error(self) -> float:
        return float(self.log["mean_relative_error"])

    def __repr__(self) -> str:
        ppl = f", perplexity={self.log['perplexity']:.3f}" if "perplexity" in self.log else ""
        return (f"PruneResult(method={self.settings.method!r}, sparsity={self.sparsity:.4f}, "
                f"layers={len(self.log['layers'])}, mean_relative_error={self.mean_relative_error:.4g}{ppl})")


def prune(
    model: nn.Module,
    tokenizer: Any,
    *,
    recipe: str | dict | None = None,
    calib_ids: torch.Tensor | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    **settings: Any,
) -> PruneResult:
    """Prune ``model`` (a transformers causal LM in memory) block by block, in place.

    settings : fields of :class:`PruneSettings` (method, sparsity, pattern, options, targets,
        ignore, overrides, calib, nsamples, seqlen, seed, damping, device, eval_text, …);
        ``recipe`` gives the rest. ``eval_text=None`` skips the perplexities.
    calib_ids : your own (nsamples × seqlen) calibration token ids instead of ``calib``.
    checkpoint, resume : a folder for per-block checkpoints, and whether to continue one.
    """
    if not isinstance(model, nn.Module):
        raise LayerwiseError(f"prune() takes a transformers model (an nn.Module), got {type(model).__name__}")
    s = PruneSettings.build(recipe, **settings)
    s.validate_run()
    t0 = time.perf_counter()
    if calib_ids is None:
        calib_ids = calibration_segments(tokenizer, s.calib, s.nsamples, s.seqlen, s.seed)
    check_seqlen(model, int(calib_ids.shape[-1]))
    log: dict[str, Any] = {}
    stream = None
    if s.eval_text is not None:
        stream = evaluation_stream(tokenizer, s.eval_text, max_tokens=s.eval_tokens)
        log["dense_perplexity"] = perplexity(model, stream, s.seqlen, device=s.device, progress=progress)
    log.update(prune_model(model, calib_ids, s, checkpoint=checkpoint, resume=resume, progress=progress))
    if stream is not None:
        log["perplexity"] = perplexity(model, stream, s.seqlen, device=s.device, progress=progress)
    log["seconds_total"] = time.perf_counter() - t0
    return PruneResult(model, log, s)
