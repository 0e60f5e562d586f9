"""Copy Keras weights (a live Keras model or an .h5 file) into a :class:`KerasGraph` by layer name.

Keras layouts → torch: Conv2D kernel (kh, kw, cin, cout) → (cout, cin, kh, kw); DepthwiseConv2D
kernel (kh, kw, cin, m) → (cin·m, 1, kh, kw); Dense kernel (in, out) → (out, in); BatchNormalization
[gamma, beta, moving_mean, moving_variance] → weight, bias, running_mean, running_var.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stmclf.errors import UserError
from stmclf.models.graph import KerasGraph
from stmclf.models.layers import BatchNormalization, Conv2D, Dense, DepthwiseConv2D

KerasLayerWeights = Mapping[str, Sequence[np.ndarray]]
"""Keras layer name → that layer's ``get_weights()`` arrays, in Keras order."""


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


def keras_layer_weights(source: Any) -> dict[str, list[np.ndarray]]:
    """Layer name → weights of a Keras model (anything with ``.layers``) or of a mapping."""
    if isinstance(source, Mapping):
        return {name: list(arrays) for name, arrays in source.items()}
    return {layer.name: layer.get_weights() for layer in source.layers}


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
            weights[layer] = [np.asarray(group[text(n)]) for n in group.attrs.get("weight_names", [])]
    return weights


def load_keras_weights(graph: KerasGraph, source: Any, indices: Iterable[int] | None = None) -> list[str]:
    """Copy Keras weights into ``graph``, matching layers by name; return the loaded layer names.

    ``source`` is a Keras model or a :data:`KerasLayerWeights` mapping (see
    :func:`read_h5_layer_weights`). Every layer with weights among ``indices`` (Keras layer indices,
    default all) must be in ``source`` with the same number and shapes of arrays, else
    :class:`UserError`; nothing is copied into a layer unless all its arrays fit.
    """
    weights = keras_layer_weights(source)
    loaded = []
    for i in range(graph.num_layers) if indices is None else indices:
        module, name = graph.layer_module(i), graph.nodes[i].name
        if module is None or next(module.parameters(), None) is None:
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
