"""An ordered layer graph indexed like a Keras functional model's ``model.layers``.

Index 0 is the InputLayer (no module); index ``i >= 1`` is the ``i``-th added layer, stored in
``KerasGraph.layers`` (an ``nn.ModuleDict`` keyed by the Keras layer name, in Keras order; a name
torch cannot take as a module key, such as Keras Applications' ``mobilenetv2_0.35_96``, gets a
sanitised key: see :func:`module_keys` and :meth:`KerasGraph.layer`). Layer
indices in configs (``frozen_layers``, backbone transfer up to ``end_layer_index``) therefore mean
the same layers as in the reference's Keras models. Nodes must be added in Keras' order.

    g = GraphBuilder(input_shape=(128, 128, 3))
    x = g.input()
    x = g.add("Conv1", conv2d(16, 3, strides=2, padding="same", use_bias=False), x)
    x = g.add("bn_Conv1", batch_norm(), x)
    y = g.add("block_2_add", Add(), [a, b])
    model = g.build(outputs=y, name="my_model")
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from stmclf.models.layers import LayerFn, Shape


@dataclass(frozen=True)
class Node:
    """One Keras layer: its name, Keras class name, input layer names and output shape."""

    name: str
    keras_type: str
    inputs: tuple[str, ...]
    output_shape: Shape


@dataclass(frozen=True)
class LayerRow:
    """One row of the indexed summary table (Keras ``model.summary()`` plus index and trainable)."""

    index: int
    name: str
    keras_type: str
    trainable: bool
    params: int
    output_shape: Shape


def keras_param_counts(module: nn.Module | None) -> tuple[int, int]:
    """(all weights, trainable weights) the Keras way: BatchNorm moving mean/variance count as
    weights, nested ones (a :class:`NestedModel`, any module) too."""
    if module is None:
        return 0, 0
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None:
            total += m.running_mean.numel() + m.running_var.numel()
    return total, trainable


def keep_batch_norms_in_inference(module: nn.Module) -> None:
    """Put every BatchNorm inside ``module`` (itself included) in inference mode, as Keras runs
    the BatchNormalization layers of a frozen layer or model."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


def normalise_indices(indices: Iterable[int], num_layers: int, name: str) -> frozenset[int]:
    """Layer indices (negative ones count from the end) as a set of positions; IndexError when out
    of range."""
    frozen = set()
    for i in indices:
        if not -num_layers <= i < num_layers:
            raise IndexError(f"layer index {i} is out of range: {name} has {num_layers} layers")
        frozen.add(i % num_layers)
    return frozenset(frozen)


_MODULE_DICT = nn.ModuleDict()


def _valid_module_key(key: str) -> bool:
    """Whether torch takes ``key`` as a module name (no '.', not empty, not an attribute)."""
    return bool(key) and "." not in key and not hasattr(_MODULE_DICT, key)


def module_keys(names: Iterable[str]) -> dict[str, str]:
    """Keras layer name → ``nn.ModuleDict`` key: the name itself where torch takes it; otherwise
    (a '.', as in ``mobilenetv2_0.35_96``, or a name of a module attribute) the name with '.' as
    '_', then '_' appended until the key is valid and unused. Names are kept unless they must
    change, so checkpoints of models with ordinary names keep their keys."""
    names = list(names)
    keys = {name: name for name in names if _valid_module_key(name)}
    taken = set(keys)
    for name in names:
        if name not in keys:
            key = name.replace(".", "_") or "_"
            while not _valid_module_key(key) or key in taken:
                key += "_"
            keys[name] = key
            taken.add(key)
    return keys


class KerasGraph(nn.Module):
    """A feed-forward layer graph with Keras layer indices. ``forward`` maps NCHW float images to
    logits. Built by :class:`GraphBuilder`; architectures set ``backbone_end_index`` (the last
    layer index copied by backbone transfer, the reference's ``end_layer_index``)."""

    def __init__(self, name: str, nodes: Sequence[Node], layers: dict[str, nn.Module],
                 backbone_end_index: int | None = None) -> None:
        super().__init__()
        self.name = name
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self._keys = module_keys(layers)
        self.layers = nn.ModuleDict({self._keys[layer]: module for layer, module in layers.items()})
        self.backbone_end_index = backbone_end_index
        self.frozen_indices: frozenset[int] = frozenset()
        index = {node.name: i for i, node in enumerate(self.nodes)}
        last_use = {index[src]: i for i, node in enumerate(self.nodes) for src in node.inputs}
        plan = []  # per layer: (output slot, input slots, slots whose last reader it is)
        for i, node in enumerate(self.nodes[1:], start=1):
            srcs = tuple(index[src] for src in node.inputs)
            plan.append((i, srcs, tuple(s for s in dict.fromkeys(srcs) if last_use[s] == i)))
        self._plan: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...] = tuple(plan)

    @property
    def input_shape(self) -> Shape:
        return self.nodes[0].output_shape

    @property
    def num_layers(self) -> int:
        """``len(model.layers)`` of the Keras model, InputLayer included."""
        return len(self.nodes)

    def forward(self, x: Tensor) -> Tensor:
        values: list[Tensor | None] = [None] * len(self.nodes)
        values[0] = x
        for module, (slot, srcs, release) in zip(self.layers.values(), self._plan):
            if len(srcs) == 1:
                values[slot] = module(values[srcs[0]])
            else:
                values[slot] = module(*[values[s] for s in srcs])
            for s in release:
                values[s] = None
        return values[-1]

    def layer_index(self, name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.name == name:
                return i
        raise KeyError(f"no layer named {name!r} in {self.name}")

    def layer(self, name: str) -> nn.Module:
        """The module of the Keras layer ``name`` (KeyError if it has none)."""
        return self.layers[self._keys[name]]

    def layer_module(self, index: int) -> nn.Module | None:
        """The module at Keras layer ``index`` (None for the InputLayer)."""
        key = self._keys.get(self.nodes[index].name)
        return None if key is None else self.layers[key]

    def layer_paths(self) -> dict[str, str]:
        """Each layer's module path below this graph as its ``forward`` calls it — its key (a name
        torch cannot use is stored sanitised: :func:`module_keys`), a nested model's layers under
        ``KEY/graph/`` — → its Keras name (``outer/inner`` inside a nested model, as QAT plans name
        them). What maps the module scopes of an exported file (ONNX node names) back to Keras names."""
        paths: dict[str, str] = {}
        for node in self.nodes:
            key = self._keys.get(node.name)
            if key is None:
                continue
            paths[key] = node.name
            module = self.layers[key]
            if isinstance(module, NestedModel):
                paths.update({f"{key}/graph/{path}": f"{node.name}/{name}"
                              for path, name in module.graph.layer_paths().items()})
        return paths

    def layer_table(self) -> list[LayerRow]:
        rows = []
        for i, node in enumerate(self.nodes):
            params, _ = keras_param_counts(self.layer_module(i))
            rows.append(LayerRow(i, node.name, node.keras_type, i not in self.frozen_indices, params,
                                 node.output_shape))
        return rows

    def keras_param_count(self) -> int:
        """Keras ``count_params()``: parameters plus BatchNorm moving statistics."""
        return sum(keras_param_counts(m)[0] for m in self.layers.values())

    def keras_trainable_count(self) -> int:
        return sum(keras_param_counts(m)[1] for m in self.layers.values())

    def set_frozen(self, indices: Iterable[int]) -> None:
        """Make every layer trainable, then freeze the layers at the given Keras indices (negative
        indices count from the end). Frozen layers get ``requires_grad=False``; frozen BatchNorm
        layers, and those inside a frozen nested model, also stay in inference mode in training,
        like Keras (see :meth:`train`)."""
        self.frozen_indices = normalise_indices(indices, len(self.nodes), self.name)
        for i in range(1, len(self.nodes)):
            module = self.layer_module(i)
            if module is not None:
                module.requires_grad_(i not in self.frozen_indices)
        self.train(self.training)

    def train(self, mode: bool = True) -> KerasGraph:
        super().train(mode)
        if mode:
            for i in self.frozen_indices:
                module = self.layer_module(i)
                if module is not None:
                    keep_batch_norms_in_inference(module)
        return self


class NestedModel(nn.Module):
    """A Keras model used as one layer of another: one layer index,
    its own layers inside (``graph``, a :class:`KerasGraph` with its own InputLayer), as
    ``x = backbone(inputs, training=...)`` in Keras. Keras Applications backbones are used so.

    ``inference_only`` is Keras' ``training=False`` call argument: the nested model always runs in
    inference mode (BatchNorm moving statistics, no dropout), training included; its weights
    still train. Freezing the layer (``frozen_layers``) freezes all its weights and keeps its
    BatchNorm layers in inference mode, as Keras does for a nested model made non-trainable.

    ``keras_type`` is the Keras class the layer table shows, as Keras' ``model.summary()`` does:
    ``Functional`` (a functional model, Keras Applications backbones), or ``Sequential`` for a
    nested ``keras.Sequential`` (the class a Keras ``.h5`` records for it)."""

    def __init__(self, graph: KerasGraph, inference_only: bool = False, keras_type: str = "Functional") -> None:
        super().__init__()
        self.graph = graph
        self.inference_only = inference_only
        self.keras_type = keras_type

    def forward(self, x: Tensor) -> Tensor:
        return self.graph(x)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        if len(input_shapes) != 1 or tuple(input_shapes[0]) != tuple(self.graph.input_shape):
            raise ValueError(f"model {self.graph.name!r} takes inputs of shape {self.graph.input_shape}, got "
                             f"{list(input_shapes)}")
        return self.graph.nodes[-1].output_shape

    def train(self, mode: bool = True) -> NestedModel:
        super().train(mode and not self.inference_only)
        return self

    def extra_repr(self) -> str:
        return "training=False" if self.inference_only else ""


class GraphBuilder:
    """Builds a :class:`KerasGraph` layer by layer, in Keras' ``model.layers`` order, tracking
    each layer's output shape (Keras ``(H, W, C)`` / ``(units,)``)."""

    def __init__(self, input_shape: tuple[int, int, int], input_name: str = "input_1") -> None:
        self._nodes: list[Node] = [Node(input_name, "InputLayer", (), tuple(input_shape))]
        self._layers: dict[str, nn.Module] = {}
        self._shapes: dict[str, Shape] = {input_name: tuple(input_shape)}

    def input(self) -> str:
        """Name of the input node (layer 0)."""
        return self._nodes[0].name

    def shape(self, node: str) -> Shape:
        """Keras output shape of a node (no batch axis)."""
        return self._shapes[node]

    def add(self, name: str, layer: nn.Module | LayerFn, inputs: str | Sequence[str]) -> str:
        """Append a layer fed by ``inputs`` (node names) and return its name. ``layer`` is a
        module from :mod:`stmclf.models.layers` (or any module with ``keras_type`` and
        ``compute_output_shape``), or a function of the input shape returning one."""
        srcs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        if not srcs:
            raise ValueError(f"layer {name!r} has no input")
        if name in self._shapes:
            raise ValueError(f"duplicate layer name {name!r}")
        if not name:
            raise ValueError("a layer without a name")
        for src in srcs:
            if src not in self._shapes:
                raise ValueError(f"layer {name!r}: unknown input {src!r}")
        in_shapes = [self._shapes[src] for src in srcs]
        if not isinstance(layer, nn.Module):
            if len(srcs) != 1:
                raise ValueError(f"layer {name!r}: shape-built layers take exactly one input")
            layer = layer(in_shapes[0])
        shape = tuple(layer.compute_output_shape(*in_shapes))
        self._nodes.append(Node(name, layer.keras_type, srcs, shape))
        self._layers[name] = layer
        self._shapes[name] = shape
        return name

    def build(self, outputs: str, name: str, backbone_end_index: int | None = None) -> KerasGraph:
        """Finish the graph. ``outputs`` must be the last layer added and every other layer must
        feed a later one (Keras keeps no unused layers in ``model.layers``)."""
        if outputs != self._nodes[-1].name:
            raise ValueError(f"the output {outputs!r} must be the last layer added ({self._nodes[-1].name!r})")
        used = {src for node in self._nodes for src in node.inputs}
        unused = [node.name for node in self._nodes[:-1] if node.name not in used]
        if unused:
            raise ValueError(f"layers not connected to the output: {unused}")
        if backbone_end_index is not None and not 0 <= backbone_end_index < len(self._nodes):
            raise ValueError(f"backbone_end_index {backbone_end_index} is out of range")
        return KerasGraph(name, self._nodes, self._layers, backbone_end_index)
