"""``name: custom``: the reference's default custom model, or your own model function.

Without ``custom_model`` this builds the reference's ``models/custom_model.py`` network, layer for
layer with Keras' automatic names: three stages of Conv2D 3×3 (16, 32, 64 filters, the last with
stride 2; TF "same", no bias) → BatchNormalization → ReLU ``Activation`` → MaxPooling2D(2), then
``GlobalAveragePooling2D`` → [``dropout``] → ``dense`` (logits). Backbone transfer copies layers
0..10 (the third BatchNormalization), the reference's ``end_layer_index``.

With ``custom_model`` (stmclf extension) your function builds the model::

    training:
      model:
        name: custom
        input_shape: (128, 128, 3)
        custom_model: my_models.py:get_custom_model    # or my_package.my_module:get_custom_model
        width: 16                                       # any extra key is passed on

``FILE.py:FUNCTION`` is a Python file (relative to the current directory; its folder is importable
while it loads), ``MODULE:FUNCTION`` an importable module. Either runs Python code named by the config,
so it is imported only with ``--trust-code`` on the command line (:mod:`stmclf.trust`); that holds too
when a checkpoint of such a run rebuilds its model (resume, evaluation, export). The function is called as
``FUNCTION(num_classes=N, input_shape=(H, W, C), dropout=RATE_OR_NONE, **extra_keys)`` where ``N``
is the number of logits to output (the number of classes, 2 for one or two classes). It returns:

* a :class:`~stmclf.models.graph.KerasGraph` built with :class:`~stmclf.models.graph.GraphBuilder`
  and the layers of :mod:`stmclf.models.layers` (Keras layer indices, names and counts, as the zoo
  models; set ``backbone_end_index`` in ``GraphBuilder.build`` to allow ``pretrained_model_path``);
* or any ``torch.nn.Module`` mapping ``(batch, C, H, W)`` float images to ``(batch, N)`` logits. It is
  wrapped in a :class:`ModuleGraph`: its "layers" are its top-level children in order (index 0 is an
  InputLayer placeholder), which ``training.frozen_layers`` and ``stmclf summary`` use. A
  ``backbone_end_index`` attribute on the module enables ``pretrained_model_path``.

This module also holds the registry extensions that ``custom`` and ``timm/<name>`` need (an entry
that accepts any extra key (``open_keys``); timm names are resolved by prefix
(:func:`stmclf.models.registry.register_prefix`).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stmclf.errors import ConfigError, UserError
from stmclf.models.graph import GraphBuilder, KerasGraph, Node, keras_param_counts
from stmclf.models.heads import head_units
from stmclf.models.layers import (Activation, Dropout, GlobalAveragePooling2D, KerasNames, Shape, batch_norm,
                                  conv2d, dense, max_pooling2d)
from stmclf.models.registry import ModelEntry, register_model
from stmclf.trust import require_trusted_code

KEY = "training.model.custom_model"
BACKBONE_END_INDEX = 10


def open_entry(name: str, builder: Callable[..., Any]) -> ModelEntry:
    """An unversioned entry requiring ``name`` and ``input_shape`` and accepting any other key."""
    return ModelEntry(name, None, ("name", "input_shape"), (), builder, open_keys=True)


# ---------------------------------------------------------------------------------------------
# Any nn.Module as an indexed layer view.

def _keras_shape(value: Any) -> Shape:
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, Tensor):
        return ()
    shape = tuple(value.shape[1:])
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def trace_output_shapes(module: nn.Module, input_shape: tuple[int, int, int],
                        children: Iterable[tuple[str, nn.Module]]) -> tuple[dict[str, Shape], Tensor]:
    """Keras-style output shape of each child (``(H, W, C)`` for maps) and the module's output,
    from one eval-mode forward of a batch of 2 zero images."""
    shapes: dict[str, Shape] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:  # returns None: output unchanged
            shapes.setdefault(name, _keras_shape(output))
        return hook

    hooks = [child.register_forward_hook(recorder(name)) for name, child in children]
    height, width, channels = input_shape
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            param = next(module.parameters(), None)
            device = param.device if param is not None else None
            out = module(torch.zeros(2, channels, height, width, device=device))
    finally:
        module.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes, out


class ModuleGraph(KerasGraph):
    """A :class:`KerasGraph`-compatible view of any ``nn.Module``: layer 0 is an InputLayer
    placeholder, layer ``i >= 1`` is the ``i``-th top-level child (``named_children()`` order),
    named after its attribute and typed by its class. ``forward`` is the module's own; the chain
    of node inputs is a view, not the data flow. Parameters held directly by the root module
    belong to no layer: they count in the totals and are never frozen."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], name: str,
                 backbone_end_index: int | None = None, input_name: str = "input_1") -> None:
        nn.Module.__init__(self)
        self.name = name
        self.module = module
        self.frozen_indices: frozenset[int] = frozenset()
        self._children = [name_ for name_, _ in module.named_children()]
        shapes, out = trace_output_shapes(module, input_shape, module.named_children())
        self.output_shape: Shape = _keras_shape(out)
        nodes, previous = [Node(input_name, "InputLayer", (), tuple(input_shape))], input_name
        for child_name, child in module.named_children():
            nodes.append(Node(child_name, type(child).__name__, (previous,), shapes.get(child_name, ())))
            previous = child_name
        self.nodes = tuple(nodes)
        if backbone_end_index is not None and not 0 <= backbone_end_index < len(nodes):
            raise ValueError(f"backbone_end_index {backbone_end_index} is out of range")
        self.backbone_end_index = backbone_end_index

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def layer_module(self, index: int) -> nn.Module | None:
        index = range(len(self.nodes))[index]  # IndexError when out of range, like KerasGraph
        return None if index == 0 else getattr(self.module, self._children[index - 1])

    def layer_paths(self) -> dict[str, str]:
        return {}  # the layers are the module's children, named after their attributes: nothing to map back

    def keras_param_count(self) -> int:
        return keras_param_counts(self.module)[0]

    def keras_trainable_count(self) -> int:
        return keras_param_counts(self.module)[1]


# ---------------------------------------------------------------------------------------------
# The custom model: default network or the user's function.

def _default_custom(num_classes: int, input_shape: tuple[int, int, int], dropout: float | None) -> KerasGraph:
    names = KerasNames()
    g = GraphBuilder(input_shape)
    x = g.input()
    for filters, strides in ((16, 1), (32, 1), (64, 2)):
        x = g.add(names("conv2d"), conv2d(filters, 3, strides=strides, padding="same", use_bias=False), x)
        x = g.add(names("batch_normalization"), batch_norm(), x)
        x = g.add(names("activation"), Activation("relu"), x)
        x = g.add(names("max_pooling2d"), max_pooling2d(2), x)
    x = g.add(names("global_average_pooling2d"), GlobalAveragePooling2D(), x)
    if dropout:
        x = g.add(names("dropout"), Dropout(dropout), x)
    x = g.add(names("dense"), dense(head_units(num_classes)), x)
    return g.build(outputs=x, name="custom_model", backbone_end_index=BACKBONE_END_INDEX)


def load_function(target: Any) -> Callable[..., Any]:
    """The function named by ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION`` (one-line ConfigError),
    imported only with ``--trust-code`` (:mod:`stmclf.trust`)."""
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(KEY, f"expected FILE.py:FUNCTION or MODULE:FUNCTION, got {target!r}")
    where, _, func_name = target.rpartition(":")
    if not where or not func_name.isidentifier():
        raise ConfigError(KEY, f"expected FILE.py:FUNCTION or MODULE:FUNCTION, got {target!r}")
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    require_trusted_code(KEY, target, "file" if is_file else "module")  # before anything is imported
    if is_file:
        path = Path(where).expanduser()
        if not path.is_file():
            raise ConfigError(KEY, f"unable to find the file {where} (relative to {Path.cwd()})")
        module_name = f"stmclf_custom_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(KEY, f"{where} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file: report where it failed
            raise ConfigError(KEY, f"loading {where} failed: {_describe(exc)}") from None
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(KEY, f"cannot import module {where!r}: {_describe(exc)}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(KEY, f"{where} has no function {func_name!r}")
    return func


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame: one line for the user's code."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        text += f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return text


def wrap_module(module: Any, input_shape: tuple[int, int, int], units: int, key: str, label: str) -> KerasGraph:
    """A built model as a :class:`KerasGraph` (a ModuleGraph for a plain nn.Module), checked to
    map ``input_shape`` images to ``units`` logits."""
    if isinstance(module, KerasGraph):
        graph = module
        out_shape = graph.nodes[-1].output_shape
        if tuple(graph.input_shape) != tuple(input_shape):
            raise ConfigError(key, f"{label} returned a graph for input shape {graph.input_shape}, expected "
                                   f"{tuple(input_shape)}")
    elif isinstance(module, nn.Module):
        try:
            graph = ModuleGraph(module, input_shape, name=type(module).__name__,
                                backbone_end_index=getattr(module, "backbone_end_index", None))
        except (UserError, ValueError, IndexError) as exc:
            raise ConfigError(key, f"{label}: {_describe(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - the model's own forward failed on a test batch
            raise ConfigError(key, f"{label} fails on a batch of shape (2, {input_shape[2]}, {input_shape[0]}, "
                                   f"{input_shape[1]}): {_describe(exc)}") from None
        out_shape = graph.output_shape
    else:
        raise ConfigError(key, f"{label} returned {type(module).__name__}, expected a KerasGraph or a torch.nn.Module")
    if tuple(out_shape) != (units,):
        raise ConfigError(key, f"{label} outputs {tuple(out_shape)} per image, expected ({units},) logits")
    return graph


@register_model("custom", required=("name", "input_shape"), optional=("custom_model", "pretrained_model_path"),
                open_keys=True)
def custom(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
           custom_model: str | None = None, pretrained_model_path: str | None = None, **extra: Any) -> KerasGraph:
    """The reference's default custom model, or the model returned by ``custom_model``."""
    units = head_units(num_classes)
    if custom_model is None:
        if extra:
            raise ConfigError(f"training.model.{next(iter(extra))}",
                              "unexpected attribute for custom: extra attributes are passed to the "
                              "custom_model function, which is not given")
        try:
            return _default_custom(num_classes, input_shape, dropout)
        except ValueError as exc:
            raise ConfigError("training.model.input_shape", f"{input_shape} is too small for the custom model "
                                                            f"({exc})") from None
    func = load_function(custom_model)
    try:
        built = func(num_classes=units, input_shape=tuple(input_shape), dropout=dropout, **extra)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: one line with its location
        raise ConfigError(KEY, f"{custom_model} failed: {_describe(exc)}") from None
    return wrap_module(built, input_shape, units, KEY, custom_model)


