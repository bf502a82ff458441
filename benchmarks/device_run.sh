#!/usr/bin/env bash
# One device call: install the checkout, run the GPU tests, then the per-layer benchmark.
#   bash benchmarks/device_run.sh [gpu_bench.py args...]
set -uo pipefail
# The package without installing it: layerprune/ plus links to the subpackage folders.
# (the subpackages as setup.cfg's package_dir maps them: layerprune.NAME = FOLDER)
mkdir -p /tmp/lp/layerprune && cp layerprune/*.py /tmp/lp/layerprune/
sed -n 's/^ *layerprune\.\([a-z_]*\) *= *\([^ ]*\) *$/\1 \2/p' setup.cfg | while read -r name folder; do
  ln -sfn "$PWD/$folder" "/tmp/lp/layerprune/$name"; done
export PYTHONPATH=/tmp/lp${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -P -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "${OUT:-.}/gpu_tests.log" | tail -15
python3 benchmarks/gpu_bench.py "$@" 2>&1 | tee "${OUT:-.}/gpu_bench.log" | grep -v '^{"layer"'
