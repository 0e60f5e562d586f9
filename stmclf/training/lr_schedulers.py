"""The model zoo's epoch-wise learning-rate schedulers, by name, with the reference's formulas.

Each scheduler sets the learning rate at the start of every epoch (``epoch`` counts from 0) to
``schedule(epoch)``; the module logs the value used (``lr`` in the CSV, TensorBoard, MLflow).
A scheduler is a pure function of the epoch, so resuming a run continues the schedule exactly.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from stmclf.errors import ConfigError

log = logging.getLogger(__name__)


def set_learning_rate(trainer: "L.Trainer", lr: float) -> None:
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def get_learning_rate(trainer: "L.Trainer") -> float:
    return float(trainer.optimizers[0].param_groups[0]["lr"])


class EpochLRSchedule(Callback):
    """Base class: subclasses define :meth:`schedule`."""

    is_lr_scheduler = True

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        raise NotImplementedError

    def on_train_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        lr = float(self.schedule(trainer.current_epoch, get_learning_rate(trainer)))
        set_learning_rate(trainer, lr)
        if self.verbose:
            log.info("Epoch %d: %s setting learning rate to %.4e.", trainer.current_epoch + 1, type(self).__name__, lr)


def _check_positive(name: str, **values: float) -> None:
    for key, value in values.items():
        if value is None or value <= 0:
            raise ConfigError(f"training.callbacks.{name}.{key}", f"must be > 0 (got {value})")


class LRLinearDecay(EpochLRSchedule):
    """Hold ``initial_lr``, then decay linearly to ``end_lr`` over ``decay_steps`` epochs."""

    def __init__(self, initial_lr: float, hold_steps: int, decay_steps: int, end_lr: float, verbose: int = 0):
        super().__init__(verbose)
        _check_positive("LRLinearDecay", initial_lr=initial_lr, decay_steps=decay_steps)
        self.initial_lr, self.hold_steps, self.decay_steps, self.end_lr = initial_lr, hold_steps, decay_steps, end_lr

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        if epoch < self.hold_steps - 1:
            return self.initial_lr
        if epoch >= self.hold_steps + self.decay_steps:
            return self.end_lr
        slope = (self.end_lr - self.initial_lr) / self.decay_steps
        return self.initial_lr + slope * (epoch - self.hold_steps + 1)


class LRExponentialDecay(EpochLRSchedule):
    """Hold ``initial_lr``, then ``initial_lr · exp(−decay_rate · t)``, not below ``min_lr``."""

    def __init__(self, initial_lr: float, hold_steps: int, decay_rate: float, min_lr: float = 0.0, verbose: int = 0):
        super().__init__(verbose)
        _check_positive("LRExponentialDecay", initial_lr=initial_lr)
        self.initial_lr, self.hold_steps, self.decay_rate, self.min_lr = initial_lr, hold_steps, decay_rate, min_lr

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        if epoch < self.hold_steps - 1:
            return self.initial_lr
        return max(self.min_lr, self.initial_lr * math.exp(-self.decay_rate * (epoch - self.hold_steps + 1)))


class LRStepDecay(EpochLRSchedule):
    """``initial_lr · decay_rate^⌊(1 + epoch) / step_size⌋``, not below ``min_lr``."""

    def __init__(self, initial_lr: float, step_size: int, decay_rate: float, min_lr: float = 0.0, verbose: int = 0):
        super().__init__(verbose)
        _check_positive("LRStepDecay", initial_lr=initial_lr, step_size=step_size)
        self.initial_lr, self.step_size, self.decay_rate, self.min_lr = initial_lr, step_size, decay_rate, min_lr

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        return max(self.min_lr, self.initial_lr * self.decay_rate ** math.floor((1 + epoch) / self.step_size))


def _cosine(fraction: float, high: float, low: float) -> float:
    alpha = low / high
    return high * ((1 - alpha) * 0.5 * (1.0 + math.cos(math.pi * fraction)) + alpha)


class LRCosineDecay(EpochLRSchedule):
    """Hold ``initial_lr`` for ``hold_steps`` epochs, then cosine decay to ``end_lr``."""

    def __init__(self, initial_lr: float, hold_steps: int, decay_steps: int, end_lr: float, verbose: int = 0):
        super().__init__(verbose)
        _check_positive("LRCosineDecay", initial_lr=initial_lr, decay_steps=decay_steps)
        self.initial_lr, self.hold_steps, self.decay_steps, self.end_lr = initial_lr, hold_steps, decay_steps, end_lr

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        if epoch < self.hold_steps:
            return self.initial_lr
        fraction = min(epoch - self.hold_steps + 1, self.decay_steps) / self.decay_steps
        return _cosine(fraction, self.initial_lr, self.end_lr)


class LRWarmupCosineDecay(EpochLRSchedule):
    """Linear warm-up to ``max_lr``, hold, cosine decay to ``end_lr``, then hold."""

    def __init__(self, initial_lr: float, warmup_steps: int, max_lr: float, hold_steps: int, decay_steps: int,
                 end_lr: float, verbose: int = 0):
        super().__init__(verbose)
        _check_positive("LRWarmupCosineDecay", max_lr=max_lr, warmup_steps=warmup_steps, decay_steps=decay_steps)
        self.initial_lr, self.warmup_steps, self.max_lr = initial_lr, warmup_steps, max_lr
        self.hold_steps, self.decay_steps, self.end_lr = hold_steps, decay_steps, end_lr

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        if epoch < self.warmup_steps - 1:
            return self.initial_lr + (self.max_lr - self.initial_lr) / self.warmup_steps * epoch
        if epoch < self.warmup_steps + self.hold_steps:
            return self.max_lr
        fraction = min(epoch - self.warmup_steps - self.hold_steps, self.decay_steps) / self.decay_steps
        return _cosine(fraction, self.max_lr, self.end_lr)


class LRCosineDecayRestarts(EpochLRSchedule):
    """SGDR: cosine decay from ``initial_lr`` to ``end_lr`` with warm restarts, periods growing
    by ``t_mul`` and peaks scaled by ``m_mul``."""

    def __init__(self, initial_lr: float, first_decay_steps: int, end_lr: float, t_mul: float = 2.0,
                 m_mul: float = 1.0, verbose: int = 0):
        super().__init__(verbose)
        _check_positive("LRCosineDecayRestarts", initial_lr=initial_lr, first_decay_steps=first_decay_steps,
                        t_mul=t_mul)
        self.initial_lr, self.first_decay_steps, self.end_lr = initial_lr, first_decay_steps, end_lr
        self.t_mul, self.m_mul = t_mul, m_mul

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        fraction = epoch / self.first_decay_steps
        if self.t_mul == 1.0:
            restarts = math.floor(fraction)
            fraction -= restarts
        else:
            restarts = math.floor(math.log(1.0 - fraction * (1.0 - self.t_mul)) / math.log(self.t_mul))
            done = (1.0 - self.t_mul ** restarts) / (1.0 - self.t_mul)
            fraction = (fraction - done) / self.t_mul ** restarts
        alpha = self.end_lr / self.initial_lr
        cosine = 0.5 * self.m_mul ** restarts * (1.0 + math.cos(math.pi * fraction))
        return self.initial_lr * ((1 - alpha) * cosine + alpha)


class LRPolynomialDecay(EpochLRSchedule):
    """Hold ``initial_lr``, then ``(initial − end)·(1 − p)^power + end`` over ``decay_steps``."""

    def __init__(self, initial_lr: float, hold_steps: int, decay_steps: int, end_lr: float, power: float = 0.5,
                 verbose: int = 0):
        super().__init__(verbose)
        _check_positive("LRPolynomialDecay", initial_lr=initial_lr, decay_steps=decay_steps)
        self.initial_lr, self.hold_steps, self.decay_steps = initial_lr, hold_steps, decay_steps
        self.end_lr, self.power = end_lr, power

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        if epoch < self.hold_steps - 1:
            return self.initial_lr
        progress = min(epoch - self.hold_steps + 1, self.decay_steps) / self.decay_steps
        return (self.initial_lr - self.end_lr) * (1 - progress) ** self.power + self.end_lr


class LRPolynomialDecayRestarts(LRPolynomialDecay):
    """Polynomial decay that restarts every ``decay_steps`` epochs."""

    def __init__(self, initial_lr: float, hold_steps: int, decay_steps: int, end_lr: float, power: float = 0.7,
                 verbose: int = 0):
        super().__init__(initial_lr, hold_steps, decay_steps, end_lr, power, verbose)

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        if epoch < self.hold_steps - 1:
            return self.initial_lr
        step = epoch - self.hold_steps + 1
        progress = step / (self.decay_steps * math.ceil(step / self.decay_steps)) if step else 0.0
        return (self.initial_lr - self.end_lr) * (1 - progress) ** self.power + self.end_lr


class LRPiecewiseConstantDecay(EpochLRSchedule):
    """``values[i]`` for the first boundary greater than the epoch (``values[-1]`` after the last)."""

    def __init__(self, boundaries: Sequence[int], values: Sequence[float], verbose: int = 0):
        super().__init__(verbose)
        if len(values) != len(boundaries) + 1:
            raise ConfigError("training.callbacks.LRPiecewiseConstantDecay.values",
                              f"expecting len(boundaries) + 1 = {len(boundaries) + 1} values, got {len(values)}")
        if list(boundaries) != sorted(boundaries):
            raise ConfigError("training.callbacks.LRPiecewiseConstantDecay.boundaries", "must be increasing")
        self.boundaries, self.values = list(boundaries), [float(v) for v in values]

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        for boundary, value in zip(self.boundaries, self.values):
            if epoch < boundary:
                return value
        return self.values[-1]


class LearningRateScheduler(EpochLRSchedule):
    """Keras ``LearningRateScheduler``: ``schedule`` is text such as
    ``"lambda epoch, lr: lr * 0.95 if epoch > 5 else lr"``, parsed and evaluated safely."""

    def __init__(self, schedule: str, verbose: int = 0):
        super().__init__(verbose)
        from stmclf.training.safe_expr import compile_schedule

        self.expression = compile_schedule(schedule, "training.callbacks.LearningRateScheduler.schedule")

    def schedule(self, epoch: int, lr: Optional[float] = None) -> float:
        return float(self.expression(epoch=epoch, lr=lr if lr is not None else 0.0))


SCHEDULERS = {cls.__name__: cls for cls in (
    LRLinearDecay, LRExponentialDecay, LRStepDecay, LRCosineDecay, LRWarmupCosineDecay, LRCosineDecayRestarts,
    LRPolynomialDecay, LRPolynomialDecayRestarts, LRPiecewiseConstantDecay, LearningRateScheduler)}
