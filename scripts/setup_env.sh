#!/usr/bin/env bash
# The pinned development set-up (docs/install.md, "Pinned development set-up"): creates ./.venv
# (or $VENV) and installs stmclf into it, editable, with the tflite and dev extras, every version
# fixed by constraints.txt. Idempotent: a stamp named after constraints.txt and pyproject.toml
# records a complete install; re-running installs only what is missing or changed.
# Order matters (shared/spec stack notes): torch and torchvision first (from pip's find-links /
# wheel cache when present), then the package with its dependencies and extras, which includes
# the TFLite path (onnx2tf 1.28.x declares no dependencies: the tflite extra lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
PIP="$VENV/bin/pip"
stamp="$VENV/.stmclf-deps-$(cat constraints.txt pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$PIP" install -q -c constraints.txt torch torchvision
  "$PIP" install -q -c constraints.txt -e '.[tflite,dev]'
  touch "$stamp"
fi
