"""How each solve of a folder of problem files ended (``SolveResult.success``/``status``), one line per file.

    .venv/bin/layerprune capture --model smollm2 --calib wiki --layers 0,15,29 --nsamples 32 --seqlen 512 \\
        --output /tmp/probs --threads 1
    .venv/bin/python benchmarks/solve_status.py /tmp/probs --method alps --sparsity 0.7
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from layerprune import LayerProblem, solve
from layerprune.layerwise.threads import limit_threads
from layerprune.solvers import STATUS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--method", default="alps")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    counts: collections.Counter = collections.Counter()
    t0 = time.perf_counter()
    with limit_threads(a.threads):
        for f in sorted(Path(a.folder).glob("*.npz")):
            p = LayerProblem.load(f, sparsity=a.sparsity)
            r = solve(p, a.method, device=a.device)
            counts[r.status] += 1
            print(f"{f.name} {p.shape} status {r.status} success {r.success} iterations {r.iterations} "
                  f"rel.error {r.relative_error:.5f} refit {r.info.get('refit_iterations')} it. "
                  f"residual {r.info.get('refit_residual', float('nan')):.2e} ({r.message})", flush=True)
    print(", ".join(f"{n} × {STATUS[s]} (status {s})" for s, n in sorted(counts.items())),
          f"in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
