#!/usr/bin/env bash
# Fresh-install check (a CI step of .ci/run; docs/install.md, "Checking an install"): installs
# stmclf the way a user does — NOT editable, with the dependencies pyproject.toml declares, the
# versions fixed by constraints.txt — into a throwaway venv, and runs it outside the checkout:
#   1. pip install .            → stmclf data fetch digits, a 1-epoch fit, export --format onnx --int8
#   2. pip install '.[tflite]'  → export --int8: the full-integer TFLite file must exist
# pip check must be clean after each install. Uses pip's own configuration (find-links, wheel
# cache, index). Needs ~9 GB in $TMPDIR (torch's CUDA wheels and TensorFlow) and takes minutes.
#   bash scripts/check_install.sh          # PYTHON=python3.12 to pick the interpreter;
#   KEEP=1 bash scripts/check_install.sh   # KEEP=1 keeps the temporary folder
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
WORK="$(mktemp -d "${TMPDIR:-/tmp}/stmclf-check-install.XXXXXX")"
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; fi
START=$SECONDS
CONSTRAINTS="$ROOT/constraints.txt"

step() { printf 'check_install: %-55s (%4d s)\n' "$*" $((SECONDS - START)); }
fail() { echo "check_install: FAILED: $*" >&2; exit 1; }
run() {  # run NAME COMMAND...: the output goes to $WORK/NAME.log, its end is shown when it fails
  local name=$1; shift
  step "$name"
  local rc=0
  "$@" >"$WORK/$name.log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then tail -n 40 "$WORK/$name.log" >&2; fail "$name (exit $rc)"; fi
}

# The package as pip builds it from a source tree, copied so that the build writes nothing into
# the checkout.
mkdir "$WORK/src" "$WORK/use"
tar -C "$ROOT" --exclude=__pycache__ -cf - pyproject.toml README.md stmclf | tar -C "$WORK/src" -xf -

run venv "$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
PIP=("$VPY" -m pip install -q -c "$CONSTRAINTS")
run pip-upgrade "$VPY" -m pip install -q -U pip
run install-torch "${PIP[@]}" torch torchvision   # torch first (docs/install.md)
run install-base "${PIP[@]}" "$WORK/src"
run pip-check-base "$VPY" -m pip check

cd "$WORK/use"
export PATH="$WORK/venv/bin:$PATH" TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
run installed-package "$VPY" -c "
import importlib.util, pathlib, stmclf, sys
where = pathlib.Path(stmclf.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in where.parents, f'stmclf imported from {where}, not the venv'
assert importlib.util.find_spec('tensorflow') is None, 'the base install pulled in TensorFlow'
print(where)"
run data-fetch stmclf data fetch digits --out digits
run fit stmclf fit --config "$ROOT/configs/quickstart.yaml" training.epochs=1 \
  dataset.training_path="$WORK/use/digits" hydra.run.dir="$WORK/use/run" mlflow.uri="$WORK/use/mlruns"
[ -f run/saved_models/best_augmented_model.ckpt ] || fail "fit wrote no run/saved_models/best_augmented_model.ckpt"
run export-onnx stmclf export --run run --int8 --format onnx
[ -f run/quantized_models/best_model_quant_qdq_pc.onnx ] || fail "export --format onnx --int8 wrote no QDQ ONNX file"

run install-tflite "${PIP[@]}" "$WORK/src[tflite]"
run pip-check-tflite "$VPY" -m pip check
run export-tflite stmclf export --run run --int8
tflite=run/quantized_models/quantized_model.tflite
[ -f "$tflite" ] || fail "export --int8 wrote no $tflite"
run tflite-is-int8 "$VPY" -c "
import sys
from ai_edge_litert.interpreter import Interpreter
detail = Interpreter(model_path=sys.argv[1]).get_input_details()[0]
assert detail['dtype'].__name__ in ('uint8', 'int8'), detail
print(detail['dtype'].__name__, detail['shape'])" "$tflite"
step "passed: $(du -sh "$WORK/venv" | cut -f1) venv"
