"""``stmclf plot-lr``: the learning rate of every epoch, from the config, without training.

An epoch-wise scheduler (``LRCosineDecay``, ``LearningRateScheduler``, ...) is a function of the
epoch: its rates are drawn as they will be. ``ReduceLROnPlateau`` depends on the validation
metrics, so its rates are drawn as the range they can take: from the initial rate (the metric
improves every epoch) down to the fastest possible decay (no improvement after the first epoch:
each reduction as early as ``patience`` and ``cooldown`` allow, down to ``min_lr``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from stmclf.config import RunConfig, rules
from stmclf.figures import save_figure

log = logging.getLogger(__name__)


def _plateau_fastest_decay(scheduler, lr: float, epochs: int) -> list[float]:
    """ReduceLROnPlateau's lowest possible rate of each epoch: the monitored value improves at the
    first epoch (as any first value does) and never again."""
    rates = []
    for _ in range(epochs):
        rates.append(lr)
        lr = scheduler.step(0.0, lr)
    return rates


def learning_rates(cfg: RunConfig) -> tuple[str, list[float]]:
    """(scheduler name, learning rate per epoch) for ``training.epochs`` epochs; for
    ``ReduceLROnPlateau``, its fastest possible decay (the lowest rate of each epoch)."""
    name, rates, _ = _schedule(cfg)
    return name, rates


def _schedule(cfg: RunConfig) -> tuple[str, list[float], Optional[str]]:
    """:func:`learning_rates` and the metric a metric-driven scheduler follows (else None)."""
    from stmclf.training.callbacks import ReduceLROnPlateau, build_callbacks
    from stmclf.training.lr_schedulers import EpochLRSchedule
    from stmclf.training.optimizers import initial_learning_rate

    rules.check_training_keys(cfg, "the learning-rate plot")
    schedulers = [c for c in build_callbacks(cfg.training.callbacks) if isinstance(c, (EpochLRSchedule,
                                                                                      ReduceLROnPlateau))]
    lr = initial_learning_rate(cfg.training.optimizer)
    if not schedulers:
        return "constant (no scheduler)", [lr] * cfg.training.epochs, None
    scheduler = schedulers[0]
    if isinstance(scheduler, ReduceLROnPlateau):
        return "ReduceLROnPlateau", _plateau_fastest_decay(scheduler, lr, cfg.training.epochs), scheduler.monitor
    rates = []
    for epoch in range(cfg.training.epochs):
        lr = float(scheduler.schedule(epoch, lr))
        rates.append(lr)
    return type(scheduler).__name__, rates, None


def plot_learning_rates(cfg: RunConfig, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, rates, metric = _schedule(cfg)
    epochs = range(1, len(rates) + 1)
    marker = "o" if len(rates) <= 60 else None
    fig, ax = plt.subplots(figsize=(8, 4))
    if metric is not None:
        log.info("%s follows %s: plotting the range of its learning rate (from no reduction to the fastest "
                 "decay)", name, metric)
        highest = rates[:1] * len(rates)
        ax.fill_between(epochs, rates, highest, step="post", alpha=0.15, label="possible learning rates")
        ax.plot(epochs, highest, linestyle="--", label=f"highest: {metric} improves every epoch")
        ax.plot(epochs, rates, marker=marker, markersize=3, drawstyle="steps-post",
                label=f"lowest: {metric} never improves after epoch 1")
        ax.legend(fontsize=8)
        ax.set_title(f"{name} (depends on {metric}): range of the learning rate")
    else:
        ax.plot(epochs, rates, marker=marker, markersize=3)
        ax.set_title(name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return save_figure(fig, out)
