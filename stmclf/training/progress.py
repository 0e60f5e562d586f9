"""Small training-loop callbacks: the progress bar, the per-epoch and per-batch seeding, and the
checkpoint written inside an epoch (``training.checkpoint_every``) with its exact resume."""
from __future__ import annotations

import hashlib
import logging
import random
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import Callback, Checkpoint, RichProgressBar

from stmclf.errors import ConfigError

log = logging.getLogger("stmclf.training")
MID_EPOCH_KEY = "stmclf_mid_epoch"
"""In a checkpoint written inside an epoch: the epoch, the batches trained in it, and the epoch's
training-loss and accuracy accumulators."""
DEFAULT_CHECKPOINT_EVERY = {"minutes": 5.0}


class EpochSeed(Callback):
    """Re-seed Python, NumPy and torch at the start of every training epoch from (seed, epoch).

    Augmentation and dropout draws of epoch ``e`` then depend only on the seed and ``e`` (and,
    from the second batch on, the batch index: :class:`MidEpochCheckpoint` re-seeds after every
    batch): a run resumed from a checkpoint continues exactly as the uninterrupted run would have."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        from stmclf.data.datamodule import derive_seed

        seed_everything(derive_seed(self.seed, trainer.current_epoch) % 2**32, workers=False, verbose=False)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A well-mixed 63-bit seed for batch ``batch`` of epoch ``epoch``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{batch}".encode()).digest()[:8], "little") >> 1


def _seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch's generators for the next batch. Not ``torch.manual_seed``:
    before CUDA is initialised (every CPU run) it queues a lazy CUDA seeding with a formatted
    traceback of the caller's stack and probes NVML for a device count, ~330 µs per call under
    Lightning's loop (1 % of a ResNet-8 step); the device generators are seeded where they exist."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(seed)


def checkpoint_interval(spec: Any) -> dict[str, float]:
    """``training.checkpoint_every`` → ``{"steps": N}``, ``{"minutes": M}`` or ``{}`` (off)."""
    key = "training.checkpoint_every"
    if spec is None or spec is True:
        return dict(DEFAULT_CHECKPOINT_EVERY)
    if spec is False:
        return {}
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("steps", "minutes"):
        raise ConfigError(key, f"expecting {{steps: N}} or {{minutes: M}} (or false), got {spec!r}")
    name, value = next(iter(spec.items()))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
            or (name == "steps" and value != int(value)):
        raise ConfigError(f"{key}.{name}", f"expecting a positive {'integer' if name == 'steps' else 'number'}, "
                                           f"got {value!r}")
    return {"steps": int(value)} if name == "steps" else {"minutes": float(value)}


def is_mid_epoch(checkpoint: dict) -> bool:
    """A checkpoint written inside an epoch (its ``epoch`` is not finished)."""
    return bool(checkpoint.get(MID_EPOCH_KEY))


class MidEpochCheckpoint(Checkpoint):
    """The ``last`` checkpoint inside an epoch too (``training.checkpoint_every``: every N
    optimizer steps or every M minutes; never on an epoch's last batch, whose checkpoint follows),
    and an exact resume from such a checkpoint:

    - the checkpoint records the epoch, the number of batches trained in it, and the epoch's
      training-loss and accuracy accumulators (``MID_EPOCH_KEY``);
    - on resume, the training sampler leaves out the batches already trained
      (:meth:`~stmclf.data.datamodule.EpochShuffleSampler.resume_at`), the epoch-start hooks that
      Lightning skips on a mid-epoch restart run (progress bar, the module's accumulators, QAT,
      learning-rate schedules, with the restored learning rate kept), and the accumulators are
      restored, so the epoch's metrics row is the uninterrupted run's;
    - every batch after the first of an epoch starts from a seed of (seed, epoch, batch), so the
      draws after a resume are those of the uninterrupted run.

    A :class:`Checkpoint`, so Lightning runs it after the other callbacks of each hook."""

    def __init__(self, path: Path, seed: int, steps: Optional[int] = None, minutes: Optional[float] = None) -> None:
        self.path = Path(path)
        self.seed = seed
        self.steps, self.minutes = steps, minutes
        self._clock = time.monotonic()
        self._resume: Optional[dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return "MidEpochCheckpoint"

    # -- writing ------------------------------------------------------------------------------
    def _due(self, trainer, batch_idx: int) -> bool:
        if self.steps is None and self.minutes is None:
            return False
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.should_stop:
            return False
        if batch_idx + 1 >= trainer.num_training_batches:  # the epoch's own checkpoint follows
            return False
        if (batch_idx + 1) % max(int(trainer.accumulate_grad_batches), 1):  # inside an accumulation
            return False
        if self.steps is not None:
            return trainer.global_step > 0 and trainer.global_step % self.steps == 0
        due = time.monotonic() - self._clock >= self.minutes * 60.0
        return bool(trainer.strategy.broadcast(due))  # every rank takes the same decision

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._due(trainer, batch_idx):
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: an exact resume
            self._clock = time.monotonic()
            log.debug("Mid-epoch checkpoint %s (epoch %d, batch %d)", self.path, trainer.current_epoch + 1,
                      batch_idx + 1)
        _seed_all(batch_seed(self.seed, trainer.current_epoch, batch_idx + 1))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._clock = time.monotonic()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not trainer.training or trainer.sanity_checking:
            return
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if 0 < done < trainer.num_training_batches:
            checkpoint[MID_EPOCH_KEY] = {"epoch": int(trainer.current_epoch), "batches": done,
                                         **_epoch_accumulators(pl_module)}

    # -- resuming ------------------------------------------------------------------------------
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(MID_EPOCH_KEY)
        if not state:
            return
        self._resume = dict(state)
        # Lightning's warning about loaders without state: the sampler is told where to start.
        warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
        datamodule = trainer.datamodule
        if datamodule is None:
            log.warning("Resuming inside epoch %d without a data module: that epoch restarts its data order",
                        state["epoch"] + 1)
            return
        make_loader = datamodule.train_dataloader

        def train_dataloader():  # once: later loaders (dataloader reloads) are whole
            datamodule.__dict__.pop("train_dataloader", None)
            loader = make_loader()
            sampler = getattr(loader, "sampler", None)
            if callable(getattr(sampler, "resume_at", None)):
                sampler.resume_at(state["epoch"], state["batches"] * int(loader.batch_size))
            else:
                log.warning("The training loader's sampler cannot start inside an epoch: epoch %d restarts its "
                            "data order", state["epoch"] + 1)
            return loader

        datamodule.train_dataloader = train_dataloader

    def on_train_start(self, trainer, pl_module) -> None:
        self._clock = time.monotonic()
        state, self._resume = self._resume, None
        if state is None:
            return
        if trainer.current_epoch != state["epoch"] or not trainer.fit_loop.restarted_mid_epoch:
            log.warning("The checkpoint was written inside epoch %d but training restarts at epoch %d: the "
                        "resume is not exact", state["epoch"] + 1, trainer.current_epoch + 1)
            return
        from lightning.pytorch.trainer import call

        # The epoch-start hooks Lightning skips on a mid-epoch restart; a learning rate that a
        # schedule would set again keeps its restored value.
        lrs = [[group["lr"] for group in optimizer.param_groups] for optimizer in trainer.optimizers]
        call._call_callback_hooks(trainer, "on_train_epoch_start")
        for optimizer, values in zip(trainer.optimizers, lrs):
            for group, lr in zip(optimizer.param_groups, values):
                group["lr"] = lr
        call._call_lightning_module_hook(trainer, "on_train_epoch_start")
        _restore_accumulators(pl_module, state)
        _seed_all(batch_seed(self.seed, state["epoch"], state["batches"]))
        log.info("Resuming inside epoch %d at batch %d of %d", state["epoch"] + 1, state["batches"] + 1,
                 trainer.num_training_batches)


def _epoch_accumulators(pl_module) -> dict[str, Any]:
    """The module's running training loss and accuracy of the current epoch."""
    out: dict[str, Any] = {}
    loss_sum = getattr(pl_module, "_epoch_loss_sum", None)
    if isinstance(loss_sum, torch.Tensor):
        out["loss_sum"] = loss_sum.detach().cpu().clone()
        out["images"] = int(getattr(pl_module, "_epoch_images", 0))
    metric = getattr(pl_module, "train_acc", None)
    if metric is not None and hasattr(metric, "metric_state"):
        out["train_acc"] = {name: value.detach().cpu().clone() for name, value in metric.metric_state.items()
                            if isinstance(value, torch.Tensor)}
        out["train_acc_updates"] = int(getattr(metric, "_update_count", 0))
    return out


def _restore_accumulators(pl_module, state: dict[str, Any]) -> None:
    if "loss_sum" in state and hasattr(pl_module, "_epoch_loss_sum"):
        pl_module._epoch_loss_sum = state["loss_sum"].to(pl_module.device)
        pl_module._epoch_images = int(state["images"])
    metric = getattr(pl_module, "train_acc", None)
    if metric is not None and state.get("train_acc"):
        for name, value in state["train_acc"].items():
            current = getattr(metric, name, None)
            setattr(metric, name, value.to(current.device if isinstance(current, torch.Tensor) else metric.device))
        metric._update_count = int(state.get("train_acc_updates", 1))
        metric._computed = None


# -- what the user sees of each epoch ------------------------------------------------------------
# Epochs count from 1 and accuracies are in % wherever they are shown (bar, epoch lines, CSV,
# curves, MLflow/TensorBoard steps); Lightning's own counter (checkpoints, schedules) stays 0-based.
ACCURACY_METRICS = ("accuracy", "val_accuracy")
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
"""The per-epoch metrics shown, in this order (Keras's names)."""


def shown_epoch(trainer) -> int:
    """The epoch being trained, counted from 1."""
    return int(trainer.current_epoch) + 1


def metric_text(name: str, value: Any) -> str:
    """One metric as shown: an accuracy in % with two decimals, a loss with four, a rate with %g."""
    value = float(value)
    if name in ACCURACY_METRICS:
        return f"{100.0 * value:.2f} %"
    if name == "lr":
        return f"{value:g}"
    return f"{value:.4f}"


def epoch_line(epoch: int, epochs: Optional[int], metrics: dict[str, Any], seconds: float) -> str:
    """``epoch 3/15  loss 0.4312  accuracy 86.20 %  val_loss 0.3811  val_accuracy 88.90 %  lr 0.002  12.3 s``."""
    parts = [f"epoch {epoch}/{epochs}" if epochs and epochs > 0 else f"epoch {epoch}"]
    parts += [f"{name} {metric_text(name, metrics[name])}" for name in (*EPOCH_METRICS, "lr") if name in metrics]
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


class EpochLine(Callback):
    """One line per epoch (rank 0): epoch from 1, metrics, learning rate and duration, logged to
    ``stmclf.log``. With ``console=False`` (the Rich bar shows the epochs in a terminal) the record
    carries ``file_only``, which the CLI's console handler leaves out."""

    def __init__(self, console: bool = True) -> None:
        self.console = console
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        line = epoch_line(shown_epoch(trainer), trainer.max_epochs, dict(trainer.callback_metrics),
                          time.monotonic() - self._start)
        log.info(line, extra={"file_only": not self.console})


class EpochStep(Callback):
    """The logged metrics' step is the epoch counted from 1 (Lightning's ``step`` metric): MLflow and
    TensorBoard show the same epoch numbers as the CSV and the epoch lines."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl_module.log("step", float(shown_epoch(trainer)), on_step=False, on_epoch=True)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            pl_module.log("step", float(shown_epoch(trainer)), on_step=False, on_epoch=True)


class ProgressBar(RichProgressBar):
    """Rich progress bar for a terminal: ``Epoch 1/N``, then the Keras-named metrics in a fixed
    order, accuracies in % (no logger version number). On stderr, with the log lines: stdout is
    the command's data."""

    def __init__(self) -> None:
        super().__init__(leave=True, console_kwargs={"stderr": True})

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = self.trainer.max_epochs
        text = f"Epoch {current_epoch + 1}" + (f"/{epochs}" if epochs is not None and epochs > 0 else "")
        return f"{text:{len(self.validation_description)}}"  # as wide as "Validation": no flicker

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = {name: metric_text(name, metrics.pop(name)) for name in EPOCH_METRICS if name in metrics}
        return {**shown, **metrics}
