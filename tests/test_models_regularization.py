"""Keras kernel regularizers are training-loss terms, as in Keras: ResNet v1's L2 1e-4 (the
reference's ``kernel_regularizer=l2(1e-4)``) and the L1/L2 regularizers of an imported ``.h5``."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stmclf.models import build_model
from stmclf.models.importers import load_model_file
from stmclf.models.regularization import (keras_regularizer, kernel_regularization_terms, regularization_loss,
                                          set_kernel_regularizer)
from stmclf.training.module import ClassifierModule


def test_resnet_v1_convolutions_carry_l2() -> None:
    model = build_model({"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)},
                        num_classes=10, dropout=None)
    terms = kernel_regularization_terms(model)
    convs = [m for m in model.modules() if type(m).__name__ == "Conv2D"]
    assert len(convs) == 9 and len(terms) == 9  # stem + 3 stacks × 2 + 2 projections; the Dense is not
    assert {(l1, l2) for l1, l2, _ in terms} == {(0.0, 1e-4)}
    expected = sum(1e-4 * float(c.weight.detach().double().square().sum()) for c in convs)
    assert float(regularization_loss(terms)) == pytest.approx(expected, rel=1e-6)


def test_training_loss_adds_the_penalty_and_its_gradient() -> None:
    module = ClassifierModule({"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)},
                              [str(i) for i in range(10)], [32, 32, 3], (1 / 127.5, -1.0), {"Adam": {}},
                              channels_last=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    x = module.preprocess(images)
    loss, _ = module._loss((x, labels), module.train_acc, training=True)
    cross_entropy = F.cross_entropy(module(x).float(), labels)
    penalty = regularization_loss(kernel_regularization_terms(module.model))
    assert float(penalty) > 1e-3  # He-normal kernels: not a negligible term
    assert float(loss) == pytest.approx(float(cross_entropy + penalty), rel=1e-6)
    loss.backward()
    stem = module.model.layers.conv2d
    ce_grad = torch.autograd.grad(F.cross_entropy(module(x).float(), labels), stem.weight)[0]
    torch.testing.assert_close(stem.weight.grad, ce_grad + 2e-4 * stem.weight.detach(), rtol=1e-4, atol=1e-7)


def test_each_kernel_gets_exactly_its_own_gradient_whatever_its_group() -> None:
    torch.manual_seed(0)
    layers = [set_kernel_regularizer(torch.nn.Conv2d(3, 4, 3), l2=1e-4), torch.nn.Linear(5, 2),
              set_kernel_regularizer(torch.nn.Conv2d(4, 4, 1), l2=1e-4),
              set_kernel_regularizer(torch.nn.Linear(4, 3), l1=0.01, l2=0.5),
              set_kernel_regularizer(torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last), l2=1e-4)]
    model = torch.nn.ModuleList(layers)
    terms = kernel_regularization_terms(model)
    assert len(terms) == 4  # the unregularized Linear has none
    penalty = regularization_loss(terms)
    expected = sum(l2 * w.detach().double().square().sum() + l1 * w.detach().double().abs().sum()
                   for l1, l2, w in terms)
    assert float(penalty) == pytest.approx(float(expected), rel=1e-6)
    penalty.backward()
    for l1, l2, w in terms:
        torch.testing.assert_close(w.grad, 2 * l2 * w.detach() + l1 * torch.sign(w.detach()), rtol=1e-6, atol=0)
    assert layers[1].weight.grad is None


def test_an_unregularized_model_has_no_term() -> None:
    model = build_model({"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (32, 32, 3)},
                        num_classes=3, dropout=None)
    assert kernel_regularization_terms(model) == [] and regularization_loss([]) is None


@pytest.mark.parametrize("config, expected", [
    (None, (0.0, 0.0)),
    ({"class_name": "L2", "config": {"l2": 1e-4}}, (0.0, 1e-4)),
    ({"class_name": "L1", "config": {"l1": 0.5}}, (0.5, 0.0)),
    ({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}, (0.1, 0.2)),
    ({"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.001}, "registered_name": None},
     (0.0, 0.001)),
])
def test_keras_regularizer_configs(config: Any, expected: tuple) -> None:
    assert keras_regularizer(config) == pytest.approx(expected)


@pytest.mark.parametrize("config", [
    {"class_name": "OrthogonalRegularizer", "config": {"factor": 0.01}},
    {"class_name": "L2", "config": {"l2": -1.0}},
    {"class_name": "L2", "config": {"l2": "x"}},
    {"class_name": "L2", "config": {"l2": float("inf")}},
    "l2",
])
def test_keras_regularizer_refuses_what_it_cannot_run(config: Any) -> None:
    with pytest.raises(ValueError):
        keras_regularizer(config)
    with pytest.raises(ValueError):
        set_kernel_regularizer(torch.nn.Linear(2, 2), l2=float("nan"))


def test_h5_regularizers_match_keras_losses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The penalty of the imported model equals ``sum(model.losses)`` of the tf_keras model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("tf_keras")
    L, R = keras.layers, keras.regularizers
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", kernel_regularizer=R.l2(1e-3))(inputs)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depthwise_regularizer=R.l1(1e-4))(x)
    x = L.SeparableConv2D(8, 3, depthwise_regularizer=R.l2(2e-3), pointwise_regularizer=R.l1_l2(1e-4, 3e-3))(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(8, kernel_regularizer=R.OrthogonalRegularizer(0.01), name="orthogonal")(x)  # dropped here
    outputs = L.Dense(4, activation="softmax", kernel_regularizer=R.l1_l2(l1=1e-3, l2=1e-3))(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "regularized.h5"
    model.save(path)
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        imported = load_model_file(path)
    terms = kernel_regularization_terms(imported.graph)
    assert len(terms) == 5
    assert any("kernel_regularizer: layer 'orthogonal'" in r.getMessage() and "not used" in r.getMessage()
               for r in caplog.records)
    keras_total = float(sum(float(loss) for layer in model.layers if layer.name != "orthogonal"
                            for loss in layer.losses))
    assert float(regularization_loss(terms)) == pytest.approx(keras_total, rel=1e-5)
    assert np.isfinite(keras_total) and keras_total > 0
