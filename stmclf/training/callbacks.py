"""Keras callbacks by name (``training.callbacks``), as Lightning callbacks.

``callbacks: {ReduceLROnPlateau: {monitor: val_accuracy, factor: 0.5, patience: 10}, ...}``
with Keras argument names and defaults. ModelCheckpoint, TensorBoard and CSVLogger are built
into every run and cannot be redefined (as in the reference). At most one learning-rate
scheduler may be given. Any Lightning callback may be named by its class path; a class path
outside ``lightning.``, ``torch.`` and ``stmclf.`` imports the user's module, which needs
``--trust-code`` on the command line (:mod:`stmclf.trust`).
"""
from __future__ import annotations

import importlib
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping

from stmclf.errors import ConfigError, one_line
from stmclf.training.lr_schedulers import SCHEDULERS, get_learning_rate, set_learning_rate
from stmclf.trust import code_trusted, is_trusted_class_path, require_trusted_code

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
        for name, value in (("patience", patience), ("cooldown", cooldown), ("min_lr", min_lr)):
            _check_not_negative(f"{KEY}.ReduceLROnPlateau.{name}", value)
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

    def step(self, current: float, lr: float) -> float:
        """The learning rate after an epoch whose monitored value is ``current`` (also used by
        ``stmclf plot-lr`` to draw the fastest possible decay)."""
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                self.cooldown_counter = self.cooldown
                self.wait = 0
                new = max(lr * self.factor, self.min_lr)
                if lr - new > 1e-12:
                    return new
        return lr

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        old = get_learning_rate(trainer)
        new = self.step(float(value), old)
        if new != old:
            set_learning_rate(trainer, new)
            log.info("Epoch %d: ReduceLROnPlateau reducing learning rate to %g.", trainer.current_epoch + 1, new)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.wait, self.cooldown_counter = (state_dict[k] for k in ("best", "wait", "cooldown_counter"))


class KerasEarlyStopping(EarlyStopping):
    """Keras ``EarlyStopping`` on Lightning's (same ``patience`` and ``min_delta`` rules), with
    Keras's ``baseline`` (the value to beat from the start), ``start_from_epoch`` (epochs to
    wait before counting) and ``restore_best_weights`` (when it stops, the weights of the best
    epoch are put back)."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: Optional[float] = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0) -> None:
        key = f"{KEY}.EarlyStopping"
        _check_monitor(monitor, key)
        for name, value in (("patience", patience), ("start_from_epoch", start_from_epoch)):
            _check_not_negative(f"{key}.{name}", value)
        super().__init__(monitor=monitor, min_delta=abs(min_delta), patience=patience, verbose=bool(verbose),
                         mode=keras_mode(mode, monitor, key), check_finite=True)
        if baseline is not None:
            self.best_score = torch.tensor(float(baseline))
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self._best_weights: Optional[dict] = None

    def _run_early_stopping_check(self, trainer: "L.Trainer") -> None:
        if trainer.current_epoch < self.start_from_epoch:
            return
        before = self.best_score.clone()
        super()._run_early_stopping_check(trainer)
        if self.restore_best_weights and not torch.equal(before, self.best_score):
            module = trainer.lightning_module
            self._best_weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if trainer.should_stop and self.restore_best_weights and self._best_weights is not None:
            trainer.lightning_module.load_state_dict(self._best_weights)
            log.info("EarlyStopping: restoring the weights of the best epoch (%s = %.4f)", self.monitor,
                     float(self.best_score))


class TerminateOnNaN(Callback):
    """Keras ``TerminateOnNaN``: stop as soon as a training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            log.warning("Batch %d: invalid loss, terminating training", batch_idx)
            trainer.should_stop = True


def _class_from_path(path: str) -> Optional[type]:
    """A Lightning callback named by its class path (``lightning.pytorch.callbacks.X``). A module
    outside ``lightning.``, ``torch.`` and ``stmclf.`` is imported only with ``--trust-code``."""
    if "." not in path:
        return None
    module_name, _, class_name = path.rpartition(".")
    if not is_trusted_class_path(path):  # before anything is imported
        require_trusted_code(f"{KEY}.{path}", module_name, "module")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while loading: one line
        raise ConfigError(f"{KEY}.{path}", f"importing {module_name} failed: {one_line(exc, typed=True)}") from None
    cls = getattr(module, class_name, None)
    return cls if isinstance(cls, type) and issubclass(cls, Callback) else None


FILE_ARGUMENT = ("path", "dir", "file")
"""Words of an argument name that names a file or folder to write (``path``, ``exclude_batches_path``)."""


def _check_no_file_arguments(name: str, args: Any) -> None:
    """A callback named by its class path writes no file a config names, without ``--trust-code``:
    ``stmclf.training.tracking.EpochCSVLogger: {path: ~/.bashrc}`` or SpikeDetection's
    ``exclude_batches_path`` would write outside the run folder (the run's own files go into it)."""
    for arg in args if isinstance(args, dict) and not code_trusted() else ():
        if any(word in str(arg).lower() for word in FILE_ARGUMENT):
            raise ConfigError(f"{KEY}.{name}.{arg}", "names a file or folder for the callback to write: a config "
                                                     "writes nothing outside its run folder; pass --trust-code if "
                                                     "you trust it")


def _check_not_negative(key: str, value) -> None:
    if isinstance(value, (int, float)) and value < 0:
        raise ConfigError(key, f"must be >= 0 (got {value})")


_SIMPLE = {int: "an integer", float: "a number", bool: "true or false"}


def check_argument_types(factory: Callable, args: dict[str, Any], key: str) -> None:
    """Each argument whose parameter is annotated ``int``, ``float`` or ``bool`` (or an ``Optional``
    of one) has a value of that type (text arguments get the callbacks' own messages):
    ``patience: 'x'`` is refused here with its key, not met as a TypeError epochs into the
    training."""
    import typing

    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 - annotations that do not resolve: nothing to check against
        return
    for arg, value in args.items():
        hint = hints.get(arg)
        options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        simple = [t for t in options if t in _SIMPLE]
        if not simple or len(simple) + (type(None) in options) != len(options):
            continue  # not a simple annotation (or a union with other types): the callback checks it
        if value is None and type(None) in options:
            continue
        ok = any(isinstance(value, t) and not (t is not bool and isinstance(value, bool)) for t in simple) or (
            float in simple and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{key}.{arg}", f"expecting {' or '.join(_SIMPLE[t] for t in simple)}, "
                                              f"got {one_line(repr(value), 60)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            raise ConfigError(f"{key}.{arg}", f"expecting a finite number, got {value!r}")


@dataclass(frozen=True)
class CallbackEntry:
    factory: Callable[..., Callback]
    is_lr_scheduler: bool = False


CALLBACKS: dict[str, CallbackEntry] = {
    "ReduceLROnPlateau": CallbackEntry(ReduceLROnPlateau, is_lr_scheduler=True),
    "EarlyStopping": CallbackEntry(KerasEarlyStopping),
    "TerminateOnNaN": CallbackEntry(TerminateOnNaN),
    **{name: CallbackEntry(cls, is_lr_scheduler=True) for name, cls in SCHEDULERS.items()},
}


def _accepted(factory: Callable) -> list[str]:
    return [p for p in inspect.signature(factory).parameters if p not in ("self",)]


def build_callbacks(section: Optional[dict[str, Optional[dict[str, Any]]]]) -> list[Callback]:
    """Validate ``training.callbacks`` and build the Lightning callbacks, in YAML order."""
    callbacks: list[Callback] = []
    schedulers: list[str] = []
    for name, args in (section or {}).items():
        if name in BUILT_IN:
            raise ConfigError(f"{KEY}.{name}", f"The {name} callback is built-in and can't be redefined")
        entry = CALLBACKS.get(name)
        if entry is None and (cls := _class_from_path(name)) is not None:
            if issubclass(cls, Checkpoint):  # stmclf writes the run's checkpoints (best, last, mid-epoch)
                raise ConfigError(f"{KEY}.{name}", "stmclf writes the run's checkpoints itself (saved_models/); "
                                                   "training.checkpoint_every sets how often")
            entry = CallbackEntry(cls)
            _check_no_file_arguments(name, args)
        if entry is None:
            raise ConfigError(f"{KEY}.{name}", f"unknown callback; supported: {', '.join(CALLBACKS)}, "
                                               f"or a Lightning callback class path")
        if args is not None and not isinstance(args, dict):
            raise ConfigError(f"{KEY}.{name}", "invalid syntax for the callback arguments: expecting a mapping")
        args = dict(args or {})
        accepted = _accepted(entry.factory)
        required = [p.name for p in inspect.signature(entry.factory).parameters.values()
                    if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
        for arg in required:
            if arg not in args:
                raise ConfigError(f"{KEY}.{name}.{arg}", f"missing argument of {name}")
        for arg in args:
            if arg not in accepted:
                raise ConfigError(f"{KEY}.{name}.{arg}", f"unknown argument; supported: {', '.join(accepted)}")
        check_argument_types(entry.factory, args, f"{KEY}.{name}")
        if entry.is_lr_scheduler:
            schedulers.append(name)
            if len(schedulers) > 1:
                raise ConfigError(KEY, f"Found more than one learning rate scheduler: {', '.join(schedulers)}")
        try:
            callbacks.append(entry.factory(**args))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{KEY}.{name}", one_line(exc)) from None
    return callbacks
