#!/usr/bin/env bash
# One device call: install the checkout, run the GPU tests, then the per-layer benchmark.
#   bash benchmarks/device_run.sh [gpu_bench.py args...]
set -uo pipefail
. benchmarks/checkout_package.sh  # the package without installing it, under /tmp/lp
export PYTHONPATH=/tmp/lp${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -P -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "${OUT:-.}/gpu_tests.log" | tail -15
python3 benchmarks/gpu_bench.py "$@" 2>&1 | tee "${OUT:-.}/gpu_bench.log" | grep -v '^{"layer"'
