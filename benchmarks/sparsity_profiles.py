"""Uniform vs OWL vs curve allocations (three weightings) on SmolLM2: perplexity at one sparsity.

    python benchmarks/sparsity_profiles.py --method sparsegpt --sparsity 0.7 --nsamples 16 --seqlen 512 \\
        --eval-tokens 8192 --output /tmp/profiles.json

One model load, one calibration set and evaluation stream. The curves are measured once (the
``curve`` profile with the first weighting, through ``layerprune.prune``); the other weightings'
allocations are computed from the same measured points (``layerwise.allocation``) and run as
per-layer sparsity overrides (the same per-layer sparsities a ``curve`` run with that weighting
gets), so the curve solves are paid once.
"""

from __future__ import annotations

import argparse
import json
import time

from layerprune.layerwise.allocation import Curve, Slot, allocate_curves, curve_weights, sparsities_of, target_kept
from layerprune.layerwise.api import prune
from layerprune.layerwise.data import calibration_segments, evaluation_windows
from layerprune.layerwise.models import block_linears, find_blocks, load_model
from layerprune.layerwise.perplexity import perplexity
from layerprune.layerwise.settings import PruneSettings
from layerprune.layerwise.threads import limit_threads
from layerprune.problems.atomic import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=8192, help="0: the whole evaluation text")
    ap.add_argument("--weightings", default="size,relative,objective")
    ap.add_argument("--offsets", default="-0.15,-0.1,-0.05,0,0.05,0.1,0.15")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="blocks, solver and perplexity (cuda: the model stays there)")
    ap.add_argument("--output", default=None)
    ap.add_argument("--curve-only", action="store_true", help="skip the uniform and OWL rows")
    a = ap.parse_args()
    offsets = [float(x) for x in a.offsets.split(",")]
    weightings = [w for w in a.weightings.split(",") if w]
    with limit_threads(a.threads):
        t0 = time.perf_counter()
        net, tok = load_model(a.model)
        ids = calibration_segments(tok, "wiki", a.nsamples, a.seqlen, 0)
        windows = evaluation_windows(tok, "wiki-test", a.seqlen, a.eval_tokens or None)  # 0: the whole text
        if a.device != "cpu":
            net.to(a.device)
        _, blocks = find_blocks(net)
        linears = [lin for b in blocks for lin in block_linears(b).values()]
        dense_w = [lin.weight.detach().clone() for lin in linears]
        dense = perplexity(net, windows, a.seqlen, device=a.device, progress=False)
        out = {"model": a.model, "method": a.method, "sparsity": a.sparsity, "nsamples": a.nsamples,
               "seqlen": a.seqlen, "eval_windows": int(windows.shape[0]), "dense_perplexity": dense, "rows": []}
        print(f"dense {dense:.3f} ({time.perf_counter() - t0:.0f} s set-up)", flush=True)

        def run(label: str, **fields) -> dict:
            s = PruneSettings(method=a.method, sparsity=a.sparsity, nsamples=a.nsamples, seqlen=a.seqlen,
                              eval_text=None, curve_offsets=tuple(offsets), device=a.device, **fields)
            t = time.perf_counter()
            log = prune(net, tok, settings=s, calib_ids=ids, progress=False).log
            ppl = perplexity(net, windows, a.seqlen, device=a.device, progress=False)
            for lin, w in zip(linears, dense_w):
                lin.weight.data.copy_(w)
            ts = [e["target_sparsity"] for e in log["layers"]]
            row = {"profile": label, "perplexity": ppl, "sparsity": log["sparsity"],
                   "mean_relative_error": log["mean_relative_error"], "seconds": time.perf_counter() - t,
                   "prune_seconds": log["seconds"], "min_layer_sparsity": min(ts), "max_layer_sparsity": max(ts),
                   "allocation_info": (log["allocation"] or {}).get("info"),
                   "layers": [{k: e[k] for k in ("block", "layer", "target_sparsity", "relative_error", "kept")}
                              for e in log["layers"]]}
            out["rows"].append(row)
            print(f"{label}: perplexity {ppl:.3f}, sparsity {log['sparsity']:.6f}, layers {min(ts):.3f}–{max(ts):.3f}, "
                  f"mean rel. error {log['mean_relative_error']:.4f}, {row['seconds']:.0f} s", flush=True)
            if a.output:
                atomic_write_json(a.output, out)
            return log

        if not a.curve_only:
            run("uniform", sparsity_profile="uniform")
            run("owl", sparsity_profile="owl")
        log = run(f"curve ({weightings[0]})", sparsity_profile="curve", curve_weighting=weightings[0])
        info = log["allocation"]["info"]
        print(f"curve pre-pass {info['seconds']:.0f} s, of which solves {info['curve']['solve_seconds']:.0f} s", flush=True)
        points = info["curve"]["points"]
        names = list(points)
        shapes = {f"{log['block_path']}.{e['block']}.{e['layer']}": e["shape"] for e in log["layers"]}
        slots = [Slot(shapes[n][0] * shapes[n][1]) for n in names]
        curves = [Curve.from_points([p[1] for p in points[n]], [p[2] for p in points[n]]) for n in names]
        energies = [info["curve"]["energy"][n] for n in names]
        for w in weightings[1:]:
            kept, _ = allocate_curves(curves, curve_weights(w, [s.size for s in slots], energies), slots,
                                      target_kept(slots, a.sparsity))
            overrides = [{"targets": [n], "sparsity": s} for n, s in zip(names, sparsities_of(slots, kept))]
            run(f"curve ({w})", sparsity_profile="uniform", overrides=overrides)
        out["minutes_total"] = (time.perf_counter() - t0) / 60
        if a.output:
            atomic_write_json(a.output, out)
        print(json.dumps([{k: r[k] for k in ("profile", "perplexity", "sparsity", "mean_relative_error", "seconds")}
                          for r in out["rows"]], indent=1))


if __name__ == "__main__":
    main()
