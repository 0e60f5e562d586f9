"""Bring your own model (``general.model_path``): Keras .h5, ONNX, TorchScript, torch.export and
pickled-module files read as trainable models that output logits."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stmclf.errors import UserError
from stmclf.models import build_model
from stmclf.models.frozen import frozen_indices
from stmclf.models.importers import ImportedModel, detect_kind, load_model_file
from stmclf.models.keras_weights import load_keras_weights
from stmclf.training.qat import plan_model


def _one_line_error(exc_info: Any) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def _randomize_bn(model: Any, seed: int = 0) -> None:
    """Non-trivial scale, offset and moving statistics for every Keras BatchNormalization."""
    rng = np.random.default_rng(seed)

    def value(name: str, shape: tuple) -> np.ndarray:
        if "gamma" in name or "variance" in name:
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.normal(0, 0.3, shape).astype(np.float32)

    def randomize(model: Any) -> None:
        for layer in model.layers:
            if hasattr(layer, "layers"):  # a nested model
                randomize(layer)
            elif type(layer).__name__ == "BatchNormalization":
                layer.set_weights([value(v.name, w.shape) for w, v in zip(layer.get_weights(), layer.weights)])

    randomize(model)


def _keras_outputs(model: Any, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False))


def _ours(imported: ImportedModel, images: np.ndarray) -> np.ndarray:
    graph = imported.graph.eval()
    with torch.no_grad():
        return graph(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


def _check_same_layers(imported: ImportedModel, model: Any) -> None:
    offset = imported.layer_index_offset
    nodes = imported.graph.nodes[offset:]
    assert [n.name for n in nodes] == [layer.name for layer in model.layers]
    assert [n.keras_type for n in nodes] == [type(layer).__name__ for layer in model.layers]
    assert imported.num_layers == len(model.layers)


def _train_one_step(imported: ImportedModel, batch: int = 4) -> None:
    """One SGD step: every trainable parameter gets a gradient and changes."""
    graph = imported.graph.train()
    h, w, c = imported.input_shape
    params = [p for p in graph.parameters() if p.requires_grad]
    assert params
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=generator)
    y = torch.randint(0, imported.num_outputs, (batch,), generator=generator)
    before = [p.detach().clone() for p in params]
    loss = F.cross_entropy(graph(x), y)
    loss.backward()
    assert all(p.grad is not None for p in params)
    torch.optim.SGD(params, lr=0.1).step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))


# ---------------------------------------------------------------------------------------------
# Keras .h5


def k_functional_cnn(keras: Any) -> Any:
    L = keras.layers
    inputs = keras.Input((33, 30, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = L.ZeroPadding2D(((0, 1), (1, 0)))(x)
    x = L.Conv2D(8, 3, strides=2, padding="valid", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    a = L.DepthwiseConv2D(3, strides=1, padding="same", activation="relu")(x)
    a = L.BatchNormalization(center=False)(a)
    a = L.Activation("relu6")(a)
    b = L.SeparableConv2D(8, 3, padding="same")(x)
    b = L.LeakyReLU(0.2)(b)
    x = L.Add()([a, b])
    x = L.Concatenate()([x, L.Conv2D(4, 1, activation="swish")(x)])
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    y = L.AveragePooling2D(2, strides=1, padding="same")(x)
    y = L.Activation("hard_sigmoid")(y)
    x = L.Multiply()([x, y])
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = L.AveragePooling2D(2, padding="valid")(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Reshape((-1,))(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("tanh")(x)
    x = L.Dropout(0.3)(x)
    x = L.Dense(10, activation="relu")(x)
    x = L.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, x, name="byom_cnn")


def test_keras_functional_cnn_matches_tf(keras: Any, tmp_path: Path) -> None:
    model = k_functional_cnn(keras)
    _randomize_bn(model)
    path = tmp_path / "cnn.h5"
    model.save(path)
    assert detect_kind(path) == "keras_h5"
    imported = load_model_file(path)
    assert imported.kind == "keras_h5" and imported.input_shape == (33, 30, 3) and imported.num_outputs == 5
    assert imported.output_is_softmax and imported.has_dropout and imported.dropout_rate == pytest.approx(0.3)
    assert imported.layer_index_offset == 0 and imported.graph.name == "byom_cnn"
    _check_same_layers(imported, model)
    images = np.random.default_rng(1).uniform(0, 255, (4, 33, 30, 3)).astype(np.float32)
    expected = _keras_outputs(model, images)
    logits = _ours(imported, images)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), expected, atol=1e-4)
    assert not np.allclose(logits.sum(1), 1.0)  # logits, not probabilities
    # Parameter counts as Keras counts them (BatchNorm statistics included).
    assert imported.graph.keras_param_count() == model.count_params()
    _train_one_step(imported)


def test_keras_activations_and_pooling(keras: Any, tmp_path: Path) -> None:
    L = keras.layers
    inputs = keras.Input((12, 12, 4))
    branches = [L.Activation(name)(L.Conv2D(3, 1, name=f"conv_{name}")(inputs))
                for name in ("relu", "sigmoid", "tanh", "swish", "silu", "hard_sigmoid", "elu", "selu", "gelu",
                             "softplus", "softsign", "softmax", "linear")]
    x = L.Concatenate()(branches)
    x = L.Conv2D(6, 3, padding="same", activation="sigmoid")(x)
    x = L.MaxPooling2D(2, padding="valid")(x)
    x = L.GlobalMaxPooling2D()(x)
    x = L.Dense(3)(x)  # a linear head: logits compared directly
    model = keras.Model(inputs, x)
    path = tmp_path / "acts.h5"
    model.save(path)
    imported = load_model_file(path)
    assert not imported.output_is_softmax and not imported.has_dropout and imported.dropout_rate is None
    _check_same_layers(imported, model)
    images = np.random.default_rng(2).normal(0, 2, (3, 12, 12, 4)).astype(np.float32)
    np.testing.assert_allclose(_ours(imported, images), _keras_outputs(model, images), atol=1e-4)


def test_keras_sequential_with_rescaling(keras: Any, tmp_path: Path) -> None:
    L = keras.layers
    model = keras.Sequential([
        L.Rescaling(1 / 255.0, input_shape=(16, 16, 1)),
        L.Conv2D(4, 3, activation="relu"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dropout(0.5),
        L.Dense(3),
    ], name="seq")
    path = tmp_path / "seq.h5"
    model.save(path)
    imported = load_model_file(path)
    assert imported.layer_index_offset == 1 and imported.graph.nodes[0].keras_type == "InputLayer"
    _check_same_layers(imported, model)
    assert imported.num_layers == len(model.layers) == 6
    images = np.random.default_rng(3).uniform(0, 255, (2, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(_ours(imported, images), _keras_outputs(model, images), atol=1e-4)
    # frozen_layers indices are the reference's model.layers indices: (0:-1) = all but the Dense.
    frozen = imported.apply_frozen_layers("(0:-1)")
    assert frozen == [1, 2, 3, 4, 5]  # graph index = model.layers index + 1
    conv, dense = imported.graph.layer_module(2), imported.graph.layer_module(6)
    assert imported.graph.nodes[2].name == model.layers[1].name
    assert not any(p.requires_grad for p in conv.parameters())
    assert all(p.requires_grad for p in dense.parameters())
    assert imported.frozen_graph_indices(-1) == [6] and imported.frozen_graph_indices(0) == [1]
    # The reference's dropout rule.
    with pytest.raises(UserError, match="includes a dropout layer"):
        imported.check_dropout(None)
    imported.check_dropout(0.2)
    assert imported.graph.layer_module(5).p == pytest.approx(0.2) and imported.dropout_rate == 0.2


def test_keras_mobilenet_v2_application(keras: Any, tmp_path: Path) -> None:
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=5)
    _randomize_bn(model)
    path = tmp_path / "mobilenet_v2.h5"
    model.save(path)
    imported = load_model_file(path)
    _check_same_layers(imported, model)
    assert imported.output_is_softmax and imported.num_outputs == 5 and imported.graph.num_layers == len(model.layers)
    images = np.random.default_rng(4).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    probabilities = torch.softmax(torch.from_numpy(_ours(imported, images)), 1).numpy()
    np.testing.assert_allclose(probabilities, _keras_outputs(model, images), atol=1e-4)
    assert imported.graph.keras_param_count() == model.count_params()


def _nested_mobilenet(keras: Any, shape: tuple[int, int, int] | None, called_with: tuple[int, int, int]) -> Any:
    """TF's transfer-learning model: a MobileNetV2 backbone (Keras names it ``mobilenetv2_0.35_<rows>``)
    called with training=False, a Dense softmax head (here named with a '.' too). Random BatchNorm
    scales and offsets, moving statistics of a random batch (outputs that depend on the image)."""
    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=shape, include_top=False, weights=None,
                                          pooling="avg")
    inputs = keras.Input(called_with)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head.fc")(base(inputs, training=False)))
    _randomize_bn(model)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    base(np.random.default_rng(1).uniform(-1, 1, (32, *called_with)).astype(np.float32), training=True)
    return model


def _same_outputs(imported: ImportedModel, model: Any, seed: int = 0) -> None:
    images = np.random.default_rng(seed).uniform(-1, 1, (2, *imported.input_shape)).astype(np.float32)
    expected = _keras_outputs(model, images)
    assert expected.std(axis=0).mean() > 1e-3  # the outputs depend on the image
    ours = _ours(imported, images)
    if imported.output_is_softmax:
        ours = torch.softmax(torch.from_numpy(ours), 1).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_keras_nested_backbone_named_with_a_dot(keras: Any, tmp_path: Path) -> None:
    """Keras layer names with a '.' (a nested MobileNetV2, a Dense head): imported under their Keras
    names (layers, layer table, weights by name, frozen_layers, QAT plan), the same outputs."""
    model = _nested_mobilenet(keras, (32, 32, 3), (32, 32, 3))
    path = tmp_path / "mnv2.h5"
    model.save(path)
    imported = load_model_file(path)
    _check_same_layers(imported, model)
    graph = imported.graph
    assert graph.nodes[1].name == "mobilenetv2_0.35_32" and graph.layer("mobilenetv2_0.35_32").inference_only
    assert [row.name for row in graph.layer_table()][1:] == ["mobilenetv2_0.35_32", "head.fc"]
    assert imported.output_is_softmax and graph.keras_param_count() == model.count_params()
    _same_outputs(imported, model)
    fresh = load_model_file(path).graph
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    assert "mobilenetv2_0.35_32/Conv1" in load_keras_weights(fresh, model)  # pretrained_weights' path, by name
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), graph.state_dict().values()))
    graph.set_frozen(frozen_indices("(1)", graph.num_layers))
    assert not any(p.requires_grad for p in graph.layer("mobilenetv2_0.35_32").parameters())
    assert all(p.requires_grad for p in graph.layer("head.fc").parameters())
    names = [name for name, _, _ in plan_model(graph).weights]
    assert names[0] == "mobilenetv2_0.35_32/Conv1" and names[-1] == "head.fc"


def test_keras_nested_model_takes_the_input_shape_it_is_called_with(keras: Any, tmp_path: Path) -> None:
    """A nested model built without a fixed input size (Input((None, None, 3)), a Keras Applications
    backbone without input_shape) gets its size from the outer model's input; a known size that
    does not fit stays an error."""
    L = keras.layers
    inner_in = keras.Input((None, None, 3), name="bb_input")
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, strides=2, padding="same", name="c1")(inner_in))
    inner = keras.Model(inner_in, L.GlobalAveragePooling2D(name="gap")(x), name="bb")
    inputs = keras.Input((20, 16, 3))
    model = keras.Model(inputs, L.Dense(3, name="logits")(inner(inputs)))
    _randomize_bn(model)
    for name, kmodel in (("small", model), ("mnv2", _nested_mobilenet(keras, None, (48, 40, 3)))):
        kmodel.save(tmp_path / f"{name}.h5")
        imported = load_model_file(tmp_path / f"{name}.h5")
        _check_same_layers(imported, kmodel)
        assert imported.graph.layer_module(1).graph.input_shape == imported.input_shape == kmodel.input_shape[1:]
        _same_outputs(imported, kmodel)
    assert load_model_file(tmp_path / "small.h5").graph.layer("bb").graph.nodes[1].output_shape == (10, 8, 4)
    with h5py.File(tmp_path / "small.h5", "r+") as f:  # the nested model's input: (None, 18, None, 3)
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["config"]["layers"][0]["config"]["batch_input_shape"][1] = 18
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(UserError) as info:
        load_model_file(tmp_path / "small.h5")
    assert _one_line_error(info).endswith("nested model 'bb': the input shape (None, 18, None, 3) (InputLayer "
                                          "'bb_input') does not fit the shape (20, 16, 3) it is called with")


def test_keras_model_nested_twice(keras: Any, tmp_path: Path) -> None:
    """outer → Functional 'mid' → Functional 'inner' (training=False, no fixed input size): Keras 2
    stores all of mid's weights flat under 'mid'; imported with the same outputs."""
    L = keras.layers
    inner_in = keras.Input((None, None, 3))
    x = L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="c1")(inner_in))
    x = L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    inner = keras.Model(inner_in, L.GlobalAveragePooling2D(name="gap")(x), name="inner")
    mid_in = keras.Input((16, 16, 3), name="mid_input")
    mid = keras.Model(mid_in, L.Dense(5, name="middense")(inner(mid_in, training=False)), name="mid")
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="top")(mid(inputs)))
    _randomize_bn(model)
    path = tmp_path / "double.h5"
    model.save(path)
    with h5py.File(path) as f:  # what Keras 2 writes: no group for 'inner'
        assert [n.split("/")[0] for n in f["model_weights"]["mid"].attrs["weight_names"]][:3] == ["c1", "c1", "bn1"]
    imported = load_model_file(path)
    _check_same_layers(imported, model)
    mid_graph = imported.graph.layer("mid").graph
    assert [(n.name, n.keras_type) for n in mid_graph.nodes] == [
        ("mid_input", "InputLayer"), ("inner", "Functional"), ("middense", "Dense")]
    assert mid_graph.layer("inner").inference_only and not imported.graph.layer("mid").inference_only
    _same_outputs(imported, model)
    assert [name for name, _, _ in plan_model(imported.graph).weights] == [
        "mid/inner/c1", "mid/inner/c2", "mid/middense", "top"]


@pytest.mark.parametrize("frozen", [None, "inner", "mid", "mid/x"])
def test_keras2_nested_weights_load_by_order_as_tf_keras_does(keras: Any, tmp_path: Path, frozen: str | None) -> None:
    """Layer names repeated across nesting levels: a Conv2D 'x' in 'inner', a BatchNormalization
    'x' in 'mid' (around it), a Dense 'x' at the top. Keras 2 stores inner's and mid's weights in one
    flat list under 'mid' (weight names x/kernel:0 … x/gamma:0 …, trainable ones first, a frozen
    layer's all among the non-trainable ones); tf_keras assigns it by order, and so do we (by name,
    'x' held 6 arrays: refused). Same outputs as the model tf_keras loads from the file."""
    L = keras.layers
    inner_in = keras.Input((None, None, 3))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, padding="same", name="x")(inner_in), name="inner")
    mid_in = keras.Input((8, 8, 3))
    x = L.DepthwiseConv2D(3, use_bias=False, name="dw")(L.BatchNormalization(name="x")(inner(mid_in, training=False)))
    mid = keras.Model(mid_in, L.GlobalAveragePooling2D(name="gap")(x), name="mid")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, L.Dense(3, name="x")(mid(inputs)))
    if frozen is not None:
        (mid.get_layer("x") if frozen == "mid/x" else mid if frozen == "mid" else inner).trainable = False
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in model.get_weights()])
    path = tmp_path / "repeated.h5"
    model.save(path)
    with h5py.File(path) as f:  # one flat list, the same layer name at two depths
        names = [n.split("/")[0] for n in f["model_weights"]["mid"].attrs["weight_names"]]
    assert names.count("x") == 6
    imported = load_model_file(path)
    _check_same_layers(imported, model)
    _same_outputs(imported, keras.models.load_model(path, compile=False))
    inner_graph = imported.graph.layer("mid").graph.layer("inner").graph
    assert torch.equal(inner_graph.layer("x").weight.detach(),
                       torch.from_numpy(inner.get_layer("x").get_weights()[0].transpose(3, 2, 0, 1)))


def test_keras2_outer_and_nested_layers_of_the_same_name(keras: Any, tmp_path: Path) -> None:
    """A Dense 'dense' at the top and one inside the nested model (one level, and inside a model
    nested twice): each gets its own weights."""
    L = keras.layers
    inner_in = keras.Input((None, None, 3))
    x = L.BatchNormalization(name="dense")(L.Conv2D(4, 3, name="c")(inner_in))  # a Conv2D 'dense': no .h5 (below)
    inner = keras.Model(inner_in, L.GlobalAveragePooling2D()(x), name="inner")
    mid_in = keras.Input((8, 8, 3))
    mid = keras.Model(mid_in, L.Dense(5, name="dense")(inner(mid_in)), name="mid")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, L.Dense(3, name="dense")(mid(inputs)))
    _randomize_bn(model)
    path = tmp_path / "same_name.h5"
    model.save(path)
    imported = load_model_file(path)
    _check_same_layers(imported, model)
    _same_outputs(imported, keras.models.load_model(path, compile=False))
    conv_in = keras.Input((8, 8, 3))  # two 'dense' weights of one name in mid's flat list: tf_keras cannot save it
    clash = keras.Model(conv_in, L.Dense(5, name="dense")(L.GlobalAveragePooling2D()(keras.Model(
        inner_in, L.Conv2D(4, 3, name="dense")(inner_in), name="conv")(conv_in))), name="mid")
    with pytest.raises(ValueError, match="name already exists"):
        keras.Model(inputs, L.Dense(3, name="top")(clash(inputs))).save(tmp_path / "clash.h5")


def test_a_batch_normalization_without_center_and_scale_keeps_its_moving_statistics(keras: Any,
                                                                                     tmp_path: Path) -> None:
    """BatchNormalization(center=False, scale=False) has no trainable weight, only its moving mean
    and variance: they are loaded (they were skipped with the layers without weights), at the top
    and inside a nested model."""
    L = keras.layers
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, L.BatchNormalization(center=False, scale=False, name="bn")(inner_in), name="inner")
    inputs = keras.Input((8, 8, 3))
    x = L.BatchNormalization(center=False, scale=False, name="top_bn")(L.Conv2D(4, 3, name="c")(inner(inputs)))
    model = keras.Model(inputs, L.Dense(3, name="d")(L.GlobalAveragePooling2D()(x)))
    _randomize_bn(model)
    path = tmp_path / "plain_bn.h5"
    model.save(path)
    _same_outputs(load_model_file(path), model)


def test_a_final_softmax_inside_a_nested_model_is_removed(keras: Any, tmp_path: Path) -> None:
    """Sequential([Rescaling, model]) (how ST's augmented files and many users' wrap a classifier):
    the nested model's final softmax is the output's and is removed like a top-level one (it was
    kept, so training took a softmax of probabilities); a nested model inside is left alone."""
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Flatten()(L.Conv2D(4, 3)(inputs))
    classifier = keras.Model(inputs, L.Dense(3, activation="softmax", name="probs")(x), name="classifier")
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Rescaling(2.0), classifier])
    path = tmp_path / "wrapped.h5"
    model.save(path)
    imported = load_model_file(path)
    assert imported.output_is_softmax
    assert "final softmax of layer 'classifier/probs' removed (training uses logits)" in imported.notes
    _same_outputs(imported, model)  # softmax of the imported logits
    head = L.Dense(2, name="logits", kernel_initializer=keras.initializers.RandomNormal(stddev=5.0, seed=1))
    plain = keras.Sequential([keras.Input((16, 16, 3)), classifier, head])
    plain.save(path)
    imported = load_model_file(path)
    assert not imported.output_is_softmax  # the softmax inside feeds another layer: kept
    _same_outputs(imported, plain)


def test_a_nested_sequential_model_keeps_its_keras_class(keras: Any, tmp_path: Path, capsys: Any) -> None:
    """Sequential([Input, Rescaling, Sequential([...]), Dense]): the nested model's type is the class
    the .h5 records, what tf_keras' own summary shows (Sequential, not Functional), in the layer
    table and in ``stmclf summary``; a nested functional model stays Functional."""
    from stmclf.cli.main import main

    L = keras.layers
    inner = keras.Sequential([L.Conv2D(4, 3), L.GlobalAveragePooling2D()], name="inner")
    inner_in = keras.Input((None, None, 3))
    functional = keras.Model(inner_in, L.GlobalAveragePooling2D()(L.Conv2D(2, 3)(inner_in)), name="fn")
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Rescaling(2.0), inner, L.Dense(2)])
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert any(line.split()[:2] == ["inner", "(Sequential)"] for line in lines), lines
    path = tmp_path / "nested_sequential.h5"
    model.save(path)
    imported = load_model_file(path)
    _check_same_layers(imported, model)  # the type of each layer is its Keras class
    assert [(row.name, row.keras_type) for row in imported.graph.layer_table()][2] == ("inner", "Sequential")
    _same_outputs(imported, model)
    config = tmp_path / "summary.yaml"
    config.write_text(f"dataset:\n  class_names: [a, b]\ntraining:\n  model:\n    name: model_file\n"
                      f"    path: {path}\n    input_shape: (8, 8, 3)\n")
    assert main(["summary", "--config", str(config)]) == 0
    assert [[cell.strip() for cell in line.split("│")[2:4]] for line in capsys.readouterr().out.splitlines()
            if "inner" in line] == [["inner", "Sequential"]]
    keras.Sequential([keras.Input((8, 8, 3)), functional, L.Dense(2)]).save(path)
    assert load_model_file(path).graph.layer("fn").keras_type == "Functional"


def test_keras3_h5_file(tmp_path: Path) -> None:
    """Keras 3 writes the same legacy .h5 layout with another node format; its hard_sigmoid differs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras3 = pytest.importorskip("keras")
    if int(keras3.__version__.split(".")[0]) < 3:
        pytest.skip("Keras 3 is not installed")
    L = keras3.layers
    inputs = keras3.Input((12, 12, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = L.SeparableConv2D(6, 3, strides=2, padding="same", activation="hard_sigmoid")(x)
    y = L.BatchNormalization(center=False)(x)
    x = L.Concatenate()([L.Add()([x, y]), x])
    x = L.LeakyReLU(0.1)(L.ReLU(6.0)(x))
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    model = keras3.Model(inputs, L.Dense(3, activation="softmax")(x))
    _randomize_bn(model)
    path = tmp_path / "keras3.h5"
    model.save(path)
    imported = load_model_file(path)
    _check_same_layers(imported, model)
    assert imported.output_is_softmax and imported.has_dropout
    images = np.random.default_rng(8).normal(0, 1, (2, 12, 12, 3)).astype(np.float32)
    probabilities = torch.softmax(torch.from_numpy(_ours(imported, images)), 1).numpy()
    np.testing.assert_allclose(probabilities, np.asarray(model(images, training=False)), atol=1e-4)


@pytest.mark.parametrize("layer", ["LSTM", "Conv3D"])
def test_keras_unsupported_layer(keras: Any, tmp_path: Path, layer: str) -> None:
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    if layer == "LSTM":
        x = L.LSTM(4, name="my_lstm")(L.Reshape((8, 24))(inputs))
    else:
        x = L.Flatten()(L.Conv3D(2, 3, name="my_conv3d")(L.Reshape((8, 8, 3, 1))(inputs)))
    path = tmp_path / "bad.h5"
    keras.Model(inputs, L.Dense(2)(x)).save(path)
    with pytest.raises(UserError) as info:
        load_model_file(path)
    text = _one_line_error(info)
    name = "my_lstm" if layer == "LSTM" else "my_conv3d"
    assert f"unsupported Keras layer {layer} '{name}'" in text and "Conv2D" in text and str(path) in text


def test_keras_weights_only_file_is_refused(keras: Any, tmp_path: Path) -> None:
    L = keras.layers
    model = keras.Sequential([keras.Input((4, 4, 1)), L.Flatten(), L.Dense(2)])
    path = tmp_path / "weights.h5"
    model.save_weights(path)
    with pytest.raises(UserError, match="not a full model") as info:
        load_model_file(path)
    _one_line_error(info)


# ---------------------------------------------------------------------------------------------
# ONNX


def _export_onnx(module: nn.Module, path: Path, input_shape: tuple[int, int, int], *, softmax: bool = True) -> Path:
    import warnings

    class WithSoftmax(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.inner(x)
            return torch.softmax(y, dim=1) if softmax else y

    h, w, c = input_shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithSoftmax(module).eval(), (torch.zeros(1, c, h, w),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamic_axes={"input": {0: "batch"},
                                                                                   "output": {0: "batch"}},
                          do_constant_folding=True, dynamo=False)
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _randomize_torch_bn(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)


@pytest.mark.parametrize("spec", [
    {"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (32, 32, 3)},
    {"name": "st_efficientnet_lc", "version": "v1", "input_shape": (32, 32, 3)},
    {"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)},
], ids=lambda spec: spec["name"])
def test_onnx_from_zoo_model(tmp_path: Path, spec: dict) -> None:
    model = build_model(spec, num_classes=4, dropout=0.2 if spec["name"] == "st_efficientnet_lc" else None).eval()
    _randomize_torch_bn(model)
    path = _export_onnx(model, tmp_path / "model.onnx", spec["input_shape"])
    assert detect_kind(path) == "onnx"
    imported = load_model_file(path)
    assert imported.kind == "onnx" and imported.input_shape == spec["input_shape"] and imported.num_outputs == 4
    assert imported.output_is_softmax and not imported.has_dropout
    h, w, c = spec["input_shape"]
    x = np.random.default_rng(5).normal(0, 1, (3, c, h, w)).astype(np.float32)
    with torch.no_grad():
        logits = imported.graph.eval()(torch.from_numpy(x))
        np.testing.assert_allclose(logits.numpy(), model(torch.from_numpy(x)).numpy(), atol=1e-4)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), _ort(path, x), atol=1e-4)
    # One layer per computing ONNX node; the convolutions carry the (folded) weights as parameters.
    types = [n.keras_type for n in imported.graph.nodes]
    assert types[0] == "InputLayer" and "Conv" in types and types[-1] == "Softmax"
    assert "Constant" not in types and "Identity" not in types
    _train_one_step(imported)
    imported.apply_frozen_layers("(0:-1)")
    assert not any(p.requires_grad for p in imported.graph.layer_module(1).parameters())


def _onnx_model(nodes: list, inits: list, input_dims: list, output_dims: list, opset: int = 17) -> Any:
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "handmade", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_onnx_handmade_ops_match_onnxruntime(tmp_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(6)

    def init(name: str, array: np.ndarray) -> Any:
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        init("w1", rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)),
        init("b1", rng.normal(0, 0.1, 6).astype(np.float32)),
        init("dw", rng.normal(0, 0.3, (6, 1, 3, 3)).astype(np.float32)),
        init("scale", rng.uniform(0.5, 1.5, 6).astype(np.float32)),
        init("beta", rng.normal(0, 0.1, 6).astype(np.float32)),
        init("mean", rng.normal(0, 0.1, 6).astype(np.float32)),
        init("var", rng.uniform(0.5, 1.5, 6).astype(np.float32)),
        init("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)),
        init("shape", np.array([0, -1], np.int64)),
        init("fc", rng.normal(0, 0.3, (24, 5)).astype(np.float32)),
        init("fc_b", rng.normal(0, 0.1, 5).astype(np.float32)),
        init("ratio", np.array(0.25, np.float32)),
        init("half", np.array(0.5, np.float32)),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["c1"], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("BatchNormalization", ["c1", "scale", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("HardSwish", ["bn"], ["hs"]),
        helper.make_node("Conv", ["hs", "dw"], ["c2"], group=6, pads=[0, 0, 1, 1]),
        helper.make_node("Clip", ["c2", "", ""], ["cl"]),
        helper.make_node("Relu", ["cl"], ["r"]),
        helper.make_node("Mul", ["r", "half"], ["m"]),
        helper.make_node("AveragePool", ["m"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("MaxPool", ["m"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("Sub", ["ap", "mp"], ["s"]),
        helper.make_node("Shape", ["s"], ["s_shape"]),
        helper.make_node("Gather", ["s_shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["dyn_shape"], axis=0),
        helper.make_node("Reshape", ["s", "dyn_shape"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["flat2"]),
        helper.make_node("Dropout", ["flat2", "ratio"], ["d"]),
        helper.make_node("MatMul", ["d", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    inits += [init("zero", np.array(0, np.int64)), init("axes0", np.array([0], np.int64)),
              init("minus1", np.array([-1], np.int64))]
    model = _onnx_model(nodes, inits, ["N", 3, 9, 9], ["N", 5], opset=14)
    onnx.checker.check_model(model)
    path = tmp_path / "handmade.bin"  # told by its content, not its name
    onnx.save(model, str(path))
    imported = load_model_file(path)
    assert imported.kind == "onnx" and imported.input_shape == (9, 9, 3) and imported.num_outputs == 5
    assert imported.output_is_softmax and imported.has_dropout and imported.dropout_rate == pytest.approx(0.25)
    x = rng.normal(0, 1, (2, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        ours = torch.softmax(imported.graph.eval()(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(ours, _ort(path, x), atol=1e-5)
    # Weights are parameters (the MatMul's Add is its bias); the Mul constant is not trained.
    params = {name.split(".", 1)[1]: tuple(p.shape) for name, p in imported.graph.named_parameters()}
    assert params == {"Conv_1.weight": (6, 3, 3, 3), "Conv_1.bias": (6,), "BatchNormalization_2.bn.weight": (6,),
                      "BatchNormalization_2.bn.bias": (6,), "Conv_4.weight": (6, 1, 3, 3),
                      "MatMul_18.weight": (24, 5), "Add_19.bias": (5,)}
    # A rebuilt model takes the trained weights back by name (checkpoints); copies work.
    again = load_model_file(path)
    again.graph.load_state_dict(copy.deepcopy(imported.graph).state_dict())
    imported.set_dropout_rate(0.0)
    imported.graph.train()
    with torch.no_grad():
        a, b = imported.graph(torch.from_numpy(x)), imported.graph(torch.from_numpy(x))
    assert torch.equal(a, b)  # rate 0: no dropout; batch norm in training mode uses batch statistics
    imported.set_dropout_rate(0.5)
    _train_one_step(imported)


def test_onnx_dynamic_size_and_unsupported_op(tmp_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    dynamic = _onnx_model([helper.make_node("GlobalAveragePool", ["x"], ["g"]),
                           helper.make_node("Flatten", ["g"], ["y"])], [], ["N", 3, "H", "W"], ["N", 3])
    path = tmp_path / "dynamic.onnx"
    onnx.save(dynamic, str(path))
    with pytest.raises(UserError, match="dynamic or unknown channel, height or width") as info:
        load_model_file(path)
    _one_line_error(info)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    unsupported = _onnx_model([helper.make_node("Resize", ["x", "", "scales"], ["r"], name="upsample_1"),
                               helper.make_node("GlobalAveragePool", ["r"], ["g"]),
                               helper.make_node("Flatten", ["g"], ["y"])], [scales], ["N", 3, 4, 4], ["N", 3])
    path = tmp_path / "resize.onnx"
    onnx.save(unsupported, str(path))
    with pytest.raises(UserError) as info:
        load_model_file(path)
    text = _one_line_error(info)
    assert "unsupported ONNX op Resize" in text and "upsample_1" in text and "Conv" in text


# ---------------------------------------------------------------------------------------------
# torch files


class SmallNet(nn.Module):
    def __init__(self, classes: int = 3, softmax: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, classes)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.drop(self.pool(self.features(x)).flatten(1)))
        return torch.softmax(y, dim=1) if self.softmax else y


def test_torchscript_file(tmp_path: Path) -> None:
    net = SmallNet().eval()
    path = tmp_path / "net.model"
    torch.jit.save(torch.jit.script(net), str(path))
    assert detect_kind(path) == "torchscript"
    with pytest.raises(UserError, match="does not record the input size") as info:
        load_model_file(path)
    _one_line_error(info)
    imported = load_model_file(path, input_shape=(12, 12, 3))
    assert imported.kind == "torchscript" and imported.num_outputs == 3
    assert imported.has_dropout and imported.dropout_rate == pytest.approx(0.2)
    assert [n.name for n in imported.graph.nodes] == ["input_1", "features", "pool", "drop", "head"]
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        np.testing.assert_allclose(imported.graph.eval()(x).numpy(), net(x).numpy(), atol=1e-6)
    imported.check_dropout(0.2)  # the same rate: fine; another one cannot be set in TorchScript
    with pytest.raises(UserError, match="constants"):
        imported.set_dropout_rate(0.4)
    imported.apply_frozen_layers([1])
    assert not any(p.requires_grad for p in imported.graph.layer_module(1).parameters())
    _train_one_step(imported)
    # The input size may also travel with the file.
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={"input_shape": "(10, 10, 3)"})
    assert load_model_file(path).input_shape == (10, 10, 3)


class OneImageNet(SmallNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).reshape(1, 8))  # batch 1 only


def test_a_torch_file_failing_on_the_probe_batch_gets_the_likely_cause(tmp_path: Path) -> None:
    """A wrong channel count was blamed on a fixed batch size: the hint now says which of the two
    it is (the model is tried on one image)."""
    path = tmp_path / "net.model"
    torch.jit.save(torch.jit.script(SmallNet().eval()), str(path))
    with pytest.raises(UserError) as info:
        load_model_file(path, input_shape=(12, 12, 1))
    assert _one_line_error(info).endswith("(does it take 12x12 images with 1 channel(s)? (training.model.input_shape))")
    torch.jit.save(torch.jit.script(OneImageNet().eval()), str(path))
    with pytest.raises(UserError) as info:
        load_model_file(path, input_shape=(12, 12, 3))
    assert _one_line_error(info).endswith("(it runs on one image: a fixed batch size? export it with a dynamic batch)")


def test_torch_export_file(tmp_path: Path) -> None:
    net = SmallNet(classes=4, softmax=True).eval()
    _randomize_torch_bn(net)
    program = torch.export.export(net, (torch.zeros(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    assert detect_kind(path) == "torch_export"
    imported = load_model_file(path)
    assert imported.kind == "torch_export" and imported.input_shape == (16, 16, 3) and imported.num_outputs == 4
    assert imported.output_is_softmax and imported.has_dropout and imported.dropout_rate == pytest.approx(0.2)
    x = torch.randn(3, 3, 16, 16)
    graph = imported.graph.eval()
    with torch.no_grad():
        net.softmax = False
        np.testing.assert_allclose(graph(x).numpy(), net(x).numpy(), atol=1e-5)
        assert torch.equal(graph(x), graph(x))
    # Training mode switches batch norm (statistics move) and dropout on.
    bn_mean = dict(imported.graph.named_buffers())
    key = next(k for k in bn_mean if k.endswith("running_mean"))
    before = bn_mean[key].clone()
    _train_one_step(imported)
    assert not torch.equal(before, dict(imported.graph.named_buffers())[key])
    imported.check_dropout(0.5)
    assert imported.dropout_rate == 0.5


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.Softmax(dim=1))
    path = tmp_path / "net.pt"
    torch.save(net, path)
    assert detect_kind(path) == "pickled_module"
    with pytest.raises(UserError, match="--trust-model-file") as info:
        load_model_file(path, input_shape=(8, 8, 1))
    _one_line_error(info)
    imported = load_model_file(path, trust_model_file=True, input_shape=(8, 8, 1))
    assert imported.kind == "pickled_module" and imported.output_is_softmax and imported.num_outputs == 3
    assert [n.keras_type for n in imported.graph.nodes] == ["InputLayer", "Conv2d", "ReLU", "Flatten", "Linear",
                                                            "Identity"]
    assert not imported.has_dropout
    with pytest.raises(UserError, match="does not include a dropout layer"):
        imported.check_dropout(0.3)
    _train_one_step(imported)


def test_unknown_files_are_refused(tmp_path: Path) -> None:
    random_file = tmp_path / "model.h5"
    random_file.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(UserError) as info:
        load_model_file(random_file)
    text = _one_line_error(info)
    assert str(random_file) in text and "Keras .h5" in text and "ONNX" in text and "TorchScript" in text
    state_dict = tmp_path / "weights.pt"
    torch.save(SmallNet().state_dict(), state_dict)
    with pytest.raises(UserError, match="state dict holds weights only") as info:
        load_model_file(state_dict)
    _one_line_error(info)
    with pytest.raises(UserError, match="unable to find"):
        load_model_file(tmp_path / "missing.onnx")


def test_import_does_not_load_tensorflow() -> None:
    import subprocess

    code = ("import sys, stmclf.models.importers as m, stmclf.models.importers.keras_h5, "
            "stmclf.models.importers.onnx_graph, stmclf.models.importers.torch_files; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_probe_of_a_torch_file_cannot_outgrow_the_memory(tmp_path: Path) -> None:
    """Running a torch file's own code on the probe batch, at an input size the config gives, is
    capped to the memory available: past it the allocation fails in one line (a TorchScript model
    at (8192, 8192, 3) was killed by the kernel at ~22 GB, without a message). Run under a 12 GiB
    address-space cap of its own, so that a regression fails this test instead of OOM-killing the
    machine (the cap below is the guard's own: test_within_available_memory_caps_...)."""
    import resource
    import subprocess

    path = tmp_path / "wide.pt"
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    code = ("from stmclf.errors import UserError\n"
            "from stmclf.models.importers import load_model_file\n"
            "try:\n"
            f"    load_model_file({str(path)!r}, input_shape=(8192, 8192, 3))  # its first output alone: 34 GB\n"
            "except UserError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30)))
    message = out.stdout.strip()
    assert "\n" not in message and "the model needs more than the" in message, out.stdout + out.stderr[-2000:]
    assert "GiB of memory available for a batch of shape (2, 3, 8192, 8192)" in message
    assert message.endswith("is training.model.input_shape right?")


def test_within_available_memory_caps_then_restores_the_address_space() -> None:
    import subprocess

    code = ("import resource, torch\n"
            "from stmclf.config.rules import available_memory\n"
            "from stmclf.models.importers.base import within_available_memory\n"
            "before = resource.getrlimit(resource.RLIMIT_AS)\n"
            "with within_available_memory():\n"
            "    capped = resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY\n"
            "    try:\n"
            "        torch.empty(available_memory() + 2**31, dtype=torch.uint8)  # reserved, never touched\n"
            "        print('allocated')\n"
            "    except RuntimeError as exc:\n"
            "        print('refused', 'allocate' in str(exc))\n"
            "print(capped, resource.getrlimit(resource.RLIMIT_AS) == before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["refused", "True", "True", "True"], out.stdout + out.stderr[-2000:]
