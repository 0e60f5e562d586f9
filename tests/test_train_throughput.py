"""benchmarks/train_throughput.py: one row per round and configuration, and the median of the
ratios taken within each round (``--rounds``), on a tiny real run (stmclf fit, the raw step and
the reference's tf_keras step)."""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark script's own end-to-end run (~29 s on 2 cores); CI runs it with -m slow
def test_rounds_alternate_and_summarise_the_ratios_within_each_round():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--models", "resnet8",
                           "--batch", "8", "--images", "40", "--epochs", "2", "--precision", "32", "--rounds", "2",
                           "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if re.match(r"\| \d \| ResNet-8", line)]
    assert [r[0].strip() for r in rows] == ["1", "2"]
    fit_tf = [float(r[8]) for r in rows]
    fit_raw = [float(r[6]) for r in rows]
    for r in rows:  # each ratio is the row's own fit over its own TF / raw figure
        fit, raw, tf = (float(r[i].replace(",", "")) for i in (4, 5, 7))
        for ratio, below in ((float(r[6]), raw), (float(r[8]), tf)):
            # the figures are printed rounded to whole img/s, the ratio (2 decimals) from the exact ones
            assert (fit - 0.5) / (below + 0.5) - 0.005 <= ratio <= (fit + 0.5) / (below - 0.5) + 0.005, r
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("| ResNet-8 @32 | off | 32 |"))
    medians = [float(cell.split()[0]) for cell in summary.split("|")[4:6]]
    assert medians[0] == pytest.approx(statistics.median(fit_tf), abs=0.006)
    assert medians[1] == pytest.approx(statistics.median(fit_raw), abs=0.006)
    assert f"({min(fit_tf):.2f}–{max(fit_tf):.2f})" in summary
