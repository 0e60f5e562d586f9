"""Shared fixtures: real image folders and configs written to temporary directories."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "STMCLF_CACHE" not in os.environ:  # keep the tests' image caches out of the user's home
    import tempfile

    os.environ["STMCLF_CACHE"] = tempfile.mkdtemp(prefix="stmclf-test-cache-")

# Triton (pulled in by torch's compiler stack) segfaults when its native library is loaded after
# TensorFlow's; load it first, since some test modules import TensorFlow at collection time.
try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - CPU-only torch builds have no triton
    pass

COLORS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 220)}


def write_image_folder(root: Path, per_class: int = 12, size: tuple[int, int] = (24, 28),
                       fmt: str = "png", classes: dict = COLORS, seed: int = 0) -> Path:
    """Class folders of small noisy images whose mean colour identifies the class."""
    rng = np.random.default_rng(seed)
    for name, color in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size[0], size[1], 3))
            pixels = np.clip(np.array(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data") / "train")


QUANTIZATION = """quantization:
  quantizer: TFlite_converter
  quantization_type: PTQ
  quantization_input_type: uint8
  quantization_output_type: float
  granularity: per_channel
  export_dir: quantized_models
"""
"""The ST quantization section (int8 TFLite, uint8 in, float out), for ``config_text(extra=...)``."""


DEFAULT_MODEL = """\
  model:
    name: mobilenet
    version: v2
    alpha: 0.35
    input_shape: (32, 32, 3)
"""


def config_text(train_dir: Path, run_dir: Path, mlruns: Path, *, epochs: int = 2, extra: str = "",
                model: str = DEFAULT_MODEL) -> str:
    """A small training config; ``model`` is the indented ``training.model`` block ('' for none)."""
    return f"""\
general:
  project_name: pytest_project
  global_seed: 7
operation_mode: training
dataset:
  training_path: {train_dir}
  validation_split: 0.25
  seed: 3
  num_workers: 0
preprocessing:
  rescaling:
    scale: 1/127.5
    offset: -1
  resizing:
    aspect_ratio: fit
    interpolation: bilinear
  color_mode: rgb
training:
{model}  batch_size: 8
  epochs: {epochs}
  optimizer:
    Adam:
      learning_rate: 0.005
  callbacks:
    ReduceLROnPlateau:
      monitor: val_accuracy
      factor: 0.5
      patience: 10
mlflow:
  uri: {mlruns}
hydra:
  run:
    dir: {run_dir}
trainer:
  enable_model_summary: false
""" + extra


def as_evaluation_of(text: str, model_path: Path) -> str:
    """``text`` (a :func:`config_text` config) as an evaluation (``stmclf run``) of the model file ``model_path``."""
    return text.replace("operation_mode: training", "operation_mode: evaluation").replace(
        "general:\n", f"general:\n  model_path: {model_path}\n", 1)


def evaluation_of_a_model_module(tmp_path: Path, image_folder: Path, module: str, cls: str) -> Path:
    """The config of an evaluation (``stmclf run``) of the pickled model ``cls()`` of the module file
    ``tmp_path/module.py`` (the test writes it: a model that blocks or signals while evaluated), saved
    by another interpreter as ``tmp_path/module.pt``; its path (``tmp_path/c.yaml``)."""
    import subprocess

    subprocess.run([sys.executable, "-c", f"import torch, {module} as m; torch.save(m.{cls}(), '{module}.pt')"],
                   cwd=tmp_path, check=True, timeout=300)
    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1,
                       model="  model:\n    input_shape: (32, 32, 3)\n")
    text = as_evaluation_of(text, tmp_path / (module + ".pt"))
    (tmp_path / "c.yaml").write_text(text)
    return tmp_path / "c.yaml"


@pytest.fixture
def write_config(tmp_path, image_folder):
    def make(name: str = "config.yaml", **kwargs) -> Path:
        kwargs.setdefault("train_dir", image_folder)
        kwargs.setdefault("run_dir", tmp_path / "run")
        kwargs.setdefault("mlruns", tmp_path / "mlruns")
        path = tmp_path / name
        path.write_text(config_text(**kwargs))
        return path
    return make


def run_cli(*args: str, cwd: Path | None = None):
    """Run ``python -m stmclf ARGS`` in a subprocess (exit code, stdout, stderr)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "stmclf", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def keras():
    """tf_keras (the reference's Keras), for parity tests; the test is skipped without it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tf_keras")


def closed_port_url() -> str:
    """A local URL nothing listens on: a download from it fails at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def no_weight_downloads(tmp_path, monkeypatch):
    """No real weights cache, no Keras cache, and any download attempt fails fast."""
    from stmclf.models.pretrained import URL_ENV

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("STMCLF_CACHE", str(tmp_path / "stmclf-cache"))
    monkeypatch.setenv(URL_ENV, closed_port_url())


class KerasDownload(Exception):
    """Raised instead of tf_keras' download (:func:`keras_download_request`)."""


def keras_download_request(monkeypatch, build) -> dict:
    """What tf_keras asks its downloader for (``fname``, ``origin``, ``subdir``) while ``build()``
    makes a model with ImageNet weights; nothing is downloaded."""
    from tf_keras.src.utils import data_utils

    asked = {}

    def get_file(fname, origin, **kwargs):
        asked.update(fname=fname, origin=origin, subdir=kwargs.get("cache_subdir"))
        raise KerasDownload

    monkeypatch.setattr(data_utils, "get_file", get_file)
    with pytest.raises(KerasDownload):
        build()
    return asked


def assert_offline_weights_error(model, spec: dict, cache: Path, remote: str) -> None:
    """``pretrained_weights: imagenet`` offline (:func:`no_weight_downloads`): one line naming the
    file ``remote`` (``folder/file.h5`` on the weights server), its URL and where to put it; the
    model unchanged."""
    import copy

    import torch

    from stmclf.errors import ConfigError
    from stmclf.models.pretrained import URL_ENV, apply_pretrained

    url = os.environ[URL_ENV].rstrip("/") + "/" + remote
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError) as info:
        apply_pretrained(model, spec, cache_dir=cache)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"training.model.pretrained_weights: cannot download {remote.rsplit('/', 1)[-1]} "
                              f"from {url} (")
    assert message.endswith(f"; put the file in {cache}/")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture
def forget_model_sources(monkeypatch):
    """A function that forgets the model files and checkpoint copies this process has read
    (``stmclf.models.model_file_entry``), as in a new process: a rebuild then finds only the
    copies stored in the checkpoints it reads."""
    def forget() -> None:
        for name in ("_contents", "_origins", "_damaged"):
            monkeypatch.setattr(f"stmclf.models.model_file_entry.{name}", {}, raising=False)

    return forget


def error_of(err: str) -> str:
    """The error a failed command printed: its stderr from the ``stmclf: ...`` line on (the log
    lines of the command, on stderr too, come before it), stripped; no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("stmclf: ")), 0)
    return "\n".join(lines[start:])


SIGNALLER = """\
import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    def __init__(self, signum: int, epoch: int, batch: int):
        self.signum, self.epoch, self.batch = signum, epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)
"""
"""A callbacks module for subprocess fits (``training.callbacks`` by class path, with
``--trust-code``): ``SignalAt(signum, epoch, batch)`` sends ``signum`` to the process there."""
