"""SqueezeNet v1.1 and v1.0: layer indices, heads, constraints, ONNX (layer names contain '/').
(Layer-for-layer Keras parity: tests/test_models_zoo_keras.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stmclf.errors import ConfigError
from stmclf.models import build_model, registered_models


def _sq(version: str = "v11", input_shape: tuple = (128, 128, 3), num_classes: int = 5,
        dropout: float | None = None):
    return build_model({"name": "squeezenet", "version": version, "input_shape": input_shape}, num_classes, dropout)


def test_v11_layers() -> None:
    model = _sq()
    assert model.num_layers == 66 and model.keras_param_count() == model.keras_trainable_count() == 725_061
    assert model.backbone_end_index == 58 and model.nodes[58].name == "fire9/expand3x3"
    assert [n.name for n in model.nodes[4:11]] == [
        "fire2/squeeze1x1", "fire2/relu_squeeze1x1", "fire2/expand1x1", "fire2/expand3x3",
        "fire2/relu_expand1x1", "fire2/relu_expand3x3", "fire2/concat"]
    assert [(n.name, n.keras_type) for n in model.nodes[-4:]] == [
        ("conv10", "Conv2D"), ("relu_conv10", "Activation"), ("global_average_pooling2d", "GlobalAveragePooling2D"),
        ("loss", "Activation")]
    with_dropout = _sq(dropout=0.5)
    assert with_dropout.num_layers == 67 and with_dropout.nodes[62].name == "drop9"
    out = model(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 5) and (out >= 0).all()  # ReLU before the pool, as in the reference
    assert _sq(num_classes=2).nodes[-1].output_shape == (2,)
    assert registered_models()["squeezenet"] == ("v10", "v11")


def test_v10_layers() -> None:
    model = _sq("v10", (224, 224, 3))
    assert model.num_layers == 46 and model.name == "SqueezeNet_v1.0"
    assert model.backbone_end_index == 40 and model.nodes[40].name == "fire9_expand_merge"
    assert model.keras_param_count() - model.keras_trainable_count() == 2 * (16 + 16 + 32 + 32 + 48 + 48 + 64 + 5)
    assert [n.name for n in model.nodes[-5:]] == ["conv10", "relu_conv10", "bn", "average_pool10", "softmax"]
    assert _sq("v10", (96, 96, 3), dropout=0.5).nodes[-6].name == "dropout"


@pytest.mark.parametrize("version,input_shape", [("v11", (20, 64, 3)), ("v10", (32, 32, 3))])
def test_too_small_inputs(version: str, input_shape: tuple) -> None:
    with pytest.raises(ConfigError, match="too small") as info:
        _sq(version, input_shape)
    assert info.value.key == "training.model.input_shape" and "\n" not in str(info.value)


def test_versions() -> None:
    with pytest.raises(ConfigError, match=r"Supported versions for squeezenet are \['v10', 'v11'\]"):
        _sq("v12")
    with pytest.raises(ConfigError, match="unexpected attribute"):
        build_model({"name": "squeezenet", "version": "v11", "input_shape": (64, 64, 3), "alpha": 1.0}, 5, None)


def test_onnx_export_round_trip(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _sq(input_shape=(64, 64, 3), num_classes=4, dropout=0.2)
    with torch.no_grad():  # larger kernels and positive biases: otherwise the BN-free signal shrinks to ~0
        for name, module in model.layers.items():
            if hasattr(module, "weight") and module.weight is not None:
                module.weight.mul_(2.5)
                module.bias.uniform_(0.0, 0.1)
    model.eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    (onnx_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.std(axis=0).max() > 0.01
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
