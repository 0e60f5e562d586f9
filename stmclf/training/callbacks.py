"""Keras callbacks by name (``training.callbacks``), as Lightning callbacks.

``callbacks: {ReduceLROnPlateau: {monitor: val_accuracy, factor: 0.5, patience: 10}, ...}``
with Keras argument names and defaults. ModelCheckpoint, TensorBoard and CSVLogger are built
into every run and cannot be redefined (as in the reference). At most one learning-rate
scheduler may be given.
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping

from stmclf.errors import ConfigError

log = logging.getLogger(__name__)
KEY = "training.callbacks"
BUILT_IN = ("ModelCheckpoint", "TensorBoard", "CSVLogger")
METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")


def keras_mode(mode: str, monitor: str, key: str) -> str:
    """Keras ``mode='auto'``: maximise accuracy-like metrics, minimise the rest."""
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"{key}.mode", f"expected auto, min or max (got {mode!r})")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor or monitor.startswith("fmeasure") else "min"


def _check_monitor(monitor: str, key: str) -> str:
    if monitor not in METRICS:
        raise ConfigError(f"{key}.monitor", f"unknown metric {monitor!r}; available: {', '.join(METRICS)}")
    return monitor


def set_learning_rate(trainer: "L.Trainer", lr: float) -> None:
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def get_learning_rate(trainer: "L.Trainer") -> float:
    return float(trainer.optimizers[0].param_groups[0]["lr"])


class ReduceLROnPlateau(Callback):
    """Keras ``ReduceLROnPlateau``: after ``patience`` epochs without an improvement of more than
    ``min_delta``, multiply the learning rate by ``factor`` (not below ``min_lr``), then wait
    ``cooldown`` epochs. Keras counts patience so that patience=N reduces on the N-th bad epoch,
    one epoch earlier than ``torch.optim.lr_scheduler.ReduceLROnPlateau``: we follow Keras."""

    is_lr_scheduler = True

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> None:
        if factor >= 1.0 or factor <= 0:
            raise ConfigError(f"{KEY}.ReduceLROnPlateau.factor", f"must be > 0 and < 1 (got {factor})")
        self.monitor = _check_monitor(monitor, f"{KEY}.ReduceLROnPlateau")
        self.mode = keras_mode(mode, monitor, f"{KEY}.ReduceLROnPlateau")
        self.factor, self.patience, self.verbose = factor, patience, verbose
        self.min_delta, self.cooldown, self.min_lr = abs(min_delta), cooldown, min_lr
        self.best = -math.inf if self.mode == "max" else math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _improved(self, current: float) -> bool:
        if self.mode == "max":
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        current = float(value)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = get_learning_rate(trainer)
                new = max(old * self.factor, self.min_lr)
                if old - new > 1e-12:
                    set_learning_rate(trainer, new)
                    log.info("Epoch %d: ReduceLROnPlateau reducing learning rate to %g.", trainer.current_epoch + 1, new)
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.wait, self.cooldown_counter = (state_dict[k] for k in ("best", "wait", "cooldown_counter"))


def _early_stopping(monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                    mode: str = "auto", baseline: Optional[float] = None) -> EarlyStopping:
    """Keras ``EarlyStopping`` mapped onto Lightning's (same patience and min_delta rules)."""
    key = f"{KEY}.EarlyStopping"
    _check_monitor(monitor, key)
    if baseline is not None:
        raise ConfigError(f"{key}.baseline", "not supported yet")
    return EarlyStopping(monitor=monitor, min_delta=abs(min_delta), patience=patience, verbose=bool(verbose),
                         mode=keras_mode(mode, monitor, key), check_finite=True)


@dataclass(frozen=True)
class CallbackEntry:
    factory: Callable[..., Callback]
    is_lr_scheduler: bool = False


CALLBACKS: dict[str, CallbackEntry] = {
    "ReduceLROnPlateau": CallbackEntry(ReduceLROnPlateau, is_lr_scheduler=True),
    "EarlyStopping": CallbackEntry(_early_stopping),
}


def _accepted(factory: Callable) -> list[str]:
    return [p for p in inspect.signature(factory).parameters if p not in ("self",)]


def build_callbacks(section: Optional[dict[str, Optional[dict[str, Any]]]]) -> list[Callback]:
    """Validate ``training.callbacks`` and build the Lightning callbacks, in YAML order."""
    callbacks: list[Callback] = []
    schedulers: list[str] = []
    for name, args in (section or {}).items():
        if name in BUILT_IN:
            raise ConfigError(f"{KEY}.{name}", f"the {name} callback is built-in and can't be redefined")
        entry = CALLBACKS.get(name)
        if entry is None:
            raise ConfigError(f"{KEY}.{name}", f"unknown callback; supported: {', '.join(CALLBACKS)}")
        if args is not None and not isinstance(args, dict):
            raise ConfigError(f"{KEY}.{name}", "invalid syntax for the callback arguments: expecting a mapping")
        args = dict(args or {})
        accepted = _accepted(entry.factory)
        for arg in args:
            if arg not in accepted:
                raise ConfigError(f"{KEY}.{name}.{arg}", f"unknown argument; supported: {', '.join(accepted)}")
        if entry.is_lr_scheduler:
            schedulers.append(name)
            if len(schedulers) > 1:
                raise ConfigError(KEY, f"found more than one learning rate scheduler: {', '.join(schedulers)}")
        try:
            callbacks.append(entry.factory(**args))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{KEY}.{name}", str(exc).splitlines()[0]) from None
    return callbacks
