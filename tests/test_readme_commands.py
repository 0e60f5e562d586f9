"""README's "## Commands" table stays true: every command in it runs on shipped files.

Each row's code spans are mapped to concrete invocations (:data:`INVOCATIONS`); a row without one
fails :func:`test_every_readme_command_has_an_invocation`. The invocations run through the CLI's
entry point, in a workspace laid out as the README's journey leaves the repository root:
``configs/`` (the shipped files, copied), ``datasets/digits`` made by ``stmclf data fetch digits``,
and ``experiments_outputs/quickstart``, the run of ``configs/quickstart.yaml`` (one epoch, a few
batches) whose ``best_model.pt`` the shipped evaluation, quantization, prediction and
benchmarking configs name in ``general.model_path``.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from stmclf.cli.main import main
from stmclf.config.modes import OPERATION_MODES

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

RUN = "experiments_outputs/quickstart"
"""The quickstart run of the README's journey (``hydra.run.dir=experiments_outputs/quickstart``)."""
MODEL = f"{RUN}/saved_models/best_model.pt"
"""What the shipped configs of the modes that start from a model name in ``general.model_path``."""
FAST = "--training.epochs 1 --trainer.limit_train_batches 8"

FETCH = "stmclf data fetch digits --out datasets/digits"
FIT = f"stmclf fit --config configs/quickstart.yaml hydra.run.dir={RUN} {FAST}"

# README row's code span → (invocation, files it must leave in the workspace (globs)), in order.
INVOCATIONS: dict[str, list[tuple[str, list[str]]]] = {
    "stmclf fit --config x.yaml": [(FIT, [MODEL, f"{RUN}/logs/metrics/train_metrics.csv"])],
    "stmclf run --config x.yaml [--offline]": [
        ("stmclf run --config configs/evaluation.yaml", ["experiments_outputs/2*/results.json"]),
        ("stmclf run --config configs/benchmarking.yaml --offline", ["experiments_outputs/2*/benchmark.json"])],
    "stmclf export --run RUN --int8 [--ckpt MODEL] [--format onnx,tflite] [--per-layer]": [
        (f"stmclf export --run {RUN} --int8", [f"{RUN}/quantized_models/quantized_model.tflite",
                                               f"{RUN}/quantized_models/export_summary.json"])],
    "stmclf predict --model MODEL --images DIR [--run RUN]": [
        (f"stmclf predict --model {MODEL} --images images --run {RUN}", [f"{RUN}/predictions/predictions.csv"])],
    "stmclf benchmark --run RUN [--model MODEL] [--board B] [--offline]": [
        (f"stmclf benchmark --run {RUN} --board STM32H747I-DISCO --offline", [f"{RUN}/benchmark.json"])],
    "stmclf deploy-header --run RUN_DIR": [(f"stmclf deploy-header --run {RUN}", [f"{RUN}/generated/ai_model_config.h"])],
    "stmclf summary --config x.yaml": [("stmclf summary --config configs/quickstart.yaml", [])],
    "stmclf data fetch NAME --out DIR": [(FETCH, ["datasets/digits/9/*.png"])],
    "stmclf data check --config x.yaml": [("stmclf data check --config configs/quickstart.yaml", [])],
    "stmclf augment-preview --config x.yaml --out aug.png": [
        ("stmclf augment-preview --config configs/quickstart.yaml --out aug.png", ["aug.png"]),
        ("stmclf augment-preview --config configs/training_augmentation.yaml --out aug_training.png",
         ["aug_training.png"])],
    "stmclf plot-lr --config x.yaml --out lr.png": [
        ("stmclf plot-lr --config configs/quickstart.yaml --out lr.png", ["lr.png"]),
        ("stmclf plot-lr --config configs/training_augmentation.yaml --out lr_training.png", ["lr_training.png"])],
    "stmclf report --run RUN": [(f"stmclf report --run {RUN}", [f"{RUN}/report.html"])],
}

MODES_SHIPPED = ("training", "evaluation", "quantization", "prediction", "benchmarking")
"""Every mode but the chains has its own example; at least one chain_* example is shipped too."""


def readme_commands() -> list[str]:
    """The code spans of the first column of README's "## Commands" table, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # header, separator
    spans = [span for row in rows for span in re.findall(r"`([^`]+)`", row.split("|")[1])]
    assert spans, "no commands found in README's Commands table"
    return spans


def cli(command: str) -> int:
    """``stmclf ARGS`` through the CLI's entry point (``--print_config`` exits: its code counts)."""
    argv = shlex.split(command)
    assert argv[0] == "stmclf"
    try:
        return main(argv[1:])
    except SystemExit as done:
        return int(done.code or 0)


def _is_instance(invocation: str, span: str) -> bool:
    """The invocation is the span's command with its placeholders filled in: the same command
    words, and only options the span shows (config overrides with a dot or ``=`` aside)."""
    words, shown = shlex.split(invocation), shlex.split(span.replace("[", " ").replace("]", " "))
    n = 3 if shown[1] == "data" else 2
    options = [w for w in words if w.startswith("--") and "." not in w]
    return words[:n] == shown[:n] and all(option in shown for option in options)


def test_every_readme_command_has_an_invocation():
    spans = readme_commands()
    missing = [span for span in spans if span not in INVOCATIONS]
    assert not missing, f"README commands without an invocation in {Path(__file__).name}: {missing}"
    stale = [span for span in INVOCATIONS if span not in spans]
    assert not stale, f"invocations of commands README no longer shows: {stale}"
    for span, invocations in INVOCATIONS.items():
        for command, _ in invocations:
            assert _is_instance(command, span), (command, span)


def _config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_parses_and_says_how_to_run_it(path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli(f"stmclf run --config configs/{path.name} --print_config") == 0, capsys.readouterr().err
    assert "operation_mode:" in capsys.readouterr().out
    header = path.read_text().split("\n")[:5]
    comments = [line for line in header if line.startswith("#")]
    assert 2 <= len(comments) <= 4 and header[len(comments)] and not header[len(comments)].startswith("#"), header
    assert any(f"--config configs/{path.name}" in line for line in comments), comments
    config = _config(path)
    assert config["operation_mode"] in OPERATION_MODES
    # what the README journey makes: the digits of `stmclf data fetch`, the quickstart's model
    paths = [v for k, v in (config.get("dataset") or {}).items() if k.endswith("_path") and v]
    paths += [(config.get("prediction") or {}).get("test_files_path")] if "prediction" in config else []
    assert all(p == "datasets/digits" or p.startswith("datasets/digits/") for p in paths), paths
    model_path = (config.get("general") or {}).get("model_path")
    assert model_path in (None, MODEL)
    if model_path:
        assert f"hydra.run.dir={RUN}" in "\n".join(comments)


def test_shipped_configs_cover_every_mode_family():
    modes = {_config(path)["operation_mode"] for path in CONFIGS}
    assert set(MODES_SHIPPED) <= modes and any(m.startswith("chain_") for m in modes), modes
    training = [_config(p) for p in CONFIGS if _config(p)["operation_mode"] == "training"]
    assert any(c.get("data_augmentation") and any(name.startswith("LR") for name in c["training"]["callbacks"])
               for c in training), "an example with data_augmentation and an LR scheduler"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The repository root after the README's first two steps: digits fetched, quickstart trained."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", root / "configs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for command in (FETCH, FIT):
            assert cli(command) == 0, command
        images = root / "images"  # DIR of `stmclf predict`: a few files of one class
        images.mkdir()
        for path in sorted((root / "datasets/digits/3").iterdir())[:4]:
            shutil.copy(path, images / path.name)
    return root


@pytest.mark.slow
def test_every_readme_command_runs_on_shipped_files(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    ran = {FETCH, FIT}
    for span in readme_commands():
        for command, outputs in INVOCATIONS[span]:
            if command not in ran:
                code = cli(command)
                assert code == 0, f"{command}: exit {code}: {capsys.readouterr().err[-2000:]}"
                ran.add(command)
            for pattern in outputs:
                assert list(workspace.glob(pattern)), f"{command}: no {pattern}"
    for png in ("aug.png", "aug_training.png", "lr.png", "lr_training.png"):
        assert (workspace / png).read_bytes()[:4] == b"\x89PNG"
