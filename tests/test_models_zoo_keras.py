"""Keras parity of the zoo models without a Keras Applications twin (fdmobilenet, st_fdmobilenet,
resnet v1, squeezenet v10/v11, stmnist, custom, st_efficientnet_lc): tf_keras replicas of the
reference builders (written from its layer lists; their softmax outputs made linear, as our models
output logits) must give the same layer names, Keras types, order, output shapes and counts, and,
after copying the Keras weights, the same outputs."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from stmclf.models import build_model
from stmclf.models.keras_weights import load_keras_weights


FD_BLOCKS = ((64, 2), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
             (1024, 1))
ST_FD_ALPHAS = (0.5, 0.75, 0.625, 0.5, 0.375, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25)


def k_fdmobilenet(keras: Any, input_shape: tuple, classes: int, dropout: float | None,
                  alphas: tuple = (0.25,) * 12) -> Any:
    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(int(32 * alphas[0]), 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(name="conv1_bn")(x)
    x = L.Activation("relu", name="conv1_relu")(x)
    for i, ((filters, stride), alpha) in enumerate(zip(FD_BLOCKS, alphas[1:]), start=1):
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", name=f"conv_dw_{i}")(x)
        x = L.Conv2D(int(filters * alpha), 1, padding="same", use_bias=False, name=f"conv_pw_{i}")(x)
        x = L.BatchNormalization(name=f"conv_pw_{i}_bn")(x)
        x = L.Activation("relu", name=f"conv_pw_{i}_relu")(x)
    channels = x.shape[-1]
    x = L.GlobalAveragePooling2D()(x)
    x = L.Reshape((1, 1, channels), name="reshape_1")(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    x = L.Conv2D(classes, 1, padding="same", name="conv_preds")(x)
    x = L.Activation("linear", name="act_softmax")(x)
    return keras.Model(inputs, L.Reshape((classes,), name="reshape_2")(x))


def k_resnet(keras: Any, input_shape: tuple, classes: int, dropout: float | None, depth: int = 8) -> Any:
    L = keras.layers

    def unit(x: Any, filters: int = 16, kernel: int = 3, strides: int = 1, act: bool = True, bn: bool = True) -> Any:
        x = L.Conv2D(filters, kernel, strides=strides, padding="same")(x)
        x = L.BatchNormalization()(x) if bn else x
        return L.Activation("relu")(x) if act else x

    inputs = keras.Input(input_shape)
    x, filters = unit(inputs), 16
    for stack in range(3):
        for block in range((depth - 2) // 6):
            strides = 2 if stack and not block else 1
            y = unit(unit(x, filters, strides=strides), filters, act=False)
            if strides == 2:
                x = unit(x, filters, kernel=1, strides=2, act=False, bn=False)
            x = L.Activation("relu")(L.add([x, y]))
        filters *= 2
    x = L.Flatten()(L.AveragePooling2D(8)(x))
    if dropout:
        x = L.Dropout(dropout)(x)
    return keras.Model(inputs, L.Dense(classes)(x))


def k_squeezenet_v11(keras: Any, input_shape: tuple, classes: int, dropout: float | None) -> Any:
    L = keras.layers

    def fire(x: Any, i: int, squeeze: int, expand: int) -> Any:
        p = f"fire{i}/"
        x = L.Activation("relu", name=p + "relu_squeeze1x1")(L.Conv2D(squeeze, 1, name=p + "squeeze1x1")(x))
        left = L.Activation("relu", name=p + "relu_expand1x1")(L.Conv2D(expand, 1, name=p + "expand1x1")(x))
        right = L.Conv2D(expand, 3, padding="same", name=p + "expand3x3")(x)
        right = L.Activation("relu", name=p + "relu_expand3x3")(right)
        return L.concatenate([left, right], axis=3, name=p + "concat")

    inputs = L.Input(input_shape)
    x = L.Activation("relu", name="relu_conv1")(L.Conv2D(64, 3, strides=2, name="conv1")(inputs))
    x = L.MaxPooling2D(3, 2, name="pool1")(x)
    x = fire(fire(x, 2, 16, 64), 3, 16, 64)
    x = L.MaxPooling2D(3, 2, name="pool3")(x)
    x = fire(fire(x, 4, 32, 128), 5, 32, 128)
    x = L.MaxPooling2D(3, 2, name="pool5")(x)
    x = fire(fire(fire(fire(x, 6, 48, 192), 7, 48, 192), 8, 64, 256), 9, 64, 256)
    if dropout:
        x = L.Dropout(dropout, name="drop9")(x)
    x = L.Activation("relu", name="relu_conv10")(L.Conv2D(classes, 1, name="conv10")(x))
    return keras.Model(inputs, L.Activation("linear", name="loss")(L.GlobalAveragePooling2D()(x)))


def k_squeezenet_v10(keras: Any, input_shape: tuple, classes: int, dropout: float | None) -> Any:
    L = keras.layers

    def fire(x: Any, i: int, squeeze: int, expand: int) -> Any:
        p = f"fire{i}_"
        x = L.BatchNormalization(name=p + "squeeze_bn")(L.Conv2D(squeeze, 1, activation="relu", name=p + "squeeze")(x))
        left = L.Conv2D(expand, 1, padding="same", activation="relu", name=p + "expand_1x1")(x)
        right = L.Conv2D(expand, 3, padding="same", activation="relu", name=p + "expand_3x3")(x)
        return L.concatenate([left, right], axis=3, name=p + "expand_merge")

    inputs = keras.Input(input_shape)
    x = L.Activation("relu", name="relu_conv1")(L.Conv2D(96, 7, strides=2, name="conv1")(inputs))
    x = L.MaxPooling2D(3, 2, name="pool1")(x)
    x = fire(fire(fire(x, 2, 16, 64), 3, 16, 64), 4, 32, 128)
    x = L.MaxPooling2D(3, 2, name="pool4")(x)
    x = fire(fire(fire(x, 5, 32, 128), 6, 48, 192), 7, 48, 192)
    x = fire(L.MaxPooling2D(3, 2, name="pool8")(x), 9, 64, 256)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    x = L.Activation("relu", name="relu_conv10")(L.Conv2D(classes, 1, name="conv10")(x))
    x = L.GlobalAveragePooling2D(name="average_pool10")(L.BatchNormalization(name="bn")(x))
    return keras.Model(inputs, L.Activation("linear", name="softmax")(x))


def k_stmnist(keras: Any, input_shape: tuple, classes: int, dropout: float | None) -> Any:
    L = keras.layers
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in (L.Conv2D(16, 3, strides=2, padding="same"), L.DepthwiseConv2D(3, padding="same"),
                  L.Conv2D(32, 3, padding="same"), L.DepthwiseConv2D(3, strides=2, padding="same"), L.Conv2D(64, 1)):
        x = L.ReLU()(L.BatchNormalization()(layer(x)))
    x = L.GlobalAveragePooling2D()(x)
    if dropout:
        x = L.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, L.Dense(classes)(x))


def k_custom(keras: Any, input_shape: tuple, classes: int, dropout: float | None) -> Any:
    L = keras.layers
    inputs = keras.Input(input_shape)
    x = inputs
    for filters, strides in ((16, 1), (32, 1), (64, 2)):
        x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        x = L.MaxPooling2D()(L.Activation("relu")(L.BatchNormalization()(x)))
    x = L.GlobalAveragePooling2D()(x)
    if dropout:
        x = L.Dropout(dropout)(x)
    return keras.Model(inputs, L.Dense(classes)(x))


def k_st_efficientnet_lc(keras: Any, input_shape: tuple, classes: int, dropout: float | None) -> Any:
    import tensorflow as tf

    L = keras.layers

    def width(filters: int) -> int:
        scaled = filters * 0.45
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    stages = ((32, 16, 1, 1, 3), (16, 24, 2, 2, 3), (24, 40, 2, 2, 5), (40, 80, 3, 2, 3), (80, 112, 3, 1, 5),
              (112, 192, 4, 2, 5), (192, 320, 1, 1, 3))
    inputs = L.Input(input_shape)
    x = L.BatchNormalization()(L.Conv2D(width(32), 3, strides=2, padding="same")(inputs))
    x = L.Activation(tf.nn.relu6, name="stem_activation")(x)
    j = 0
    for stage, (f_in, f_out, repeats, first_stride, kernel) in enumerate(stages):
        f_in, f_out = width(f_in), width(f_out)
        for i in range(repeats):
            block_in, c_in, stride = x, (f_in if i == 0 else f_out), (first_stride if i == 0 else 1)
            expanded = c_in * (1 if stage == 0 else 3)
            if stage:
                x = L.Activation(tf.nn.relu6)(L.BatchNormalization()(L.Conv2D(expanded, 1, padding="same")(x)))
            x = L.DepthwiseConv2D(kernel, strides=stride, padding="same")(x)
            x = L.Activation(tf.nn.relu6)(L.BatchNormalization()(x))
            se = L.Reshape((1, 1, expanded))(L.GlobalAveragePooling2D()(x))
            se = L.Activation(tf.nn.relu6, name=f"act_{j}")(L.Conv2D(max(1, int(c_in * 0.25)), 1, padding="same")(se))
            se = L.Lambda(lambda t: tf.clip_by_value(t, -4.0, 4.0))(L.Conv2D(expanded, 1, padding="same")(se))
            x = L.multiply([x, L.Activation("sigmoid", name=f"act2_{j}")(se)])
            x = L.BatchNormalization()(L.Conv2D(f_out, 1, padding="same")(x))
            if stride == 1 and c_in == f_out:
                x = L.add([L.Dropout(dropout, noise_shape=(None, 1, 1, 1))(x), block_in])
            j += 1
    x = L.BatchNormalization()(L.Conv2D(width(1280), 1, padding="same", name="top_conv")(x))
    x = L.GlobalAveragePooling2D(name="avg_pool")(L.Activation(tf.nn.relu6, name="top_activation")(x))
    x = L.Dropout(dropout, name="top_dropout")(x)
    return keras.Model(inputs, L.Dense(classes, name="output_probs")(x))


def _randomize(keras: Any, model: Any, input_shape: tuple, kernel_gain: float, seed: int = 0) -> None:
    """Random BN scale/offset, moving statistics of a random batch, optionally larger kernels
    (bias-only, BN-free networks such as SqueezeNet v1.1 otherwise shrink the signal to ~0)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, var])
            layer.momentum = 0.0
        elif isinstance(layer, keras.layers.Conv2D) and kernel_gain != 1.0:
            weights = layer.get_weights()
            layer.set_weights([weights[0] * kernel_gain] + [rng.uniform(0, 0.1, w.shape) for w in weights[1:]])
    model(rng.uniform(-1, 1, (8, *input_shape)).astype(np.float32), training=True)


CASES: list[tuple[str, Callable[..., Any], dict[str, Any], int, float | None, float]] = [
    ("fdmobilenet", k_fdmobilenet, {"name": "fdmobilenet", "alpha": 0.25, "input_shape": (64, 96, 3)}, 5, 0.2, 1.0),
    ("st_fdmobilenet", lambda *a: k_fdmobilenet(*a, alphas=ST_FD_ALPHAS),
     {"name": "st_fdmobilenet", "version": "v1", "input_shape": (64, 64, 1)}, 3, 0.2, 1.0),
    ("resnet8", k_resnet, {"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}, 10, None, 1.0),
    ("resnet20", lambda *a: k_resnet(*a, depth=20),
     {"name": "resnet", "version": "v1", "depth": 20, "input_shape": (40, 36, 3)}, 4, 0.3, 1.0),
    ("squeezenet_v11", k_squeezenet_v11, {"name": "squeezenet", "version": "v11", "input_shape": (64, 72, 3)}, 5, 0.2,
     2.5),
    ("squeezenet_v10", k_squeezenet_v10, {"name": "squeezenet", "version": "v10", "input_shape": (96, 96, 3)}, 5,
     None, 1.0),
    ("stmnist", k_stmnist, {"name": "stmnist", "input_shape": (28, 28, 1)}, 10, 0.1, 1.0),
    ("custom", k_custom, {"name": "custom", "input_shape": (48, 40, 3)}, 4, 0.1, 1.0),
    ("st_efficientnet_lc", k_st_efficientnet_lc,
     {"name": "st_efficientnet_lc", "version": "v1", "input_shape": (64, 64, 3)}, 5, 0.2, 1.0),
]


@pytest.mark.parametrize("label,replica,spec,classes,dropout,gain", CASES, ids=[c[0] for c in CASES])
def test_matches_keras_replica(keras: Any, label: str, replica: Callable[..., Any], spec: dict[str, Any],
                               classes: int, dropout: float | None, gain: float) -> None:
    keras.backend.clear_session()  # automatic layer names (conv2d, conv2d_1, ...) restart
    keras.utils.set_random_seed(0)
    input_shape = spec["input_shape"]
    kmodel = replica(keras, input_shape, classes, dropout)
    _randomize(keras, kmodel, input_shape, gain)
    model = build_model(spec, num_classes=classes, dropout=dropout).eval()
    assert [(n.name, n.keras_type) for n in model.nodes] == [(l.name, type(l).__name__) for l in kmodel.layers]
    assert [n.output_shape for n in model.nodes[1:]] == [tuple(l.output_shape[1:]) for l in kmodel.layers[1:]]
    assert model.keras_param_count() == kmodel.count_params()
    assert model.keras_trainable_count() == sum(int(np.prod(w.shape)) for w in kmodel.trainable_weights)
    load_keras_weights(model, kmodel)
    x = np.random.default_rng(1).uniform(-1, 1, (3, *input_shape)).astype(np.float32)
    expected = kmodel(x, training=False).numpy()
    assert expected.std(axis=0).max() > 1e-2  # the logits depend on the input
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("kind", ["max", "average"])
@pytest.mark.parametrize("size,pool,strides,padding", [
    ((9, 8), 3, 2, "same"), ((8, 8), 2, None, "same"), ((7, 10), 3, 2, "valid"), ((8, 8), 8, None, "valid"),
    ((5, 6), (2, 3), (1, 2), "same"),
])
def test_pooling_matches_keras(keras: Any, kind: str, size: tuple, pool: Any, strides: Any, padding: str) -> None:
    from stmclf.models.layers import AveragePooling2D, MaxPooling2D

    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    klayer = (keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D)(pool, strides, padding)
    expected = klayer(x).numpy()
    layer = (MaxPooling2D if kind == "max" else AveragePooling2D)((*size, 3), pool, strides, padding)
    assert layer.compute_output_shape((*size, 3)) == expected.shape[1:]
    out = layer(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
