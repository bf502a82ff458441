#!/usr/bin/env bash
# The SmolLM2 objective-gap report, in one command:
#   1. `layerprune capture`: the layer problems (Ŵ, H = XᵀX/n) of three blocks — first, middle,
#      last (0, 15, 29) — from 128 × 2048 tokens of the Wikipedia calibration text;
#   2. `layerprune compare`: every method at 50–90% unstructured sparsity and at 2:4, with
#      certified lower bounds, into report.md / report.html / PNGs / results.csv;
#   3. benchmarks/real_slices.py: the same methods on 8×16 and 64×128 slices of those layers
#      (real activation statistics), where the bounds are exact optima or the perspective
#      relaxation rather than the weak diagonal bound that full layers get, into OUTPUT/slices/.
#
#   bash benchmarks/smollm2_report.sh [OUTPUT]          (default reports/smollm2)
#
# Environment: LAYERPRUNE (the command, default .venv/bin/layerprune), PYTHON, BLOCKS (0,15,29),
# NSAMPLES (128), SEQLEN (2048), METHODS (alps,sparsegpt,wanda,magnitude), SPARSITY
# (0.5,0.6,0.7,0.8,0.9), PATTERNS (unstructured,2:4), DEVICE (where capture runs the blocks:
# cpu|cuda), SOLVER_DEVICE (where compare solves: cpu|cuda, default GPU when CuPy sees one).
# Re-running resumes: capture is skipped once its problems exist, compare continues with --resume.
# The captured problems and the per-result weights are large; OUTPUT/.gitignore keeps them out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
LP=${LAYERPRUNE:-.venv/bin/layerprune}
OUT=${1:-reports/smollm2}
PROBLEMS=${PROBLEMS:-$OUT/problems}
mkdir -p "$OUT"
printf 'problems/\nweights/\n' > "$OUT/.gitignore"

if [ ! -f "$PROBLEMS/.complete" ]; then
  "$LP" capture --model smollm2 --calib wiki --layers "${BLOCKS:-0,15,29}" \
    --nsamples "${NSAMPLES:-128}" --seqlen "${SEQLEN:-2048}" --device "${DEVICE:-cpu}" --output "$PROBLEMS"
  touch "$PROBLEMS/.complete"
fi

"$LP" compare "$PROBLEMS" --methods "${METHODS:-alps,sparsegpt,wanda,magnitude}" \
  --sparsity "${SPARSITY:-0.5,0.6,0.7,0.8,0.9}" --patterns "${PATTERNS:-unstructured,2:4}" \
  --output "$OUT" --resume ${SOLVER_DEVICE:+--device "$SOLVER_DEVICE"}
"${PYTHON:-.venv/bin/python}" benchmarks/real_slices.py "$PROBLEMS" "$OUT/slices" \
  --methods "${METHODS:-alps,sparsegpt,wanda,magnitude}" --resume
echo "reports: $OUT/report.md, $OUT/report.html, $OUT/slices/report.md"
