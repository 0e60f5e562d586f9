"""ResNet v1 (CIFAR): reference counts, layer indices, depths, input sizes, constraints, init.
(Layer-for-layer Keras parity: tests/test_models_zoo_keras.py.)"""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from stmclf.errors import ConfigError
from stmclf.models import build_model


def _resnet(depth: int = 8, input_shape: tuple = (32, 32, 3), num_classes: int = 10, dropout: float | None = None):
    spec = {"name": "resnet", "version": "v1", "depth": depth, "input_shape": input_shape}
    return build_model(spec, num_classes, dropout)


def test_reference_counts_depth_8() -> None:
    model = _resnet()
    assert (model.keras_param_count(), model.keras_trainable_count(), model.num_layers) == (78_666, 78_186, 30)
    assert model.backbone_end_index == 24
    # Stack 3 of ResNet-8: conv, BN, ReLU, conv, 1x1 projection (listed before the 2nd BN, as in Keras), BN, add.
    assert [(n.name, n.keras_type) for n in model.nodes[19:26]] == [
        ("conv2d_6", "Conv2D"), ("batch_normalization_5", "BatchNormalization"), ("activation_5", "Activation"),
        ("conv2d_7", "Conv2D"), ("conv2d_8", "Conv2D"), ("batch_normalization_6", "BatchNormalization"),
        ("add_2", "Add")]
    assert [n.keras_type for n in model.nodes[-3:]] == ["AveragePooling2D", "Flatten", "Dense"]
    assert model.nodes[-3].output_shape == (1, 1, 64)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert _resnet(dropout=0.5).nodes[-2].name == "dropout"


@pytest.mark.parametrize("depth,layers", [(8, 30), (20, 72), (32, 114)])
def test_depths(depth: int, layers: int) -> None:
    model = _resnet(depth)
    assert model.num_layers == layers and model.name == f"resnet_v1_depth_{depth}"


def test_larger_inputs_pool_with_a_fixed_window() -> None:
    model = _resnet(input_shape=(64, 48, 3), num_classes=2)
    assert model.nodes[-3].output_shape == (2, 1, 64) and model.nodes[-2].output_shape == (128,)
    assert model(torch.randn(1, 3, 64, 48)).shape == (1, 2)
    assert _resnet(input_shape=(29, 29, 1)).nodes[-3].output_shape == (1, 1, 64)


def test_he_normal_initialisation() -> None:
    torch.manual_seed(0)
    conv = _resnet(20).layers["conv2d_10"]  # 3x3, 32 -> 32 filters
    fan_in = 32 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert conv.weight.abs().max().item() <= 2 * math.sqrt(2 / fan_in) / 0.8796 + 1e-6


@pytest.mark.parametrize("keys,key,message", [
    ({"depth": 14}, "training.model.depth", r"expected one of \[8, 20, 32\]"),
    ({"depth": True}, "training.model.depth", "expected one of"),
    ({"input_shape": (28, 32, 3)}, "training.model.input_shape", ">= 29"),
    ({"alpha": 0.5}, "training.model.alpha", "unexpected attribute for resnet v1"),
    ({"depth": None}, "training.model.depth", "missing required attribute"),
])
def test_constraints(keys: dict[str, Any], key: str, message: str) -> None:
    spec = {"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3), **keys}
    with pytest.raises(ConfigError, match=message) as info:
        build_model(spec, 10, None)
    assert info.value.key == key and "\n" not in str(info.value)
