"""Bitwise determinism on CPU: same seed → same weights; 2 epochs + resume → the 4-epoch weights."""
from __future__ import annotations

import pytest
import torch

from conftest import config_text
from stmclf.config import load_config
from stmclf.training.fit import train

AUGMENT = """\
data_augmentation:
  random_flip: {mode: horizontal}
  random_contrast: {factor: 0.3}
  random_translation: {width_factor: 0.1, height_factor: 0.1}
"""


def _config(tmp_path, image_folder, name, epochs, workers=0, model=None):
    text = config_text(image_folder, tmp_path / name, tmp_path / "mlruns", epochs=epochs, extra=AUGMENT,
                       **({"model": model} if model is not None else {}))
    text = text.replace("num_workers: 0", f"num_workers: {workers}").replace(
        "  global_seed: 7\n", "  global_seed: 7\n  deterministic_ops: True\n")
    text = text.replace("  batch_size: 8\n", "  batch_size: 8\n  dropout: 0.2\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _weights(checkpoint):
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_two_runs_are_bitwise_identical_with_workers(tmp_path, image_folder):
    first = train(load_config(["--config", str(_config(tmp_path, image_folder, "a", 2, workers=2))]))
    second = train(load_config(["--config", str(_config(tmp_path, image_folder, "b", 2, workers=2))]))
    _assert_identical(_weights(first.last_checkpoint), _weights(second.last_checkpoint))


@pytest.mark.slow
def test_resume_is_exact(tmp_path, image_folder):
    straight = train(load_config(["--config", str(_config(tmp_path, image_folder, "straight", 4))]))
    half = train(load_config(["--config", str(_config(tmp_path, image_folder, "half", 2))]))
    resume = _config(tmp_path, image_folder, "resumed", 4, model="")
    resume.write_text(resume.read_text().replace(
        "training:\n", f"training:\n  resume_training_from: {half.last_checkpoint}\n", 1))
    resumed = train(load_config(["--config", str(resume)]))
    _assert_identical(_weights(straight.last_checkpoint), _weights(resumed.last_checkpoint))
    a = torch.load(straight.last_checkpoint, weights_only=True)["optimizer_states"][0]["state"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["optimizer_states"][0]["state"]
    assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


@pytest.mark.slow
def test_different_seed_differs(tmp_path, image_folder):
    a = train(load_config(["--config", str(_config(tmp_path, image_folder, "s1", 1))]))
    other = _config(tmp_path, image_folder, "s2", 1)
    other.write_text(other.read_text().replace("global_seed: 7", "global_seed: 8"))
    b = train(load_config(["--config", str(other)]))
    wa, wb = _weights(a.last_checkpoint), _weights(b.last_checkpoint)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


KILLER = """\
import os
import signal

from lightning.pytorch.callbacks import Callback


class KillMidEpoch(Callback):
    def __init__(self, epoch: int = 2, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path, image_folder):
    from conftest import run_cli

    straight = train(load_config(["--config", str(_config(tmp_path, image_folder, "straight", 4))]))
    (tmp_path / "killer.py").write_text(KILLER)
    killed = _config(tmp_path, image_folder, "killed", 4)
    killed.write_text(killed.read_text().replace("  callbacks:\n", "  callbacks:\n    killer.KillMidEpoch:\n"
                                                                   "      epoch: 2\n", 1))
    code, _, _ = run_cli("fit", "--config", str(killed), cwd=tmp_path)
    assert code == -9  # SIGKILL in the middle of the third epoch
    saved = tmp_path / "killed" / "saved_models"
    assert sorted(p.name for p in saved.iterdir()) == ["best_augmented_model.ckpt", "last_augmented_model.ckpt"]
    last = saved / "last_augmented_model.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # only the interrupted epoch is lost
    resume = _config(tmp_path, image_folder, "resumed", 4, model="")
    resume.write_text(resume.read_text().replace(
        "training:\n", f"training:\n  resume_training_from: {last}\n", 1))
    resumed = train(load_config(["--config", str(resume)]))
    _assert_identical(_weights(straight.last_checkpoint), _weights(resumed.last_checkpoint))
