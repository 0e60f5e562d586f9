"""The zoo's learning-rate schedulers (reference formulas), LearningRateScheduler, plot-lr."""
from __future__ import annotations

import math

import pytest

from stmclf.cli.main import main
from stmclf.errors import ConfigError
from stmclf.training.callbacks import build_callbacks
from stmclf.training.lr_schedulers import (LRCosineDecay, LRCosineDecayRestarts, LRExponentialDecay, LRLinearDecay,
                                           LRPiecewiseConstantDecay, LRPolynomialDecay, LRPolynomialDecayRestarts,
                                           LRStepDecay, LRWarmupCosineDecay, LearningRateScheduler)
from stmclf.training.safe_expr import compile_schedule


def rates(scheduler, epochs, lr=0.1):
    return [scheduler.schedule(e, lr) for e in range(epochs)]


def test_linear_decay():
    s = LRLinearDecay(initial_lr=0.1, hold_steps=2, decay_steps=4, end_lr=0.02)
    assert rates(s, 8) == pytest.approx([0.1, 0.1, 0.08, 0.06, 0.04, 0.02, 0.02, 0.02])


def test_exponential_and_step_decay():
    s = LRExponentialDecay(initial_lr=0.1, hold_steps=1, decay_rate=0.5, min_lr=0.01)
    assert rates(s, 6) == pytest.approx([0.1 * math.exp(-0.5 * e) if 0.1 * math.exp(-0.5 * e) > 0.01 else 0.01
                                         for e in range(6)])
    s = LRStepDecay(initial_lr=0.1, step_size=2, decay_rate=0.5)
    assert rates(s, 5) == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])


def test_cosine_decay_and_warmup():
    s = LRCosineDecay(initial_lr=0.1, hold_steps=2, decay_steps=4, end_lr=0.0)
    values = rates(s, 8)
    assert values[:2] == [0.1, 0.1]
    assert values[2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert values[5:] == pytest.approx([0.0, 0.0, 0.0])
    w = LRWarmupCosineDecay(initial_lr=0.0, warmup_steps=4, max_lr=0.2, hold_steps=2, decay_steps=4, end_lr=0.02)
    values = rates(w, 12)
    assert values[:3] == pytest.approx([0.0, 0.05, 0.1])
    assert values[3:6] == [0.2, 0.2, 0.2]
    assert values[6] == pytest.approx(0.2)  # fraction 0 at the start of the decay
    assert values[10:] == pytest.approx([0.02, 0.02])


def test_cosine_restarts():
    s = LRCosineDecayRestarts(initial_lr=1.0, first_decay_steps=2, end_lr=0.0, t_mul=2.0, m_mul=0.5)
    values = rates(s, 7)
    assert values[0] == pytest.approx(1.0) and values[1] == pytest.approx(0.5)
    assert values[2] == pytest.approx(0.5)  # first restart, peak scaled by m_mul
    assert values[6] == pytest.approx(0.25)  # second restart after 2 + 4 epochs
    flat = LRCosineDecayRestarts(initial_lr=1.0, first_decay_steps=3, end_lr=0.1, t_mul=1.0)
    assert rates(flat, 6)[:3] == pytest.approx(rates(flat, 6)[3:])


def test_polynomial_decays():
    s = LRPolynomialDecay(initial_lr=1.0, hold_steps=1, decay_steps=4, end_lr=0.0, power=1.0)
    assert rates(s, 6) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    r = LRPolynomialDecayRestarts(initial_lr=1.0, hold_steps=1, decay_steps=2, end_lr=0.0, power=1.0)
    assert rates(r, 5) == pytest.approx([1.0, 0.5, 0.0, 0.25, 0.0])  # restarts every decay_steps


def test_piecewise_constant():
    s = LRPiecewiseConstantDecay(boundaries=[2, 4], values=[0.1, 0.01, 0.001])
    assert rates(s, 6) == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    with pytest.raises(ConfigError, match="expecting len\\(boundaries\\) \\+ 1 = 3 values"):
        LRPiecewiseConstantDecay(boundaries=[2, 4], values=[0.1])


def test_learning_rate_scheduler_expression():
    s = LearningRateScheduler("lambda epoch, lr: lr * 0.5 if epoch >= 2 else lr")
    assert [s.schedule(e, 0.1) for e in range(4)] == [0.1, 0.1, 0.05, 0.05]
    f = compile_schedule("lambda epoch, lr: max(1e-4, 0.1 * math.exp(-0.1 * epoch))", "k")
    assert f(epoch=10, lr=0) == pytest.approx(0.1 * math.exp(-1))


@pytest.mark.parametrize("text", [
    "lambda epoch, lr: __import__('os').system('touch /tmp/pwned')", "lambda epoch, lr: lr.__class__",
    "lambda epoch, lr: open('x')", "lambda epoch, lr: [x for x in ()]", "lambda epoch, lr: 'a'",
    "lambda epoch, lr: (lambda: 1)()", "lambda epoch, lr: math.os",
])
def test_unsafe_expressions_are_refused(text):
    with pytest.raises(ConfigError, match="^sched: "):
        compile_schedule(text, "sched")


def test_registry_rules():
    callbacks = build_callbacks({"LRCosineDecay": {"initial_lr": 0.01, "hold_steps": 0, "decay_steps": 10,
                                                   "end_lr": 0.0001}, "TerminateOnNaN": None})
    assert [type(c).__name__ for c in callbacks] == ["LRCosineDecay", "TerminateOnNaN"]
    with pytest.raises(ConfigError, match="Found more than one learning rate scheduler"):
        build_callbacks({"LRStepDecay": {"initial_lr": 0.1, "step_size": 2, "decay_rate": 0.5},
                         "ReduceLROnPlateau": None})
    with pytest.raises(ConfigError, match="training.callbacks.LRCosineDecay.decay_steps: missing argument"):
        build_callbacks({"LRCosineDecay": {"initial_lr": 0.01, "hold_steps": 0, "end_lr": 0.0}})
    with pytest.raises(ConfigError, match="training.callbacks.LRCosineDecay.alpha: unknown argument"):
        build_callbacks({"LRCosineDecay": {"initial_lr": 0.01, "hold_steps": 0, "decay_steps": 3, "end_lr": 0.0,
                                           "alpha": 0.1}})
    swa = build_callbacks({"lightning.pytorch.callbacks.StochasticWeightAveraging": {"swa_lrs": 0.01}})
    assert type(swa[0]).__name__ == "StochasticWeightAveraging"


def test_plot_lr(write_config, tmp_path, capsys):
    extra_callbacks = "    LRStepDecay: {initial_lr: 0.01, step_size: 2, decay_rate: 0.5}\n"
    config = write_config()
    text = config.read_text().replace("    ReduceLROnPlateau:\n      monitor: val_accuracy\n      factor: 0.5\n"
                                      "      patience: 10\n", extra_callbacks)
    config.write_text(text)
    out = tmp_path / "lr.png"
    assert main(["plot-lr", "--config", str(config), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    plateau = write_config("plateau.yaml")  # ReduceLROnPlateau: factor 0.5, patience 10
    assert main(["plot-lr", "--config", str(plateau), "--out", str(tmp_path / "plateau.png")]) == 0
    assert (tmp_path / "plateau.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_lr_of_reduce_lr_on_plateau_is_its_fastest_decay(write_config):
    """Keras's rules: the first epoch always improves, patience=3 reduces at the end of the 4th
    epoch, cooldown=2 counts from the second epoch after a reduction, min_lr is the floor."""
    from stmclf.config import load_config
    from stmclf.training.plot_lr import learning_rates

    config = write_config(epochs=14)
    config.write_text(config.read_text().replace("      patience: 10\n", "      patience: 3\n      cooldown: 2\n"
                                                 "      min_lr: 0.001\n"))
    name, rates = learning_rates(load_config(["--config", str(config)]))
    assert name == "ReduceLROnPlateau"
    assert rates == pytest.approx([0.005] * 4 + [0.0025] * 4 + [0.00125] * 4 + [0.001] * 2)
