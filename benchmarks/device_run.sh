#!/usr/bin/env bash
# One device call: install the checkout, run the GPU tests, then the per-layer benchmark.
#   bash benchmarks/device_run.sh [gpu_bench.py args...]
set -uo pipefail
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { cat /tmp/pip.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15
python3 benchmarks/gpu_bench.py "$@" 2>&1 | tee "${OUT:-.}/gpu_bench.log" | grep -v '^{"layer"'
