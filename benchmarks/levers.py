"""Which of issue 12's levers lower SmolLM2's perplexity, alone and together, and at what cost in seconds?

Every (lever, method, setting) row prunes the same in-memory model (its dense weights restored between
rows) on the same calibration ids and is scored on the same evaluation windows; the model load, the
data and the dense perplexity are shared by the rows of one process.

    python benchmarks/levers.py --model smollm2 --methods alps,sparsegpt --settings 0.5,0.7,0.8,2:4 \\
        --levers base,groups,dense,owl,curve,polish,all --device cuda --output levers.json [--shard 0/4]

A lever ``dense@0.25`` is the dense target blended: each layer fits 0.75·X_p Ŵᵀ + 0.25·X_d Ŵᵀ.
``polish`` runs the local search after every layer, ``auto`` where its cost model lets it
(``solvers.polish.POLISH_BUDGET``). ``slow`` is an ALPS option, not a pipeline setting (ρ raised by
1.1 / 1.05 / 1.02 per check instead of the published 1.3 / 1.2 / 1.1, ``max_iter=1000``): other
methods' rows skip a lever that names it.

``--shard I/N`` runs rows I, I+N, I+2N, … (several processes can share one GPU: SmolLM2's layers are
too small to fill it); ``--output`` is rewritten after every row and rows already in it are skipped, so a
run cut short continues where it stopped. ``--table A.json B.json …`` prints the table of finished rows
(perplexity and pruning seconds per lever, for each method and setting). A lever that names a sparsity
profile runs without it at N:M settings (those stay uniform); a row that makes a copy of an earlier row of the same
method and setting (``groups+dense+owl`` after ``groups+dense`` at 2:4) or of the base row is skipped, with a
line saying so (the first name listed keeps the row). Shards take rows by position in the plan after those skips,
so resume a sharded run with the code that planned it (other code can hand a shard rows another shard's file
already holds). Seconds from processes sharing a GPU are inflated by the sharing: compare them within one run only.

``--checkpoints DIR`` gives each row a per-block checkpoint folder under DIR (``prune(checkpoint=…)``; default
OUTPUT.ckpt beside ``--output``, none without it; ``--checkpoints off``: none), so a row longer than one process's
time (the polish, the curve profile) continues from its last finished block when the same command runs again; a
row's folder is removed once the row is recorded. Its pruning seconds are then the sum over the processes that ran it.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

from variants import VARIANTS

# each lever: the PruneSettings fields it sets on top of ``BASE`` (the pipeline before issue 12), so a row
# means the same whatever PruneSettings' defaults are; ``all`` is every lever at once
BASE = {"sequential": "block", "target": "pruned", "sparsity_profile": "uniform", "local_search": False}
LEVERS: dict[str, dict] = {
    "base": {},
    "groups": {"sequential": "groups"},
    "dense": {"target": "dense", "target_blend": 0.25},
    "owl": {"sparsity_profile": "owl"},
    "curve": {"sparsity_profile": "curve"},
    "polish": {"local_search": True},
    "auto": {"local_search": None},  # the polish where solvers.polish's cost model says it pays
    "slow": {"options": VARIANTS["alps-slow"][1]},  # ALPS only (other methods' rows skip it): a slower ρ schedule
}
OPTION_METHODS = {"slow": VARIANTS["alps-slow"][0]}  # levers that set a method's options, and that method
LEVERS["all"] = {**LEVERS["groups"], **LEVERS["dense"], **LEVERS["owl"], **LEVERS["polish"]}  # OWL: the cheaper profile


def lever_fields(names: str) -> dict:
    """The fields of one lever name or of several joined by '+' (e.g. ``groups+dense``) over ``BASE``;
    ``dense@B`` is the dense target blended with weight B (``target_blend``; ``dense``: 0.25)."""
    fields: dict = dict(BASE)
    for name in names.split("+"):
        base, _, blend = name.partition("@")
        if base not in LEVERS or (blend and base != "dense"):
            sys.exit(f"levers.py: unknown lever {name!r}; the levers are {', '.join(LEVERS)} and dense@BLEND")
        fields.update(copy.deepcopy(LEVERS[base]))  # a copy: the options dict is per row
        if blend:
            try:
                fields["target_blend"] = float(blend)
            except ValueError:
                sys.exit(f"levers.py: {name!r}: the blend after '@' must be a number in (0, 1]")
    return fields


def plan_rows(methods: str, settings: str, levers: str) -> tuple[list[tuple], list[str]]:
    """The rows (lever, method, sparsity, pattern, fields) in the order given (methods, then settings, then
    levers), and a line per row skipped: at N:M a profile falls back to uniform (``profile_at``), so a lever
    can come out as a copy of an earlier row of the same method and setting, or of the base row."""
    from layerprune.layerwise.allocation import profile_at
    from layerprune.layerwise.pipeline import parse_settings, setting_label

    plan, skipped = [], []
    for method in methods.split(","):
        for sparsity, pattern in parse_settings(settings):
            planned: dict[str, dict] = {}  # lever name → fields, this method and setting
            for lever in levers.split(","):
                only = {OPTION_METHODS[n] for n in lever.split("+") if n in OPTION_METHODS}
                if only and only != {method}:
                    skipped.append(f"{lever} {method} {setting_label(sparsity, pattern)}: {', '.join(sorted(only))} "
                                   "only, skipped")
                    continue
                fields = lever_fields(lever)
                fields["sparsity_profile"] = profile_at(fields["sparsity_profile"], pattern)  # N:M stays uniform
                same = next((name for name, f in planned.items() if f == fields), None)
                if same is None and lever != "base" and fields == BASE:
                    same = "base"
                if same is not None:
                    skipped.append(f"{lever} {method} {setting_label(sparsity, pattern)}: the same fields as {same}, skipped")
                    continue
                planned[lever] = fields
                plan.append((lever, method, sparsity, pattern, fields))
    return plan, skipped


def checkpoint_folder(checkpoints: str | None, output: str | None) -> Path | None:
    """Where the rows' block checkpoints go: ``checkpoints``, else OUTPUT.ckpt beside ``output`` (so a row cut
    short by a time limit resumes by default), else none; ``off`` turns them off."""
    if checkpoints == "off":
        return None
    if checkpoints:
        return Path(checkpoints)
    return Path(f"{output}.ckpt") if output else None


def row_key(row: dict) -> tuple:
    """A row's identity: its lever name, method and setting, and the settings fields the name stood for
    (so a file written when a name meant other fields is not taken as done)."""
    return row["lever"], row["method"], row["setting"], json.dumps(row["fields"], sort_keys=True)


def run_fields(a) -> dict:
    """What an output file's rows and its dense perplexity depend on, beside the rows' own settings."""
    return {"model": a.model, "calib": a.calib, "text": a.text, "nsamples": a.nsamples, "seqlen": a.seqlen,
            "eval_tokens": a.eval_tokens, "device": a.device}


def check_same_run(result: dict, fields: dict, output: str | None) -> None:
    """SystemExit naming the difference when ``output``'s file (``result``) was written by another run;
    fields the file does not record (older files) are not compared."""
    differ = [f"{k} {result[k]!r} there, {v!r} here" for k, v in fields.items() if k in result and result[k] != v]
    if differ:
        raise SystemExit(f"{output} was written by another run ({'; '.join(differ)}): give another --output")


def load_rows(paths) -> list[dict]:
    rows = []
    for p in paths:
        if Path(p).is_file():
            rows += json.loads(Path(p).read_text()).get("rows", [])
    return rows


def print_table(rows: list[dict], dense: float | None = None) -> None:
    levers = list(dict.fromkeys(r["lever"] for r in rows))
    if dense is not None:
        print(f"dense perplexity {dense:.3f}")
    print("| method | setting | " + " | ".join(levers) + " |")
    print("| --- | --- |" + " ---: |" * len(levers))
    by = {row_key(r)[:3]: r for r in rows}  # one row per cell: the last file's
    for method in dict.fromkeys(r["method"] for r in rows):
        for setting in dict.fromkeys(r["setting"] for r in rows):
            cells = []
            for lever in levers:
                r = by.get((lever, method, setting))
                cells.append("—" if r is None else f"{r['perplexity']:.2f} ({r['prune_seconds']:.0f} s)")
            print(f"| {method} | {setting} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", default="alps,sparsegpt")
    ap.add_argument("--settings", default="0.5,0.7,0.8,2:4")
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--calib", default="wiki")
    ap.add_argument("--text", default="wiki-test")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=0, help="0: the whole evaluation text")
    ap.add_argument("--eval-batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--output", default=None)
    ap.add_argument("--checkpoints", default=None,
                    help="a folder for per-row block checkpoints, so long rows resume (default OUTPUT.ckpt; off: none)")
    ap.add_argument("--table", nargs="*", default=None, help="print the table of these output files and stop")
    a = ap.parse_args()
    if a.table is not None:
        print_table(load_rows(a.table))
        return

    from layerprune.layerwise.api import prune
    from layerprune.layerwise.data import calibration_segments, evaluation_windows
    from layerprune.layerwise.driver import Checkpoint
    from layerprune.layerwise.models import block_linears, find_blocks, load_model
    from layerprune.layerwise.perplexity import perplexity
    from layerprune.layerwise.pipeline import setting_label
    from layerprune.layerwise.settings import PruneSettings
    from layerprune.problems.atomic import atomic_write_json

    checkpoints = checkpoint_folder(a.checkpoints, a.output)
    shard, shards = map(int, a.shard.split("/"))
    plan, skipped = plan_rows(a.methods, a.settings, a.levers)
    for line in skipped:
        print(line, flush=True)
    plan = plan[shard::shards]
    done = {row_key(r) for r in load_rows([a.output] if a.output else [])}
    result = json.loads(Path(a.output).read_text()) if a.output and Path(a.output).is_file() else {"rows": []}
    check_same_run(result, run_fields(a), a.output)

    t0 = time.perf_counter()
    net, tokenizer = load_model(a.model)
    ids = calibration_segments(tokenizer, a.calib, a.nsamples, a.seqlen, 0)
    windows = evaluation_windows(tokenizer, a.text, a.seqlen, a.eval_tokens or None)
    net.to(a.device)
    _, blocks = find_blocks(net)
    linears = [lin for block in blocks for lin in block_linears(block).values()]
    dense_weights = [lin.weight.detach().to("cpu", copy=True) for lin in linears]
    # older files lack calib / text / eval_tokens: their window count still tells another text apart
    check_same_run(result, {"eval_windows": int(windows.shape[0])}, a.output)
    dense = result.get("dense_perplexity") or perplexity(net, windows, a.seqlen, device=a.device,
                                                         batch_size=a.eval_batch_size)
    result.update(run_fields(a), eval_windows=int(windows.shape[0]), dense_perplexity=dense)
    if a.output:  # so a process cut off before its first row does not evaluate the dense model again
        atomic_write_json(a.output, result)
    print(f"dense perplexity {dense:.3f}; setup {time.perf_counter() - t0:.0f} s; {len(plan)} rows in this shard",
          flush=True)
    for lever, method, sparsity, pattern, fields in plan:
        s = PruneSettings(method=method, sparsity=sparsity, pattern=pattern, device=a.device, nsamples=a.nsamples,
                          seqlen=a.seqlen, eval_text=None, **fields)
        s.validate()
        setting = setting_label(s.sparsity, s.pattern)
        if (lever, method, setting, json.dumps(fields, sort_keys=True)) in done:
            continue
        ckpt = checkpoints / re.sub(r"[^A-Za-z0-9.@+-]+", "_", f"{lever}-{method}-{setting}") if checkpoints else None
        log = prune(net, tokenizer, settings=s, calib_ids=ids, progress=False, checkpoint=ckpt,
                    resume=ckpt is not None and Checkpoint(ckpt).exists()).log
        ppl = perplexity(net, windows, a.seqlen, device=a.device, batch_size=a.eval_batch_size)
        row = {"lever": lever, "method": method, "setting": setting, "fields": fields, "perplexity": ppl,
               "sparsity": log["sparsity"], "mean_relative_error": log["mean_relative_error"],
               "prune_seconds": log["seconds"], "unconverged_layers": log["unconverged_layers"],
               "layer_sparsity": [e["sparsity"] for e in log["layers"]],
               "polished_layers": log["polished_layers"], "polish_seconds": log["polish_seconds"],
               "layer_polish_seconds": [e.get("polish_seconds", 0.0) for e in log["layers"]]}
        result["rows"].append(row)
        if a.output:
            atomic_write_json(a.output, result)
        if ckpt is not None:
            Checkpoint(ckpt).remove()  # state.json first: a kill half-way leaves nothing resumable
        print(f"{lever} {method} {setting}: perplexity {ppl:.3f}, sparsity {row['sparsity']:.4f}, "
              f"mean rel. error {row['mean_relative_error']:.4f}, {row['prune_seconds']:.1f} s "
              f"({row['polished_layers']} layers polished in {row['polish_seconds']:.1f} s)", flush=True)
        with __import__("torch").no_grad():
            for lin, w in zip(linears, dense_weights):
                lin.weight.copy_(w)
    if checkpoints is not None and checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # every row recorded: nothing left to resume
    print_table(result["rows"], dense)


if __name__ == "__main__":
    main()
