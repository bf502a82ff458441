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

from layerprune.layerwise.data import calibration_segments, evaluation_windows
from layerprune.layerwise.distributed import World
from layerprune.layerwise.driver import check_seqlen, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.perplexity import perplexity
from layerprune.layerwise.settings import PruneSettings
from layerprune.layerwise.tokens import bos_id, text_length


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
    settings: PruneSettings | None = None,
    calib_ids: torch.Tensor | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    dense_perplexity: float | None = None,
    arguments: dict | None = None,
    **fields: Any,
) -> PruneResult:
    """Prune ``model`` (a transformers causal LM in memory, or one opened lazily) block by block, in place.

    fields : fields of :class:`PruneSettings` (method, sparsity, pattern, options, targets,
        ignore, overrides, calib, nsamples, seqlen, seed, damping, device, eval_text, …);
        ``recipe`` gives the rest, or ``settings`` gives them all (then neither may be given).
        ``eval_text=None`` skips the perplexities. Inside an initialized process group (torchrun)
        every rank calls it alike (``layerwise.distributed``); the perplexities are rank 0's only.
    calib_ids : your own (nsamples × seqlen) calibration token ids instead of ``calib``.
    checkpoint, resume : a folder for per-block checkpoints, and whether to continue one.
    dense_perplexity : a dense perplexity already measured for these evaluation settings (a resumed
        run's), not measured again. arguments : recorded in the checkpoint for ``--resume`` checks.
    """
    if not isinstance(model, nn.Module):
        raise LayerwiseError(f"prune() takes a transformers model (an nn.Module), got {type(model).__name__}")
    if settings is None:
        settings = PruneSettings.build(recipe, **fields)
    elif recipe is not None or fields:
        raise LayerwiseError("give either settings= or a recipe and keyword settings, not both")
    s = settings
    s.validate_run()
    t0 = time.perf_counter()
    check_seqlen(model, int(calib_ids.shape[-1]) if calib_ids is not None else s.seqlen)
    if s.eval_text is not None:
        check_seqlen(model, s.seqlen)  # the evaluation windows too
    if calib_ids is None:
        calib_ids = calibration_segments(tokenizer, s.calib, s.nsamples, s.seqlen, s.seed, s.text_field)
    log: dict[str, Any] = {}
    windows = None
    if s.eval_text is not None and World.current().is_main:  # under torchrun: evaluated on rank 0 only
        windows = evaluation_windows(tokenizer, s.eval_text, s.seqlen, s.eval_tokens, text_field=s.text_field)
        log["eval_tokens_used"] = windows.shape[0] * text_length(s.seqlen, bos_id(tokenizer))
        log["dense_perplexity"] = (dense_perplexity if dense_perplexity is not None
                                   else perplexity(model, windows, s.seqlen, device=s.device, progress=progress))
    log.update(prune_model(model, calib_ids, s, checkpoint=checkpoint, resume=resume, progress=progress,
                           extra_state={"dense_perplexity": log.get("dense_perplexity")}, arguments=arguments))
    if windows is not None:
        log["perplexity"] = perplexity(model, windows, s.seqlen, device=s.device, progress=progress)
    log["seconds_total"] = time.perf_counter() - t0
    return PruneResult(model, log, s)
