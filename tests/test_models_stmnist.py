"""ST MNIST: layer indices, head, accepted keys. (Keras parity: tests/test_models_zoo_keras.py.)"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from stmclf.errors import ConfigError
from stmclf.models import build_model


def test_layers() -> None:
    model = build_model({"name": "stmnist", "input_shape": (28, 28, 1)}, 10, None)
    assert model.num_layers == 18 and (model.keras_param_count(), model.keras_trainable_count()) == (8_682, 8_362)
    assert model.backbone_end_index == 14 and model.nodes[14].name == "batch_normalization_4"
    assert [n.name for n in model.nodes[1:4]] == ["conv2d", "batch_normalization", "re_lu"]
    assert [n.name for n in model.nodes[-2:]] == ["global_average_pooling2d", "dense"]
    assert model.nodes[13].output_shape == (7, 7, 64)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with_dropout = build_model({"name": "stmnist", "input_shape": (28, 28, 1)}, 2, 0.1)
    assert with_dropout.nodes[-2].name == "dropout" and with_dropout.nodes[-1].output_shape == (2,)


@pytest.mark.parametrize("extra,key,message", [
    ({"pretrained_model_path": "x.h5"}, "training.model.pretrained_model_path", "unexpected attribute for stmnist"),
    ({"version": "v1"}, "training.model.version", "not applicable"),
    ({"alpha": 0.5}, "training.model.alpha", r"Allowed attributes are \['name', 'input_shape'\]"),
])
def test_rejected_keys(extra: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_model({"name": "stmnist", "input_shape": (28, 28, 1), **extra}, 10, None)
    assert info.value.key == key
