#!/usr/bin/env bash
# GPU readiness check: MobileNetV2-0.35 @224 training img/s with the seed augmentation (bf16/16-mixed,
# channels_last, augmentation on the GPU), the loader's img/s, GPU utilisation and the same run's
# accuracy sanity check, through stmclf's real training path on the offline digits dataset.
# Details: benchmarks/gpu_check.py. Installs nothing: needs the README set-up (scripts/setup_env.sh).
#
#   bash benchmarks/gpu_check.sh                      # one GPU, a few minutes (≤ 8)
#   bash benchmarks/gpu_check.sh --smoke              # CPU, 32×32, well under a minute (tests)
#   bash benchmarks/gpu_check.sh --epochs 5 --batch-size 256 --img-size 224 --out gpu_check.json
#
# On a bare GPU machine that has PyTorch but not the README set-up (no network): download the four
# missing wheels first (.venv/bin/python benchmarks/gpu_device.py wheels), carry .whl/ and run what
# `benchmarks/gpu_device.py command` prints (PYTHON=python3, the wheels on PYTHONPATH).
#
# Writes the JSON to --out (default gpu_check.json) and the log next to it (.log); when $OUT is set,
# also $OUT/gpu_check.json and $OUT/gpu_check.log. Exit 0, or 3 when the accuracy sanity check fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check: no Python at $PY; run 'bash scripts/setup_env.sh' first (or set \$PYTHON)" >&2
  exit 2
fi

# the logs: next to --out's JSON (else ./gpu_check.log) and in $OUT
json_out=""
prev=""
for arg in "$@"; do
  case "$arg" in
    --out=*) json_out="${arg#--out=}" ;;
  esac
  if [ "$prev" = "--out" ]; then json_out="$arg"; fi
  prev="$arg"
done
logs=()
if [ -n "$json_out" ]; then
  logs+=("${json_out%.json}.log")
elif [ -z "${OUT:-}" ]; then
  logs+=("gpu_check.log")
fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  logs+=("$OUT/gpu_check.log")
fi
for log in "${logs[@]}"; do mkdir -p "$(dirname "$log")"; done

export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
"$PY" "$ROOT/benchmarks/gpu_check.py" "$@" 2>&1 | tee "${logs[@]}"
