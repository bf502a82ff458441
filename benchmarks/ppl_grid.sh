#!/usr/bin/env bash
# Perplexity grid on SmolLM2, on a GPU: every (setting, method) in ONE `layerprune demo` process,
# sharing the model load, the calibration ids, the evaluation stream and the dense perplexity.
#   bash benchmarks/ppl_grid.sh MODEL OUTDIR [NSAMPLES] [SEQLEN] [EVAL_TOKENS] [SETTINGS...]
# SETTINGS: a sparsity (unstructured, e.g. 0.8) or an N:M pattern (e.g. 2:4); default 0.5 0.7 0.8 2:4.
# EVAL_TOKENS 0 (the default) evaluates on the whole text. METHODS (environment) picks the methods,
# default alps,sparsegpt,wanda,magnitude; LEVERS (environment, e.g. block:pruned:uniform,groups:dense) adds a row
# per SEQUENTIAL:TARGET[:PROFILE] lever (layerwise/levers.py). OUTDIR/grid.json is rewritten after every row (a crash
# loses nothing finished); OUTDIR/grid.out holds the log and, at the end, the table (also printed).
set -uo pipefail
MODEL=$1 OUT=$2 NS=${3:-128} SL=${4:-2048} ET=${5:-0}
shift $(( $# < 5 ? $# : 5 ))
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(0.5 0.7 0.8 2:4)
mkdir -p "$OUT"
python3 -P -m layerprune.layerwise.cli demo --model "$MODEL" --methods "${METHODS:-alps,sparsegpt,wanda,magnitude}" \
  --settings "$(IFS=,; echo "${SETTINGS[*]}")" --nsamples "$NS" --seqlen "$SL" --eval-tokens "$ET" \
  --device cuda --eval-batch-size 8 --output "$OUT/grid.json" --quiet ${LEVERS:+--levers "$LEVERS"} 2>&1 | tee "$OUT/grid.out"
