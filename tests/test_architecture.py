"""The import graph runs one way (pyproject's import-linter contracts) and the mode table is the
only list of operation modes."""
from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "KEPT" in done.stdout


def test_one_list_of_operation_modes():
    from stmclf.config import rules, sections
    from stmclf.config.modes import MODES, OPERATION_MODES

    assert sections.OPERATION_MODES is OPERATION_MODES
    assert set(typing.get_args(sections.OperationMode)) == set(MODES)
    assert rules.QUANTIZATION_GROUP == tuple(m for m, spec in MODES.items() if "quantize" in spec.stages)
    assert "chain_tqeb" in rules.TRAINING_GROUP and "chain_tqeb" in rules.BENCHMARKING_GROUP
