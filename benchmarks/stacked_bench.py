"""Layers that share one Hessian, solved stacked or one at a time (``solve_many(stack=...)``), per group.

    python benchmarks/stacked_bench.py [--groups smollm2,llama7b] [--sparsity 0.7] [--patterns unstructured,2:4]
        [--device cuda] [--repeats 5]

Groups are q/k/v and gate/up of SmolLM2-135M and LLaMA-7B: the synthetic problem's Hessian
(``synthetic_problem``, built on the device) with one weight per layer (the first layer's own,
the others of the same scale). Each (group, pattern, mode) runs once to warm up, then ``repeats``
times on a fresh cache each (the shared eigendecomposition inside the time), the two modes
interleaved. Prints a Markdown table: the group's median seconds (and the range), the mean
relative error over its layers, and (GPU) the peak bytes held during the group's solves in
copies of the group's total weight.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

GROUPS = {  # name: (in, [(layer, out), ...])
    "smollm2": [("q/k/v", 576, [("q", 576), ("k", 192), ("v", 192)]), ("gate/up", 576, [("gate", 1536), ("up", 1536)])],
    "llama7b": [("q/k/v", 4096, [("q", 4096), ("k", 4096), ("v", 4096)]),
                ("gate/up", 4096, [("gate", 11008), ("up", 11008)])],
}


def group_problems(inp: int, layers, sparsity, pattern: str, xp):
    from layerprune.problems import synthetic_problem

    first = synthetic_problem(layers[0][1], inp, sparsity, pattern, seed=0, xp=xp)
    scale = float(xp.abs(first.weight).mean())
    rng = xp.random.default_rng(1) if xp is not np else np.random.default_rng(1)
    others = [first.with_weight(rng.standard_normal((out, inp), dtype=np.float32) * scale, name=name)
              for name, out in layers[1:]]
    _ = first.hessian
    return [first, *others]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", default="smollm2,llama7b")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--patterns", default="unstructured,2:4")
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from layerprune import solve_many
    from layerprune.problems.backend import resolve_device, synchronize, xp_for

    dev = resolve_device(args.device)
    xp = xp_for(dev)
    peak_memory = None
    if dev == "cuda":
        from gpu_bench import PeakMemory as peak_memory
    print("| model | group | pattern | mode | median seconds (range) | mean rel. error | iterations | peak (× group's W) |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.groups.split(","):
        for group, inp, layers in GROUPS[model]:
            for pattern in args.patterns.split(","):
                probs = group_problems(inp, layers, None if ":" in pattern else args.sparsity, pattern, xp)
                total = sum(p.weight.size for p in probs) * 4
                seconds = {False: [], True: []}
                for stack in (False, True):
                    solve_many(probs, "alps", device=dev, stack=stack)  # warm-up at this shape
                for _ in range(args.repeats):
                    for stack in (False, True):
                        synchronize(xp)
                        t = time.perf_counter()
                        results = solve_many(probs, "alps", device=dev, stack=stack)
                        synchronize(xp)
                        seconds[stack].append(time.perf_counter() - t)
                for stack in (False, True):
                    peak = float("nan")
                    if peak_memory is not None:
                        xp.get_default_memory_pool().free_all_blocks()
                        with peak_memory(xp) as mem:
                            results = solve_many(probs, "alps", device=dev, stack=stack)
                        peak = mem.peak / total
                    else:
                        results = solve_many(probs, "alps", device=dev, stack=stack)
                    err = float(np.mean([r.relative_error for r in results]))
                    its = "/".join(str(r.iterations) for r in results) if not stack else str(results[0].iterations)
                    mode = "stacked" if stack else "one at a time"
                    sec = seconds[stack]
                    print(f"| {model} | {group} | {pattern} | {mode} | {np.median(sec):.3f} ({min(sec):.3f}–{max(sec):.3f}) "
                          f"| {err:.5f} | {its} | {peak:.1f} |", flush=True)
                del probs


if __name__ == "__main__":
    main()
