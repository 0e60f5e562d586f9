"""MobileNet V2: Keras reference counts, layer-for-layer parity with tf_keras, weight copy, ONNX."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stmclf.errors import UserError
from stmclf.models import build_model
from stmclf.models.graph import KerasGraph
from stmclf.models.keras_weights import load_keras_weights, read_h5_layer_weights
from stmclf.models.layers import BatchNormalization
from stmclf.models.mobilenet_v2 import make_divisible


def _mnv2(alpha: float, input_shape: tuple[int, int, int], num_classes: int = 5,
          dropout: float | None = None) -> KerasGraph:
    spec = {"name": "mobilenet", "version": "v2", "alpha": alpha, "input_shape": input_shape}
    return build_model(spec, num_classes=num_classes, dropout=dropout)


def test_reference_counts_alpha_035_128() -> None:
    model = _mnv2(0.35, (128, 128, 3))
    assert (model.keras_param_count(), model.keras_trainable_count(), model.num_layers) == (416_613, 402_533, 156)
    with_dropout = _mnv2(0.35, (128, 128, 3), dropout=0.2)
    assert (with_dropout.keras_param_count(), with_dropout.keras_trainable_count()) == (416_613, 402_533)
    assert with_dropout.num_layers == 157 and with_dropout.nodes[155].keras_type == "Dropout"
    assert model.backbone_end_index == 152 and model.nodes[152].name == "Conv_1_bn"
    assert [n.name for n in model.nodes[-4:]] == ["Conv_1_bn", "out_relu", "global_average_pooling2d",
                                                  "predictions"]
    assert model(torch.randn(2, 3, 128, 128)).shape == (2, 5)


def test_make_divisible() -> None:
    assert [make_divisible(v) for v in (32 * 0.35, 5, 16 * 0.75, 1280 * 1.3, 20, 3)] == [16, 8, 16, 1664, 24, 8]


def test_frozen_backbone_trains_only_the_head() -> None:
    model = _mnv2(0.35, (64, 64, 3))
    model.set_frozen(range(model.backbone_end_index + 2))  # up to out_relu
    model.train()
    assert model.keras_trainable_count() == 1280 * 5 + 5
    bns = [m for m in model.modules() if isinstance(m, BatchNormalization)]
    assert bns and not any(m.training for m in bns)
    before = copy.deepcopy(model.state_dict())
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    for key, value in model.state_dict().items():
        if not key.startswith("layers.predictions"):
            torch.testing.assert_close(value, before[key], msg=key)


def _calibrate_batch_norm(model: KerasGraph, x: torch.Tensor) -> None:
    """Set BN moving statistics to those of ``x``, so that logits depend visibly on the input."""
    for m in model.modules():
        if isinstance(m, BatchNormalization):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    model.eval()


def test_onnx_export_round_trip(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _mnv2(0.35, (96, 80, 3), dropout=0.2).eval()
    _calibrate_batch_norm(model, torch.rand(8, 3, 96, 80))
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 96, 80),), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    # One constant Pad per padding, no shape arithmetic; Dropout is gone, BN folded into Conv.
    assert {n.op_type for n in onnx.load(str(path)).graph.node} <= {
        "Conv", "Clip", "Add", "Pad", "ReduceMean", "Gemm", "Constant", "Identity"}
    x = torch.rand(3, 3, 96, 80)
    (onnx_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.std(axis=0).min() > 0.01
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Parity with the Keras Applications MobileNetV2 (tf_keras, i.e. Keras 2 as in the reference).

def _keras_mnv2(keras: Any, alpha: float, input_shape: tuple[int, int, int], num_classes: int,
                dropout: float | None = None, seed: int = 0) -> Any:
    keras.backend.clear_session()  # layer auto-names (input_1, ...) restart
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=alpha, input_shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(base.output)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(max(num_classes, 2), activation=None, name="predictions")(x)
    model = keras.Model(base.input, x)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # random BN scale/offset; moving statistics of a batch (below)
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, var])
            layer.momentum = 0.0
    model(rng.uniform(-1, 1, (8, *input_shape)).astype(np.float32), training=True)
    return model


@pytest.mark.parametrize("alpha,input_shape", [
    (0.35, (96, 96, 3)),   # asymmetric "same" padding (even sizes)
    (1.0, (64, 64, 3)),
    (0.25, (75, 61, 1)),   # odd sizes: symmetric padding, correct_pad ((1, 1), (1, 1)); block 0 has an Add
    (1.3, (32, 48, 3)),    # alpha > 1 widens the last conv
])
def test_matches_keras_layer_for_layer(keras: Any, alpha: float, input_shape: tuple[int, int, int]) -> None:
    kmodel = _keras_mnv2(keras, alpha, input_shape, num_classes=7)
    model = _mnv2(alpha, input_shape, num_classes=7).eval()
    assert [(n.name, n.keras_type) for n in model.nodes] == [(l.name, type(l).__name__) for l in kmodel.layers]
    assert [n.output_shape for n in model.nodes[1:]] == [tuple(l.output_shape[1:]) for l in kmodel.layers[1:]]
    assert model.keras_param_count() == kmodel.count_params()
    trainable = sum(int(np.prod(w.shape)) for w in kmodel.trainable_weights)
    assert model.keras_trainable_count() == trainable
    loaded = load_keras_weights(model, kmodel)
    assert len(loaded) == sum(1 for l in kmodel.layers if l.get_weights())
    x = np.random.default_rng(1).uniform(-1, 1, (2, *input_shape)).astype(np.float32)
    expected = kmodel(x, training=False).numpy()
    assert expected.std(axis=0).min() > 0.01  # the logits depend on the input
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_h5_files_and_backbone_transfer(keras: Any, tmp_path: Path) -> None:
    kmodel = _keras_mnv2(keras, 0.35, (64, 64, 3), num_classes=10, dropout=0.2)
    kmodel.save(tmp_path / "model.h5")
    kmodel.save_weights(tmp_path / "weights.h5")
    full, weights_only = (read_h5_layer_weights(tmp_path / name) for name in ("model.h5", "weights.h5"))
    assert full.keys() == weights_only.keys() == {l.name for l in kmodel.layers}

    model = _mnv2(0.35, (64, 64, 3), num_classes=3).eval()  # another head: copy the backbone only
    head_before = model.layers["predictions"].weight.clone()
    loaded = load_keras_weights(model, full, indices=range(model.backbone_end_index + 1))
    assert loaded[0] == "Conv1" and loaded[-1] == "Conv_1_bn"
    assert torch.equal(model.layers["predictions"].weight, head_before)
    features = keras.Model(kmodel.input, kmodel.get_layer("out_relu").output)
    x = np.random.default_rng(2).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    gap = features(x, training=False).numpy().mean(axis=(1, 2))
    with torch.no_grad():
        ours = model.layers["global_average_pooling2d"]
        captured = {}
        ours.register_forward_hook(lambda m, i, o: captured.setdefault("gap", o))
        model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(captured["gap"].numpy(), gap, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="does not fit"):
        load_keras_weights(model, full)  # 10-class Keras head into a 3-class model
    with pytest.raises(UserError, match="missing"):
        load_keras_weights(model, {k: v for k, v in full.items() if k != "Conv1"})
