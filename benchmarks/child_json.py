"""Run a benchmark script in its own process and read the JSON line it prints last.

The reference's measurements (``reference_loader.py``, ``reference_train.py``) import TensorFlow,
which does not share an interpreter with torch here, so each runs as a child process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_child_json(script: str, *args: str, env: dict | None = None) -> dict:
    """``python benchmarks/<script> args…``; its last stdout line starting with ``{`` as a dict.
    RuntimeError naming the script, exit code and last stderr line when it fails."""
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{script} failed (exit {done.returncode}): {last}")
    return json.loads(lines[-1])
