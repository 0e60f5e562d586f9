"""``stmclf plot-lr``: the learning rate of every epoch, from the config, without training."""
from __future__ import annotations

from pathlib import Path

from stmclf.config import RunConfig
from stmclf.errors import ConfigError
from stmclf.figures import save_figure


def learning_rates(cfg: RunConfig) -> tuple[str, list[float]]:
    """(scheduler name, learning rate per epoch) for ``training.epochs`` epochs."""
    from stmclf.training.callbacks import build_callbacks
    from stmclf.training.lr_schedulers import EpochLRSchedule
    from stmclf.training.optimizers import initial_learning_rate

    if cfg.training is None:
        raise ConfigError("training", "missing 'training' section")
    if "ReduceLROnPlateau" in (cfg.training.callbacks or {}):
        raise ConfigError("training.callbacks.ReduceLROnPlateau",
                          "its learning rate depends on the validation metrics, so it cannot be plotted before training")
    schedulers = [c for c in build_callbacks(cfg.training.callbacks) if isinstance(c, EpochLRSchedule)]
    lr = initial_learning_rate(cfg.training.optimizer)
    if not schedulers:
        return "constant (no scheduler)", [lr] * cfg.training.epochs
    scheduler = schedulers[0]
    rates = []
    for epoch in range(cfg.training.epochs):
        lr = float(scheduler.schedule(epoch, lr))
        rates.append(lr)
    return type(scheduler).__name__, rates


def plot_learning_rates(cfg: RunConfig, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, rates = learning_rates(cfg)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(range(1, len(rates) + 1), rates, marker="o" if len(rates) <= 60 else None, markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)
