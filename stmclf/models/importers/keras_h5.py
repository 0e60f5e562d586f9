"""Keras ``.h5`` model files (``model.save("model.h5")`` of tf_keras / Keras 2; Keras 3's legacy
``.h5`` too) rebuilt as a :class:`KerasGraph` without TensorFlow.

The model config JSON (the ``model_config`` attribute of the file) is read with h5py and rebuilt
layer for layer with :class:`GraphBuilder` and the layers of :mod:`stmclf.models.layers`: the same
layer names, Keras types and order as the Keras model's ``model.layers`` (functional models: index
0 is the InputLayer, as in Keras). Keras ``Sequential`` models list no InputLayer in
``model.layers``: the graph still has one at index 0, and :class:`ImportedModel` records
``layer_index_offset = 1`` so that the reference's ``frozen_layers`` indices keep their meaning.
The weights are then copied by layer name (:func:`load_keras_weights`).

A Keras model used as a layer (a ``Functional``/``Sequential`` layer: a Keras Applications backbone
called as ``backbone(inputs, training=False)``, as the reference's ResNet50V2 and EfficientNetV2
models are saved and as TF's transfer-learning tutorial does) is rebuilt the same way, as one
:class:`NestedModel` layer, at any depth; ``training=False`` in its call keeps it in inference mode,
and its weights are read as tf_keras reads them: a Keras 2 ``.h5`` stores them in one flat list
in the group of the outermost nested model (a model nested in it included), whose weight names do
not tell apart inner layers of the same name at different depths; tf_keras assigns that list by
order to the nested model's ``trainable_weights`` then ``non_trainable_weights`` (layer after
layer; a layer frozen in the file, or inside a frozen model, lists all its weights in the second
part), and so does :func:`nested_h5_weights`. It is built
for the input shape it is called with: an input it leaves unknown (``Input((None, None, 3))``, a
backbone made without ``input_shape``) takes that shape; a known size that differs is refused.
Layer names keep Keras' spelling (``mobilenetv2_0.35_96``): :class:`KerasGraph` keys the modules of
names torch cannot take (a '.') under sanitised keys.

The model is made to output logits: a final softmax (an ``Activation("softmax")`` or ``Softmax``
layer, or the softmax activation of the last Conv2D / Dense, possibly followed by Reshape / Flatten
/ Dropout / linear layers) is removed — the layer keeps its name and index — and
``output_is_softmax`` says so. Layers that were frozen in the file are trainable again (the
reference does the same; ``frozen_layers`` freezes layers). The file's L1/L2 kernel regularizers
(Conv2D, DepthwiseConv2D, SeparableConv2D, Dense) stay part of the training loss, as in Keras
(:mod:`stmclf.models.regularization`); other regularizers, constraints and initializers are not
used (a warning names each layer whose regularizer is dropped).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import nn

from stmclf.errors import UserError
from stmclf.models.graph import GraphBuilder, KerasGraph, NestedModel
from stmclf.models.importers.base import ImportedModel, file_error, first_line, one_line
from stmclf.models.keras_weights import (KERNEL_LAYOUT, NamedWeights, copy_keras_arrays, load_keras_weights,
                                         nested_model_weights, read_h5_layer_weights)
from stmclf.models.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate, Conv2D,
                                  Dense, DepthwiseConv2D, Dropout, Flatten, GlobalAveragePooling2D,
                                  GlobalMaxPooling2D, LeakyReLU, MaxPooling2D, Multiply, ReLU, Rescaling, Reshape,
                                  SampleDropout, SeparableConv2D, Shape, SoftmaxLogits, ZeroPadding2D)
from stmclf.models.regularization import keras_regularizer, set_kernel_regularizer

log = logging.getLogger("stmclf.models.importers")


class _Unsupported(Exception):
    """A layer setting this importer does not handle (turned into a one-line UserError)."""


@dataclass
class _Spec:
    class_name: str
    name: str
    config: dict[str, Any]
    inputs: tuple[str, ...]
    training: bool | None = None
    """The ``training`` argument of a nested model's call (``backbone(x, training=False)``)."""


NESTED_MODEL_CLASSES = ("Functional", "Model", "Sequential")
"""Keras model classes used as a layer of another model (a Keras Applications backbone)."""


# ---------------------------------------------------------------------------------------------
# Reading the config.

def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


MAX_CONFIG_DEPTH = 100
"""Nesting a model_config may have (Keras's own stay well under 20)."""


def _nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON ``text``, strings left out."""
    import itertools
    import re

    brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    steps = (1 if c in "[{" else -1 for c in brackets if c in "[]{}")
    return max(itertools.accumulate(steps, initial=0))


def read_model_config(path: Path) -> tuple[dict[str, Any], str]:
    """The ``model_config`` JSON of a Keras ``.h5`` file and its ``keras_version``."""
    import h5py

    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise UserError("a Keras weights file (save_weights), not a full model: it has no model_config; "
                            "save the model with model.save(\"model.h5\")")
        text = _text(f.attrs["model_config"])
        if _nesting_depth(text) > MAX_CONFIG_DEPTH:  # json's C decoder recurses: a deep file could crash the process
            raise UserError(f"not a Keras model this importer can read (its model_config nests deeper than "
                            f"{MAX_CONFIG_DEPTH} levels)")
        config = json.loads(text)
        version = _text(f.attrs.get("keras_version", ""))
    return config, version


def _history_names(value: Any) -> list[tuple[str, int, int]]:
    """The (layer, node index, tensor index) of the Keras 3 tensors in a call's args."""
    found: list[tuple[str, int, int]] = []
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            name, node, tensor = value["config"]["keras_history"]
            found.append((name, int(node), int(tensor)))
        else:
            for item in value.values():
                found += _history_names(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += _history_names(item)
    return found


def _inbound(layer: dict[str, Any], nested: frozenset[str] = frozenset()) -> tuple[tuple[str, ...], bool | None]:
    """The layer's input layer names and, for a nested model, its call's ``training`` argument.
    ``nested`` names the model's nested-model layers: Keras 2 numbers their first call 1 (call 0
    is their own graph)."""
    nodes = layer.get("inbound_nodes") or []
    name, cls = layer.get("name") or layer["config"].get("name"), layer["class_name"]
    if len(nodes) > 1:
        raise _Unsupported(f"layer {name!r} ({cls}) is used {len(nodes)} times (shared layers are not supported)")
    if not nodes:
        return (), None
    node = nodes[0]
    kwargs: dict[str, Any] = {}
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        refs = _history_names(node.get("args", []))
        if _history_names(node.get("kwargs", {})):
            raise _Unsupported(f"layer {name!r} ({cls}) takes tensors as keyword arguments")
        kwargs = node.get("kwargs") or {}
    else:  # Keras 2: [[layer, node, tensor, kwargs], ...]
        refs = []
        for ref in node:
            extra = ref[3] if len(ref) > 3 and ref[3] else {}
            if extra and (cls not in NESTED_MODEL_CLASSES or set(extra) - {"training"}):
                raise _Unsupported(f"layer {name!r} ({cls}) is called with extra arguments {extra}")
            kwargs.update(extra)
            refs.append((ref[0], int(ref[1]), int(ref[2])))
    for src, node_index, tensor_index in refs:
        if node_index not in ((0, 1) if src in nested else (0,)) or tensor_index != 0:
            raise _Unsupported(f"layer {name!r} ({cls}) reads output {tensor_index} of call {node_index} of {src!r} "
                               "(shared or multi-output layers are not supported)")
    training = kwargs.get("training") if cls in NESTED_MODEL_CLASSES else None
    if training is not None and not isinstance(training, bool):
        raise _Unsupported(f"layer {name!r} ({cls}) is called with training={training!r}")
    return tuple(src for src, _, _ in refs), training


def _batch_shape(config: dict[str, Any]) -> Any:
    for key in ("batch_input_shape", "batch_shape"):
        if config.get(key) is not None:
            return config[key]
    return None


def _input_shape(shape: Any, where: str, called_with: Shape | None = None) -> tuple[int, int, int]:
    """The (height, width, channels) of a batch input shape. ``called_with``: the shape a nested
    model is called with in the model around it, which fills the dimensions its own input leaves
    unknown (``Input((None, None, 3))``, a Keras Applications backbone without ``input_shape``)."""
    if shape is None and called_with is not None:  # a nested Sequential model built by its call
        shape = [None] * 4
    if not isinstance(shape, (list, tuple)) or len(shape) != 4:
        raise UserError(f"expected an image input of shape (batch, height, width, channels), got {shape} ({where})")
    dims = list(shape[1:])
    if called_with is not None:
        if len(called_with) != 3 or any(d is not None and d != c for d, c in zip(dims, called_with)):
            raise UserError(f"the input shape {tuple(shape)} ({where}) does not fit the shape "
                            f"{tuple(called_with)} it is called with")
        dims = list(called_with)
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise UserError(f"the input shape {tuple(shape)} has unknown dimensions ({where}): a fixed height, width "
                        "and number of channels are needed")
    return int(dims[0]), int(dims[1]), int(dims[2])


def parse_model(config: dict[str, Any],
                called_with: Shape | None = None) -> tuple[str, str, tuple[int, int, int], str, list[_Spec]]:
    """(model kind "functional"/"sequential", model name, input shape, input layer name, layer specs
    in ``model.layers`` order without the InputLayer). ``called_with``: a nested model's input
    shape in the model around it (see :func:`_input_shape`)."""
    cls = config.get("class_name")
    body = config.get("config", {})
    model_name = str(body.get("name", "model"))
    layers = body.get("layers")
    if not isinstance(layers, list):
        raise UserError(f"unsupported Keras model class {cls!r} (expected a Functional or Sequential model)")
    if cls == "Sequential":
        specs, input_name, shape, previous = [], None, body.get("build_input_shape"), None
        for i, layer in enumerate(layers):
            lcfg = layer.get("config", {})
            if layer.get("class_name") == "InputLayer":
                if i != 0:
                    raise _Unsupported("an InputLayer inside a Sequential model")
                input_name, shape = str(lcfg.get("name", "input_1")), _batch_shape(lcfg)
                continue
            name = str(lcfg.get("name", f"layer_{i}"))
            if previous is None:
                if shape is None:
                    shape = _batch_shape(lcfg)
                input_name = input_name or f"{name}_input"
                previous = input_name
            specs.append(_Spec(layer["class_name"], name, lcfg, (previous,)))
            previous = name
        if input_name is None or not specs:
            raise UserError("an empty Sequential model")
        return "sequential", model_name, _input_shape(shape, "Sequential model", called_with), input_name, specs
    if cls not in ("Functional", "Model"):
        raise UserError(f"unsupported Keras model class {cls!r} (expected a Functional or Sequential model)")
    inputs, outputs = body.get("input_layers") or [], body.get("output_layers") or []
    # Keras 2 writes [[name, 0, 0]]; Keras 3 writes [name, 0, 0] for a single input.
    inputs = [inputs] if inputs and isinstance(inputs[0], str) else inputs
    outputs = [outputs] if outputs and isinstance(outputs[0], str) else outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"the model has {len(inputs)} inputs and {len(outputs)} outputs: one image input and one "
                        "output are supported")
    if not layers or layers[0].get("class_name") != "InputLayer" or layers[0].get("name") != inputs[0][0]:
        raise UserError("the model's first layer is not its InputLayer")
    first = layers[0]
    input_name = str(first["name"])
    shape = _input_shape(_batch_shape(first.get("config", {})), f"InputLayer {input_name!r}", called_with)
    nested = frozenset(str(layer.get("name") or layer["config"]["name"]) for layer in layers[1:]
                       if layer.get("class_name") in NESTED_MODEL_CLASSES)
    specs = [_Spec(layer["class_name"], str(layer.get("name") or layer["config"]["name"]), layer.get("config", {}),
                   *_inbound(layer, nested)) for layer in layers[1:]]
    if specs and specs[-1].name != outputs[0][0]:
        raise UserError(f"the model's output {outputs[0][0]!r} is not its last layer")
    return "functional", model_name, shape, input_name, specs


# ---------------------------------------------------------------------------------------------
# Layer by layer.

def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise _Unsupported(f"{what} {value!r}")


def _check_format(cfg: dict[str, Any]) -> None:
    if cfg.get("data_format") not in (None, "channels_last"):
        raise _Unsupported(f"data_format {cfg['data_format']!r} (channels_last only)")


def _check_dilation(cfg: dict[str, Any]) -> None:
    if _pair(cfg.get("dilation_rate", 1), "dilation_rate") != (1, 1):
        raise _Unsupported(f"dilation_rate {cfg['dilation_rate']} (1 only)")


def _padding(cfg: dict[str, Any]) -> str:
    padding = str(cfg.get("padding", "valid")).lower()
    if padding not in ("valid", "same"):
        raise _Unsupported(f"padding {padding!r}")
    return padding


_ACTIVATION_NAMES = {"relu", "relu6", "sigmoid", "linear", "softmax", "tanh", "swish", "silu", "hard_sigmoid", "elu",
                     "selu", "gelu", "softplus", "softsign", "exponential"}


def _activation(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):  # Keras 3 may serialize a built-in activation as a dict
        value = value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
    name = str(value)
    if name not in _ACTIVATION_NAMES:
        raise _Unsupported(f"activation {name!r} (supported: {', '.join(sorted(_ACTIVATION_NAMES))})")
    return None if name == "linear" else name


class _Context:
    """What layer builders need beyond the layer's own config."""

    def __init__(self, keras_version: str, strip: set[str]) -> None:
        self.keras_version = keras_version
        major = keras_version.split(".")[0]
        self.keras3 = major.isdigit() and int(major) >= 3
        self.strip = strip  # layers whose (final) softmax is removed
        self.stripped_inside: dict[str, str | None] = {}  # nested model → the layer whose softmax it removed


def _fix_keras3(layer: nn.Module, name: str | None, ctx: _Context) -> nn.Module:
    """Keras 3's hard_sigmoid is relu6(x + 3) / 6 (Keras 2: clip(0.2 x + 0.5, 0, 1))."""
    if ctx.keras3 and name == "hard_sigmoid":
        if isinstance(layer, Activation):
            layer.fn = F.hardsigmoid
        else:
            layer.activation = F.hardsigmoid
    return layer


def _regularized(layer: nn.Module, spec: _Spec, key: str) -> nn.Module:
    """``layer`` with the file's L1/L2 regularizer under ``key`` (a training-loss term, as in Keras)."""
    try:
        l1, l2 = keras_regularizer(spec.config.get(key))
    except ValueError as exc:
        log.warning("%s: layer %r: %s; it is not used in training", key, spec.name, exc)
        return layer
    return set_kernel_regularizer(layer, l1, l2) if (l1 or l2) else layer


def _layer_activation(spec: _Spec, ctx: _Context) -> str | None:
    name = _activation(spec.config.get("activation"))
    return None if spec.name in ctx.strip else name


def _conv2d(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
    cfg = spec.config
    _check_format(cfg)
    _check_dilation(cfg)
    if int(cfg.get("groups", 1)) != 1:
        raise _Unsupported(f"groups {cfg['groups']} (1 only)")
    act = _layer_activation(spec, ctx)
    return lambda s: _regularized(_fix_keras3(Conv2D(s, int(cfg["filters"]), _pair(cfg["kernel_size"], "kernel_size"),
                                                     _pair(cfg.get("strides", 1), "strides"), _padding(cfg),
                                                     bool(cfg.get("use_bias", True)), act), act, ctx),
                                  spec, "kernel_regularizer")


def _depthwise(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
    cfg = spec.config
    _check_format(cfg)
    _check_dilation(cfg)
    act = _layer_activation(spec, ctx)
    return lambda s: _regularized(_fix_keras3(DepthwiseConv2D(s, _pair(cfg["kernel_size"], "kernel_size"),
                                                              _pair(cfg.get("strides", 1), "strides"), _padding(cfg),
                                                              bool(cfg.get("use_bias", True)),
                                                              int(cfg.get("depth_multiplier", 1)), act), act, ctx),
                                  spec, "depthwise_regularizer")


def _separable(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
    cfg = spec.config
    _check_format(cfg)
    _check_dilation(cfg)
    act = _layer_activation(spec, ctx)

    def build(s: Shape) -> nn.Module:
        layer = SeparableConv2D(s, int(cfg["filters"]), _pair(cfg["kernel_size"], "kernel_size"),
                                _pair(cfg.get("strides", 1), "strides"), _padding(cfg), bool(cfg.get("use_bias", True)),
                                int(cfg.get("depth_multiplier", 1)), act)
        _fix_keras3(layer.pointwise, act, ctx)
        _regularized(layer.depthwise, spec, "depthwise_regularizer")
        _regularized(layer.pointwise, spec, "pointwise_regularizer")
        return layer

    return build


def _dense(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
    cfg = spec.config
    act = _layer_activation(spec, ctx)

    def build(s: Shape) -> nn.Module:
        if len(s) != 1:
            raise _Unsupported(f"a Dense layer on a {len(s)}-D input {s} (flatten or pool to a vector first)")
        return _regularized(_fix_keras3(Dense(s, int(cfg["units"]), bool(cfg.get("use_bias", True)), act), act, ctx),
                            spec, "kernel_regularizer")

    return build


def _batch_norm(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
    cfg = spec.config
    for key in ("renorm", "virtual_batch_size", "adjustment"):
        if cfg.get(key):
            raise _Unsupported(f"{key}={cfg[key]!r}")
    axis = cfg.get("axis", -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]

    def build(s: Shape) -> nn.Module:
        if len(axes) != 1 or axes[0] not in (-1, len(s)):
            raise _Unsupported(f"axis {axis} (the channel axis only)")
        layer = BatchNormalization(s, float(cfg.get("epsilon", 1e-3)), float(cfg.get("momentum", 0.99)))
        if not cfg.get("scale", True):
            layer.weight = None
        if not cfg.get("center", True):
            layer.bias = None
        return layer

    return build


def _relu(spec: _Spec, ctx: _Context) -> nn.Module:
    cfg = spec.config
    if float(cfg.get("negative_slope") or 0.0) != 0.0 or float(cfg.get("threshold") or 0.0) != 0.0:
        raise _Unsupported("negative_slope or threshold other than 0")
    max_value = cfg.get("max_value")
    return ReLU(None if max_value is None else float(max_value))


def _activation_layer(spec: _Spec, ctx: _Context) -> nn.Module:
    name = _activation(spec.config.get("activation"))
    if spec.name in ctx.strip:
        return SoftmaxLogits()
    return _fix_keras3(Activation(name or "linear"), name, ctx)


def _softmax_layer(spec: _Spec, ctx: _Context) -> nn.Module:
    axis = spec.config.get("axis", -1)
    if axis not in (-1, [-1]):
        raise _Unsupported(f"axis {axis} (-1 only)")
    layer = SoftmaxLogits() if spec.name in ctx.strip else Activation("softmax")
    layer.keras_type = "Softmax"  # instance attribute: the node's Keras type
    return layer


def _zero_padding(spec: _Spec, ctx: _Context) -> nn.Module:
    _check_format(spec.config)
    pad = spec.config.get("padding", 1)
    if isinstance(pad, int):
        padding = ((pad, pad), (pad, pad))
    elif isinstance(pad, (list, tuple)) and len(pad) == 2 and all(isinstance(p, int) for p in pad):
        padding = ((pad[0], pad[0]), (pad[1], pad[1]))
    elif isinstance(pad, (list, tuple)) and len(pad) == 2:
        padding = (_pair(pad[0], "padding"), _pair(pad[1], "padding"))
    else:
        raise _Unsupported(f"padding {pad!r}")
    return ZeroPadding2D(padding)


def _pool(cls: type) -> Callable[[_Spec, _Context], Callable[[Shape], nn.Module]]:
    def builder(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
        cfg = spec.config
        _check_format(cfg)
        pool = _pair(cfg.get("pool_size", 2), "pool_size")
        strides = cfg.get("strides")
        strides = pool if strides is None else _pair(strides, "strides")
        return lambda s: cls(s, pool, strides, _padding(cfg))
    return builder


def _global_pool(cls: type) -> Callable[[_Spec, _Context], nn.Module]:
    def builder(spec: _Spec, ctx: _Context) -> nn.Module:
        _check_format(spec.config)
        return cls(keepdims=bool(spec.config.get("keepdims", False)))
    return builder


def _flatten(spec: _Spec, ctx: _Context) -> nn.Module:
    _check_format(spec.config)
    return Flatten()


def _reshape(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
    target = [int(d) for d in spec.config["target_shape"]]

    def build(s: Shape) -> nn.Module:
        size = int(np.prod(s))
        if target.count(-1) > 1:
            raise _Unsupported(f"target_shape {tuple(target)}")
        known = int(np.prod([d for d in target if d != -1]))
        resolved = [size // known if d == -1 else d for d in target]
        if int(np.prod(resolved)) != size:
            raise _Unsupported(f"target_shape {tuple(target)} for an input of shape {s}")
        if len(resolved) not in (1, 3):
            raise _Unsupported(f"target_shape {tuple(target)} (a vector or an (H, W, C) map only)")
        return Reshape(tuple(resolved))

    return build


def _dropout(spec: _Spec, ctx: _Context) -> nn.Module:
    rate = float(spec.config.get("rate", 0.0))
    noise = spec.config.get("noise_shape")
    if noise is None:
        return Dropout(rate)
    if len(noise) == 4 and list(noise[1:]) == [1, 1, 1]:
        return SampleDropout(rate)
    raise _Unsupported(f"noise_shape {noise}")


def _concatenate(spec: _Spec, ctx: _Context) -> nn.Module:
    axis = int(spec.config.get("axis", -1))
    if axis not in (-1, 3):
        raise _Unsupported(f"axis {axis} (the channel axis of (H, W, C) maps only)")
    return Concatenate(axis)


def _rescaling(spec: _Spec, ctx: _Context) -> nn.Module:
    return Rescaling(spec.config.get("scale", 1.0), spec.config.get("offset", 0.0))


def _leaky_relu(spec: _Spec, ctx: _Context) -> nn.Module:
    cfg = spec.config
    alpha = cfg.get("alpha", cfg.get("negative_slope", 0.3))
    return LeakyReLU(float(alpha))


def _nested_model(spec: _Spec, ctx: _Context) -> Callable[[Shape], nn.Module]:
    """A Keras model used as a layer: rebuilt like the outer one (its own layers; its final softmax
    removed only when it ends the outer model) for the input shape it is called with, as one layer;
    ``training=False`` in its call keeps it in inference mode."""
    def build(shape: Shape) -> nn.Module:
        graph, facts = build_graph({"class_name": spec.class_name, "config": spec.config}, ctx.keras_version,
                                   nested=True, called_with=shape, final=spec.name in ctx.strip)
        ctx.stripped_inside[spec.name] = facts["softmax_layer"]
        return NestedModel(graph, inference_only=spec.training is False,  # "Model" (older Keras) loads as Functional
                           keras_type=ALIASES.get(spec.class_name, spec.class_name))

    return build


LAYER_BUILDERS: dict[str, Callable[[_Spec, _Context], Any]] = {
    "Conv2D": _conv2d,
    "DepthwiseConv2D": _depthwise,
    "SeparableConv2D": _separable,
    "BatchNormalization": _batch_norm,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "Activation": _activation_layer,
    "Softmax": _softmax_layer,
    "ZeroPadding2D": _zero_padding,
    "Add": lambda spec, ctx: Add(),
    "Multiply": lambda spec, ctx: Multiply(),
    "Concatenate": _concatenate,
    "MaxPooling2D": _pool(MaxPooling2D),
    "AveragePooling2D": _pool(AveragePooling2D),
    "GlobalAveragePooling2D": _global_pool(GlobalAveragePooling2D),
    "GlobalMaxPooling2D": _global_pool(GlobalMaxPooling2D),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Dropout": _dropout,
    "Dense": _dense,
    "Rescaling": _rescaling,
    "Functional": _nested_model,
    "Sequential": _nested_model,
}
ALIASES = {"Model": "Functional", "Conv2d": "Conv2D", "Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D",
           "AvgPool2D": "AveragePooling2D", "GlobalAvgPool2D": "GlobalAveragePooling2D",
           "GlobalMaxPool2D": "GlobalMaxPooling2D", "SeparableConvolution2D": "SeparableConv2D"}
SUPPORTED_LAYERS = ("InputLayer",) + tuple(LAYER_BUILDERS)


# ---------------------------------------------------------------------------------------------
# Final softmax.

_PASS_THROUGH = {"Reshape", "Flatten", "Dropout"}
_SOFTMAX_WITH_ACTIVATION = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"}


def _final_softmax(specs: Sequence[_Spec]) -> str | None:
    """The name of the layer whose softmax ends the model (through shape-only layers), if any; a
    nested model there (``Sequential([Rescaling, model])``) is named too: its own final softmax, if
    any, is the model's."""
    by_name = {spec.name: spec for spec in specs}
    consumers: dict[str, int] = {}
    for spec in specs:
        for src in spec.inputs:
            consumers[src] = consumers.get(src, 0) + 1
    spec = specs[-1]
    while True:
        cls = ALIASES.get(spec.class_name, spec.class_name)
        act = spec.config.get("activation")
        act = act.get("config") if isinstance(act, dict) else act
        is_softmax = (cls == "Activation" and act == "softmax") or cls == "Softmax" \
            or (cls in _SOFTMAX_WITH_ACTIVATION and act == "softmax")
        if is_softmax or cls in NESTED_MODEL_CLASSES:
            return spec.name
        linear = cls == "Activation" and act == "linear"
        if (cls not in _PASS_THROUGH and not linear) or len(spec.inputs) != 1 or spec.inputs[0] not in by_name:
            return None
        source = spec.inputs[0]
        if consumers.get(source, 0) != 1:
            return None
        spec = by_name[source]


# ---------------------------------------------------------------------------------------------
# Weights.

def _load_special(module: nn.Module, name: str, arrays: list[Any]) -> None:
    """Weights of the layers :func:`load_keras_weights` does not convert."""
    if isinstance(module, SeparableConv2D):
        targets = [module.depthwise.weight, module.pointwise.weight] + (
            [module.pointwise.bias] if module.pointwise.bias is not None else [])
        if len(arrays) != len(targets):
            raise UserError(f"layer {name!r}: expected {len(targets)} Keras weight arrays, got {len(arrays)}")
        layouts = [KERNEL_LAYOUT[DepthwiseConv2D], KERNEL_LAYOUT[Conv2D], None]
        copy_keras_arrays(name, list(zip(targets, arrays, layouts)))
        return
    if isinstance(module, BatchNormalization):
        targets = [t for t in (module.weight, module.bias) if t is not None] + [module.running_mean, module.running_var]
        if len(arrays) != len(targets):
            raise UserError(f"layer {name!r}: expected {len(targets)} Keras weight arrays, got {len(arrays)}")
        copy_keras_arrays(name, [(target, value, None) for target, value in zip(targets, arrays)])
        return
    raise UserError(f"layer {name!r}: no Keras weight conversion for {type(module).__name__}")


def _weight_counts(module: nn.Module, name: str) -> tuple[int, int]:
    """(trainable, non-trainable) weight arrays of the Keras layer ``module`` stands for, in its
    ``get_weights()`` order (trainable first)."""
    if isinstance(module, BatchNormalization):
        return sum(t is not None for t in (module.weight, module.bias)), 2  # + moving mean and variance
    if isinstance(module, SeparableConv2D):
        return 2 + (module.pointwise.bias is not None), 0
    if isinstance(module, (Conv2D, DepthwiseConv2D, Dense)):
        return 1 + (module.bias is not None), 0
    if next(module.parameters(), None) is None:
        return 0, 0
    raise UserError(f"layer {name!r}: no Keras weight conversion for {type(module).__name__}")


def _has_weights(module: nn.Module, name: str) -> bool:
    """Whether the Keras layer ``module`` stands for has weights (a BatchNormalization without center
    and scale has: its moving statistics; a nested model has when one of its layers has)."""
    if isinstance(module, NestedModel):
        return any(_weight_order(module.graph, True))
    return _weight_counts(module, name) != (0, 0)


def _weight_order(graph: KerasGraph, trainable: bool) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The ``trainable_weights`` and ``non_trainable_weights`` of the Keras model ``graph`` was
    built from, as tf_keras lists them (``trainable``: the model and the models around it are
    trainable): one entry per weight array, the path of the layer holding it (outer, inner names),
    layer after layer, a nested model's in place. A layer frozen in the file (``trainable: false``),
    or inside a frozen model, lists all its arrays among the non-trainable ones."""
    first: list[tuple[str, ...]] = []
    second: list[tuple[str, ...]] = []
    frozen = getattr(graph, "frozen_in_file", frozenset())
    for i in range(1, graph.num_layers):
        module, name = graph.layer_module(i), graph.nodes[i].name
        if module is None:
            continue
        on = trainable and name not in frozen
        if isinstance(module, NestedModel):
            inner_first, inner_second = _weight_order(module.graph, on)
            first += [(name, *path) for path in inner_first]
            second += [(name, *path) for path in inner_second]
            continue
        own, fixed = _weight_counts(module, name)
        first += [(name,)] * (own if on else 0)
        second += [(name,)] * (fixed if on else own + fixed)
    return first, second


def nested_h5_weights(graph: KerasGraph, arrays: NamedWeights, trainable: bool) -> dict[str, Any]:
    """The weights of a nested model (``graph``) from its Keras 2 ``.h5`` group's flat list, as
    tf_keras loads them: by order (``weight_names`` order) onto the model's trainable then
    non-trainable weights (:func:`_weight_order`), never by name — the names of inner layers at
    different depths may be the same. A mapping layer name → its arrays (a nested model's: a mapping)."""
    first, second = _weight_order(graph, trainable)
    slots = first + second
    if len(slots) != len(arrays):
        raise UserError(f"its group in the file holds {len(arrays)} weight arrays, its layers have {len(slots)}")
    tree: dict[str, Any] = {}
    for path, array in zip(slots, arrays):
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node.setdefault(path[-1], []).append(array)
    return tree


def load_weights(graph: KerasGraph, weights: dict[str, Any]) -> None:
    standard, special = [], []
    frozen = getattr(graph, "frozen_in_file", frozenset())
    for i in range(1, graph.num_layers):
        module = graph.layer_module(i)
        if module is None or not _has_weights(module, graph.nodes[i].name):
            continue
        if isinstance(module, NestedModel):
            name = graph.nodes[i].name
            try:
                entry = weights.get(name)
                load_weights(module.graph, nested_h5_weights(module.graph, entry, name not in frozen)
                             if isinstance(entry, NamedWeights) else nested_model_weights(weights, name))
            except UserError as exc:
                raise UserError(f"nested model {name!r}: {one_line(exc)}") from None
            continue
        plain = type(module) in (Conv2D, DepthwiseConv2D, Dense) or (
            type(module) is BatchNormalization and module.weight is not None and module.bias is not None)
        (standard if plain else special).append(i)
    load_keras_weights(graph, weights, indices=standard)
    for i in special:
        name = graph.nodes[i].name
        if name not in weights:
            raise UserError(f"layer {name!r} (index {i}) is missing from the Keras weights")
        _load_special(graph.layer_module(i), name, list(weights[name]))


# ---------------------------------------------------------------------------------------------

LARQ_LAYERS = ("QuantConv2D", "QuantDepthwiseConv2D", "QuantSeparableConv2D", "QuantDense")


def _unsupported_layer(spec: _Spec) -> UserError:
    if spec.class_name in LARQ_LAYERS:
        return UserError(f"unsupported Keras layer {spec.class_name} {spec.name!r}: a Larq quantized layer; Larq "
                         "binary/QAT models (ST's st_resnet_8_hybrid) are not supported")
    return UserError(f"unsupported Keras layer {spec.class_name} {spec.name!r}; supported layers: "
                     f"{', '.join(SUPPORTED_LAYERS)}")


def build_graph(config: dict[str, Any], keras_version: str = "", nested: bool = False,
                called_with: Shape | None = None, final: bool = False) -> tuple[KerasGraph, dict[str, Any]]:
    """The :class:`KerasGraph` of a Keras model config (random weights) and facts about it.
    ``nested``: a model used as a layer of another, called with inputs of shape ``called_with``;
    its final softmax is the output's only when it ends the outer model (``final``)."""
    kind, model_name, input_shape, input_name, specs = parse_model(config, called_with)
    for spec in specs:
        cls = ALIASES.get(spec.class_name, spec.class_name)
        if cls not in LAYER_BUILDERS:
            raise _unsupported_layer(spec)
    strip = _final_softmax(specs) if final or not nested else None
    ctx = _Context(keras_version, strip={strip} if strip else set())
    g = GraphBuilder(input_shape, input_name=input_name)
    frozen_in_file = False
    for spec in specs:
        cls = ALIASES.get(spec.class_name, spec.class_name)
        frozen_in_file |= spec.config.get("trainable") is False
        try:
            layer = LAYER_BUILDERS[cls](spec, ctx)
            g.add(spec.name, layer, spec.inputs)
        except UserError as exc:  # inside a nested model
            raise UserError(f"nested model {spec.name!r}: {one_line(exc)}") from None
        except _Unsupported as exc:
            raise UserError(f"Keras layer {spec.class_name} {spec.name!r}: unsupported setting: {one_line(exc)}") \
                from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"Keras layer {spec.class_name} {spec.name!r}: cannot rebuild it ({first_line(exc)})") \
                from None
    try:
        graph = g.build(outputs=specs[-1].name, name=model_name)
    except ValueError as exc:
        raise UserError(f"unsupported model structure: {first_line(exc)}") from None
    graph.frozen_in_file = frozenset(spec.name for spec in specs if spec.config.get("trainable") is False)
    if strip in ctx.stripped_inside:  # a nested model ends the model: its softmax, if it had one
        strip = strip if ctx.stripped_inside[strip] else None
    if strip:
        shape = graph.nodes[graph.layer_index(strip)].output_shape
        if len(shape) != 1 and tuple(shape[:-1]) != (1, 1):
            raise UserError(f"the model ends with a softmax over each position of a {shape} map (layer {strip!r}); "
                            "a softmax over class scores is expected")
    dropouts = [spec for spec in specs if ALIASES.get(spec.class_name, spec.class_name) == "Dropout"]
    facts = {
        "kind": kind,
        "offset": 1 if kind == "sequential" else 0,
        "softmax_layer": f"{strip}/{ctx.stripped_inside[strip]}" if strip in ctx.stripped_inside else strip,
        "dropout_rate": float(dropouts[0].config.get("rate", 0.0)) if dropouts else None,
        "has_dropout": bool(dropouts),
        "frozen_in_file": frozen_in_file,
    }
    return graph, facts


def _set_dropout(graph: KerasGraph) -> Callable[[float], None]:
    def apply(rate: float) -> None:
        for module in graph.layers.values():
            if isinstance(module, nn.Dropout):
                module.p = rate
    return apply


_MALFORMED = (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError, RuntimeError,
              MemoryError)
"""What a hostile or broken .h5 raises while it is read: a one-line error naming the file."""


def load_keras_h5(path: Path, key: str) -> ImportedModel:
    try:
        import h5py  # noqa: F401
    except ImportError:  # pragma: no cover - h5py comes with the tflite extra
        raise file_error(key, path, "reading Keras .h5 files needs h5py (pip install h5py)") from None
    try:
        config, keras_version = read_model_config(path)
        graph, facts = build_graph(config, keras_version)
    except UserError as exc:  # (the readers' own messages may already start with the path)
        raise file_error(key, path, str(exc).removeprefix(f"{path}: ")) from None
    except _Unsupported as exc:
        raise file_error(key, path, f"unsupported Keras model: {exc}") from None
    except _MALFORMED as exc:  # a model_config of the wrong shape (types, nesting, sizes): the file's fault
        raise file_error(key, path, f"not a Keras model this importer can read ({first_line(exc)})") from None
    try:
        load_weights(graph, read_h5_layer_weights(path))
    except UserError as exc:  # (the readers' own messages may already start with the path)
        raise file_error(key, path, str(exc).removeprefix(f"{path}: ")) from None
    except _MALFORMED as exc:
        raise file_error(key, path, f"not a Keras model this importer can read (its weights: {first_line(exc)})") \
            from None
    out_shape = graph.nodes[-1].output_shape
    if len(out_shape) != 1:
        raise file_error(key, path, f"the model outputs {out_shape} per image; a vector of class scores is needed")
    notes = []
    if facts["softmax_layer"]:
        notes.append(f"final softmax of layer {facts['softmax_layer']!r} removed (training uses logits)")
    if facts["kind"] == "sequential":
        notes.append("Sequential model: layer indices count from its first layer (graph index - 1)")
    if facts["frozen_in_file"]:
        notes.append("layers frozen in the file are trainable (use training.frozen_layers)")
    return ImportedModel(graph=graph, input_shape=tuple(graph.input_shape), num_outputs=int(out_shape[0]),
                         has_dropout=facts["has_dropout"], dropout_rate=facts["dropout_rate"], kind="keras_h5",
                         output_is_softmax=facts["softmax_layer"] is not None, path=path, name=graph.name,
                         layer_index_offset=facts["offset"], metadata={"keras_version": keras_version},
                         notes=notes, _set_dropout=_set_dropout(graph))
