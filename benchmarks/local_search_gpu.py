"""Local search on the device: the gain and the time of the batched exact search after ALPS and SparseGPT.

    layerprune capture --model smollm2 --layers 0,15,29 --nsamples 32 --seqlen 512 --output /tmp/gpuls_probs
    python benchmarks/local_search_gpu.py /tmp/gpuls_probs --device cuda [--sparsity 0.7] [--synthetic 4096x4096,14336x4096]
        [--variants alps,alps-ls,alps-ls-joint,sparsegpt,sparsegpt-polish] [--out rows.json] [--profile VARIANT]

Per layer: relative error and seconds of each variant, then per variant the mean relative error, the mean
of the per-layer ratios to plain ALPS and to SparseGPT, and the ratio of total seconds to ALPS's.
Variants: ``alps`` (``local_search=False``), ``alps-ls`` (ALPS's own ``local_search=True``: moves between
rows / swaps in rows before its refit), ``alps-polish`` (plain ALPS then ``solve(..., polish=True)``),
``alps-ls-joint`` (ALPS then moves and swaps alternated to a joint local optimum, ``solvers.polish.polish``
with ``rounds=10``), ``sparsegpt``, ``sparsegpt-polish``, ``alps-slow`` and ``alps-slow-polish`` (ALPS
with ρ raised more slowly, ``benchmarks/variants.py``: the other lever on a layer's error, without and with
the polish); ``alps-polish@N`` / ``sparsegpt-polish@N``: the polish in rounds of N moves
(``solvers.polish.polish(moves_per_round=N)``; the plain variants use the device's ``MOVES_PER_ROUND``),
timed on the cached plain answer plus its seconds. Every variant runs once on a small synthetic problem
before the timed ones (``warm_up``), so the timings leave out
CuPy's kernel compilation and the libraries' set-up, except on paths only large problems take.
``--synthetic OUTxIN,...`` adds synthetic problems of those shapes (``problems.builders.synthetic_problem``,
built on the device; LLaMA-3-8B: 4096x4096 attention, 14336x4096 gate/up, 4096x14336 down).
``--profile VARIANT`` then runs that variant once more on the first layer under cProfile (where a
round's seconds go: host work, or waits on the device in the calls that synchronize).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from variants import method_and_options

from layerprune import LayerProblem, solve
from layerprune.problems.backend import resolve_device, synchronize, xp_for
from layerprune.problems.builders import synthetic_problem
from layerprune.problems.patterns import parse_pattern
from layerprune.solvers.polish import polish

VARIANTS = ["alps", "alps-ls", "alps-ls-joint", "sparsegpt", "sparsegpt-polish"]
# and METHOD-polish@N (alps, sparsegpt): the polish in rounds of N moves
KNOWN = VARIANTS + ["alps-polish", "alps-slow", "alps-slow-polish"]
PLAIN = {"alps": {"local_search": False}, "sparsegpt": {}}  # the methods' answers the polish starts from


def check_variant(name: str) -> None:
    """SystemExit naming ``name`` unless it is a known variant or METHOD-polish@N (N a positive integer)."""
    base, at, size = name.partition("@")
    if (base in KNOWN and not at) or (base in ("alps-polish", "sparsegpt-polish") and size.isdecimal() and int(size) > 0):
        return
    raise SystemExit(f"unknown variant {name!r}; known: {', '.join(KNOWN)}, and alps-polish@N / sparsegpt-polish@N "
                     "(rounds of N moves)")


def polished(base, p: LayerProblem, device: str, **options) -> tuple[float, float, dict]:
    """(relative error, seconds, info) of ``solvers.polish.polish(**options)`` on ``base``'s answer; the
    seconds include ``base``'s own."""
    xp = xp_for(device)
    q = p.on(xp)
    synchronize(xp)
    t0 = time.perf_counter()
    W, mask, info = polish(q, xp.asarray(base.weight), xp.asarray(base.mask), xp, **options)
    synchronize(xp)
    return q.relative_error(W), base.seconds + time.perf_counter() - t0, info


def polished_start(name: str) -> str | None:
    """The plain method whose cached answer variant ``name`` polishes (METHOD-polish@N, alps-ls-joint)."""
    if "@" in name:
        return name.partition("@")[0].removesuffix("-polish")
    return "alps" if name == "alps-ls-joint" else None


def plain_answer(p: LayerProblem, method: str, device: str, cache: dict):
    """``method``'s plain answer on ``p`` (``PLAIN``), solved once per ``cache``."""
    if method not in cache:
        cache[method] = solve(p, method, device=device, **PLAIN[method])
    return cache[method]


def run_variant(name: str, p: LayerProblem, device: str, cache: dict) -> tuple[float, float, dict]:
    """(relative error, seconds, info) of one variant (``check_variant``) on ``p``; ``cache`` keeps the
    plain ALPS and SparseGPT answers for the variants that polish them."""
    start = polished_start(name)
    if start and "@" in name:  # METHOD-polish@N
        size = int(name.partition("@")[2])
        return polished(plain_answer(p, start, device, cache), p, device, moves_per_round=size)
    if start:  # alps-ls-joint: ALPS, then moves and swaps alternated to a joint local optimum
        return polished(plain_answer(p, start, device, cache), p, device, rounds=10)
    if name in ("alps", "sparsegpt"):
        r = plain_answer(p, name, device, cache)
    elif name.startswith("alps-slow"):
        method, options = method_and_options("alps-slow")
        r = solve(p, method, device=device, local_search=False, polish=name.endswith("-polish"), **options)
    elif name == "alps-ls":
        r = solve(p, "alps", device=device, local_search=True)
    else:  # alps-polish, sparsegpt-polish: through solve(..., polish=True), as the pipeline runs it
        method = name.removesuffix("-polish")
        r = solve(p, method, device=device, polish=True, **PLAIN[method])
    return r.relative_error, r.seconds, {k: v for k, v in r.info.items() if "local" in k or "polish" in k}


def warm_up(names: list[str], device: str, sparsity: float, pattern: str) -> None:
    """Run every variant once, untimed, on a small synthetic problem on ``device`` (48 rows, about 96
    inputs, a multiple of N:M's M), so the kernels a small problem's path compiles, the libraries'
    handles and the memory pools are paid before the first timed layer; paths only large problems
    take (the radix selection, the staged eigendecomposition) are still paid on their first layer."""
    pat = parse_pattern(pattern)
    m = pat.m if pat.kind == "nm" else 1
    p = synthetic_problem(48, m * -(-96 // m), sparsity, pattern, seed=1, xp=xp_for(device))
    cache: dict = {}
    for v in names:
        run_variant(v, p, device, cache)


def profile_variant(name: str, label: str, p: LayerProblem, device: str, top: int = 15) -> None:
    """Run variant ``name`` on ``p`` under cProfile (untimed: the profiler slows Python-heavy loops) and
    print its ``top`` functions by own time."""
    import cProfile
    import pstats

    cache: dict = {}
    if polished_start(name):  # the plain answer it polishes: solved outside the profile
        plain_answer(p, polished_start(name), device, cache)
    prof = cProfile.Profile()
    prof.enable()
    run_variant(name, p, device, cache)
    synchronize(xp_for(device))
    prof.disable()
    print(f"\nprofile of {name} on {label}:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def problems(args) -> list[tuple[str, LayerProblem]]:
    out = []
    if args.folder:
        for f in sorted(pathlib.Path(args.folder).glob("*.npz")):
            if args.layers and not any(s in f.stem for s in args.layers.split(",")):
                continue
            out.append((f.stem, LayerProblem.load(f).with_sparsity(args.sparsity, args.pattern)))
    for shape in filter(None, (args.synthetic or "").split(",")):
        o, i = (int(v) for v in shape.lower().split("x"))
        xp = xp_for(resolve_device(args.device))
        out.append((f"synthetic{o}x{i}", synthetic_problem(o, i, args.sparsity, args.pattern, seed=0, xp=xp)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--sparsity", type=float, default=None, help="default 0.7; N:M patterns fix their own")
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--layers", default=None, help="only files whose name contains one of these (comma-separated)")
    ap.add_argument("--synthetic", default=None, help="OUTxIN shapes of synthetic problems, comma-separated")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, metavar="VARIANT",
                    help="after the timed runs, run VARIANT once more on the first layer under cProfile and print "
                         "where its seconds go (host waits on the device land in the call that synchronizes)")
    args = ap.parse_args()
    if args.sparsity is None and parse_pattern(args.pattern).kind != "nm":
        args.sparsity = 0.7
    names = args.variants.split(",")
    for name in names + ([args.profile] if args.profile else []):
        check_variant(name)
    device = resolve_device(args.device)
    todo = problems(args)
    if not todo:
        raise SystemExit("no problems: give a folder of .npz files and/or --synthetic")
    warm_up(names + ([args.profile] if args.profile else []), device, args.sparsity, args.pattern)
    rows = []
    for label, p in todo:
        cache: dict = {}
        line = {"layer": label, "shape": list(p.shape)}
        for v in names:
            err, sec, info = run_variant(v, p, device, cache)
            line[v] = {"rel_error": err, "seconds": sec, **{k: (float(x) if isinstance(x, (int, float, np.floating)) else x)
                                                        for k, x in info.items()}}
        rows.append(line)
        print(f"{label:28s} {p.shape[0]:6d}x{p.shape[1]:<6d} "
              + " ".join(f"{v}={line[v]['rel_error']:.5f} ({line[v]['seconds']:.2f} s)" for v in names), flush=True)
    print(f"\ndevice {device}, {args.pattern} at sparsity {todo[0][1].sparsity:g}, {len(rows)} layers")
    print("| variant | mean rel. error | mean ratio to ALPS (worst) | mean ratio to SparseGPT | seconds (total) | seconds / ALPS's |")
    print("|---|---|---|---|---|---|")
    for v in names:
        err = np.array([r[v]["rel_error"] for r in rows])
        sec = sum(r[v]["seconds"] for r in rows)
        to_alps = f"{np.mean(err / [r['alps']['rel_error'] for r in rows]):.4f} ({np.max(err / [r['alps']['rel_error'] for r in rows]):.4f})" if "alps" in names else "-"
        to_sgpt = f"{np.mean(err / [r['sparsegpt']['rel_error'] for r in rows]):.4f}" if "sparsegpt" in names else "-"
        t_alps = f"{sec / sum(r['alps']['seconds'] for r in rows):.2f}" if "alps" in names else "-"
        print(f"| {v} | {err.mean():.5f} | {to_alps} | {to_sgpt} | {sec:.2f} | {t_alps} |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))
    if args.profile:
        profile_variant(args.profile, *todo[0], device)


if __name__ == "__main__":
    main()
