"""How long and how much memory does `layerprune prune` take per block at Llama-3-8B / 70B shapes?

Builds a random-weight Llama model with the chosen block shapes (bf16 safetensors, sharded,
with a given tokenizer), then runs the real command line on it for each method,

    layerprune prune --model DIR --method M --sparsity 0.7 --calib TEXT --nsamples 128 --seqlen 2048
                     --no-eval --device cuda --output OUT --log LOG

and prints, per method: total seconds, seconds per block (all blocks, and without block 0,
which pays CuPy's kernel compilation), the per-phase seconds of a block (load, Hessians, solve,
forward, save; from the run log's ``block_seconds``), the child's peak host RSS (its ``VmHWM``,
from the run log: ``ru_maxrss`` would count this process's pages at the fork too) and the peak
device memory (torch's allocator and CuPy's pool).

    python benchmarks/scale.py --shape llama3-8b --blocks 4 --methods alps,sparsegpt,wanda \\
        --tokenizer .carry/tok --calib .carry/calib.txt --workdir /tmp/scale --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # hidden, MLP, heads, KV heads (the published Llama-3 configs)
    "llama3-8b": (4096, 14336, 32, 8),
    "llama3-70b": (8192, 28672, 64, 8),
    "mid": (1024, 3584, 16, 4),  # for CPU runs of the depth question
    "tiny": (64, 128, 4, 2),
}


def build_model(shape: str, blocks: int, tokenizer: str, folder: Path, device: str, seed: int = 0) -> None:
    """A random bf16 Llama with ``blocks`` blocks of ``shape``, saved with ``tokenizer`` to ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, mlp, heads, kv = SHAPES[shape]
    tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192,
                         rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="4GB")
    tok.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_cli(args: list[str]) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS in GB) of ``python -m layerprune.layerwise.cli ARGS``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-P", "-m", "layerprune.layerwise.cli", *args])  # -P: not the checkout's bare layerprune/ folder
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1e6  # ru_maxrss: KiB on Linux


def summarize(method: str, log: dict, wall: float, rss_gb: float) -> dict:
    blocks = log["block_seconds"]
    per_block = [b["seconds"] for b in blocks]
    later = per_block[1:] or per_block
    phases = {k: statistics.median(b[k] for b in blocks[1:] or blocks) for k in ("load", "hessians", "solve", "forward", "save")}
    return {
        "method": method, "blocks": len(blocks), "wall_s": wall, "prune_s": log["seconds"],
        "block_s_mean": statistics.mean(per_block), "block_s_after_first": statistics.mean(later),
        **{f"{k}_s": v for k, v in phases.items()},
        # the child's own peak (VmHWM, GiB → GB); ru_maxrss also counts the parent's pages at fork (this
        # process after building the model), which made it grow with the model's depth
        "rss_gb": log["host_peak_gib"] * 2**30 / 1e9 if log.get("host_peak_gib") else rss_gb,
        "ru_maxrss_gb": rss_gb,
        "torch_peak_gib": max((b.get("torch_peak_gib", 0.0) for b in blocks), default=0.0),
        "cupy_pool_gib": max((b.get("cupy_pool_gib", 0.0) for b in blocks), default=0.0),
        "mean_relative_error": log["mean_relative_error"],
        "last_block_layers": {e["layer"]: [round(e["seconds"], 3), e["iterations"], round(e["relative_error"], 5)]
                              for e in log["layers"] if e["block"] == blocks[-1]["block"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--methods", default="alps,sparsegpt,wanda")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--calib", required=True, help="a text file")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workdir", default="/tmp/layerprune_scale")
    ap.add_argument("--keep-model", action="store_true", help="reuse a model already built in --workdir")
    ap.add_argument("--extra", default="", help="more prune arguments, e.g. '--option max_iter=100'")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    work = Path(a.workdir)
    model = work / f"{a.shape}-{a.blocks}"
    if not (a.keep_model and (model / "config.json").is_file()):
        shutil.rmtree(model, ignore_errors=True)
        t = time.perf_counter()
        build_model(a.shape, a.blocks, a.tokenizer, model, a.device)
        print(f"built {model} in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for method in a.methods.split(","):
        out, log = work / f"out-{method}", work / f"log-{method}.json"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / f"out-{method}.partial", ignore_errors=True)
        status, wall, rss = run_cli([
            "prune", "--model", str(model), "--method", method, "--sparsity", str(a.sparsity), "--calib", a.calib,
            "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen), "--batch-size", str(a.batch_size),
            "--no-eval", "--device", a.device, "--output", str(out), "--log", str(log), "--quiet", *a.extra.split()])
        if status != 0:
            print(f"{method}: exit status {status}", flush=True)
            continue
        rows.append(summarize(method, json.loads(log.read_text()), wall, rss))
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.shape}, {a.blocks} blocks, {a.nsamples} x {a.seqlen} calibration, {a.sparsity:g} unstructured, {a.device}")
    print("| method | blocks | s/block | s/block after 1st | load | Hessians | solve | forward | save | peak RSS GB "
          "| torch peak GiB | CuPy pool GiB | mean rel. error | total s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['method']} | {r['blocks']} | {r['block_s_mean']:.2f} | {r['block_s_after_first']:.2f} | "
              f"{r['load_s']:.2f} | {r['hessians_s']:.2f} | {r['solve_s']:.2f} | {r['forward_s']:.2f} | {r['save_s']:.2f} | "
              f"{r['rss_gb']:.2f} | {r['torch_peak_gib']:.1f} | {r['cupy_pool_gib']:.1f} | {r['mean_relative_error']:.4f} | "
              f"{r['wall_s']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
