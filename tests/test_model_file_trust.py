"""``--trust-model-file`` comes only from the command line: a config's ``training.model`` spec or a
crafted checkpoint's stored spec saying ``trust_model_file: true`` must not load a pickled model
file (loading one runs code from it). Real CLI runs on real files; the pickle's payload would
create a marker file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from stmclf.errors import UserError
from stmclf.models import build_model
from stmclf.trust import trusting_model_files

STMCLF = [sys.executable, "-m", "stmclf.cli.main"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 50, 10 * i, 0)).save(tmp_path / "data" / c / f"{i}.png")
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, evil)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"""dataset: {{training_path: {tmp_path / 'data'}, validation_split: 0.25, num_workers: 0}}
preprocessing: {{rescaling: {{scale: 1/127.5, offset: -1}}, resizing: {{aspect_ratio: fit, interpolation: bilinear}},
  color_mode: rgb}}
training:
  model:
    name: model_file
    path: {evil}
    input_shape: (32, 32, 3)
    trust_model_file: true
  batch_size: 4
  epochs: 1
  optimizer: {{Adam: {{learning_rate: 0.005}}}}
mlflow: {{uri: {tmp_path / 'mlruns'}}}
hydra: {{run: {{dir: {tmp_path / 'run'}}}}}
""")
    return config, evil, marker


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(STMCLF + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_config_cannot_grant_trust_in_a_pickled_model_file(tmp_path):
    config, _, marker = _files(tmp_path)
    proc = _run(["fit", "--config", str(config)], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--trust-model-file" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_crafted_checkpoint_cannot_grant_it_either(tmp_path):
    config, evil, marker = _files(tmp_path)
    spec = {"name": "model_file", "path": str(evil), "input_shape": [32, 32, 3], "trust_model_file": True}
    torch.save({"hyper_parameters": {"model_spec": spec, "class_names": ["cat", "dog"], "input_shape": [32, 32, 3],
                                     "rescaling": [1 / 127.5, -1.0], "optimizer": None}, "state_dict": {}},
               tmp_path / "crafted.ckpt")
    proc = _run(["predict", "--config", str(config), "--model", str(tmp_path / "crafted.ckpt"),
                 "--images", str(tmp_path / "data" / "cat")], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--trust-model-file" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_the_command_line_grant_rebuilds_a_trusted_pickled_model(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), path)
    spec = {"name": "model_file", "path": str(path), "input_shape": (8, 8, 3), "trust_model_file": True}
    with pytest.raises(UserError, match="--trust-model-file"):
        build_model(spec, num_classes=2, dropout=None)  # the spec's own value is ignored
    with trusting_model_files():
        model = build_model(spec, num_classes=2, dropout=None)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 2)
