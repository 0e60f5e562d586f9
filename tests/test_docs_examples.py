"""The YAML examples of the documentation work as written (issue 12).

Every ```yaml block of docs/*.md and README.md is a config fragment: merged into a small valid
config it must be accepted by the real parser. Every block with a ``schedule:`` is also run
through ``stmclf plot-lr`` and its learning rates checked, and the first one through a real
two-epoch ``stmclf fit`` whose logged rates must follow the schedule.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import yaml

from conftest import config_text
from stmclf.cli.main import main
from stmclf.config import load_config
from stmclf.config.parser import load_yaml

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def yaml_blocks() -> list[tuple[str, str]]:
    """(``file:line``, text) of every YAML code block of the documentation."""
    blocks = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


BLOCKS = yaml_blocks()
SCHEDULE_BLOCKS = [(where, text) for where, text in BLOCKS if re.search(r"^\s*schedule:", text, re.M)]


def merged_config(block: str, tmp_path: Path, image_folder: Path, epochs: int = 30) -> Path:
    """The small test config with the block's sections merged in (a block's callbacks replace
    the config's: one learning-rate scheduler at most)."""
    base = yaml.safe_load(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=epochs))
    fragment = load_yaml(block, "fragment.yaml")

    def merge(into: dict, new: dict, path: tuple = ()) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict) and (*path, key) != ("training", "callbacks"):
                merge(into[key], value, (*path, key))
            else:
                into[key] = value

    merge(base, fragment)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def test_the_documentation_has_schedule_examples():
    assert len(BLOCKS) >= len(SCHEDULE_BLOCKS) >= 1
    assert any("'lambda epoch, lr: lr * 0.95'" in text for _, text in SCHEDULE_BLOCKS), \
        "docs/training.md should show the LearningRateScheduler form 'lambda epoch, lr: lr * 0.95'"


@pytest.mark.parametrize("where, block", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_yaml_block_is_an_accepted_config_fragment(where, block, tmp_path, image_folder):
    fragment = load_yaml(block, "fragment.yaml")
    assert isinstance(fragment, dict) and fragment, where
    cfg = load_config(["--config", str(merged_config(block, tmp_path, image_folder))])
    for section, values in fragment.items():
        assert getattr(cfg, section, None) is not None, f"{where}: section {section} lost"


@pytest.mark.parametrize("where, block", SCHEDULE_BLOCKS, ids=[w for w, _ in SCHEDULE_BLOCKS])
def test_schedule_example_gives_sane_learning_rates(where, block, tmp_path, image_folder, capsys):
    from stmclf.training.optimizers import initial_learning_rate
    from stmclf.training.plot_lr import learning_rates

    config = merged_config(block, tmp_path, image_folder, epochs=30)
    cfg = load_config(["--config", str(config)])
    schedule = cfg.training.callbacks["LearningRateScheduler"]["schedule"]
    assert isinstance(schedule, str) and "epoch" in schedule, (where, schedule)
    name, rates = learning_rates(cfg)
    assert name == "LearningRateScheduler"
    first = initial_learning_rate(cfg.training.optimizer)
    assert len(rates) == 30
    assert all(math.isfinite(r) and 0 < r <= 10 * first for r in rates), (where, rates)
    assert rates[-1] < rates[0], f"{where}: the example schedules decay: {rates}"
    if "lr * 0.95'" in block:
        assert rates == pytest.approx([first * 0.95 ** (e + 1) for e in range(30)])

    out = tmp_path / "lr.png"
    assert main(["plot-lr", "--config", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_documented_schedule_drives_a_real_fit(tmp_path, image_folder):
    """The canonical form in a two-epoch training: the logged rates are 0.001·0.95 and 0.001·0.95²."""
    (where, block), = [(w, b) for w, b in SCHEDULE_BLOCKS if "lr * 0.95'" in b][:1]
    config = merged_config(block, tmp_path, image_folder, epochs=2)
    assert main(["fit", "--config", str(config), "--training.precision", "32"]) == 0
    with open(tmp_path / "run" / "logs" / "metrics" / "train_metrics.csv", newline="") as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert rates == pytest.approx([0.001 * 0.95, 0.001 * 0.95 ** 2]), where
