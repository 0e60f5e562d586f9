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

from stmclf.errors import UserError, one_line
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
KERNEL_LAYOUT: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {
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


OUTSIDE_FILE = "stmclf reads only weights stored inside the .h5"


def _h5_text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _h5_member(group: Any, name: str, what: str) -> Any:
    """The object at ``name`` (a path relative to ``group``) of an open ``.h5`` file, reached
    through hard links only. An external link (to another file), a soft link or a user-defined
    link is refused without being followed: following one may open any file, a FIFO included."""
    from h5py import h5l

    obj = group
    for part in name.split("/"):
        if part in ("", "."):
            continue
        key = part.encode()
        if not obj.id.links.exists(key):  # (``part in obj`` would follow the link)
            raise UserError(f"{what} is not in the file")
        kind = obj.id.links.get_info(key).type
        if kind == h5l.TYPE_EXTERNAL:
            filename, _ = obj.id.links.get_val(key)
            raise UserError(f"{what} is a link to another file ({_h5_text(filename)}); {OUTSIDE_FILE}")
        if kind != h5l.TYPE_HARD:
            target = _h5_text(obj.id.links.get_val(key)) if kind == h5l.TYPE_SOFT else "user-defined"
            raise UserError(f"{what} is a link ({target}), not data of its own; {OUTSIDE_FILE}")
        obj = obj[part]
    return obj


def _stored_array(obj: Any, what: str) -> Any:
    """``obj`` if it is a plain numeric dataset whose bytes are in the file (checked from its
    metadata: nothing is read); else :class:`UserError`."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise UserError(f"{what} is not an array")
    if obj.is_virtual:
        raise UserError(f"{what} is a virtual dataset (its data lives in other datasets or files); {OUTSIDE_FILE}")
    if obj.external:
        files = ", ".join(dict.fromkeys(_h5_text(entry[0]) for entry in obj.external))
        raise UserError(f"{what} is stored outside the file ({files}); {OUTSIDE_FILE}")
    dtype = obj.dtype
    if obj.shape is None or dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise UserError(f"{what} is not a numeric array (HDF5 type {dtype})")
    return obj


def _h5_weights_root(f: Any, path: str | Path) -> Any:
    """The group holding a Keras ``.h5`` file's layers: ``model_weights`` of a saved model, or
    the file itself (a ``save_weights`` file)."""
    if f.id.links.exists(b"model_weights"):
        return _h5_member(f, "model_weights", f"{path}: 'model_weights'")
    return f


class H5Weight:
    """A weight array of a Keras ``.h5`` file, checked by :func:`_stored_array` but not read yet:
    its declared ``shape`` and ``dtype``; ``np.asarray`` reads it. The loaders compare every array
    of a layer with the layer before reading any (:func:`copy_keras_arrays`): a 14 KB file may
    declare a 4 GiB array, and a layer the model does not have is never read."""

    def __init__(self, path: str | Path, layer: str, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.layer, self.name = path, layer, name
        self.shape, self.dtype = tuple(shape), dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"H5Weight({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        import h5py

        what = f"{self.path}: layer {self.layer!r}: weight {self.name!r}"
        try:
            with h5py.File(self.path, "r") as f:
                dataset = _stored_array(_h5_member(_h5_member(_h5_weights_root(f, self.path), self.layer,
                                                              f"{self.path}: layer {self.layer!r}"),
                                                   self.name, what), what)
                if dataset.shape != self.shape or dataset.dtype != self.dtype:
                    raise UserError(f"{what} changed while the file was read")
                array = np.asarray(dataset[()])
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/... on a damaged dataset
            raise UserError(f"{what} cannot be read ({one_line(exc, typed=True)})") from None
        array = array.astype(array.dtype.newbyteorder("="), copy=False)  # torch takes native byte order only
        return array if dtype is None else array.astype(dtype, copy=False)


def read_h5_layer_weights(path: str | Path) -> dict[str, list[Any]]:
    """Layer name → weights of a Keras 2 ``.h5`` file (a saved model or a ``save_weights`` file),
    as :class:`H5Weight` arrays: checked (stored inside the file, plain numeric arrays, reached
    through hard links only) but not read."""
    import h5py

    with h5py.File(path, "r") as f:
        root = _h5_weights_root(f, path)
        if "layer_names" not in root.attrs:
            raise UserError(f"{path}: not a Keras .h5 weights file (no layer_names)")
        weights = {}
        for layer in map(_h5_text, root.attrs["layer_names"]):
            group = _h5_member(root, layer, f"{path}: layer {layer!r}")
            names = [_h5_text(n) for n in group.attrs.get("weight_names", [])]
            arrays = []
            for name in names:
                what = f"{path}: layer {layer!r}: weight {name!r}"
                dataset = _stored_array(_h5_member(group, name, what), what)
                arrays.append(H5Weight(path, layer, name, dataset.shape, dataset.dtype))
            weights[layer] = NamedWeights(arrays, names)
    return weights


def copy_keras_arrays(layer: str, pairs: Sequence[tuple[Tensor, Any, Callable[[np.ndarray], np.ndarray] | None]]
                      ) -> None:
    """Copy Keras arrays into a layer's tensors: ``(target, array, layout)``, ``layout`` turning
    the Keras array into the target's layout (None: as it is). Every array's shape, after its
    layout, is compared with its target before any array is read (a :class:`H5Weight` is read only
    then): nothing is copied unless all fit."""
    for target, value, layout in pairs:
        declared = np.shape(value)
        try:  # the layout applied to a view of the declared shape that holds no data
            shape = (layout or np.asarray)(np.broadcast_to(np.zeros((), np.uint8), declared)).shape
        except ValueError:  # a kernel of another rank than the layout takes
            shape = declared
        if tuple(target.shape) != tuple(shape):
            raise UserError(f"layer {layer!r}: a Keras weight of shape {tuple(shape)} does not fit "
                            f"{tuple(target.shape)}")
    with torch.no_grad():
        for target, value, layout in pairs:
            array = np.asarray(value)
            target.copy_(torch.from_numpy(np.ascontiguousarray(array if layout is None else layout(array))))


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
        if type(module) not in KERNEL_LAYOUT:
            raise TypeError(f"layer {name!r}: no Keras weight conversion for {type(module).__name__}")
        if name not in weights:
            raise UserError(f"layer {name!r} (index {i}) is missing from the Keras weights")
        arrays, targets = list(weights[name]), _targets(module)
        if len(arrays) != len(targets):
            raise UserError(f"layer {name!r}: expected {len(targets)} Keras weight arrays, got {len(arrays)}")
        layouts = [KERNEL_LAYOUT[type(module)]] + [None] * (len(arrays) - 1)
        copy_keras_arrays(name, list(zip(targets, arrays, layouts)))
        loaded.append(name)
    return loaded
