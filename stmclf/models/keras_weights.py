"""Copy Keras weights (a live Keras model or an .h5 file) into a :class:`KerasGraph` by layer name.

Keras layouts → torch: Conv2D kernel (kh, kw, cin, cout) → (cout, cin, kh, kw); DepthwiseConv2D
kernel (kh, kw, cin, m) → (cin·m, 1, kh, kw); Dense kernel (in, out) → (out, in); BatchNormalization
[gamma, beta, moving_mean, moving_variance] → weight, bias, running_mean, running_var.

A nested model (:class:`~stmclf.models.graph.NestedModel`, a Keras model used as a layer, such as
a Keras Applications backbone) is loaded layer by layer by its inner layers' names: from the
entry under its own name (a mapping of inner layer names, or the flat weight list of a ``.h5``
file, whose weight names ``conv1_conv/kernel:0`` name the inner layers), or, when the source has
no entry of that name, from the source's top level (a file saved from the backbone itself, as
Keras Applications' ImageNet files are; a model nested in a nested model, whose weights Keras 2
stores flat in the entry of the outermost nested model).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stmclf.errors import UserError
from stmclf.models.graph import KerasGraph, NestedModel
from stmclf.models.layers import BatchNormalization, Conv2D, Dense, DepthwiseConv2D

KerasLayerWeights = Mapping[str, Any]
"""Keras layer name → that layer's ``get_weights()`` arrays, in Keras order (a nested model's: a
mapping of its own layers' weights, or a :class:`NamedWeights` list)."""


class NamedWeights(list):
    """A layer's weight arrays as a ``.h5`` file stores them, with their names (``weight_names``:
    ``conv1/kernel:0``; a nested model's name its inner layers: ``conv1_conv/kernel:0``)."""

    def __init__(self, arrays: Sequence[np.ndarray], names: Sequence[str]) -> None:
        super().__init__(arrays)
        self.names = tuple(names)


def _depthwise_kernel(k: np.ndarray) -> np.ndarray:
    kh, kw, cin, mult = k.shape
    return k.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]


# Layer type → layout change of its first Keras array (the kernel); the other arrays are 1-D.
_KERNEL_LAYOUT: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {
    Conv2D: lambda k: k.transpose(3, 2, 0, 1),
    DepthwiseConv2D: _depthwise_kernel,
    Dense: lambda k: k.T,
    BatchNormalization: lambda gamma: gamma,
}


def _targets(module: nn.Module) -> list[Tensor]:
    """The module's tensors in the order of the Keras layer's ``get_weights()``."""
    if isinstance(module, BatchNormalization):
        return [module.weight, module.bias, module.running_mean, module.running_var]
    return [module.weight] + ([module.bias] if module.bias is not None else [])


def keras_layer_weights(source: Any) -> dict[str, Any]:
    """Layer name → weights of a Keras model (anything with ``.layers``; a nested model's are a
    mapping of its own layers) or of a mapping."""
    if isinstance(source, Mapping):
        return {name: arrays if isinstance(arrays, (Mapping, NamedWeights)) else list(arrays)
                for name, arrays in source.items()}
    return {layer.name: keras_layer_weights(layer) if hasattr(layer, "layers") else layer.get_weights()
            for layer in source.layers}


def nested_layer_weights(value: Any, name: str) -> dict[str, Any]:
    """The inner layers' weights of the nested model ``name`` from its entry in a source: a
    mapping, or a ``.h5`` file's :class:`NamedWeights` grouped by the layer each weight name
    starts with (trainable weights come first in the file; each layer's keep their order)."""
    if isinstance(value, Mapping):
        return keras_layer_weights(value)
    if not isinstance(value, NamedWeights) or len(value.names) != len(value):
        raise UserError(f"layer {name!r} is a nested model, but its weights in the source do not name its layers")
    grouped: dict[str, list[np.ndarray]] = {}
    for weight_name, array in zip(value.names, value):
        path = weight_name.removeprefix(f"{name}/").split("/")
        if len(path) < 2:
            raise UserError(f"layer {name!r} is a nested model, but its weight {weight_name!r} names no layer of it")
        grouped.setdefault(path[0], []).append(array)
    return grouped


def nested_model_weights(weights: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The inner layers' weights of the nested model ``name`` in ``weights`` (layer name →
    weights): its own entry (:func:`nested_layer_weights`), or ``weights`` themselves when there is
    no entry of that name: a file saved from the nested model itself, or a model nested in a
    nested model, whose weights a Keras 2 ``.h5`` stores flat in the outermost nested model's entry
    (``c1/kernel:0`` for a layer ``c1`` of the inner one, at any depth)."""
    return nested_layer_weights(weights[name], name) if name in weights else dict(weights)


def read_h5_layer_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name → weights of a Keras 2 ``.h5`` file (a saved model or a ``save_weights`` file)."""
    import h5py

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise UserError(f"{path}: not a Keras .h5 weights file (no layer_names)")
        weights = {}
        for layer in map(text, root.attrs["layer_names"]):
            group = root[layer]
            names = [text(n) for n in group.attrs.get("weight_names", [])]
            weights[layer] = NamedWeights([np.asarray(group[n]) for n in names], names)
    return weights


def load_keras_weights(graph: KerasGraph, source: Any, indices: Iterable[int] | None = None) -> list[str]:
    """Copy Keras weights into ``graph``, matching layers by name; return the loaded layer names
    (``outer/inner`` for the layers of a nested model).

    ``source`` is a Keras model or a :data:`KerasLayerWeights` mapping (see
    :func:`read_h5_layer_weights`). Every layer with weights among ``indices`` (Keras layer indices,
    default all) must be in ``source`` with the same number and shapes of arrays, else
    :class:`UserError`; nothing is copied into a layer unless all its arrays fit. A nested model
    is loaded as the module doc says.
    """
    weights = keras_layer_weights(source)
    loaded = []
    for i in range(graph.num_layers) if indices is None else indices:
        module, name = graph.layer_module(i), graph.nodes[i].name
        if module is None or next(module.parameters(), None) is None:
            continue
        if isinstance(module, NestedModel):
            inner = load_keras_weights(module.graph, nested_model_weights(weights, name))
            loaded += [f"{name}/{layer}" for layer in inner]
            continue
        if type(module) not in _KERNEL_LAYOUT:
            raise TypeError(f"layer {name!r}: no Keras weight conversion for {type(module).__name__}")
        if name not in weights:
            raise UserError(f"layer {name!r} (index {i}) is missing from the Keras weights")
        arrays, targets = list(weights[name]), _targets(module)
        if len(arrays) != len(targets):
            raise UserError(f"layer {name!r}: expected {len(targets)} Keras weight arrays, got {len(arrays)}")
        arrays[0] = _KERNEL_LAYOUT[type(module)](arrays[0])
        for target, value in zip(targets, arrays):
            if tuple(target.shape) != value.shape:
                raise UserError(f"layer {name!r}: a Keras weight of shape {value.shape} does not fit "
                                f"{tuple(target.shape)}")
        with torch.no_grad():
            for target, value in zip(targets, arrays):
                target.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        loaded.append(name)
    return loaded
