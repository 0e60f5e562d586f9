"""MobileNet V1: Keras reference counts, layer-for-layer parity with tf_keras' MobileNet, weight
copy, constraints, ONNX."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stmclf.errors import ConfigError
from stmclf.models import build_model
from stmclf.models.graph import KerasGraph
from stmclf.models.keras_weights import load_keras_weights
from stmclf.models.layers import BatchNormalization


def _mnv1(alpha: float, input_shape: tuple[int, int, int], num_classes: int = 10, dropout: float | None = None,
          **keys: Any) -> KerasGraph:
    spec = {"name": "mobilenet", "version": "v1", "alpha": alpha, "input_shape": input_shape, **keys}
    return build_model(spec, num_classes=num_classes, dropout=dropout)


def test_reference_counts_alpha_025_96() -> None:
    model = _mnv1(0.25, (96, 96, 3))
    assert (model.keras_param_count(), model.keras_trainable_count(), model.num_layers) == (221_114, 215_642, 88)
    assert model.backbone_end_index == 84 and model.nodes[84].name == "conv_pw_13_bn"
    assert [n.name for n in model.nodes[:4]] == ["input_1", "conv1", "conv1_bn", "conv1_relu"]
    assert model.nodes[10].name == "conv_pad_2" and model.nodes[10].keras_type == "ZeroPadding2D"
    assert [n.name for n in model.nodes[-3:]] == ["conv_pw_13_relu", "global_average_pooling2d", "predictions"]
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 10)
    with_dropout = _mnv1(0.25, (96, 96, 3), dropout=0.2)
    assert with_dropout.num_layers == 89 and with_dropout.nodes[87].keras_type == "Dropout"
    assert with_dropout.keras_param_count() == 221_114
    assert _mnv1(0.25, (96, 96, 3), num_classes=2).nodes[-1].output_shape == (2,)


@pytest.mark.parametrize("keys,key,message", [
    ({"alpha": 0.35, "pretrained_weights": "imagenet"}, "training.model.alpha", "ImageNet weights exist for alpha"),
    ({"input_shape": (96, 96, 1), "pretrained_weights": "imagenet"}, "training.model.input_shape", "3 input channels"),
    ({"input_shape": (31, 64, 3)}, "training.model.input_shape", ">= 32"),
    ({"alpha": -1}, "training.model.alpha", "positive number"),
    ({"alpha": 0.01}, "training.model.alpha", "without filters"),
    ({"depth": 8}, "training.model.depth", "unexpected attribute for mobilenet v1"),
    ({"pretrained_weights": "imagenet", "pretrained_model_path": "x.h5"}, "training.model.pretrained_model_path",
     "mutually exclusive"),
])
def test_constraints(keys: dict[str, Any], key: str, message: str) -> None:
    spec = {"alpha": 0.25, "input_shape": (96, 96, 3), **keys}
    with pytest.raises(ConfigError, match=message) as info:
        _mnv1(**spec)
    assert info.value.key == key and "\n" not in str(info.value)


def test_onnx_export_round_trip(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _mnv1(0.25, (64, 80, 3), num_classes=4, dropout=0.2)
    for m in model.modules():
        if isinstance(m, BatchNormalization):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 64, 80))
    model.eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 80),), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = torch.rand(3, 3, 64, 80)
    (onnx_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.std(axis=0).min() > 0.01
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Parity with Keras Applications MobileNet (tf_keras, i.e. Keras 2 as in the reference).

def _keras_mnv1(keras: Any, alpha: float, input_shape: tuple[int, int, int], num_classes: int, seed: int = 0) -> Any:
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNet(include_top=False, weights=None, alpha=alpha, input_shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(base.output)
    model = keras.Model(base.input, keras.layers.Dense(max(num_classes, 2), name="predictions")(x))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, var])
            layer.momentum = 0.0
    model(rng.uniform(-1, 1, (8, *input_shape)).astype(np.float32), training=True)
    return model


@pytest.mark.parametrize("alpha,input_shape", [
    (0.25, (96, 96, 3)),  # even sizes: TF "same" stride-2 conv1 pads after
    (0.5, (75, 61, 1)),   # odd sizes
    (1.0, (32, 48, 3)),
])
def test_matches_keras_layer_for_layer(keras: Any, alpha: float, input_shape: tuple[int, int, int]) -> None:
    kmodel = _keras_mnv1(keras, alpha, input_shape, num_classes=7)
    model = _mnv1(alpha, input_shape, num_classes=7).eval()
    assert [(n.name, n.keras_type) for n in model.nodes] == [(l.name, type(l).__name__) for l in kmodel.layers]
    assert [n.output_shape for n in model.nodes[1:]] == [tuple(l.output_shape[1:]) for l in kmodel.layers[1:]]
    assert model.keras_param_count() == kmodel.count_params()
    assert model.keras_trainable_count() == sum(int(np.prod(w.shape)) for w in kmodel.trainable_weights)
    # ImageNet files are "no top" models: the backbone (0..84, up to conv_pw_13_bn) loads by name.
    backbone = {l.name: l.get_weights() for l in kmodel.layers[:model.backbone_end_index + 1]}
    loaded = load_keras_weights(model, backbone, indices=range(model.backbone_end_index + 1))
    assert loaded[0] == "conv1" and loaded[-1] == "conv_pw_13_bn"
    load_keras_weights(model, kmodel)
    x = np.random.default_rng(1).uniform(-1, 1, (2, *input_shape)).astype(np.float32)
    expected = kmodel(x, training=False).numpy()
    assert expected.std(axis=0).min() > 0.01
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_imagenet_file_loads_into_the_backbone(keras: Any, tmp_path: Path) -> None:
    """A Keras Applications "no top" file (here random weights under the ImageNet file name) loads
    by name into layers 0..84; the head keeps its initialisation."""
    from stmclf.models.pretrained import apply_pretrained, imagenet_weights_file

    spec = {"name": "mobilenet", "version": "v1", "alpha": 0.5, "input_shape": (128, 128, 3),
            "pretrained_weights": "imagenet"}
    kbase = _keras_mnv1(keras, 0.5, (128, 128, 3), num_classes=3)
    base = keras.Model(kbase.input, kbase.get_layer("conv_pw_13_relu").output)
    base.save_weights(tmp_path / imagenet_weights_file(spec).file_name)
    model = build_model(spec, num_classes=3, dropout=None).eval()
    head = model.layers["predictions"].weight.clone()
    assert "ImageNet weights" in apply_pretrained(model, spec, cache_dir=tmp_path)
    assert torch.equal(model.layers["predictions"].weight, head)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    expected = base(x, training=False).numpy().mean(axis=(1, 2))
    captured = {}
    model.layers["global_average_pooling2d"].register_forward_hook(lambda m, i, o: captured.setdefault("gap", o))
    with torch.no_grad():
        model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(captured["gap"].numpy(), expected, rtol=1e-4, atol=1e-4)
