"""A checkpoint's stored spec is checked with a config's rules before its model is rebuilt: a real
``best_model.pt`` / ``.ckpt`` edited to claim a 100000x100000 input (or a width multiplier whose
model cannot fit in memory) is one line naming the file and the stored key, exit 2, at every entry
point that rebuilds a checkpoint's model; the allocator's failure while building one is one line
too. The CLI runs in a subprocess under a 4 GB address-space limit, so that code without the check
fails with the allocator's traceback rather than exhausting the machine's memory."""
from __future__ import annotations

import os
import pickle
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import COLORS, config_text, error_of, write_image_folder
from stmclf.cli.main import main
from stmclf.config.rules import available_memory

HUGE = [100000, 100000, 3]
ADDRESS_SPACE = 4 << 30


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _stmclf(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stmclf", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited)


def _edited(source: Path, target: Path, **spec) -> Path:
    """A copy of the checkpoint ``source`` whose stored spec has the keys ``spec`` (both input shapes
    for ``input_shape``)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    hparams["model_spec"] = {**hparams["model_spec"], **spec}
    if "input_shape" in spec:
        hparams["input_shape"] = list(spec["input_shape"])
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch run of MobileNetV2-0.35 at 32x32 on two small colour classes."""
    tmp = tmp_path_factory.mktemp("ckspec")
    data = write_image_folder(tmp / "data", per_class=4, classes={k: COLORS[k] for k in ("cat", "dog")})
    config = tmp / "fit.yaml"
    config.write_text(config_text(data, tmp / "run", tmp / "mlruns", epochs=1))
    assert main(["fit", "--config", str(config)]) == 0
    saved = tmp / "run" / "saved_models"
    return tmp, data, config, saved / "best_model.pt", saved / "last_augmented_model.ckpt"


def _check_refused(proc: subprocess.CompletedProcess, key: str, path: Path, stored: str) -> None:
    err = error_of(proc.stderr)  # after the command's log lines
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith(f"stmclf: error: {key}: ") and str(path) in err and stored in err, err


@pytest.mark.slow  # every entry point in turn (~55 s on 2 cores)
def test_a_stored_input_shape_out_of_bounds_is_refused_at_every_entry_point(trained, tmp_path):
    tmp, data, config, best, last = trained
    huge = _edited(best, tmp_path / "huge.pt", input_shape=HUGE)
    huge_ckpt = _edited(last, tmp_path / "huge.ckpt", input_shape=HUGE)
    stored = "stored hyper_parameters.input_shape: the height must be from 1 to 8,192"
    run = tmp_path / "huge_run"  # a run folder whose best_model.pt was edited
    shutil.copytree(best.parent.parent, run)
    shutil.copy(huge, run / "saved_models" / "best_model.pt")
    fit = ["fit", "--config", config, "--hydra.run.dir", tmp_path / "out", "--mlflow.uri", tmp_path / "ml"]
    evaluation = tmp_path / "eval.yaml"
    evaluation.write_text(config.read_text().replace("general:\n", f"general:\n  model_path: {huge}\n", 1)
                          .replace("operation_mode: training", "operation_mode: evaluation")
                          .replace(str(tmp / "run"), str(tmp_path / "eval_run")))
    cases = [
        ("--model", huge, ["predict", "--config", config, "--model", huge, "--images", data / "cat"]),
        ("--ckpt", huge, ["export", "--config", config, "--run", tmp_path / "exp", "--ckpt", huge, "--no_int8",
                          "--format", "onnx"]),
        ("--run", run / "saved_models" / "best_model.pt", ["export", "--run", run, "--no_int8",
                                                           "--format", "onnx"]),
        ("training.resume_training_from", huge_ckpt, fit + ["--training.resume_training_from", huge_ckpt]),
        ("training.model.pretrained_model_path", huge, fit + ["--training.model.pretrained_model_path", huge]),
        ("general.model_path", huge, ["run", "--config", evaluation]),
    ]
    for key, path, args in cases:
        _check_refused(_stmclf(*args, cwd=tmp_path), key, path, stored)
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval_run").exists()


def test_a_stored_model_too_big_for_the_memory_is_refused(trained, tmp_path):
    """``alpha: 1000``: 8 TB of parameters, counted without allocating them."""
    tmp, data, config, best, _ = trained
    wide = _edited(best, tmp_path / "wide.pt", alpha=1000)
    proc = _stmclf("predict", "--config", config, "--model", wide, "--images", data / "cat", cwd=tmp_path)
    _check_refused(proc, "--model", wide, "stored hyper_parameters.model_spec: its model")
    assert "more than the" in proc.stderr


def test_the_allocators_failure_while_building_a_checkpoints_model_is_one_line(trained, tmp_path):
    """A model that the memory estimate lets through (its ~6 GB of parameters fit in the machine's
    memory) but that this process cannot allocate (4 GB address space): one line naming the file."""
    tmp, data, config, best, _ = trained
    wide = _edited(best, tmp_path / "wide.pt", alpha=27)
    proc = _stmclf("predict", "--config", config, "--model", wide, "--images", data / "cat", cwd=tmp_path)
    _check_refused(proc, "--model", wide, "")
    if available_memory() > 7 << 30:  # else the estimate refuses it first
        assert "not enough memory to build its model" in proc.stderr, proc.stderr


def test_a_pickled_pretrained_model_path_is_refused_without_torchs_warning_and_advice(trained, tmp_path):
    """torch's pickle-protocol UserWarning and its advice to load the file with weights_only=False
    (the wrong advice in front of a hostile file) are not shown."""
    tmp, data, config, _, _ = trained
    marker = tmp_path / "PWNED"
    payload = tmp_path / "payload.ckpt"
    payload.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=4))  # a raw pickle, not a zip
    proc = _stmclf("fit", "--config", config, "--hydra.run.dir", tmp_path / "out", "--mlflow.uri", tmp_path / "ml",
                   "--training.model.pretrained_model_path", payload, cwd=tmp_path)
    _check_refused(proc, "training.model.pretrained_model_path", payload, "--trust-model-file")
    assert "weights_only" not in proc.stderr and "UserWarning" not in proc.stderr
    assert not marker.exists()
