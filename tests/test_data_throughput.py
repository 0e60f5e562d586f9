"""benchmarks/data_throughput.py --alternate: rounds of the reference loader (TensorFlow tf.data, its
own process) then our loader's epoch 1 on a fresh cache, each round's ratio from its own pair, on
real PNG files the script writes."""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark script's own end-to-end run (~40 s on 2 cores); CI runs it with -m slow
def test_alternated_rounds_give_each_round_its_own_ratio(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_throughput.py"), "--images", "160",
                           "--epochs", "2", "--only", "png28", "--skip", "stages", "loader", "kernels", "step",
                           "--alternate", "2", "--fashion-mnist", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(re.findall(r"png28 +round \d: reference", proc.stdout)) == 2
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| png28 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    refs = [float(x.replace(",", "")) for x in cells[1].split(" · ")]
    ours = [float(x.replace(",", "")) for x in cells[2].split(" · ")]
    ratios = [float(x) for x in cells[3].split(" · ")]
    assert len(refs) == len(ours) == len(ratios) == 2 and min(refs + ours) > 0
    for o, r, ratio in zip(ours, refs, ratios):
        assert ratio == pytest.approx(o / r, abs=0.01)
    assert float(cells[4].rstrip("×")) == pytest.approx(statistics.mean(ours) / statistics.mean(refs), abs=0.01)
    assert float(cells[5].split("×")[0]) == pytest.approx(statistics.median(ratios), abs=0.01)
