"""FD-MobileNet and ST FD-MobileNet v1: reference counts, layer indices, head, constraints, ONNX.
(Layer-for-layer Keras parity: tests/test_models_zoo_keras.py.)"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stmclf.errors import ConfigError
from stmclf.models import build_model
from stmclf.models.layers import BatchNormalization, SoftmaxLogits


def _fd(alpha: float = 0.25, input_shape: tuple = (128, 128, 3), num_classes: int = 5,
        dropout: float | None = None):
    return build_model({"name": "fdmobilenet", "alpha": alpha, "input_shape": input_shape}, num_classes, dropout)


def _st(input_shape: tuple = (128, 128, 3), num_classes: int = 5, dropout: float | None = 0.2):
    return build_model({"name": "st_fdmobilenet", "version": "v1", "input_shape": input_shape}, num_classes, dropout)


def test_reference_counts_alpha_025_128() -> None:
    model = _fd()
    assert (model.keras_param_count(), model.keras_trainable_count(), model.num_layers) == (128_813, 126_589, 53)
    assert model.backbone_end_index == 46 and model.nodes[46].name == "conv_pw_11_bn"
    assert [(n.name, n.keras_type) for n in model.nodes[-5:]] == [
        ("global_average_pooling2d", "GlobalAveragePooling2D"), ("reshape_1", "Reshape"), ("conv_preds", "Conv2D"),
        ("act_softmax", "Activation"), ("reshape_2", "Reshape")]
    assert model.nodes[49].output_shape == (1, 1, 256) and model.nodes[-1].output_shape == (5,)
    with_dropout = _fd(dropout=0.3)
    assert with_dropout.num_layers == 54 and with_dropout.nodes[50].name == "dropout"
    assert _fd(alpha=1.0).nodes[49].output_shape == (1, 1, 1024)
    assert _fd(num_classes=1).nodes[-1].output_shape == (2,)


def test_outputs_logits_not_probabilities() -> None:
    model = _fd(input_shape=(64, 64, 3)).eval()
    assert isinstance(model.layers["act_softmax"], SoftmaxLogits)
    captured = {}
    model.layers["conv_preds"].register_forward_hook(lambda m, i, o: captured.setdefault("preds", o))
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    torch.testing.assert_close(out, captured["preds"].flatten(1))
    assert not torch.allclose(out.sum(dim=1), torch.ones(3))


def test_st_fdmobilenet_widths_and_mandatory_dropout() -> None:
    model = _st()
    widths = [model.nodes[model.layer_index(name)].output_shape[-1]
              for name in ["conv1"] + [f"conv_pw_{i}" for i in range(1, 12)]]
    assert widths == [16, 48, 80, 64, 96, 64, 128, 128, 128, 128, 128, 256]
    assert model.num_layers == 54 and model.layers["dropout"].p == 0.2 and model.name == "st_fdmobilenet_v1"
    assert model.backbone_end_index == 46 and model.nodes[46].name == "conv_pw_11_bn"
    assert model(torch.randn(2, 3, 128, 128)).shape == (2, 5)
    for dropout in (None, 0.0):
        with pytest.raises(ConfigError, match="always has a Dropout layer") as info:
            _st(dropout=dropout)
        assert info.value.key == "training.dropout"


@pytest.mark.parametrize("build,key,message", [
    (lambda: _fd(alpha=0.35), "training.model.alpha", r"expected one of \[0.25, 0.5, 0.75, 1.0\]"),
    (lambda: _fd(input_shape=(96, 100, 3)), "training.model.input_shape", "multiples of 32"),
    (lambda: _st(input_shape=(48, 64, 3)), "training.model.input_shape", "multiples of 32"),
    (lambda: build_model({"name": "fdmobilenet", "version": "v1", "alpha": 0.25, "input_shape": (64, 64, 3)}, 3,
                         None), "training.model.version", "not applicable"),
    (lambda: build_model({"name": "fdmobilenet", "alpha": 0.25, "input_shape": (64, 64, 3),
                          "pretrained_weights": "imagenet"}, 3, None), "training.model.pretrained_weights",
     "unexpected attribute"),
    (lambda: build_model({"name": "st_fdmobilenet", "input_shape": (64, 64, 3)}, 3, 0.2),
     "training.model.version", "missing version"),
])
def test_constraints(build: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert info.value.key == key and "\n" not in str(info.value)


def test_onnx_export_round_trip(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _st(input_shape=(64, 96, 3), num_classes=4)
    for m in model.modules():
        if isinstance(m, BatchNormalization):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 64, 96))
    model.eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = torch.rand(3, 3, 64, 96)
    (onnx_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert onnx_out.shape == (3, 4) and expected.std(axis=0).min() > 0.01
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)
