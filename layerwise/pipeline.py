"""The jobs a user runs, as functions (the CLI is a thin layer over these).

* :func:`run_prune` — load → calibration segments → dense perplexity → block-by-block
  pruning (checkpointed, resumable) → pruned perplexity → save the model and the run log.
* :func:`run_eval` — perplexity of a model on a text and/or zero-shot tasks (lm-eval).
* :func:`run_demo` — SmolLM2 at one or several settings (sparsities, N:M patterns) with
  several methods in one process (one model load, calibration set, evaluation stream and
  dense perplexity); a table of perplexities beside the dense one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from layerprune.layerwise.allocation import profile_at
from layerprune.layerwise.api import prune
from layerprune.layerwise.checks import check_at_least, check_output_file, check_output_folder, check_torch_device
from layerprune.layerwise.compressed import Compression, check_save_format
from layerprune.layerwise.data import calibration_segments, check_text_source, evaluation_windows
from layerprune.layerwise.distributed import World
from layerprune.layerwise.driver import (
    Checkpoint,
    PruneSettings,
    check_resume_arguments,
    check_seqlen,
    host_peak_gib,
    resume_arguments,
)
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.lazy import open_model, parse_dtype, save_sharded
from layerprune.layerwise.models import block_linears, find_blocks, load_model, output_folder, resolve_model, save_model
from layerprune.layerwise.perplexity import perplexity
from layerprune.layerwise.sources import TEXT_FIELD
from layerprune.layerwise.stores import store_for
from layerprune.layerwise.tokens import bos_id, text_length
from layerprune.layerwise.zeroshot import check_tasks, evaluate_tasks
from layerprune.problems.atomic import atomic_folder, atomic_write_json, sweep_temps
from layerprune.problems.locks import output_lock

RUN_LOG = "layerprune_run.json"


def checkpoint_folder(output: str | os.PathLike) -> Path:
    """Where a run writing ``output`` keeps its per-block checkpoints: ``<output>.partial``."""
    out = Path(output).expanduser().resolve()
    return out.parent / f"{out.name}.partial"


def run_prune(
    model: str | None,
    output: str | os.PathLike,
    *,
    recipe: str | dict | None = None,
    resume: bool = False,
    log: str | os.PathLike | None = None,
    progress: bool = True,
    **settings: Any,
) -> dict:
    """Prune ``model`` and save it to ``output`` (an HF folder with ``layerprune_run.json``).

    settings : the fields of :class:`~layerprune.layerwise.settings.PruneSettings` (method,
        sparsity, pattern, options, targets, ignore, overrides, calib, nsamples, seqlen, seed,
        dtype, stream, eval_text, eval_tokens, device, …); ``recipe`` (a YAML file or a dict)
        gives the others. Everything is checked before the model loads.
    Perplexity (dense and pruned) is measured on ``eval_text`` in windows of ``seqlen`` over
    its first ``eval_tokens`` tokens (all when None); ``eval_text=None`` skips it. An HF
    safetensors folder is read one block at a time and written as one shard per block.
    """
    s = PruneSettings.build(recipe, **({"model": model} if model is not None else {}), **settings)
    if s.model is None:
        raise LayerwiseError("no model given (--model, or model: in the recipe)")
    s.validate_run()
    check_output_folder(output, "--output")
    check_output_file(log, "--log")
    check_save_format(s.save_format)
    resolve_model(s.model)  # a missing path fails before anything slow
    ckpt = Checkpoint(checkpoint_folder(output))
    world = World.current()  # under torchrun rank 0 locks, sweeps and writes; the others wait for it
    # one run at a time on this output and its checkpoint; the locks go when the run ends, however it ends
    with main_rank_locks(world, output, ckpt.folder):
        ckpt.check_resumable(resume)
        sources = {"model": source_name(s.model), "calib": source_name(s.calib), "eval_text": source_name(s.eval_text)}
        arguments = resume_arguments(s, s.nsamples, s.seqlen, sources)
        dense = None
        if resume and ckpt.exists():  # refused here, before the model loads, when an argument differs
            state = ckpt.read_state()
            check_resume_arguments(state, arguments, ckpt.folder)
            if state.get("arguments") is not None:  # the evaluation arguments match: its dense perplexity holds
                dense = state.get("dense_perplexity")
        t0 = time.perf_counter()
        net, tokenizer = open_model(s.model, parse_dtype(s.dtype), stream=s.stream)
        store = store_for(net)
        bos = bos_id(tokenizer)
        record: dict[str, Any] = {
            "model": str(s.model), "method": s.method, "sparsity": s.sparsity, "pattern": s.pattern,
            "calib": str(s.calib), "nsamples": s.nsamples, "seqlen": s.seqlen, "seed": s.seed,
            "eval_text": s.eval_text, "eval_tokens": s.eval_tokens, "text_field": s.text_field,
            "bos": bos is not None, "bos_id": bos,
            "dtype": str(next(p for p in net.parameters() if p.device.type != "meta").dtype).removeprefix("torch."),
            "streamed": store.streamed,
        }
        result = prune(net, tokenizer, settings=s, checkpoint=ckpt.folder, resume=resume, progress=progress,
                       dense_perplexity=dense, arguments=sources)
        record.update(result.log)
        record["seconds_total"] = time.perf_counter() - t0
        compression = Compression.from_run(record) if s.save_format == "compressed" else None
        record["save_format"] = compression.format if compression is not None else "dense"
        record["host_peak_gib"] = host_peak_gib()  # the process's peak so far (the output's shards are links)
        record["sparsity_plot"] = sparsity_plot_name(s, record.get("allocation"))
        text = json.dumps(record, indent=1)

        def write() -> None:
            if store.streamed:  # the checkpoint's block files are the output's shards
                files = [ckpt.block_file(i) for i in range(len(store))]
                with atomic_folder(output_folder(output)) as tmp:
                    save_sharded(net, files, tokenizer, tmp, extra_files={RUN_LOG: text}, compression=compression)
            else:
                save_model(net, tokenizer, output, extra_files={RUN_LOG: text}, compression=compression)
            if log is not None:
                atomic_write_json(log, record)
            if record["sparsity_plot"] == SPARSITY_PLOT:  # beside the run log, in the saved folder
                from layerprune.reports.plots import plot_layer_sparsity

                record["sparsity_plot"] = str(plot_layer_sparsity(
                    record["layers"], output_folder(output) / SPARSITY_PLOT, s.sparsity,
                    title=f"{s.method} {s.sparsity:g}, sparsity profile {s.sparsity_profile}"))
            ckpt.remove()

        world.main_first(write)
    return record


SPARSITY_PLOT = "layer_sparsity.png"


def sparsity_plot_name(s: PruneSettings, allocation: dict | None) -> str | None:
    """The per-layer sparsity plot a run with a profile writes beside its run log (``SPARSITY_PLOT``);
    None for a uniform run, where the profile allocated no layer (``allocation``, the run log's:
    every layer has its own sparsity), and without matplotlib (the ``reports`` extra)."""
    import importlib.util

    if s.sparsity_profile == "uniform" or not (allocation or {}).get("sparsities"):
        return None
    if importlib.util.find_spec("matplotlib") is None:
        return None
    return SPARSITY_PLOT


@contextmanager
def main_rank_locks(world: World, output: str | os.PathLike, checkpoint: Path) -> Iterator[None]:
    """The output's and the checkpoint's locks, and the sweep of half-written temporaries, on rank 0
    (every process of a world of one); the other ranks wait until rank 0 holds them."""
    with ExitStack() as stack:
        def take() -> None:
            stack.enter_context(output_lock(output, error=LayerwiseError))
            stack.enter_context(output_lock(checkpoint, error=LayerwiseError))
            for folder in (checkpoint.parent, checkpoint):
                sweep_temps(folder)  # what a killed run left half-written

        world.main_first(take)
        yield


def source_name(source: str | os.PathLike | None) -> str | None:
    """How a model or text source is recorded for ``--resume``: an existing path made absolute,
    a built-in name (``smollm2``, ``wiki``) as given."""
    if source is None:
        return None
    p = Path(source).expanduser()
    return str(p.resolve()) if p.exists() else str(source)


def run_eval(model: str, text: str | None = "wiki-test", *, seqlen: int = 2048, max_tokens: int | None = None,
             device: str = "cpu", batch_size: int = 1, dtype: str | None = None, stream: bool = True,
             text_field: str = TEXT_FIELD, tasks: Sequence[str] | None = None,
             task_path: str | os.PathLike | None = None, limit: int | None = None,
             output: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Perplexity of ``model`` on ``text`` in non-overlapping windows of ``seqlen`` tokens (an HF
    safetensors folder block by block unless ``stream=False``), and/or zero-shot ``tasks`` through
    lm-eval (``layerwise.zeroshot``: the model is then loaded whole). ``text=None`` skips perplexity;
    ``output``: the result also written there as JSON (atomically)."""
    if text is None and not tasks:
        raise LayerwiseError("nothing to evaluate: give a text (--text) and/or tasks (--tasks)")
    if text is not None:
        check_at_least("seqlen", seqlen, 2)
        check_at_least("max_tokens", max_tokens, 2, optional=True)
        check_text_source(text, "--text", text_field)
    check_at_least("batch_size", batch_size, 1)
    check_at_least("limit", limit, 1, optional=True)
    check_torch_device(device, "--device")
    check_output_file(output, "--output")
    torch_dtype = parse_dtype(dtype)
    resolve_model(model)
    manager = check_tasks(tasks, task_path) if tasks else None  # names known, data cached: before the load
    t0 = time.perf_counter()
    net, tokenizer = open_model(model, torch_dtype, stream=stream and not tasks)  # lm-eval needs it whole
    record: dict[str, Any] = {"model": str(model)}
    if text is not None:
        check_seqlen(net, seqlen)
        windows = evaluation_windows(tokenizer, text, seqlen, max_tokens, text_field=text_field)
        ppl = perplexity(net, windows, seqlen, device=device, batch_size=batch_size, progress=progress)
        bos = bos_id(tokenizer)
        record.update(text=str(text), seqlen=seqlen, bos=bos is not None, bos_id=bos,
                      tokens=windows.shape[0] * text_length(seqlen, bos), perplexity=ppl)
    if tasks:
        record["zeroshot"] = evaluate_tasks(net, tokenizer, tasks, manager=manager, batch_size=batch_size,
                                            device=device, limit=limit, progress=progress)
    record["seconds"] = time.perf_counter() - t0
    if output is not None:
        atomic_write_json(output, record)
    return record


# -- the demo ----------------------------------------------------------------------------
DEMO_DEFAULTS = {"nsamples": 16, "seqlen": 512, "eval_tokens": 8192}


def parse_setting(spec: str | float | tuple) -> tuple[float | None, str]:
    """One pruning setting → (sparsity, pattern): ``0.7`` (a fraction: unstructured), ``"2:4"`` (N:M),
    or a ``(sparsity, pattern)`` pair as given."""
    if isinstance(spec, tuple):
        sparsity, pattern = spec
        return (None if sparsity is None else float(sparsity)), str(pattern)
    if isinstance(spec, (int, float)):
        return float(spec), "unstructured"
    text = str(spec).strip()
    if ":" in text:
        return None, text
    try:
        return float(text), "unstructured"
    except ValueError:
        raise LayerwiseError(f"a setting is a sparsity such as 0.7 or an N:M pattern such as 2:4, got {spec!r}") from None


def parse_settings(specs: str | Sequence) -> list[tuple[float | None, str]]:
    """``"0.5,0.7,0.8,2:4"`` (or a list of such items) → [(sparsity, pattern), …]."""
    items = [x for x in specs.split(",") if x.strip()] if isinstance(specs, str) else list(specs)
    if not items:
        raise LayerwiseError("no pruning settings given")
    return [parse_setting(x) for x in items]


def setting_label(sparsity: float, pattern: str) -> str:
    """How a setting is named in the table: ``0.7 unstructured``, ``2:4``."""
    return pattern if ":" in pattern else f"{sparsity:g} {pattern}"


def run_demo(
    model: str = "smollm2",
    methods: tuple[str, ...] = ("alps", "sparsegpt", "wanda"),
    *,
    settings: str | Sequence | None = None,
    sparsity: float | None = 0.7,
    pattern: str = "unstructured",
    calib: str = "wiki",
    text: str = "wiki-test",
    nsamples: int = DEMO_DEFAULTS["nsamples"],
    seqlen: int = DEMO_DEFAULTS["seqlen"],
    eval_tokens: int | None = DEMO_DEFAULTS["eval_tokens"],
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 8,
    eval_batch_size: int = 1,
    text_field: str = TEXT_FIELD,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    echo=None,
    levers: Sequence[tuple[str, str] | tuple[str, str, str | None]] | None = None,
    local_search: bool | None = PruneSettings.local_search,
) -> dict:
    """Prune ``model`` with each method at each setting and tabulate perplexity, error and seconds.

    levers : (sequential, target[, sparsity profile or None]) tuples (``layerwise.levers.parse_levers``;
        no profile or None: the default one for the row's pattern and target; a profile other than
        uniform runs uniform at N:M settings), each a row per setting and method, labelled
        "SETTING SEQUENTIAL/TARGET/PROFILE" unless it is PruneSettings' default; None: the default.

    settings : several settings in one process, e.g. ``"0.5,0.7,2:4"`` (see :func:`parse_settings`);
        None: the one setting ``(sparsity, pattern)``. Every (setting, method) row shares the
        model load, the calibration ids, the evaluation stream and the dense perplexity.
    device : where blocks, the solver (a GPU device: CuPy) and perplexity run; on a GPU the
        model stays there for the whole comparison.
    output : a JSON file rewritten (atomically) after the dense perplexity and after every row.
    local_search : every row's polish (``PruneSettings.local_search``: None where it pays, True, False).
    """
    echo = echo or (lambda *a: print(*a, flush=True))
    pairs = parse_settings(settings) if settings is not None else [(sparsity, pattern)]
    runs = []
    default_levers = (PruneSettings.sequential, PruneSettings.target, PruneSettings.sparsity_profile)
    for sp, pat in pairs:
        for lever in (levers or [default_levers]):
            seq, tgt, profile = (*lever, None)[:3]
            profile = profile_at(profile, pat)
            for m in methods:
                s = PruneSettings(method=m, sparsity=sp, pattern=pat, device=device, batch_size=batch_size, calib=calib,
                                  text_field=text_field, nsamples=nsamples, seqlen=seqlen, seed=seed, eval_text=None,
                                  sequential=seq, target=tgt, sparsity_profile=profile, local_search=local_search)
                s.validate()
                plain = (seq, tgt, profile) == default_levers
                tag = "" if plain else f" {seq}/{tgt}/{s.sparsity_profile}"
                runs.append((setting_label(s.sparsity, s.pattern) + tag, s, plain))
    if not runs:
        raise LayerwiseError("no methods given")
    check_at_least("eval_batch_size", eval_batch_size, 1)
    check_at_least("nsamples", nsamples, 1)
    check_at_least("seqlen", seqlen, 2)
    check_at_least("eval_tokens", eval_tokens, 2, optional=True)
    check_text_source(calib, "--calib", text_field)
    check_text_source(text, "--text", text_field)
    check_output_file(output, "--output")
    resolve_model(model)
    t0 = time.perf_counter()
    net, tokenizer = load_model(model)
    check_seqlen(net, seqlen)
    ids = calibration_segments(tokenizer, calib, nsamples, seqlen, seed, text_field)
    stream = evaluation_windows(tokenizer, text, seqlen, eval_tokens, text_field=text_field)
    bos = bos_id(tokenizer)
    used = stream.shape[0] * text_length(seqlen, bos)
    if str(device) != "cpu":
        net.to(device)  # perplexity needs the whole model there anyway: move it once, not per block and row
    _, blocks = find_blocks(net)
    # pruning changes only the blocks' linear weights: keep dense copies (host memory) to restore them per row
    linears = [lin for block in blocks for lin in block_linears(block).values()]
    dense_weights = [lin.weight.detach().to("cpu", copy=True) for lin in linears]
    dense = perplexity(net, stream, seqlen, device=device, batch_size=eval_batch_size)
    setup_minutes = (time.perf_counter() - t0) / 60
    echo(f"dense perplexity {dense:.2f} ({used} tokens; load + data + eval {setup_minutes:.1f} min)")
    result: dict[str, Any] = {
        "model": model, "calib": str(calib), "text": str(text), "blocks": len(blocks), "nsamples": nsamples,
        "seqlen": seqlen, "eval_tokens": used, "bos": bos is not None, "bos_id": bos, "device": str(device), "methods": list(methods),
        "settings": list(dict.fromkeys(label for label, _, _ in runs)), "dense_perplexity": dense, "rows": [],
        "complete": False, "minutes_total": (time.perf_counter() - t0) / 60,
    }
    if output is not None:
        atomic_write_json(output, result)
    try:
        for label, s, plain in runs:
            t = time.perf_counter()
            run = prune(net, tokenizer, settings=s, calib_ids=ids, progress=progress).log  # perplexity: below, one stream
            ppl = perplexity(net, stream, seqlen, device=device, batch_size=eval_batch_size)
            minutes = (time.perf_counter() - t) / 60
            row = {"setting": label, "method": s.method, "pattern": s.pattern, "target_sparsity": s.sparsity,
                   "sparsity": run["sparsity"], "perplexity": ppl, "ratio": ppl / dense,
                   "mean_relative_error": run["mean_relative_error"], "prune_seconds": run["seconds"],
                   "unconverged_layers": run["unconverged_layers"], "minutes": minutes, "layers": run["layers"],
                   "default_levers": plain, "sequential": s.sequential, "target": s.target,
                   "sparsity_profile": s.sparsity_profile,
                   "target_blend": s.target_blend if s.target == "dense" else None,
                   "local_search": s.local_search,
                   "polished_layers": run["polished_layers"]}
            result["rows"].append(row)
            result["minutes_total"] = (time.perf_counter() - t0) / 60
            if output is not None:
                atomic_write_json(output, result)
            echo(f"{label} {s.method}: perplexity {ppl:.2f} (× {ppl / dense:.2f}), mean rel. error "
                 f"{row['mean_relative_error']:.4f}, pruning {row['prune_seconds']:.1f} s, {minutes:.1f} min"
                 + (f", {row['unconverged_layers']} layers not converged" if row["unconverged_layers"] else ""))
            _restore(linears, dense_weights)
    finally:
        _restore(linears, dense_weights)  # the caller's model is dense again, also after a failure
    result["complete"] = True
    result["minutes_total"] = (time.perf_counter() - t0) / 60
    if output is not None:
        atomic_write_json(output, result)
    echo("")
    echo(format_table(result))
    return result


def _restore(linears: list, weights: list) -> None:
    for lin, w in zip(linears, weights):
        lin.weight.data.copy_(w)


def format_table(result: dict) -> str:
    """A Markdown table, one row per (setting, method): sparsity, perplexity (× dense), mean layer
    relative error, pruning seconds; dense first. A line above it names the levers of the rows whose
    setting carries no lever label (the defaults)."""
    lines = [
        f"{result['model']}: calibration {result['nsamples']} × {result['seqlen']} tokens ({result['calib']}), "
        f"perplexity on {result['eval_tokens']} {result['text']} tokens in windows of {result['seqlen']}",
        "",
        "| setting | method | sparsity | perplexity | × dense | mean rel. error | pruning s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        f"| — | dense | 0.00 | {result['dense_perplexity']:.2f} | 1.00 | — | — |",
    ]
    plain = [r for r in result["rows"] if r.get("default_levers")]
    if plain:
        r = plain[0]
        blend = f" blended at {r['target_blend']:g}" if r.get("target_blend") is not None else ""
        profiles = "/".join(dict.fromkeys(str(p.get("sparsity_profile")) for p in plain))
        polish = ""
        if "local_search" in r:  # results written before the polish was a default do not say
            mode = {None: "where it pays", True: "on", False: "off"}[r["local_search"]]
            polished = "/".join(dict.fromkeys(str(p["polished_layers"]) for p in plain))
            polish = f", polish {mode} ({polished} of {len(r['layers'])} layers polished)"
        lines.insert(1, f"rows without a lever label: sequential {r['sequential']}, target {r['target']}{blend}, "
                        f"sparsity profile {profiles}{polish}")
    for r in result["rows"]:
        lines.append(
            f"| {r['setting']} | {r['method']} | {r['sparsity']:.2f} | {r['perplexity']:.2f} | "
            f"{r['ratio']:.2f} | {r['mean_relative_error']:.4f} | "
            f"{r['prune_seconds']:.1f} |"
        )
    lines.append(f"\ntotal {result['minutes_total']:.1f} min")
    return "\n".join(lines)
