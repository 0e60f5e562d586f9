"""benchmarks/step_breakdown.py: every leaf layer of the model is timed alone and counted once by
kind, and the kinds plus the remainder make up the measured step."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark script's own end-to-end run (~14 s on 2 cores); CI runs it with -m slow
def test_step_breakdown_accounts_for_every_layer():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_breakdown.py"), "--model", "resnet8",
                           "--batch", "4", "--precision", "32", "--repeats", "1", "--layers"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    step_ms = float(re.search(r"step ([\d.]+) ms \(", proc.stdout).group(1))
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.split("|")[1:-1]] for line in proc.stdout.splitlines()
             if line.startswith("| ") and "---" not in line and not line.startswith("| layers"))}
    # ResNet-8 v1 (Keras's layers): 9 convolutions (2 of them 1×1 shortcuts), 7 BN, 7 ReLU, 3 Add.
    assert rows["convolution"][0] == "9" and rows["BatchNorm"][0] == "7"
    assert rows["activation"][0] == "7" and rows["add"][0] == "3" and rows["dense"][0] == "1"
    assert "GFLOP/s" in rows["convolution"][5]
    totals = [float(cells[3]) for cells in rows.values()]
    assert abs(sum(totals) - step_ms) <= 0.005 * (len(totals) + 1)  # the remainder closes the sum (2-decimal rows)
    layer_lines = [line for line in proc.stdout.splitlines() if line.startswith("  layers.")]
    assert len(layer_lines) == sum(int(cells[0]) for cells in rows.values() if cells[0])
