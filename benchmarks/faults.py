"""Fault injection: SIGKILL ``layerprune prune``, ``capture`` and ``compare`` at many points, resume, check.

    python benchmarks/faults.py [--random 8] [--seed 0] [--keep DIR]

On a tiny random Llama model (4 blocks, hidden 32, a byte-level tokenizer) saved to a temporary
folder, with a generated text, so it runs on a CPU in minutes. For each command:

1. an uninterrupted reference run, and a *previous good output* made with other arguments
   (prune: sparsity 0.6; capture: seed 1; compare: the reference report itself);
2. per kill point, in a fresh folder holding a copy of the previous good output: the command
   is started over it and killed with SIGKILL, either after a random delay (uniform over
   20–100 % of the reference run's wall time) or by itself at a chosen write through the
   ``LAYERPRUNE_FAULT_AT`` hook of ``layerprune.problems.atomic`` (during checkpoint writes,
   the final folder swap, CSV appends, report files); a run that ends before its delay is
   started again with a delay drawn from its own wall time (at most three times);
3. right after the kill: the output must be the previous one intact or the new one complete
   (prune: the model's tensors equal the old or the reference's; capture and compare: every
   file loads and equals the old or the reference's version, or for compare's working folder
   is a complete file);
4. the run is resumed (prune ``--resume``, compare ``--resume``, capture run again) and the
   result must be bit-identical to the reference (prune: every tensor, the perplexities and
   the per-layer log without seconds; capture: every array of every file; compare: every
   number of results.csv but the seconds, and every saved weight), with no temporary file
   or folder (``*.tmp*``, ``.<name>.<pid>.…``), lock or checkpoint left in the output or its parent.

Prints one table row per command: kill points, killed (SIGKILL arrived before the run ended),
output survived, bit-identical after resume, temporary files left.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CLI = [sys.executable, "-m", "layerprune.layerwise.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("LAYERPRUNE_FAULT_AT", None)


# -- the commands -----------------------------------------------------------------------------------
def prune_args(base: pathlib.Path, out: pathlib.Path, sparsity: str = "0.5") -> list[str]:
    return ["prune", "--model", str(base / "tiny"), "--calib", str(base / "text.txt"), "--text", str(base / "text.txt"),
            "--method", "sparsegpt", "--sparsity", sparsity, "--nsamples", "8", "--seqlen", "32",
            "--eval-tokens", "2048", "--threads", "1", "--quiet", "--output", str(out)]


def capture_args(base: pathlib.Path, out: pathlib.Path, seed: str = "0") -> list[str]:
    return ["capture", "--model", str(base / "tiny"), "--calib", str(base / "text.txt"), "--layers", "all",
            "--nsamples", "8", "--seqlen", "32", "--seed", seed, "--threads", "1", "--output", str(out)]


def compare_args(base: pathlib.Path, out: pathlib.Path) -> list[str]:
    return ["compare", str(base / "compare_problems"), "--methods", "magnitude,wanda,sparsegpt", "--sparsity", "0.5,0.7",
            "--device", "cpu", "--output", str(out)]


COMMANDS = {
    "prune": dict(args=prune_args, resume=["--resume"],
                  hooks=["replace:state.json#1", "replace:state.json#3", "replace:block_0001.safetensors",
                         "replace:block_0003.safetensors", "replace:layerprune_run.json", "folder:out"]),
    "capture": dict(args=capture_args, resume=[],
                    hooks=["replace:block00.self_attn.q_proj.npz", "replace:block01.mlp.up_proj.npz",
                           "replace:block02.*#4", "replace:block03.*#6", "replace:*.npz#12", "replace:*.npz#27"]),
    "compare": dict(args=compare_args, resume=["--resume"],
                    hooks=["replace:results.csv#1", "replace:results.csv#6", "replace:*__sparsegpt.npz#3",
                           "replace:*.png#2", "replace:report.md", "replace:report.html"]),
}


def run(args: list[str], env_extra: dict | None = None, kill_after: float | None = None,
        log: pathlib.Path | None = None) -> tuple[int, float]:
    """Run the CLI; SIGKILL it after ``kill_after`` seconds. Returns (exit status, seconds)."""
    env = {**ENV, **(env_extra or {})}
    t0 = time.perf_counter()
    with open(log or os.devnull, "ab") as f:
        p = subprocess.Popen(CLI + args, env=env, stdout=f, stderr=f, cwd=ROOT)
        try:
            rc = p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            rc = p.wait()
    return rc, time.perf_counter() - t0


# -- comparing outputs ------------------------------------------------------------------------------
def _npz(path: pathlib.Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k].copy() for k in f.files}


def _same_arrays(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def _tensors(folder: pathlib.Path) -> dict | None:
    from safetensors.numpy import load_file

    try:
        index = folder / "model.safetensors.index.json"
        if not index.exists():
            return load_file(str(folder / "model.safetensors"))
        out: dict = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):  # the shards as indexed
            out.update(load_file(str(folder / shard)))
        return out
    except Exception:  # noqa: BLE001 - missing or torn: not a complete output
        return None


def prune_state(out: pathlib.Path, old: pathlib.Path, ref: pathlib.Path) -> bool:
    """The output is the previous model intact or the new one complete."""
    t = _tensors(out)
    if t is None:
        return False
    try:
        json.loads((out / "layerprune_run.json").read_text())
    except (OSError, ValueError):
        return False
    return any(_same_arrays(t, _tensors(x)) for x in (old, ref))


def prune_identical(out: pathlib.Path, ref: pathlib.Path) -> bool:
    t = _tensors(out)
    if t is None or not _same_arrays(t, _tensors(ref)):
        return False
    a, b = (json.loads((p / "layerprune_run.json").read_text()) for p in (out, ref))
    strip = lambda log: [{k: v for k, v in e.items() if k != "seconds"} for e in log["layers"]]  # noqa: E731
    return (a["perplexity"] == b["perplexity"] and a["dense_perplexity"] == b["dense_perplexity"]
            and strip(a) == strip(b))


def _files(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not _is_temp(p.name))


def capture_state(out: pathlib.Path, old: pathlib.Path, ref: pathlib.Path) -> bool:
    """Every problem file there loads and is the old version or the new one."""
    for name in _files(out):
        try:
            got = _npz(out / name)
        except Exception:  # noqa: BLE001
            return False
        if not any((x / name).exists() and _same_arrays(got, _npz(x / name)) for x in (old, ref)):
            return False
    return True


def capture_identical(out: pathlib.Path, ref: pathlib.Path) -> bool:
    return _files(out) == _files(ref) and all(_same_arrays(_npz(out / n), _npz(ref / n)) for n in _files(ref))


NOT_COMPARED = {"seconds", "bound_seconds"}


def _rows(path: pathlib.Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["problem"], r["pattern"], r["sparsity"], r["method"]): {k: v for k, v in r.items() if k not in NOT_COMPARED}
            for r in rows}


def _complete_file(path: pathlib.Path) -> bool:
    try:
        if path.suffix == ".npz":
            _npz(path)
        elif path.suffix == ".png":
            return path.read_bytes().endswith(b"IEND\xaeB`\x82")
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            return bool(rows) and rows[0][0] == "problem" and all(len(r) == len(rows[0]) for r in rows)
        elif path.suffix == ".html":
            return path.read_text().rstrip().endswith("</html>")
        else:
            path.read_text()
    except Exception:  # noqa: BLE001
        return False
    return True


def compare_state(out: pathlib.Path, old: pathlib.Path, ref: pathlib.Path) -> bool:
    """compare's output is a working folder (resume reads it); every file in it must be complete."""
    return all(_complete_file(out / n) for n in _files(out))


def compare_identical(out: pathlib.Path, ref: pathlib.Path) -> bool:
    if _files(out) != _files(ref) or _rows(out / "results.csv") != _rows(ref / "results.csv"):
        return False
    return all(_same_arrays(_npz(out / n), _npz(ref / n)) for n in _files(ref) if n.startswith("weights/"))


CHECKS = {"prune": (prune_state, prune_identical), "capture": (capture_state, capture_identical),
          "compare": (compare_state, compare_identical)}


def _is_temp(name: str) -> bool:
    from layerprune.problems.atomic import is_temp_name

    return is_temp_name(name) or ".tmp" in name


def leftovers(parent: pathlib.Path, out_name: str) -> list[str]:
    """Temporary files/folders, locks and checkpoints left in the output's parent or inside it."""
    left = [p.name for p in parent.iterdir() if p.name not in (out_name, "old")]
    out = parent / out_name
    if out.is_dir():
        left += [str(p.relative_to(parent)) for p in out.rglob("*") if _is_temp(p.name)]
    return left


# -- the experiment --------------------------------------------------------------------------------------
def build_inputs(base: pathlib.Path) -> None:
    from layerwise_tiny import byte_tokenizer, tiny_model, tiny_text

    from layerprune.layerwise.models import save_model

    save_model(tiny_model("llama", layers=4), byte_tokenizer(), base / "tiny")
    (base / "text.txt").write_text(tiny_text(6000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--random", type=int, default=8, help="random-delay kill points per command (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", default="prune,capture,compare")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    base = pathlib.Path(a.keep or tempfile.mkdtemp(prefix="layerprune-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    build_inputs(base)
    t_start = time.perf_counter()

    refs: dict[str, float] = {}
    rc, refs["prune"] = run(prune_args(base, base / "prune_ref"), log=logs / "prune_ref.log")
    assert rc == 0, "reference prune failed"
    assert run(prune_args(base, base / "prune_old", sparsity="0.6"), log=logs / "prune_old.log")[0] == 0
    rc, refs["capture"] = run(capture_args(base, base / "problems_ref"), log=logs / "capture_ref.log")
    assert rc == 0, "reference capture failed"
    assert run(capture_args(base, base / "capture_old", seed="1"), log=logs / "capture_old.log")[0] == 0
    (base / "compare_problems").mkdir()
    for f in sorted((base / "problems_ref").glob("block00.*.npz")):  # block 0's seven layers
        shutil.copy(f, base / "compare_problems" / f.name)
    rc, refs["compare"] = run(compare_args(base, base / "compare_ref"), log=logs / "compare_ref.log")
    assert rc == 0, "reference compare failed"
    ref_dir = {"prune": base / "prune_ref", "capture": base / "problems_ref", "compare": base / "compare_ref"}
    old_dir = {"prune": base / "prune_old", "capture": base / "capture_old", "compare": base / "compare_ref"}
    print("reference runs: " + ", ".join(f"{k} {v:.1f} s" for k, v in refs.items()), flush=True)

    table = []
    for name in a.commands.split(","):
        spec = COMMANDS[name]
        state_ok, identical = CHECKS[name]
        points = [("hook", h) for h in spec["hooks"]]
        points += [("delay", round(rng.uniform(0.2, 1.0) * refs[name], 2)) for _ in range(a.random)]
        killed = survived = same = temp_left = 0
        failures = []
        for i, (kind, where) in enumerate(points):
            trial = base / f"{name}_{i:02d}"
            out = trial / "out"
            shutil.copytree(old_dir[name], out)
            shutil.copytree(old_dir[name], trial / "old")
            args = spec["args"](base, out)
            log = logs / f"{name}_{i:02d}.log"
            if kind == "hook":
                rc, _ = run(args, env_extra={"LAYERPRUNE_FAULT_AT": where}, log=log)
            else:
                rc, seconds = run(args, kill_after=where, log=log)
                for _ in range(3):  # the run ended before the delay (a busy machine made the reference slow): again
                    if rc == -signal.SIGKILL:
                        break
                    shutil.rmtree(out)
                    shutil.copytree(old_dir[name], out)
                    where = round(rng.uniform(0.2, 0.9) * seconds, 2)
                    rc, seconds = run(args, kill_after=where, log=log)
            was_killed = rc == -signal.SIGKILL
            killed += was_killed
            ok_after_kill = out.exists() and state_ok(out, trial / "old", ref_dir[name])
            survived += ok_after_kill
            rc2, _ = run(args + spec["resume"], log=log)
            ok_same = rc2 == 0 and identical(out, ref_dir[name])
            same += ok_same
            left = leftovers(trial, "out")
            temp_left += len(left)
            print(f"{name} {kind} {where}: killed={was_killed} (rc {rc}) output ok={ok_after_kill} "
                  f"resume rc={rc2} identical={ok_same} left={left}", flush=True)
            if not (ok_after_kill and ok_same and not left):
                failures.append(f"{kind} {where}")
            shutil.rmtree(trial)
        table.append((name, len(points), killed, survived, same, temp_left, failures))

    print(f"\n{time.perf_counter() - t_start:.0f} s; work folder {base}\n")
    print("| command | kill points (hook + random) | killed by SIGKILL | output survived | bit-identical after resume "
          "| temp files left |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, killed, survived, same, left, _ in table:
        print(f"| {name} | {n} ({len(COMMANDS[name]['hooks'])} + {n - len(COMMANDS[name]['hooks'])}) | {killed} "
              f"| {survived}/{n} | {same}/{n} | {left} |")
    for name, *_, failures in table:
        if failures:
            print(f"{name}: failed at {failures}")
    if a.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
