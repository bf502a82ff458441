#!/usr/bin/env bash
# Perplexity grid on SmolLM2: one `layerprune prune` run per (setting, method), on a GPU.
#   bash benchmarks/ppl_grid.sh MODEL OUTDIR [NSAMPLES] [SEQLEN] [EVAL_TOKENS] [SETTINGS...]
# SETTINGS are "sparsity:pattern" (e.g. 0.8:unstructured, -:2:4); results go to OUTDIR/*.json
# (the run logs) and one line per run to OUTDIR/grid.tsv, written as each run finishes.
set -uo pipefail
MODEL=$1 OUT=$2 NS=${3:-128} SL=${4:-2048} ET=${5:-0}
shift $(( $# < 5 ? $# : 5 ))
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(0.8:unstructured -:2:4 0.5:unstructured)
mkdir -p "$OUT"
for setting in "${SETTINGS[@]}"; do
  sp=${setting%%:*} pat=${setting#*:}
  for m in alps sparsegpt wanda magnitude; do
    args=(--pattern "$pat"); [ "$sp" != - ] && args+=(--sparsity "$sp")
    [ "$ET" != 0 ] && args+=(--eval-tokens "$ET")
    start=$SECONDS
    python3 -m layerprune.layerwise.cli prune --model "$MODEL" --method "$m" "${args[@]}" --nsamples "$NS" \
      --seqlen "$SL" --text wiki-test --device cuda --output "/tmp/pruned-$m" --log "$OUT/$m-${pat/:/of}-$sp.json" \
      --quiet > "$OUT/$m-${pat/:/of}-$sp.out" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\t%.1f\n' "$m" "$pat" "$sp" "$rc" "$((SECONDS - start))" >> "$OUT/grid.tsv"
    tail -3 "$OUT/$m-${pat/:/of}-$sp.out"
    rm -rf "/tmp/pruned-$m"
  done
done
