"""The ``layerprune`` command line: prune, eval, capture, solve, compare, demo.

    layerprune prune   --model smollm2 --method alps --sparsity 0.7 [--pattern 2:4] --calib wiki --nsamples 128 --seqlen 2048 --output DIR
    layerprune eval    --model DIR --text wiki-test [--tasks boolq,arc_easy --task-path DIR --output FILE]
    layerprune capture --model smollm2 --calib wiki --layers 0,15,29 --output problems/
    layerprune solve   problems/layer.npz --method alps --sparsity 0.8
    layerprune compare problems/ --methods alps,sparsegpt,wanda,magnitude --sparsity 0.5,0.6,0.7,0.8,0.9 --output report/
    layerprune demo    [--settings 0.5,0.7,0.8,2:4 --methods alps,sparsegpt,wanda,magnitude --device cuda --output grid.json]

Nothing is downloaded: models and text come from installed packages or local paths.
Bad inputs end with one ``layerprune: error: …`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from layerprune.extras import MissingExtraError
from layerprune.layerwise.activations import PLACES
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.levers import SEQUENTIAL, TARGETS, parse_levers
from layerprune.layerwise.settings import PruneSettings

PRUNE_DEFAULTS = PruneSettings()
LOCAL_SEARCH = {"on": True, "off": False, "auto": None}  # --local-search → PruneSettings.local_search


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: list[str] | None) -> dict:
    """``["max_iter=100", "refit=false"]`` → ``{"max_iter": 100, "refit": False}`` (values read as JSON)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LayerwiseError(f"--option needs KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LayerwiseError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one ``layerprune: error: …`` line (exit status 2), as every bad input."""

    def error(self, message: str):
        self.exit(2, f"layerprune: error: {message} (see {self.prog} --help)\n")


class HelpOptions(argparse.Action):
    """``--help-options METHOD``: print the method's options (types, defaults, docs) and exit."""

    def __call__(self, parser, namespace, values, option_string=None):
        from layerprune.solvers import options_help

        try:
            text = options_help(values)
        except ValueError as e:
            parser.exit(2, f"layerprune: error: {e}\n")
        print(text)
        parser.exit(0)


def _add_help_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--help-options", action=HelpOptions, metavar="METHOD",
                   help="list METHOD's options (for --option) with their defaults, and exit")


def _add_device(p: argparse.ArgumentParser, threads: int | None = None, device: str | None = "cpu") -> None:
    p.add_argument("--device", default=device,
                   help=f"where blocks (and evaluation) run: cpu, cuda, cuda:1 … (default {device or PRUNE_DEFAULTS.device})")
    p.add_argument("--threads", type=int, default=threads,
                   help="CPU threads for torch and BLAS (default: " + ("all" if threads is None else str(threads)) + ")")


def _add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                   help="weights and block forwards in this dtype (default: the checkpoint's own; GGUF: float32)")
    p.add_argument("--no-stream", action="store_true",
                   help="load an HF safetensors folder whole instead of reading one block at a time")


CALIB_HELP = ("calibration text: 'wiki', a text file/folder, a .jsonl/.json/.parquet file, or "
              "hf:NAME[:CONFIG[:SPLIT]] from the datasets cache (default wiki)")
TEXT_HELP = ("evaluation text: 'wiki-test', a text file/folder, a .jsonl/.json/.parquet file, or "
             "hf:NAME[:CONFIG[:SPLIT]] from the datasets cache (default wiki-test)")


def _add_local_search(p: argparse.ArgumentParser) -> None:
    default = {v: k for k, v in LOCAL_SEARCH.items()}[PRUNE_DEFAULTS.local_search]
    p.add_argument("--local-search", default=None, choices=tuple(LOCAL_SEARCH),
                   help="after each layer's method: exact local search on its support and a refit (the polish; "
                        f"auto: where the cost model says it pays; default {default})")


def _add_text_field(p: argparse.ArgumentParser, default: str | None = PRUNE_DEFAULTS.text_field) -> None:
    p.add_argument("--text-field", default=default, help="the text field/column of .jsonl/.json/.parquet and hf: "
                                                         f"sources (default {PRUNE_DEFAULTS.text_field})")


def _add_profile(p: argparse.ArgumentParser) -> None:
    """``prune``'s sparsity-profile flags (PruneSettings' sparsity_profile, owl_m, owl_lmbda, curve_*)."""
    d = PRUNE_DEFAULTS
    p.add_argument("--sparsity-profile", dest="sparsity_profile", default=None,
                   help="spread --sparsity over the layers: uniform, owl (outlier-weighted per block) or curve "
                        "(measured error curves); the model-wide count is kept exact (default: owl with the unstructured "
                        "pattern and the dense target, uniform otherwise)")
    p.add_argument("--owl-m", dest="owl_m", type=float, default=None,
                   help=f"OWL: a score is an outlier above M × the block's mean (default {d.owl_m:g})")
    p.add_argument("--owl-lmbda", dest="owl_lmbda", type=float, default=None,
                   help=f"OWL: block sparsities within s ± 2λ (default {d.owl_lmbda:g})")
    p.add_argument("--curve-offsets", dest="curve_offsets", type=_floats, default=None,
                   help="curve: the sparsities s + offset each layer's error is measured at, written "
                        "--curve-offsets=-0.1,0,0.1 (default "
                        + ",".join(f"{o:g}" for o in d.curve_offsets) + ")")
    p.add_argument("--curve-weighting", dest="curve_weighting", default=None,
                   help=f"curve: minimize the sum of relative errors weighted by 1 (relative), the layer's size (size) "
                        f"or its output energy (objective) (default {d.curve_weighting})")


PROFILE_ARGS = ("sparsity_profile", "owl_m", "owl_lmbda", "curve_offsets", "curve_weighting")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="layerprune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prune", help="prune a model block by block, evaluate it, save it")
    d = PRUNE_DEFAULTS  # every default is PruneSettings' own; None here means "not given"
    p.add_argument("--model", default=None, help="HF folder, .gguf file, or 'smollm2' (or model: in the recipe)")
    p.add_argument("--recipe", default=None, help="a YAML file of settings: method, options, sparsity, pattern, "
                                                  "targets, ignore, overrides, … (README, Recipes)")
    p.add_argument("--method", default=None, help=f"alps, sparsegpt, wanda, magnitude, … (default {d.method})")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of weights removed, in [0, 1) (implied by N:M)")
    p.add_argument("--pattern", default=None, help=f"unstructured, row, or N:M such as 2:4 (default {d.pattern})")
    p.add_argument("--calib", default=None, help=CALIB_HELP)
    p.add_argument("--nsamples", type=int, default=None, help=f"calibration segments (default {d.nsamples})")
    p.add_argument("--seqlen", type=int, default=None,
                   help=f"tokens per segment and per evaluation window (default {d.seqlen})")
    p.add_argument("--seed", type=int, default=None, help=f"calibration sampling seed (default {d.seed})")
    p.add_argument("--damping", type=float, default=None, help=f"λ = damping · mean(diag H) (default {d.damping})")
    p.add_argument("--output", required=True, help="folder for the pruned model (written atomically)")
    p.add_argument("--text", dest="eval_text", default=None,
                   help=TEXT_HELP)
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate on the first N tokens only (CPU runs)")
    _add_text_field(p, default=None)
    p.add_argument("--no-eval", action="store_true", help="skip the dense and pruned perplexity")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished block")
    p.add_argument("--log", "--run-log", dest="log", default=None,
                   help="also write the JSON run log here (--run-log under torchrun, whose own flags clash with --log)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"calibration sequences per block forward (default {d.batch_size})")
    p.add_argument("--solver-device", default=None, help="where the solver runs (default: cuda when --device is a GPU)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. max_iter=100 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--activations", default=None, choices=PLACES,
                   help="calibration activations between block forwards: on the device, in pinned host memory "
                        f"(copies overlapped), or auto: the device when they fit (default {d.activations})")
    p.add_argument("--save-format", default=None, choices=("dense", "compressed"),
                   help="dense safetensors, or the pruned layers as compressed-tensors bitmasks "
                        "(sparse-24-bitmask when all are 2:4; needs pip install 'layerprune[compressed]')")
    _add_local_search(p)
    p.add_argument("--sequential", default=None, choices=SEQUENTIAL,
                   help=f"block: every Hessian of a block from its dense weights; groups: q/k/v, o, gate/up, down in "
                        f"turn, each with the earlier ones pruned (default {d.sequential})")
    p.add_argument("--target", default=None, choices=TARGETS,
                   help=f"pruned: fit each layer on the pruned model's inputs; dense: fit a blend of the dense model's "
                        f"outputs and those (--target-blend; one more activation buffer) (default {d.target})")
    p.add_argument("--target-blend", type=float, default=None, metavar="BETA",
                   help="with --target dense: fit (1 − BETA)·the pruned inputs' outputs + BETA·the dense outputs, "
                        f"0 < BETA ≤ 1 (default {d.target_blend})")
    _add_dtype(p)
    _add_help_options(p)
    _add_device(p, device=None)
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others in a collective before it fails "
                        "(default 3600)")
    p.add_argument("--hessian-shards", type=int, default=None, metavar="N",
                   help="sum H over N shards of the calibration batches in order: one process with N reproduces "
                        "an N-process torchrun run bit for bit, with --sequential block --target pruned only "
                        "(default: one shard per process)")
    _add_profile(p)

    p = sub.add_parser("eval", help="perplexity of a model on a text and/or zero-shot tasks (lm-eval)")
    p.add_argument("--model", required=True)
    p.add_argument("--text", default=None, help=TEXT_HELP.replace("(default wiki-test)", "(default wiki-test; with "
                                                                  "--tasks alone: no perplexity)"))
    p.add_argument("--tasks", default=None,
                   help="zero-shot lm-eval tasks, e.g. boolq,arc_easy: data from the local cache only; loads the "
                        "model whole (needs pip install 'layerprune[eval]')")
    p.add_argument("--task-path", default=None, help="a folder of lm-eval YAML task configs (for --tasks)")
    p.add_argument("--limit", type=int, default=None, help="the first N documents of each task only (quick checks)")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    _add_text_field(p)
    p.add_argument("--seqlen", type=int, default=PRUNE_DEFAULTS.seqlen, help=f"window (default {PRUNE_DEFAULTS.seqlen})")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate on the first N tokens only")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    _add_dtype(p)
    _add_device(p)

    p = sub.add_parser("capture", help="save LayerProblem files of chosen blocks (dense activations)")
    p.add_argument("--model", required=True)
    d = PRUNE_DEFAULTS  # capture calibrates as prune does: the same defaults
    p.add_argument("--calib", default=d.calib, help=CALIB_HELP)
    _add_text_field(p)
    p.add_argument("--layers", required=True, help="block numbers, e.g. 0,15,29 (negatives count from the end), or all")
    p.add_argument("--output", required=True, help="folder for the .npz problem files")
    p.add_argument("--nsamples", type=int, default=d.nsamples)
    p.add_argument("--seqlen", type=int, default=d.seqlen)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sparsity", type=float, default=0.7, help="sparsity stored in the files (solve/compare override it)")
    p.add_argument("--pattern", default=d.pattern)
    p.add_argument("--damping", type=float, default=d.damping)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    _add_device(p)

    p = sub.add_parser("solve", help="solve one saved problem file and print the result")
    p.add_argument("problem", help="a .npz written by LayerProblem.save / layerprune capture")
    p.add_argument("--method", default="alps")
    p.add_argument("--sparsity", type=float, default=None, help="override the file's sparsity")
    p.add_argument("--pattern", default=None, help="override the file's pattern")
    p.add_argument("--device", default=None, help="cpu or cuda (default: GPU when CuPy sees one)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE")
    p.add_argument("--output", default=None, help="write the pruned weight and mask to this .npz")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_help_options(p)

    p = sub.add_parser("compare", help="methods × sparsities × patterns on a folder of problems (a report)")
    p.add_argument("problem_dir")
    p.add_argument("--methods", default="alps,sparsegpt,wanda,magnitude")
    p.add_argument("--sparsity", default="0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--patterns", "--pattern", dest="patterns", default="unstructured")
    p.add_argument("--output", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default=None)

    p = sub.add_parser("demo", help="prune SmolLM2 at 70%% with alps, sparsegpt, wanda on CPU; print a table "
                                    "(or several settings × methods in one run)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--methods", default="alps,sparsegpt,wanda")
    p.add_argument("--settings", default=None,
                   help="several settings in one run, e.g. 0.5,0.7,0.8,2:4 (a number: unstructured sparsity; N:M: "
                        "that pattern); each is run with each of --methods")
    p.add_argument("--sparsity", type=float, default=None, help="the one sparsity when --settings is not given (default 0.7)")
    p.add_argument("--pattern", default=None, help="the one pattern when --settings is not given (default unstructured)")
    p.add_argument("--calib", default="wiki", help=CALIB_HELP)
    p.add_argument("--text", default="wiki-test", help=TEXT_HELP)
    _add_text_field(p)
    p.add_argument("--nsamples", type=int, default=None, help="calibration segments (default 16)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per segment and window (default 512)")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluation tokens (default 8192; 0: the whole text)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per block forward (default 8)")
    p.add_argument("--eval-batch-size", type=int, default=1, help="windows per perplexity forward (default 1)")
    p.add_argument("--output", default=None, help="also write the results as JSON here (rewritten after every row)")
    p.add_argument("--levers", default=None,
                   help="rows for several levers SEQUENTIAL:TARGET[:PROFILE], e.g. block:pruned:uniform,groups:dense "
                        f"(default {PRUNE_DEFAULTS.sequential}:{PRUNE_DEFAULTS.target}; no PROFILE: the default one, owl "
                        "with unstructured and the dense target, uniform otherwise)")
    _add_local_search(p)
    p.add_argument("--quiet", action="store_true")
    _add_device(p, threads=1)  # one thread is 2-3x faster on a shared 2-core machine (layerwise/threads.py)
    return parser


# -- commands ------------------------------------------------------------------------------
PRUNE_ARGS = ("model", "method", "sparsity", "pattern", "calib", "nsamples", "seqlen", "seed", "damping", "eval_text",
              "eval_tokens", "batch_size", "solver_device", "dtype", "device", "text_field", "save_format",
              "activations")  # flags named as PruneSettings' fields


LEVER_ARGS = ("sequential", "target", "target_blend")  # layerwise.levers' flags, PruneSettings' fields too


def prune_settings_given(a: argparse.Namespace) -> dict:
    """The PruneSettings fields the command line gave (a flag left out keeps the recipe's or the default)."""
    given = {k: getattr(a, k) for k in PRUNE_ARGS + PROFILE_ARGS if getattr(a, k) is not None}
    given.update({k: getattr(a, k) for k in LEVER_ARGS if getattr(a, k) is not None})
    if a.option:
        given["options"] = parse_options(a.option)
    if getattr(a, "local_search", None) is not None:
        given["local_search"] = LOCAL_SEARCH[a.local_search]
    if a.no_stream:
        given["stream"] = False
    if a.no_eval:
        given["eval_text"] = None
    return given


def cmd_prune(a: argparse.Namespace) -> int:
    from layerprune.layerwise.distributed import DEFAULT_TIMEOUT_S, World, end_world
    from layerprune.layerwise.pipeline import run_prune

    given = prune_settings_given(a)
    if a.hessian_shards is not None:
        given["hessian_shards"] = a.hessian_shards
    # under torchrun (WORLD_SIZE > 1): the process group, once the settings are checked (every rank checks alike)
    checked = PruneSettings.build(a.recipe, **given)
    checked.validate()
    world = World.init_from_env(checked.device, a.dist_timeout or DEFAULT_TIMEOUT_S)
    try:
        rec = run_prune(given.pop("model", None), a.output, recipe=a.recipe, resume=a.resume, log=a.log,
                        progress=not a.quiet, **given)
    finally:
        end_world()
    if not world.is_main:
        return 0
    line = (f"pruned {len(rec['layers'])} layers to sparsity {rec['sparsity']:.4f} ({rec['pattern']}, "
            f"{rec['sparsity_profile']} profile) with {rec['method']}")
    line += f", mean relative error {rec['mean_relative_error']:.4g}, {rec['seconds_total'] / 60:.1f} min"
    if rec.get("unconverged_layers"):
        line += f"; {rec['unconverged_layers']} layers did not converge (see 'status' in the run log)"
    print(line)
    if "perplexity" in rec:
        print(f"perplexity {rec['perplexity']:.3f} (dense {rec['dense_perplexity']:.3f}) on {rec['eval_tokens_used']} tokens")
    print(f"saved to {a.output}" + (f" ({rec['save_format']})" if rec.get("save_format", "dense") != "dense" else ""))
    if rec.get("sparsity_plot"):
        print(f"per-layer sparsity ({rec['sparsity_profile']}): {rec['sparsity_plot']}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from layerprune.layerwise.pipeline import run_eval
    from layerprune.layerwise.zeroshot import format_task_table

    text = a.text if a.text is not None or a.tasks is not None else "wiki-test"
    r = run_eval(a.model, text, seqlen=a.seqlen, max_tokens=a.max_tokens, device=a.device,
                 batch_size=a.batch_size, dtype=a.dtype, stream=not a.no_stream, text_field=a.text_field, tasks=a.tasks,
                 task_path=a.task_path, limit=a.limit, output=a.output, progress=not a.quiet)
    if "perplexity" in r:
        print(f"perplexity {r['perplexity']:.3f} on {r['tokens']} tokens of {r['text']} (windows of {r['seqlen']})")
    if "zeroshot" in r:
        print(format_task_table(r["zeroshot"]["rows"]))
    if a.output:
        print(f"results written to {a.output}")
    return 0


def cmd_capture(a: argparse.Namespace) -> int:
    from layerprune.layerwise.capture import capture_problems
    from layerprune.layerwise.data import calibration_segments
    from layerprune.layerwise.driver import check_seqlen
    from layerprune.layerwise.models import load_model, resolve_model

    check_capture_args(a)
    resolve_model(a.model)
    model, tokenizer = load_model(a.model)
    check_seqlen(model, a.seqlen)
    ids = calibration_segments(tokenizer, a.calib, a.nsamples, a.seqlen, a.seed, a.text_field)
    paths = capture_problems(model, ids, a.layers, a.output, sparsity=a.sparsity, pattern=a.pattern,
                             damping=a.damping, device=a.device, batch_size=a.batch_size)
    print(f"wrote {len(paths)} problem files to {a.output}")
    return 0


def check_capture_args(a: argparse.Namespace) -> None:
    """``layerprune capture``'s arguments, before the model loads."""
    from layerprune.layerwise.capture import block_numbers
    from layerprune.layerwise.checks import check_at_least, check_fraction, check_output_folder, check_torch_device
    from layerprune.layerwise.data import check_text_source

    check_at_least("nsamples", a.nsamples, 1)
    check_at_least("seqlen", a.seqlen, 2)
    check_at_least("damping", a.damping, 0)
    check_at_least("batch_size", a.batch_size, 1)
    _pattern(a.pattern)
    check_fraction("sparsity", a.sparsity)
    block_numbers(a.layers)
    check_torch_device(a.device, "--device")
    check_text_source(a.calib, "--calib", a.text_field)
    check_output_folder(a.output, "--output")


def _pattern(text: str):
    from layerprune.problems import parse_pattern

    try:
        return parse_pattern(text)
    except ValueError as e:
        raise LayerwiseError(f"--pattern {text}: {e}") from None


def cmd_solve(a: argparse.Namespace) -> int:
    import numpy as np

    from layerprune import LayerProblem, solve
    from layerprune.layerwise.checks import check_fraction, check_output_file, check_solver_device
    from layerprune.problems.files import inspect_problem_file
    from layerprune.solvers import check_options

    options = parse_options(a.option)
    check_options(a.method, options)
    check_fraction("sparsity", a.sparsity)
    if a.pattern is not None:
        _pattern(a.pattern)
    device = check_solver_device(a.device, "--device")
    check_output_file(a.output, "--output")
    inspect_problem_file(a.problem)
    try:
        problem = LayerProblem.load(a.problem, sparsity=a.sparsity, pattern=a.pattern)
    except ValueError as e:  # a bad array (NaN, not PSD) or a pattern the layer cannot take
        raise LayerwiseError(f"{a.problem}: {e}") from None
    r = solve(problem, a.method, device=device, **options)
    summary = {
        "problem": a.problem, "name": problem.name, "shape": list(problem.shape), "method": r.method,
        "pattern": r.pattern, "target_sparsity": problem.sparsity, "sparsity": r.sparsity,
        "objective": r.objective, "relative_error": r.relative_error, "seconds": r.seconds,
        "iterations": r.iterations, "device": r.device, "success": r.success, "status": r.status,
        "message": r.message,
    }
    if a.output:
        from layerprune.problems.atomic import atomic_write

        out = a.output if a.output.endswith(".npz") else a.output + ".npz"  # as np.savez names it
        atomic_write(out, lambda p: np.savez(p, weight=r.weight, mask=r.mask, summary=np.array(json.dumps(summary))))
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        print(repr(problem))
        print(f"{r.method}: relative error {r.relative_error:.6g}, objective {r.objective:.6g}, sparsity {r.sparsity:.4f}, "
              f"{r.seconds:.3f} s, {r.iterations} iterations on {r.device} ({r.message})"
              + ("" if r.success else f" [not converged: status {r.status}]"))
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    if not os.path.isdir(a.problem_dir):
        raise LayerwiseError(f"problem folder {a.problem_dir!r} does not exist")
    try:
        from layerprune.reports import compare_problems
    except ImportError as e:
        raise LayerwiseError(f"the comparison report (layerprune.reports.compare_problems) is not available: {e}") from e
    from layerprune.layerwise.checks import check_fraction

    sparsities = _floats(a.sparsity)
    for s in sparsities:
        check_fraction("sparsity", s, optional=False)
    from layerprune.problems.locks import LockError

    try:
        compare_problems(a.problem_dir, _names(a.methods), sparsities, _names(a.patterns), a.output,
                         resume=a.resume, device=a.device)
    except LockError as e:
        raise LayerwiseError(str(e)) from e
    print(f"report written to {a.output}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from layerprune.layerwise.pipeline import DEMO_DEFAULTS, run_demo

    if a.settings is not None and (a.sparsity is not None or a.pattern is not None):
        raise LayerwiseError("give either --settings or --sparsity/--pattern, not both")
    pattern = a.pattern or "unstructured"
    sparsity = a.sparsity if a.sparsity is not None or ":" in pattern else 0.7
    eval_tokens = DEMO_DEFAULTS["eval_tokens"] if a.eval_tokens is None else (a.eval_tokens or None)
    run_demo(
        a.model, tuple(_names(a.methods)), settings=a.settings, sparsity=sparsity, pattern=pattern, calib=a.calib,
        text=a.text, nsamples=DEMO_DEFAULTS["nsamples"] if a.nsamples is None else a.nsamples,
        seqlen=DEMO_DEFAULTS["seqlen"] if a.seqlen is None else a.seqlen,
        eval_tokens=eval_tokens, device=a.device, batch_size=a.batch_size, eval_batch_size=a.eval_batch_size,
        text_field=a.text_field, output=a.output, progress=not a.quiet,
        levers=None if a.levers is None else parse_levers(a.levers),
        **({} if a.local_search is None else {"local_search": LOCAL_SEARCH[a.local_search]}),
    )
    return 0


# Bad inputs, raised where the input is checked: LayerwiseError and OptionError are ValueErrors; the
# OS errors are a user's paths (missing, a file where a folder is needed, no permission); a
# MissingExtraError (an ImportError) names the pip command of a missing optional extra.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               MissingExtraError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


COMMANDS = {"prune": cmd_prune, "eval": cmd_eval, "capture": cmd_capture, "solve": cmd_solve,
            "compare": cmd_compare, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``layerprune`` console script; returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, ever
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse's own errors (one line, see Parser), --help, --help-options
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    from layerprune.layerwise.threads import limit_threads

    try:
        with limit_threads(getattr(args, "threads", None)):
            return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"layerprune: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (run the same command with --resume to continue)" if args.command in ("prune", "compare") else ""
        print(f"layerprune: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
