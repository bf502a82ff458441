"""The jobs a user runs, as functions (the CLI is a thin layer over these).

* :func:`run_prune` — load → calibration segments → dense perplexity → block-by-block
  pruning (checkpointed, resumable) → pruned perplexity → save the model and the run log.
* :func:`run_eval` — perplexity of a model on a text.
* :func:`run_demo` — SmolLM2 at one sparsity with several methods on a CPU-sized
  calibration set; a table of perplexities beside the dense one.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from layerprune.layerwise.data import _write_atomic, calibration_segments, evaluation_stream
from layerprune.layerwise.driver import Checkpoint, PruneSettings, check_seqlen, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import find_blocks, load_model, resolve_model, save_model
from layerprune.layerwise.perplexity import perplexity

RUN_LOG = "layerprune_run.json"


def checkpoint_folder(output: str | os.PathLike) -> Path:
    """Where a run writing ``output`` keeps its per-block checkpoints: ``<output>.partial``."""
    out = Path(output).expanduser().resolve()
    return out.parent / f"{out.name}.partial"


def _write_json(path: str | os.PathLike, data: dict) -> None:
    """JSON written atomically (one writer for every text file the package saves)."""
    _write_atomic(Path(path), json.dumps(data, indent=1))


def run_prune(
    model: str,
    output: str | os.PathLike,
    *,
    method: str = "alps",
    sparsity: float | None = None,
    pattern: str = "unstructured",
    calib: str = "wiki",
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    damping: float = 0.01,
    device: str = "cpu",
    solver_device: str | None = None,
    batch_size: int = 8,
    options: dict | None = None,
    eval_text: str | None = "wiki-test",
    eval_tokens: int | None = None,
    resume: bool = False,
    log: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Prune ``model`` and save it to ``output`` (an HF folder with ``layerprune_run.json``).

    Perplexity (dense and pruned) is measured on ``eval_text`` in windows of ``seqlen``
    over its first ``eval_tokens`` tokens (all when None); ``eval_text=None`` skips it.
    """
    settings = PruneSettings(method=method, sparsity=sparsity, pattern=pattern, damping=damping, device=device,
                             solver_device=solver_device, batch_size=batch_size, options=dict(options or {}))
    settings.validate()
    if nsamples < 1:
        raise LayerwiseError(f"nsamples must be ≥ 1, got {nsamples}")
    if Path(output).exists() and not Path(output).is_dir():
        raise LayerwiseError(f"output {str(output)!r} exists and is not a folder")
    resolve_model(model)  # a missing path fails before anything slow
    ckpt = Checkpoint(checkpoint_folder(output))
    ckpt.check_resumable(resume)
    t0 = time.perf_counter()
    net, tokenizer = load_model(model)
    check_seqlen(net, seqlen)
    ids = calibration_segments(tokenizer, calib, nsamples, seqlen, seed)
    record: dict[str, Any] = {
        "model": str(model), "method": method, "sparsity": settings.sparsity, "pattern": settings.pattern,
        "calib": str(calib), "nsamples": nsamples, "seqlen": seqlen, "seed": seed,
        "eval_text": eval_text, "eval_tokens": eval_tokens,
    }
    stream = None
    if eval_text is not None:
        stream = evaluation_stream(tokenizer, eval_text, max_tokens=eval_tokens)
        record["eval_tokens_used"] = (stream.numel() // seqlen) * seqlen
        dense = None
        if resume and ckpt.exists():
            dense = ckpt.read_state().get("dense_perplexity")
        if dense is None:
            dense = perplexity(net, stream, seqlen, device=device, progress=progress)
        record["dense_perplexity"] = dense
    run = prune_model(net, ids, settings, checkpoint=ckpt.folder, resume=resume, progress=progress,
                      extra_state={"dense_perplexity": record.get("dense_perplexity")})
    record.update(run)
    if stream is not None:
        record["perplexity"] = perplexity(net, stream, seqlen, device=device, progress=progress)
    record["seconds_total"] = time.perf_counter() - t0
    text = json.dumps(record, indent=1)
    save_model(net, tokenizer, output, extra_files={RUN_LOG: text})
    if log is not None:
        _write_json(log, record)
    ckpt.remove()
    return record


def run_eval(model: str, text: str = "wiki-test", *, seqlen: int = 2048, max_tokens: int | None = None,
             device: str = "cpu", batch_size: int = 1, progress: bool = True) -> dict:
    """Perplexity of ``model`` on ``text`` in non-overlapping windows of ``seqlen`` tokens."""
    resolve_model(model)
    net, tokenizer = load_model(model)
    check_seqlen(net, seqlen)
    stream = evaluation_stream(tokenizer, text, max_tokens=max_tokens)
    ppl = perplexity(net, stream, seqlen, device=device, batch_size=batch_size, progress=progress)
    return {"model": str(model), "text": str(text), "seqlen": seqlen,
            "tokens": (stream.numel() // seqlen) * seqlen, "perplexity": ppl}


# -- the demo ----------------------------------------------------------------------------
DEMO_DEFAULTS = {"nsamples": 16, "seqlen": 512, "eval_tokens": 8192}


def run_demo(
    model: str = "smollm2",
    methods: tuple[str, ...] = ("alps", "sparsegpt", "wanda"),
    *,
    sparsity: float = 0.7,
    pattern: str = "unstructured",
    calib: str = "wiki",
    text: str = "wiki-test",
    nsamples: int = DEMO_DEFAULTS["nsamples"],
    seqlen: int = DEMO_DEFAULTS["seqlen"],
    eval_tokens: int | None = DEMO_DEFAULTS["eval_tokens"],
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    echo=None,
) -> dict:
    """Prune ``model`` with each method (same calibration) and tabulate perplexity and minutes."""
    echo = echo or (lambda *a: print(*a, flush=True))
    settings = [PruneSettings(method=m, sparsity=sparsity, pattern=pattern, device=device) for m in methods]
    for s in settings:
        s.validate()
    resolve_model(model)
    t0 = time.perf_counter()
    net, tokenizer = load_model(model)
    check_seqlen(net, seqlen)
    ids = calibration_segments(tokenizer, calib, nsamples, seqlen, seed)
    stream = evaluation_stream(tokenizer, text, max_tokens=eval_tokens)
    used = (stream.numel() // seqlen) * seqlen
    dense = perplexity(net, stream, seqlen, device=device)
    setup_minutes = (time.perf_counter() - t0) / 60
    echo(f"dense perplexity {dense:.2f} ({used} tokens; load + data + eval {setup_minutes:.1f} min)")
    rows = []
    for s in settings:
        t = time.perf_counter()
        pruned = copy.deepcopy(net)
        run = prune_model(pruned, ids, s, progress=progress)
        ppl = perplexity(pruned, stream, seqlen, device=device)
        minutes = (time.perf_counter() - t) / 60
        rows.append({"method": s.method, "sparsity": run["sparsity"], "pattern": s.pattern, "perplexity": ppl,
                     "minutes": minutes, "mean_relative_error": run["mean_relative_error"]})
        echo(f"{s.method}: perplexity {ppl:.2f}, {minutes:.1f} min")
        del pruned
    _, blocks = find_blocks(net)
    result = {
        "model": model, "calib": str(calib), "text": str(text), "blocks": len(blocks), "nsamples": nsamples, "seqlen": seqlen, "eval_tokens": used,
        "dense_perplexity": dense, "rows": rows, "minutes_total": (time.perf_counter() - t0) / 60,
    }
    echo("")
    echo(format_table(result))
    return result


def format_table(result: dict) -> str:
    """A Markdown table: method, sparsity, perplexity (× dense), minutes; dense first."""
    lines = [
        f"{result['model']}: calibration {result['nsamples']} × {result['seqlen']} tokens ({result['calib']}), "
        f"perplexity on {result['eval_tokens']} {result['text']} tokens in windows of {result['seqlen']}",
        "",
        "| method | sparsity | perplexity | × dense | mean rel. error | minutes |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| dense | 0.00 | {result['dense_perplexity']:.2f} | 1.00 | — | — |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']}{'' if r['pattern'] == 'unstructured' else ' ' + r['pattern']} | {r['sparsity']:.2f} | "
            f"{r['perplexity']:.2f} | {r['perplexity'] / result['dense_perplexity']:.2f} | "
            f"{r['mean_relative_error']:.4f} | {r['minutes']:.1f} |"
        )
    lines.append(f"\ntotal {result['minutes_total']:.1f} min")
    return "\n".join(lines)
