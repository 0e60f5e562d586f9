"""Optimizers by Keras name and the Keras callbacks' behaviour, on real Lightning trainers."""
from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from stmclf.errors import ConfigError
from stmclf.training.callbacks import build_callbacks
from stmclf.training.optimizers import OPTIMIZERS, build_optimizer
from stmclf.trust import trusting_code


# -- optimizers -------------------------------------------------------------------------------
def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_keras_arguments_map_to_torch():
    sgd = build_optimizer({"SGD": {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}}, _params())
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.1, 0.9, True)
    adam = build_optimizer({"Adam": {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-5, "amsgrad": True}}, _params())
    assert type(adam) is torch.optim.Adam
    assert adam.defaults["betas"] == (0.8, 0.99) and adam.defaults["eps"] == 1e-5 and adam.defaults["amsgrad"]
    decoupled = build_optimizer({"Adam": {"weight_decay": 0.01}}, _params())
    assert type(decoupled) is torch.optim.AdamW and decoupled.defaults["weight_decay"] == 0.01
    rms = build_optimizer({"RMSprop": {"rho": 0.8}}, _params())
    assert rms.defaults["alpha"] == 0.8 and rms.defaults["eps"] == 1e-7


def test_one_word_form_and_keras_defaults():
    for name in OPTIMIZERS:
        optimizer = build_optimizer(name.lower(), _params())  # case-insensitive, like the reference
        assert optimizer.defaults["lr"] == OPTIMIZERS[name].defaults["learning_rate"]
    assert type(build_optimizer("Nadam", _params())) is torch.optim.NAdam
    assert build_optimizer("Adagrad", _params()).defaults["initial_accumulator_value"] == 0.1


@pytest.mark.parametrize("spec,message", [
    ({"SGD": {"beta_1": 0.9}}, "training.optimizer.SGD.beta_1: unknown argument for SGD; supported: clipnorm"),
    ("Adamm", "training.optimizer: unknown optimizer 'Adamm'; supported: Adam, AdamW, Adamax, Nadam, SGD"),
    ({"Adam": {"learning_rate": "fast"}}, "training.optimizer.Adam.learning_rate: expected float"),
])
def test_bad_optimizer_is_one_line(spec, message):
    with pytest.raises(ConfigError) as info:
        build_optimizer(spec, _params())
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# -- callbacks on a scripted module -------------------------------------------------------------
class Scripted(L.LightningModule):
    """Logs a given value of ``metric`` at each epoch's validation; NaN loss at one step."""

    def __init__(self, metric: str, values: list[float], nan_at_step: int | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.metric, self.values, self.nan_at_step = metric, values, nan_at_step
        self.weights_at_validation: list[torch.Tensor] = []
        self.lr_at_epoch_start: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean() + 1.0
        return loss * float("nan") if self.global_step == self.nan_at_step else loss

    def on_train_epoch_start(self):
        self.lr_at_epoch_start.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def validation_step(self, batch, batch_idx):
        self.log(self.metric, float(self.values[self.current_epoch]))

    def on_validation_epoch_start(self):
        self.weights_at_validation.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(0))), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 2)), batch_size=2)


def _fit(module: Scripted, callbacks: dict, epochs: int) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=build_callbacks(callbacks))
    trainer.fit(module)
    return trainer


def test_reduce_lr_on_plateau_follows_keras_patience():
    # best 0.9 at epoch 1; epochs 2 and 3 do not improve → reduced at the end of epoch 3 (Keras:
    # patience=2 reduces on the 2nd bad epoch). Cooldown 1: epoch 4 ends the cooldown and, as in
    # Keras, already counts as bad → reduced again at the end of epoch 5, floored at min_lr.
    module = Scripted("val_loss", [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95])
    _fit(module, {"ReduceLROnPlateau": {"monitor": "val_loss", "factor": 0.5, "patience": 2, "cooldown": 1,
                                        "min_lr": 0.03}}, 8)
    assert module.lr_at_epoch_start == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.03, 0.03])


def test_early_stopping_restores_the_best_weights():
    module = Scripted("val_loss", [1.0, 0.5, 0.7, 0.8, 0.9, 0.9])
    trainer = _fit(module, {"EarlyStopping": {"monitor": "val_loss", "patience": 2,
                                              "restore_best_weights": True}}, 6)
    assert trainer.current_epoch == 4 and len(module.weights_at_validation) == 4  # stopped after epoch 3
    assert torch.equal(module.layer.weight, module.weights_at_validation[1])
    assert not torch.equal(module.layer.weight, module.weights_at_validation[3])


def test_early_stopping_mode_and_min_delta():
    module = Scripted("val_accuracy", [0.5, 0.55, 0.58, 0.9])
    trainer = _fit(module, {"EarlyStopping": {"monitor": "val_accuracy", "min_delta": 0.1, "patience": 2}}, 4)
    assert len(module.weights_at_validation) == 3 and trainer.current_epoch == 3  # +0.05, +0.08: not improvements
    module = Scripted("val_loss", [0.5, 0.55, 0.58, 0.9])
    _fit(module, {"EarlyStopping": {"monitor": "val_loss", "mode": "max", "patience": 1}}, 4)
    assert len(module.weights_at_validation) == 4  # mode max: rising loss keeps improving


def test_terminate_on_nan_stops_at_that_batch():
    module = Scripted("val_loss", [1.0] * 3, nan_at_step=1)
    trainer = _fit(module, {"TerminateOnNaN": None}, 3)
    assert trainer.global_step == 2 and module.lr_at_epoch_start == [0.1]


def test_any_lightning_callback_by_class_path():
    # lightning./torch./stmclf. class paths import no user code: no --trust-code needed
    with trusting_code(False):
        (monitor,) = build_callbacks({"lightning.pytorch.callbacks.LearningRateMonitor": {"logging_interval": "epoch"}})
    assert type(monitor).__name__ == "LearningRateMonitor" and monitor.logging_interval == "epoch"
    with pytest.raises(ConfigError, match=r"training.callbacks.lightning.pytorch.callbacks.LearningRateMonitor"
                                          r".bad: unknown argument"):
        build_callbacks({"lightning.pytorch.callbacks.LearningRateMonitor": {"bad": 1}})


@pytest.mark.parametrize("spec, expected", [
    ({"Adam": {"learning_rate": 0.005, "beta_1": 5}}, r"^training\.optimizer\.Adam: .*beta"),
    ({"SGD": {"learning_rate": 0.01, "nesterov": True}}, r"^training\.optimizer\.SGD: .*[Nn]esterov"),
    ({"Adam": {"learning_rate": float("nan")}}, r"^training\.optimizer\.Adam: .*learning rate"),
])
def test_values_torch_refuses_are_one_line_config_errors(spec, expected):
    with pytest.raises(ConfigError) as info:
        build_optimizer(spec, torch.nn.Linear(2, 2).parameters())
    assert re.search(expected, str(info.value)) and "\n" not in str(info.value)


def test_a_fully_frozen_model_names_frozen_layers():
    layer = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match=r"^training\.frozen_layers: every layer"):
        build_optimizer({"Adam": {"learning_rate": 0.001}}, layer.parameters())
