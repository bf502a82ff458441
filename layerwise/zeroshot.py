"""Zero-shot tasks (BoolQ, ARC, HellaSwag, …) through lm-evaluation-harness, offline, in-process.

    manager = check_tasks(["boolq", "arc_easy"])         # before the model loads: known, data cached
    scores = evaluate_tasks(model, tokenizer, ["boolq", "arc_easy"], manager=manager)
    print(format_task_table(scores["rows"]))

The harness (``lm-eval``, the ``eval`` extra) runs on the model already in memory
(``HFLM(pretrained=model, tokenizer=tokenizer)``), 0-shot. Task data comes from the local
Hugging Face cache only (``HF_DATASETS_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` unless the caller set
them); a task whose data is not there is a :class:`LayerwiseError` naming the command that
fetches it. ``task_path`` folders of YAML task configs go to ``TaskManager(include_path=...)``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerprune.extras import require
from layerprune.layerwise.errors import LayerwiseError

NUM_FEWSHOT = 0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def load_harness() -> Any:
    """The ``lm_eval`` module, imported with the Hugging Face caches offline (unless the caller chose
    otherwise); :class:`~layerprune.extras.MissingExtraError` naming the ``eval`` extra when it is not
    installed or does not import."""
    for name in OFFLINE_VARIABLES:  # read once, when datasets / huggingface_hub are first imported
        os.environ.setdefault(name, "1")
    lm_eval = require("lm_eval", "eval", "lm-eval")
    require("lm_eval.tasks", "eval", "lm-eval")  # imports datasets: where a mismatched install shows
    return lm_eval


def harness_version() -> str:
    """The installed lm-eval version."""
    from importlib.metadata import version

    return version("lm_eval")


def fetch_command(name: str, task_path: str | os.PathLike | None = None) -> str:
    """The one command that puts task ``name``'s data into the local cache (downloads on)."""
    include = "" if task_path is None else f"include_path={os.fspath(task_path)!r}"
    return (f"HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 python -c \"from lm_eval.tasks import TaskManager; "
            f"TaskManager({include}).load([{name!r}])\"")


def task_names(names: str | Sequence[str]) -> list[str]:
    """``"boolq,arc_easy"`` or a list of names → the list of names."""
    items = names.split(",") if isinstance(names, str) else list(names)
    return [n.strip() for n in items if n.strip()]


def check_tasks(names: str | Sequence[str], task_path: str | os.PathLike | None = None) -> Any:
    """Every task is one lm-eval knows (built in, or a YAML config under ``task_path``) and its data
    loads offline; returns the ``TaskManager`` for :func:`evaluate_tasks`. Runs before the model loads."""
    names = task_names(names)
    if not names:
        raise LayerwiseError("--tasks names no task (give e.g. --tasks boolq,arc_easy)")
    if task_path is not None and not Path(task_path).is_dir():
        raise LayerwiseError(f"--task-path {os.fspath(task_path)!r} is not a folder (of lm-eval YAML task configs)")
    load_harness()
    with quiet_harness(True):
        manager = task_manager(None if task_path is None else str(Path(task_path).resolve()))
        known = set(manager.all_tasks)
        for name in names:
            is_yaml = Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()
            if name not in known and not is_yaml:
                raise LayerwiseError(
                    f"unknown task {name!r}: not an lm-eval task, group or tag (list them with: lm-eval ls tasks"
                    + ("" if task_path is not None else "; local YAML task configs: --task-path DIR") + ")")
            try:
                manager.load([name])  # builds the task, which reads its data from the local cache
            except OSError as e:  # datasets' ConnectionError (offline) or FileNotFoundError (not cached)
                raise LayerwiseError(
                    f"task {name!r}: its data is not in the local cache and downloads are off "
                    f"({_short(e)}); fetch it once with:  {fetch_command(name, task_path)}") from e
            except (KeyError, ValueError, TypeError) as e:
                raise LayerwiseError(f"task {name!r} cannot be loaded: {_short(e)}") from e
    return manager


@functools.lru_cache(maxsize=4)
def task_manager(task_path: str | None = None) -> Any:
    """lm-eval's ``TaskManager`` over its built-in tasks and ``task_path``'s YAML configs; built once per
    process and folder (indexing the ~15,000 built-in configs takes about 15 s)."""
    load_harness()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=task_path)


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def quiet_harness(quiet: bool):
    """lm-eval's info and warning logs off for the body when ``quiet`` (restored after)."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def evaluate_tasks(model: Any, tokenizer: Any, names: str | Sequence[str], *, manager: Any = None,
                   task_path: str | os.PathLike | None = None, batch_size: int = 1, device: str = "cpu",
                   limit: int | None = None, progress: bool = True) -> dict:
    """Score a whole (not streamed) transformers model on lm-eval tasks, 0-shot.

    manager : the ``TaskManager`` of :func:`check_tasks` (built here from ``task_path`` when None).
    limit : the first ``limit`` documents of each task only (quick checks; not comparable scores).
    Returns ``{"tasks", "num_fewshot", "limit", "lm_eval_version", "samples", "rows"}``; each row
    ``{"task", "metric", "value", "stderr"}`` (stderr None where lm-eval gives none).
    """
    names = task_names(names)
    if manager is None:
        manager = check_tasks(names, task_path)
    if getattr(model, "layerprune_store", None) is not None:
        raise LayerwiseError("zero-shot tasks need the whole model in memory; open it with stream=False")
    lm_eval = load_harness()
    from lm_eval.models.huggingface import HFLM

    model.eval().to(device)
    with quiet_harness(not progress):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
        out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=NUM_FEWSHOT, limit=limit,
                                      task_manager=manager, log_samples=False)
    results = (out or {}).get("results", {})
    return {
        "tasks": names, "num_fewshot": NUM_FEWSHOT, "limit": limit, "lm_eval_version": harness_version(),
        "samples": {task: n.get("effective", n.get("original")) if isinstance(n, dict) else n
                    for task, n in (out or {}).get("n-samples", {}).items()},
        "rows": task_rows(results),
    }


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def task_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval's ``results`` ({task: {"acc,none": v, "acc_stderr,none": s, …}}) → rows of
    (task, metric, value, stderr); a filter other than ``none`` is named after the metric."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            metric, sep, filt = key.partition(",")
            if not sep or "_stderr" in metric or _number(value) is None:
                continue
            rows.append({"task": task, "metric": metric if filt == "none" else f"{metric} ({filt})",
                         "value": _number(value), "stderr": _number(metrics.get(f"{metric}_stderr,{filt}"))})
    return rows


def format_task_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: task, metric, value, stderr."""
    lines = ["| task | metric | value | stderr |", "| --- | --- | ---: | ---: |"]
    for r in rows:
        stderr = "—" if r["stderr"] is None else f"{r['stderr']:.4f}"
        lines.append(f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {stderr} |")
    return "\n".join(lines)
