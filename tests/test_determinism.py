"""Bitwise determinism on CPU: same seed → same weights; 2 epochs + resume → the 4-epoch weights; a run
killed anywhere (mid-epoch, during a checkpoint write) resumes to the same weights."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import config_text
from stmclf.config import load_config
from stmclf.errors import ConfigError, Interrupted
from stmclf.training.fit import train
from stmclf.training.progress import MID_EPOCH_KEY

AUGMENT = """\
data_augmentation:
  random_flip: {mode: horizontal}
  random_contrast: {factor: 0.3}
  random_translation: {width_factor: 0.1, height_factor: 0.1}
"""


def _config(tmp_path, image_folder, name, epochs, workers=0, model=None, training=""):
    """The determinism config (``hydra.run.dir``: ``tmp_path/name``); ``training``: extra lines
    under ``training:``."""
    text = config_text(image_folder, tmp_path / name, tmp_path / "mlruns", epochs=epochs, extra=AUGMENT,
                       **({"model": model} if model is not None else {}))
    text = text.replace("num_workers: 0", f"num_workers: {workers}").replace(
        "  global_seed: 7\n", "  global_seed: 7\n  deterministic_ops: True\n")
    text = text.replace("  batch_size: 8\n", "  batch_size: 8\n  dropout: 0.2\n" + training)
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


def _resumed(tmp_path, image_folder, checkpoint, name="resumed", epochs=4, workers=0):
    resume = _config(tmp_path, image_folder, name, epochs, workers=workers, model="")
    resume.write_text(resume.read_text().replace(
        "training:\n", f"training:\n  resume_training_from: {checkpoint}\n", 1))
    return train(load_config(["--config", str(resume)]))


def _rows(csv_path):
    return Path(csv_path).read_text().splitlines()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, image_folder):
    """The uninterrupted 4-epoch run that every resumed run must equal (its default
    ``checkpoint_every: {minutes: 5}`` does not fire in so short a run)."""
    tmp = tmp_path_factory.mktemp("straight")
    return train(load_config(["--config", str(_config(tmp, image_folder, "straight", 4))]))


@pytest.mark.slow
def test_resume_is_exact(tmp_path, image_folder, straight):
    half = train(load_config(["--config", str(_config(tmp_path, image_folder, "half", 2))]))
    resumed = _resumed(tmp_path, image_folder, half.last_checkpoint)
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

import torch
from lightning.pytorch.callbacks import Callback


class KillMidEpoch(Callback):
    \"\"\"SIGKILL after batch ``batch`` of epoch ``epoch`` (before that batch's checkpoint, if one is due).\"\"\"

    def __init__(self, epoch: int = 2, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class KillDuringSave(KillMidEpoch):
    \"\"\"SIGKILL in the middle of writing the checkpoint that follows batch ``batch`` of epoch ``epoch``.\"\"\"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            def dying_save(obj, handle, *args, **kwargs):
                handle.write(b"PK\\x03\\x04 half a checkpoint")
                handle.flush()
                os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = dying_save
"""
EVERY_2_STEPS = "  checkpoint_every: {steps: 2}\n"
"""27 training images, batches of 8: 4 steps per epoch; a mid-epoch checkpoint after the 2nd."""


def _kill(config, tmp_path, killer, epoch, batch):
    """Run ``stmclf fit`` on ``config`` with the ``killer`` callback; it must die of SIGKILL."""
    from conftest import run_cli

    (tmp_path / "killer.py").write_text(KILLER)
    config.write_text(config.read_text().replace(
        "  callbacks:\n", f"  callbacks:\n    killer.{killer}:\n      epoch: {epoch}\n      batch: {batch}\n", 1))
    code, _, err = run_cli("fit", "--config", str(config), "--trust-code", cwd=tmp_path)
    assert code == -9, err[-3000:]
    assert "weights_only" not in err  # Lightning's warning for a save that does not say what it keeps


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path, image_folder, straight):
    """Killed in the third epoch after its mid-epoch checkpoint (loader worker processes): the
    resumed run continues at the next batch and ends with the uninterrupted run's weights and
    metrics."""
    killed = _config(tmp_path, image_folder, "killed", 4, workers=2, training=EVERY_2_STEPS)
    _kill(killed, tmp_path, "KillMidEpoch", epoch=2, batch=2)
    saved = tmp_path / "killed" / "saved_models"
    assert sorted(p.name for p in saved.iterdir()) == ["best_augmented_model.ckpt", "last_augmented_model.ckpt"]
    last = saved / "last_augmented_model.ckpt"
    state = torch.load(last, weights_only=True)
    # written after the 2nd of the 4 batches of the third epoch: only the 3rd batch is lost
    assert state["epoch"] == 2 and state["global_step"] == 10 and state[MID_EPOCH_KEY]["batches"] == 2
    resumed = _resumed(tmp_path, image_folder, last, workers=2)
    _assert_identical(_weights(straight.last_checkpoint), _weights(resumed.last_checkpoint))
    # the interrupted epoch's training loss and accuracy count the batches before the kill too
    assert _rows(resumed.run_dir.metrics_csv)[1:] == _rows(straight.run_dir.metrics_csv)[3:]


@pytest.mark.slow
def test_a_run_killed_in_its_first_epoch_resumes_exactly(tmp_path, image_folder, straight):
    killed = _config(tmp_path, image_folder, "killed", 4, training=EVERY_2_STEPS)
    _kill(killed, tmp_path, "KillMidEpoch", epoch=0, batch=2)
    saved = tmp_path / "killed" / "saved_models"
    assert sorted(p.name for p in saved.iterdir()) == ["last_augmented_model.ckpt"]  # no epoch ended yet
    state = torch.load(saved / "last_augmented_model.ckpt", weights_only=True)
    assert state["epoch"] == 0 and state["global_step"] == 2 and state[MID_EPOCH_KEY]["batches"] == 2
    resumed = _resumed(tmp_path, image_folder, saved / "last_augmented_model.ckpt")
    _assert_identical(_weights(straight.last_checkpoint), _weights(resumed.last_checkpoint))
    assert _rows(resumed.run_dir.metrics_csv) == _rows(straight.run_dir.metrics_csv)


def _default_run_dir(config):
    config.write_text(re.sub(r"hydra:\n  run:\n    dir: .*\n", "", config.read_text()))
    return config


@pytest.mark.slow
def test_a_run_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, image_folder, straight):
    """SIGKILL in the middle of a checkpoint write: the previous checkpoint stays whole, the
    unfinished temporary file is removed when the run folder is opened again (resume), and the
    resumed run equals the uninterrupted one."""
    from conftest import run_cli

    runs = tmp_path / "experiments_outputs"  # the default hydra.run.dir: ./experiments_outputs/${now:...}
    killed = _default_run_dir(_config(tmp_path, image_folder, "killed", 4, training=EVERY_2_STEPS))
    _kill(killed, tmp_path, "KillDuringSave", epoch=1, batch=1)  # the mid-epoch save at step 6
    (run,) = runs.iterdir()
    saved = run / "saved_models"
    (orphan,) = saved.glob(".last_augmented_model.ckpt.*.tmp")
    assert orphan.read_bytes().startswith(b"PK\x03\x04 half")
    last = saved / "last_augmented_model.ckpt"
    state = torch.load(last, weights_only=True)  # the end-of-epoch-1 checkpoint, whole
    assert state["epoch"] == 0 and state["global_step"] == 4 and MID_EPOCH_KEY not in state
    resume = _default_run_dir(_config(tmp_path, image_folder, "resume", 4, model=""))
    resume.write_text(resume.read_text().replace("training:\n", f"training:\n  resume_training_from: {last}\n", 1))
    code, _, err = run_cli("fit", "--config", str(resume), cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert list(runs.iterdir()) == [run]  # a resumed run continues in its checkpoint's folder
    assert not list(saved.glob(".*.tmp"))
    assert f"Removed 1 unfinished file(s) left by an interrupted save in {saved}: {orphan.name}" in \
        (run / "stmclf.log").read_text()
    _assert_identical(_weights(straight.last_checkpoint), _weights(last))
    assert _rows(run / "logs/metrics/train_metrics.csv") == _rows(straight.run_dir.metrics_csv)


class _InterruptAt(Callback):
    """Ctrl+C after batch ``batch`` of epoch ``epoch`` (before that batch's checkpoint, if one is due)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt


def test_resume_refuses_another_split_or_batch_size_inside_an_epoch(tmp_path, image_folder):
    """A resumed training must train and validate on its checkpoint's split (another dataset.seed or
    validation_split would move validation images into training, silently), and resume inside an
    epoch only with the batch size its position counts in (else 'batch 10 of 6')."""
    cut = _config(tmp_path, image_folder, "cut", 2, training=EVERY_2_STEPS)
    with pytest.raises(Interrupted):
        train(load_config(["--config", str(cut)]), callbacks=[_InterruptAt(epoch=0, batch=2)])
    last = tmp_path / "cut" / "saved_models" / "last_augmented_model.ckpt"
    assert torch.load(last, weights_only=True)[MID_EPOCH_KEY]["batches"] == 2
    resume = _config(tmp_path, image_folder, "resumed", 2, model="")
    text = resume.read_text().replace("training:\n", f"training:\n  resume_training_from: {last}\n", 1)
    for old, new, key, message in (
            ("  seed: 3\n", "  seed: 4\n", "dataset.seed", "4, but the checkpoint's run had 3: the training set is "
                                                          "not the one"),
            ("validation_split: 0.25", "validation_split: 0.5", "dataset.validation_split",
             r"0.5, but the checkpoint's run had 0.25: the training set is not the one .* \(27 images then, 18 now\)"),
            ("  batch_size: 8\n", "  batch_size: 4\n", "training.batch_size",
             "4, but .* was written inside epoch 1 with batch_size 8: .* resume with batch_size 8")):
        resume.write_text(text.replace(old, new, 1))
        with pytest.raises(ConfigError, match=message) as error:
            train(load_config(["--config", str(resume)]))
        assert error.value.key == key
    assert not (tmp_path / "resumed").exists()  # refused before the run folder is made
    resume.write_text(text)
    resumed = train(load_config(["--config", str(resume)]))
    assert resumed.epochs_run == 2
