#!/usr/bin/env bash
# Creates ./.venv with the pinned stack (see docs/install.md) and installs stmclf into it.
# Idempotent: re-running only installs what is missing. Order matters (shared/spec stack notes):
# torch first (from the local wheel cache when present), then the training stack, then the
# TFLite path, whose onnx2tf 1.28.8 declares no dependencies of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
PIP="$VENV/bin/pip"
stamp="$VENV/.stmclf-deps-$(sha1sum requirements.txt | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$PIP" install -q torch==2.14.1 torchvision==0.29.1
  "$PIP" install -q -r requirements.txt
  touch "$stamp"
fi
"$PIP" install -q --no-deps -e .
