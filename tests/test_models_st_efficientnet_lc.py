"""ST EfficientNet LC v1: layer indices, stochastic-depth dropouts, constraints.
(Layer-for-layer Keras parity: tests/test_models_zoo_keras.py.)"""
from __future__ import annotations

import pytest
import torch

from stmclf.errors import ConfigError
from stmclf.models import build_model
from stmclf.models.layers import Dropout, SampleDropout
from stmclf.models.st_efficientnet_lc import round_filters


def _eff(input_shape: tuple = (128, 128, 3), num_classes: int = 5, dropout: float | None = 0.2):
    return build_model({"name": "st_efficientnet_lc", "version": "v1", "input_shape": input_shape}, num_classes,
                       dropout)


def test_layers_and_backbone_index() -> None:
    model = _eff()
    assert model.num_layers == 281 and model.name == "EfficientNet-STCustom"
    assert (model.keras_param_count(), model.keras_trainable_count()) == (516_153, 504_793)
    assert model.backbone_end_index == 276
    assert [(n.name, n.keras_type) for n in model.nodes[275:]] == [
        ("top_conv", "Conv2D"), ("batch_normalization_48", "BatchNormalization"), ("top_activation", "Activation"),
        ("avg_pool", "GlobalAveragePooling2D"), ("top_dropout", "Dropout"), ("output_probs", "Dense")]
    assert model.nodes[275].output_shape == (4, 4, 576)
    # the first block's squeeze-excite, with its clip Lambda before the sigmoid
    assert [(n.name, n.keras_type) for n in model.nodes[7:15]] == [
        ("global_average_pooling2d", "GlobalAveragePooling2D"), ("reshape", "Reshape"), ("conv2d_1", "Conv2D"),
        ("act_0", "Activation"), ("conv2d_2", "Conv2D"), ("lambda", "Lambda"), ("act2_0", "Activation"),
        ("multiply", "Multiply")]
    assert model(torch.randn(2, 3, 128, 128)).shape == (2, 5)


def test_round_filters() -> None:
    assert [round_filters(f) for f in (32, 16, 24, 40, 80, 112, 192, 320, 1280)] == [16, 8, 16, 24, 40, 48, 88,
                                                                                     144, 576]


def test_every_dropout_takes_the_training_rate() -> None:
    model = _eff(input_shape=(64, 64, 3), dropout=0.3)
    dropouts = [m for m in model.layers.values() if isinstance(m, Dropout)]
    assert len(dropouts) == 10 and {d.p for d in dropouts} == {0.3}
    assert sum(isinstance(d, SampleDropout) for d in dropouts) == 9  # stochastic depth on the identity blocks


def test_stochastic_depth_drops_whole_samples() -> None:
    torch.manual_seed(0)
    layer = SampleDropout(0.5).train()
    out = layer(torch.ones(64, 3, 4, 4))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample.min(dim=1).values == per_sample.max(dim=1).values).all()
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(layer.eval()(torch.ones(2, 3)), torch.ones(2, 3))


@pytest.mark.parametrize("input_shape,dropout,key,message", [
    ((128, 96, 3), 0.2, "training.model.input_shape", "square"),
    ((112, 112, 3), 0.2, "training.model.input_shape", "multiples of 32"),
    ((128, 128, 3), None, "training.dropout", "stochastic-depth Dropout"),
])
def test_constraints(input_shape: tuple, dropout: float | None, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _eff(input_shape, dropout=dropout)
    assert info.value.key == key and "\n" not in str(info.value)
