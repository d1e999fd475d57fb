#!/usr/bin/env bash
# The GPU path on one real GPU, in one call of at most 5 minutes (bench/gpu_smoke.py says what it runs).
#
#   bash bench/gpu_smoke.sh prepare [eval]  # here (registry access): cp312 wheels of what a bare torch+CUDA
#                                     # machine lacks, into bench/out/gpu-smoke/wheels (ignored by git, never
#                                     # committed; about 30 MB, with `eval` lm-eval's too: about 120 MB)
#   bash bench/gpu_smoke.sh           # there (a GPU machine with Python 3.12 and a CUDA torch, no internet):
#                                     # installs those wheels into a private folder and runs bench/gpu_smoke.py
#   bash bench/gpu_smoke.sh cpu       # here: the same steps at toy size on the CPU, with the project's venv
#
# The project pins Python 3.11 (megatron-core's last 3.11 wheel); the GPU machine has 3.12, so the harness runs from
# source with cp312 wheels of megatron-core, lm-eval and the pure-Python packages it imports. Output: the JSON
# summary on stdout and in $OUT/summary.json ($OUT as the device tool sets it, else bench/out/gpu-smoke/out).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/out/gpu-smoke/wheels
OUT=${OUT:-bench/out/gpu-smoke/out}
# no dependencies resolved: what the training, export and transformers-evaluation path imports beyond torch, numpy
# and the standard library, each at the version the project's venv holds (what the test suite ran against): about
# 30 MB. lm-eval with datasets (pyarrow alone is 55 MB) does not fit the 64 MiB that may travel: `prepare eval`
# adds it for a machine that can take it; without it the smoke scores the export with transformers directly.
PACKAGES=(
  megatron-core packaging omegaconf antlr4-python3-runtime pyyaml typer click shellingham rich markdown-it-py mdurl
  pygments jinja2 markupsafe psutil tokenizers transformers huggingface-hub safetensors regex tqdm filelock fsspec
  requests urllib3 idna certifi charset-normalizer httpx httpcore h11 anyio sniffio
)
EVAL_PACKAGES=(
  lm-eval datasets dill xxhash multiprocess pyarrow pandas python-dateutil pytz tzdata six accelerate more-itertools
  jsonlines pytablewriter evaluate sacrebleu portalocker tabulate colorama lxml zstandard
)
PURE_SDISTS=(sqlitedict word2number)  # lm-eval's, published as source only: built into pure-Python wheels here

case "${1:-run}" in
prepare)
  mkdir -p "$WHEELS"
  pinned=()
  wanted=("${PACKAGES[@]}")
  [[ ${2:-} == eval ]] && wanted+=("${EVAL_PACKAGES[@]}")
  for p in "${wanted[@]}"; do
    v=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null) \
      && pinned+=("$p==$v") || pinned+=("$p")
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$WHEELS" "${pinned[@]}"
  if [[ ${2:-} == eval ]]; then .venv/bin/python -m pip wheel -q --no-deps -w "$WHEELS" "${PURE_SDISTS[@]}"; fi
  du -sh "$WHEELS"
  ;;
cpu)
  mkdir -p "$OUT"
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled \
    .venv/bin/python bench/gpu_smoke.py --out "$OUT" --cpu
  ;;
run)
  [[ -d $WHEELS ]] || { echo "no wheels in $WHEELS: run 'bash bench/gpu_smoke.sh prepare' where PyPI is reachable"; exit 2; }
  SITE=$(mktemp -d)
  trap 'rm -rf "$SITE"' EXIT
  python3 -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  PYTHONPATH="$PWD:$SITE" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled \
    timeout 280 python3 bench/gpu_smoke.py --out "$OUT"
  ;;
*)
  echo "usage: bash bench/gpu_smoke.sh [prepare|cpu|run]"; exit 2 ;;
esac
