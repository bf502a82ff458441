"""Full-model pruning: calibration text → block-by-block pruning → perplexity → a saved model.

    from layerprune.layerwise import load_model, calibration_segments, prune_model, PruneSettings
    model, tok = load_model("smollm2")
    ids = calibration_segments(tok, "wiki", nsamples=16, seqlen=512)
    log = prune_model(model, ids, PruneSettings(method="alps", sparsity=0.7))
"""

from layerprune.layerwise.capture import capture_problems
from layerprune.layerwise.data import calibration_segments, evaluation_stream, evaluation_windows, load_documents
from layerprune.layerwise.driver import PruneSettings, prune_model
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError, UnsupportedModelError
from layerprune.layerwise.models import block_linears, find_blocks, load_model, save_model
from layerprune.layerwise.perplexity import perplexity
from layerprune.layerwise.pipeline import run_demo, run_eval, run_prune

__all__ = [
    "LayerwiseError",
    "MissingPackageError",
    "PruneSettings",
    "UnsupportedModelError",
    "block_linears",
    "calibration_segments",
    "capture_problems",
    "evaluation_stream",
    "evaluation_windows",
    "find_blocks",
    "load_documents",
    "load_model",
    "perplexity",
    "prune_model",
    "run_demo",
    "run_eval",
    "run_prune",
    "save_model",
]
