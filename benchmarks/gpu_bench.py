"""Per-layer wall time, objective and GPU memory of every solver, in one device call.

    python benchmarks/gpu_bench.py [--shapes smollm2,llama7b] [--sparsity 0.7] [--out DIR]

Problems are synthetic layers whose Hessians are built on the device from
correlated activations with outlier channels (``synthetic_problem(xp=cupy)``).
Each (shape, method) runs on a fresh factorization cache, so ALPS's
eigendecomposition and SparseGPT's Cholesky are inside their times. Peak memory
is the most bytes the solve held at once (a CuPy pool hook; the problem's own
weight and Hessian are not counted), reported in copies of the weight matrix (out·in·4 bytes). Prints a Markdown table
and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

import numpy as np
from variants import method_and_options

SHAPES = {  # name: (out, in) in the nn.Linear layout
    "smollm2": [("q_proj 576x576", 576, 576), ("gate_proj 1536x576", 1536, 576), ("down_proj 576x1536", 576, 1536)],
    "llama7b": [("q_proj 4096x4096", 4096, 4096), ("up_proj 11008x4096", 11008, 4096), ("down_proj 4096x11008", 4096, 11008)],
}
METHODS = ["alps", "sparsegpt", "wanda", "admm_gradual"]


@contextlib.contextmanager
def phase_peaks(mem: "PeakMemory"):
    """Peak bytes per solver phase: each ``PhaseClock.lap(name)`` records the peak since the
    previous lap and restarts the count from the bytes live then (ALPS: setup, admm, refit)."""
    from layerprune.problems.backend import PhaseClock

    phases: dict[str, int] = {}
    lap = PhaseClock.lap

    def recording_lap(self, name):
        phases[name] = mem.peak
        mem.peak = mem.live
        return lap(self, name)

    PhaseClock.lap = recording_lap
    try:
        yield phases
    finally:
        PhaseClock.lap = lap


def gemm_rate(xp, n: int = 8192, reps: int = 5) -> float:
    """Measured float32 GEMM rate (TFLOP/s) on random data, median of ``reps``."""
    from layerprune.problems.backend import synchronize

    a = xp.random.standard_normal((n, n), dtype=xp.float32)
    b = xp.random.standard_normal((n, n), dtype=xp.float32)
    a @ b
    synchronize(xp)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        synchronize(xp)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e12


class PeakMemory:
    """Largest number of bytes live in CuPy's pool at once (a pool malloc/free hook)."""

    def __init__(self, cupy) -> None:
        hook_base = cupy.cuda.MemoryHook
        outer = self

        class _Hook(hook_base):
            name = "PeakMemory"

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                outer.live += mem_size
                outer.peak = max(outer.peak, outer.live)

            def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
                outer.live -= mem_size

        self.hook, self.live, self.peak = _Hook(), 0, 0

    def __enter__(self):
        self.live = self.peak = 0
        self.hook.__enter__()
        return self

    def __exit__(self, *exc):
        self.hook.__exit__(*exc)


def run(shapes: list[str], sparsity: float, patterns: list[str], methods: list[str], device: str, only: str = "") -> list[dict]:
    from layerprune import solve
    from layerprune.problems import synthetic_problem
    from layerprune.problems.backend import resolve_device, xp_for
    from layerprune.solvers import check_options, get_method

    dev = resolve_device(device)
    xp = xp_for(dev)
    pool = xp.get_default_memory_pool() if dev == "cuda" else None
    rows = []
    # warm-up: kernels compile, handles are created
    for pattern in patterns:
        warm = synthetic_problem(128, 256, None if ":" in pattern else 0.5, pattern, xp=xp)
        for m in methods:
            name, opts = method_and_options(m)
            solve(warm, name, device=dev, **opts)
    for group in shapes:
        for label, out, inp in SHAPES[group]:
            if only and only not in label:
                continue
            for pattern in patterns:
                s = None if ":" in pattern else sparsity
                p = synthetic_problem(out, inp, s, pattern, seed=0, xp=xp)
                _ = p.hessian  # the damped matrix belongs to the problem, not to a solver's time
                for m in methods:
                    name, opts = method_and_options(m)
                    solve(p, name, device=dev, **opts)  # first run at this shape: compiles, plans
                    if pool is not None:
                        pool.free_all_blocks()
                        with PeakMemory(xp) as mem:
                            r = solve(p, name, device=dev, **opts)
                        peak = mem.peak  # bytes allocated during the solve and live at once
                        pool.free_all_blocks()
                        with PeakMemory(xp) as mem, phase_peaks(mem) as phases:  # the method alone, unscored
                            get_method(name).fn(p, xp=xp, dtype=np.dtype(np.float32), cache={},
                                                options=check_options(name, opts))
                        solver_peak = max([mem.peak, *phases.values()])
                    else:
                        r, peak = solve(p, name, device=dev, **opts), float("nan")
                        solver_peak, phases = float("nan"), {}
                    rows.append({
                        "layer": label, "out": out, "in": inp, "pattern": pattern, "method": m,
                        "sparsity": round(r.sparsity, 4), "rel_error": r.relative_error, "seconds": r.seconds,
                        "iterations": r.iterations, "peak_bytes": peak, "weight_copies": peak / (out * inp * 4),
                        "solver_weight_copies": solver_peak / (out * inp * 4), "hessian_copies": inp * inp / (out * inp),
                        "phase_weight_copies": {k: v / (out * inp * 4) for k, v in phases.items()},
                        "info": {k: v for k, v in r.info.items() if isinstance(v, (int, float, bool, str))},
                    })
                    print(json.dumps(rows[-1]), flush=True)
                del p
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| layer | pattern | method | rel. error | seconds | iters | peak mem, solve (× W) | peak mem, method alone (× W) | in×in (× W) | method's peak by phase (× W) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['pattern']} | {r['method']} | {r['rel_error']:.4f} | {r['seconds']:.3f} | "
            f"{r['iterations']} | {r['weight_copies']:.1f} | {r['solver_weight_copies']:.1f} | {r['hessian_copies']:.2f} | "
            + " / ".join(f"{k.removeprefix('seconds_')} {v:.1f}" for k, v in r["phase_weight_copies"].items()) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="smollm2,llama7b")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--patterns", default="unstructured,2:4")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", default="", help="run only layers whose label contains this")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    from layerprune.problems.backend import resolve_device, xp_for

    dev = resolve_device(args.device)
    xp = xp_for(dev)
    header = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "device": dev}
    if dev == "cuda":
        props = xp.cuda.runtime.getDeviceProperties(0)
        header.update(gpu=props["name"].decode(), cupy=xp.__version__, fp32_gemm_tflops=round(gemm_rate(xp), 1))
    print(json.dumps(header), flush=True)
    rows = run(args.shapes.split(","), args.sparsity, args.patterns.split(","), args.methods.split(","), args.device, args.only)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1)
    print(json.dumps(header))
    print(table(rows))


if __name__ == "__main__":
    main()
