"""Offline footprint estimate of an int8 TFLite or an ONNX (int8 QDQ or float) model: MACC,
weights flash, activation RAM, I/O buffers — no account, no network, no ST tool.

The numbers follow the conventions of STM32Cube.AI / ST Edge AI Core reports (the "weights",
"activations" and "macc" of ``analyze``/``generate``), so that they can stand in for a cloud or
local benchmark when neither is available. The conventions were derived from public
``generate`` reports and generated ``network.c`` files of X-CUBE-AI 6 and 8 (sizes of each C
array, activation offsets) and calibrated on three published model-zoo footprints (STM32Cube.AI
10 / ST Edge AI Core 2.0, STM32H7, "input/output allocated"; see ``REFERENCE_FOOTPRINTS``):

Weights (flash, ``rom_size``)
    Every constant parameter of a layer, at its stored type: int8 weights 1 byte, int32 biases
    4 bytes, float32 tensors 4 bytes. Shape-like constants (reshape shapes, paddings, axes,
    permutations) are code, not weights. Per-channel scales and zero points are **not** part of
    the weights: the ST generator emits them as quantization descriptors of the C arrays, and its
    ``weights`` count is int8 + int32 bias exactly (ours: 406.86 / 76.90 / 128.32 KiB for the
    three reference models, as published); they are reported apart (``quant_params_bytes``). In a QDQ
    ONNX the quantized initializers count at their integer type.

MACC
    Conv: ``out_h·out_w·out_c·k_h·k_w·in_c/groups`` plus one per output channel with a bias
    (depthwise likewise); dense/Gemm: ``in·out`` plus one per output with a bias; matmul
    ``m·n·k``. Activations fused into the previous layer cost nothing (the C model merges them);
    stand-alone element-wise layers (add, mul, activation, ...) one per output element;
    quantize/dequantize conversions two per element; max/average pooling one per input element
    read (``out·k_h·k_w``), global pooling one per input element; reshape, transpose, pad and
    concat none.

Activations (RAM, ``ram_size``)
    One activation arena holding every intermediate tensor **including the model's input and
    output buffers**: ST's published footprints are made with ``--allocate-inputs
    --allocate-outputs`` (the I/O buffers live in, and are counted in, the activations buffer;
    ``io_bytes`` gives their size alone). Int8/uint8 tensors take 1 byte per element, float32
    4 bytes. Tensors are placed by a liveness-based offset planner: execution order; a tensor is
    live from the layer that writes it to the last layer that reads it (graph outputs until the
    end); greedy best-fit by size (largest first, each in the smallest gap of the address space
    left by the live-overlapping tensors already placed). The arena is the plan's extent. What
    may share memory (views, in-place layers, the first layer overwriting the input buffer) and
    the per-layer scratch buffers the ST kernels take from the arena are in :class:`Conventions`.

Accuracy (our zoo models exported to int8 TFLite, vs the published figures): the weights
convention reproduces all 17 published MCU footprints of the model zoo (MobileNet V1/V2,
FD-MobileNet, ST FD-MobileNet, ResNet v1 8/32, SqueezeNet 1.1, ST EfficientNet LC, 96–224 px)
to 0.02 %. ST's activation allocator is not public: on the three calibration models the arena
is within 2 % (``tests/test_benchmark_estimate.py``); over the 17 models the mean absolute
error is 12.7 % (median 11.6 %), from −23 % (ST EfficientNet LC @128) to +38 % (ResNet v1 32,
whose published arena is smaller than ResNet v1 8's although its layers are the same sizes).
Treat the activation figure as ±25 %. Runtime RAM and code flash are not estimated (they
depend on the kernels linked); :func:`fit_check` adds an allowance for them.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from stmclf.errors import UserError, one_line

log = logging.getLogger("stmclf.benchmark")

KIB = 1024

# Published footprints the conventions are calibrated on (stm32ai-modelzoo READMEs, STM32Cube.AI
# 10.0.0 / ST Edge AI Core 2.0.0, STM32H7, int8 per-channel TFLite, uint8 input, float32 output,
# I/O allocated in the activations): (weights KiB, activations KiB). The model names are
# stmclf zoo specs: (training.model, classes).
REFERENCE_FOOTPRINTS = {
    "mobilenet_v2_0.35_128": (406.86, 237.32),
    "resnet_v1_8_32": (76.9, 62.51),
    "fdmobilenet_0.25_128": (128.32, 56.16),
}

ITEMSIZE = {"int8": 1, "uint8": 1, "bool": 1, "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
            "int32": 4, "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8}


# ---------------------------------------------------------------------------------------------
# Graph IR


@dataclass
class Tensor:
    """A tensor of the model: activations have ``const=False``. ``shape`` is channel-last for
    4-D activations whatever the source format (ONNX NCHW is transposed), batch included."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    const: bool = False
    quant_channels: int = 0  # number of (scale, zero point) pairs: 0 float, 1 per-tensor, C per-channel

    @property
    def size(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * ITEMSIZE.get(self.dtype, 4)


@dataclass
class Op:
    """A layer: ``kind`` is normalised across formats (see ``_TFLITE_KINDS``/``_ONNX_KINDS``);
    ``inputs``/``outputs`` are tensor names (constants included in ``inputs``)."""

    index: int
    kind: str
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def fmt_tflite_transpose_conv(self) -> bool:
        """TFLite's TRANSPOSE_CONV takes (output shape, weights, input[, bias])."""
        return self.op_type == "TRANSPOSE_CONV"


@dataclass
class Graph:
    path: Path
    fmt: str  # "tflite" or "onnx"
    tensors: dict[str, Tensor]
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    quantized: bool = False

    def activation_inputs(self, op: Op) -> list[str]:
        return [n for n in op.inputs if n in self.tensors and not self.tensors[n].const]

    def const_inputs(self, op: Op) -> list[str]:
        return [n for n in op.inputs if n in self.tensors and self.tensors[n].const]


def load_graph(path: str | Path) -> Graph:
    """Parse a ``.tflite`` or ``.onnx`` file into the estimator's graph (one-line UserError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return _load_tflite(path)
    if suffix == ".onnx":
        return _load_onnx(path)
    raise UserError(f"{path}: the offline estimate reads .tflite and .onnx models (got {suffix or 'no suffix'})")


# --- TFLite ----------------------------------------------------------------------------------

_TFLITE_KINDS = {
    "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise", "FULLY_CONNECTED": "dense", "BATCH_MATMUL": "matmul",
    "TRANSPOSE_CONV": "conv_transpose",
    "ADD": "eltwise", "SUB": "eltwise", "MUL": "eltwise", "DIV": "eltwise", "MAXIMUM": "eltwise",
    "MINIMUM": "eltwise", "SQUARED_DIFFERENCE": "eltwise",
    "AVERAGE_POOL_2D": "avgpool", "MAX_POOL_2D": "maxpool", "MEAN": "gap", "SUM": "gap", "REDUCE_MAX": "gap",
    "RELU": "activation", "RELU6": "activation", "RELU_N1_TO_1": "activation", "RELU_0_TO_1": "activation",
    "LEAKY_RELU": "activation", "PRELU": "activation", "LOGISTIC": "activation", "TANH": "activation",
    "HARD_SWISH": "activation", "ELU": "activation", "GELU": "activation", "ABS": "activation",
    "SQRT": "activation", "RSQRT": "activation", "EXP": "activation", "NEG": "activation",
    "SOFTMAX": "softmax", "LOG_SOFTMAX": "softmax",
    "QUANTIZE": "quantize", "DEQUANTIZE": "dequantize", "CAST": "quantize",
    "RESHAPE": "view", "SQUEEZE": "view", "EXPAND_DIMS": "view",
    "PAD": "pad", "PADV2": "pad", "MIRROR_PAD": "pad",
    "CONCATENATION": "concat", "TRANSPOSE": "transpose", "STRIDED_SLICE": "slice", "SLICE": "slice",
    "SPLIT": "split", "SPLIT_V": "split", "RESIZE_BILINEAR": "resize", "RESIZE_NEAREST_NEIGHBOR": "resize",
    "DEPTH_TO_SPACE": "transpose", "SPACE_TO_DEPTH": "transpose", "GATHER": "slice",
}
_TFLITE_TYPES = {"INT8": "int8", "UINT8": "uint8", "INT16": "int16", "UINT16": "uint16", "INT32": "int32",
                 "UINT32": "uint32", "INT64": "int64", "FLOAT32": "float32", "FLOAT16": "float16",
                 "FLOAT64": "float64", "BOOL": "bool"}


def _tflite_schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise UserError("reading .tflite files needs ai-edge-litert: pip install 'stmclf[tflite]'") from None
    return schema


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _load_tflite(path: Path) -> Graph:
    schema = _tflite_schema()
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    except Exception as exc:  # noqa: BLE001 - flatbuffers raises assorted errors on bad files
        raise UserError(f"{path}: not a TFLite flatbuffer ({type(exc).__name__})") from None
    if not model.subgraphs:
        raise UserError(f"{path}: the TFLite model has no subgraph")
    if len(model.subgraphs) > 1:
        log.warning("%s: %d subgraphs, only the first (main) one is estimated", path.name, len(model.subgraphs))
    op_names, type_names = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
    g = model.subgraphs[0]

    def tname(i: int) -> str:
        raw = g.tensors[i].name
        return f"t{i}:" + (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))

    tensors: dict[str, Tensor] = {}
    for i, t in enumerate(g.tensors):
        buffer = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        const = buffer is not None and buffer.data is not None and len(buffer.data) > 0
        if not const and buffer is not None and getattr(buffer, "size", 0):
            const = True  # data stored past the flatbuffer (models > 2 GB layout)
        shape = tuple(max(int(d), 1) for d in (t.shape if t.shape is not None else ()))
        q = t.quantization
        channels = len(q.scale) if q is not None and q.scale is not None else 0
        tensors[tname(i)] = Tensor(tname(i), shape, _TFLITE_TYPES.get(type_names.get(t.type, ""), "float32"),
                                   const, channels)
    ops: list[Op] = []
    for index, op in enumerate(g.operators):
        code = model.operatorCodes[op.opcodeIndex]
        op_type = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        kind = _TFLITE_KINDS.get(op_type, "other")
        inputs = [tname(i) for i in (op.inputs if op.inputs is not None else ()) if i >= 0]
        outputs = [tname(i) for i in (op.outputs if op.outputs is not None else ()) if i >= 0]
        attrs = _tflite_attrs(op, kind, [tensors[n] for n in inputs])
        ops.append(Op(index, kind, op_type, f"{op_type.lower()}_{index}", inputs, outputs, attrs))
    graph = Graph(path, "tflite", tensors, ops, [tname(i) for i in g.inputs], [tname(i) for i in g.outputs])
    graph.quantized = any(t.dtype in ("int8", "uint8") and not t.const for t in tensors.values())
    return graph


def _tflite_attrs(op, kind: str, inputs: list[Tensor]) -> dict[str, Any]:
    options = op.builtinOptions
    attrs: dict[str, Any] = {}
    if kind in ("conv", "depthwise", "conv_transpose") and len(inputs) > 1:
        weights = inputs[1].shape  # conv: (O, kh, kw, I); depthwise: (1, kh, kw, C·M)
        attrs["kernel"] = (int(weights[1]), int(weights[2])) if len(weights) == 4 else (1, 1)
        attrs["strides"] = (int(getattr(options, "strideH", 1) or 1), int(getattr(options, "strideW", 1) or 1))
        attrs["same"] = getattr(options, "padding", 0) == 0
        attrs["bias"] = len(inputs) > 2
    elif kind in ("avgpool", "maxpool"):
        attrs["kernel"] = (int(getattr(options, "filterHeight", 1) or 1), int(getattr(options, "filterWidth", 1) or 1))
        attrs["strides"] = (int(getattr(options, "strideH", 1) or 1), int(getattr(options, "strideW", 1) or 1))
        attrs["same"] = getattr(options, "padding", 0) == 0
    elif kind == "dense":
        attrs["bias"] = len(inputs) > 2
    return attrs


# --- ONNX ------------------------------------------------------------------------------------

_ONNX_KINDS = {
    "Conv": "conv", "ConvInteger": "conv", "QLinearConv": "conv", "ConvTranspose": "conv_transpose",
    "Gemm": "dense", "MatMul": "matmul", "MatMulInteger": "matmul", "QLinearMatMul": "matmul",
    "Add": "eltwise", "Sub": "eltwise", "Mul": "eltwise", "Div": "eltwise", "Max": "eltwise", "Min": "eltwise",
    "Sum": "eltwise", "Pow": "eltwise", "QLinearAdd": "eltwise", "QLinearMul": "eltwise",
    "AveragePool": "avgpool", "MaxPool": "maxpool", "QLinearAveragePool": "avgpool",
    "GlobalAveragePool": "gap", "GlobalMaxPool": "gap", "ReduceMean": "gap", "ReduceMax": "gap",
    "ReduceSum": "gap", "QLinearGlobalAveragePool": "gap",
    "Relu": "activation", "Clip": "activation", "LeakyRelu": "activation", "PRelu": "activation",
    "Sigmoid": "activation", "Tanh": "activation", "HardSigmoid": "activation", "HardSwish": "activation",
    "Elu": "activation", "Selu": "activation", "Gelu": "activation", "Erf": "activation", "Abs": "activation",
    "Sqrt": "activation", "Exp": "activation", "Neg": "activation", "Floor": "activation",
    "QLinearSigmoid": "activation", "QLinearLeakyRelu": "activation",
    "Softmax": "softmax", "LogSoftmax": "softmax", "QLinearSoftmax": "softmax",
    "QuantizeLinear": "quantize", "DequantizeLinear": "dequantize", "Cast": "quantize",
    "Reshape": "view", "Flatten": "view", "Squeeze": "view", "Unsqueeze": "view", "Identity": "view",
    "Dropout": "view",
    "Pad": "pad", "Concat": "concat", "QLinearConcat": "concat", "Transpose": "transpose",
    "Slice": "slice", "Gather": "slice", "Split": "split", "Resize": "resize", "Upsample": "resize",
    "DepthToSpace": "transpose", "SpaceToDepth": "transpose",
    "BatchNormalization": "scale", "InstanceNormalization": "scale",
}
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range"}


def _onnx_dtype(elem_type: int) -> str:
    import onnx

    try:
        name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001 - unknown or non-numpy types
        return "float32"
    return name if name in ITEMSIZE else "float32"


def _dims(type_proto) -> Optional[tuple[int, ...]]:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in type_proto.tensor_type.shape.dim)


def _load_onnx(path: Path) -> Graph:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not an ONNX model onnx can load ({one_line(exc)})") from None
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - keep whatever shapes the file has
        log.info("ONNX shape inference failed (%s); using the shapes stored in the file", exc)
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # Constant nodes are initializers too
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(attr.t)
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = _dims(value.type)
        if dims is not None:
            shapes[value.name] = (dims, _onnx_dtype(value.type.tensor_type.elem_type))
    graph_inputs = [i.name for i in graph.input if i.name not in inits]
    graph_outputs = [o.name for o in graph.output]
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    consumers: dict[str, list] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            if name:
                consumers[name].append(node)

    # QDQ folding. DequantizeLinear of an integer initializer is that initializer (an int8 weight,
    # an int32 bias); a QuantizeLinear → DequantizeLinear pair on an activation is one int8 tensor.
    alias: dict[str, str] = {}
    quant: dict[str, tuple[str, int]] = {}  # storage name → (integer dtype, number of scales)
    skip: set[int] = set()
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            alias[node.output[0]] = node.input[0]
            scale = inits.get(node.input[1]) if len(node.input) > 1 else None
            quant[node.input[0]] = (inits[node.input[0]].dtype.name, 1 if scale is None else max(int(scale.size), 1))
            skip.add(id(node))
    for node in nodes:
        if node.op_type != "QuantizeLinear" or id(node) in skip:
            continue
        source, target = node.input[0], node.output[0]
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        qtype = zero.dtype.name if zero is not None else "uint8"
        scale = inits.get(node.input[1]) if len(node.input) > 1 else None
        channels = 1 if scale is None else max(int(scale.size), 1)
        only_quantized = all(c.op_type == "QuantizeLinear" for c in consumers[source])
        if source in inits:  # a quantized constant written as Q(float initializer)
            alias[target] = source
            quant[source] = (qtype, channels)
            skip.add(id(node))
        elif only_quantized and source not in graph_inputs and source not in graph_outputs:
            alias[target] = source  # the producing layer writes int8 directly
            quant[source] = (qtype, channels)
            skip.add(id(node))
        else:
            quant[target] = (qtype, channels)  # a real conversion layer (e.g. float model input)
    for node in nodes:
        if node.op_type == "DequantizeLinear" and id(node) not in skip and node.output[0] not in graph_outputs:
            alias[node.output[0]] = node.input[0]  # int8 consumers read the int8 tensor
            skip.add(id(node))

    def resolve(name: str) -> str:
        seen = 0
        while name in alias and seen < 64:
            name, seen = alias[name], seen + 1
        return name

    tensors: dict[str, Tensor] = {}

    def tensor(name: str) -> Optional[Tensor]:
        name = resolve(name)
        if not name:
            return None
        if name in tensors:
            return tensors[name]
        if name in inits:
            arr = inits[name]
            dtype, channels = quant.get(name, (arr.dtype.name, 0))
            dtype = dtype if dtype in ITEMSIZE else "float32"
            t = Tensor(name, tuple(int(d) for d in arr.shape), dtype, True, channels)
        else:
            dims, dtype = shapes.get(name, ((), "float32"))
            if name in quant:
                dtype = quant[name][0]
            if len(dims) == 4:  # NCHW → channel-last
                dims = (dims[0], dims[2], dims[3], dims[1])
            t = Tensor(name, tuple(dims), dtype, False, quant.get(name, ("", 0))[1])
        tensors[name] = t
        return t

    ops: list[Op] = []
    for node in nodes:
        if id(node) in skip or node.op_type in _SHAPE_OPS:
            continue
        inputs = [resolve(n) for n in node.input if n]
        outputs = [resolve(n) for n in node.output if n]
        for name in inputs + outputs:
            tensor(name)
        kind = _ONNX_KINDS.get(node.op_type, "other")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ins = [tensors[n] for n in inputs if n in tensors]
        ops.append(Op(len(ops), kind, node.op_type, node.name or (outputs[0] if outputs else node.op_type),
                      inputs, outputs, _onnx_attrs(node.op_type, kind, attrs, ins)))
    for name in graph_inputs + graph_outputs:
        tensor(name)
    outputs = [resolve(n) for n in graph_outputs]
    ops = _fuse_activations(ops, tensors, outputs)
    result = Graph(path, "onnx", tensors, ops, [resolve(n) for n in graph_inputs], outputs)
    result.quantized = bool(quant) and any(t.dtype in ("int8", "uint8") and not t.const for t in tensors.values())
    return result


_FUSABLE = {"Relu", "Clip", "LeakyRelu"}  # the activations TFLite fuses into the previous layer


def _fuse_activations(ops: list[Op], tensors: dict[str, Tensor], outputs: Sequence[str]) -> list[Op]:
    """Fold an activation layer into the conv/dense/element-wise layer before it when it is that
    layer's only reader (TFLite stores these as fused activations; the ST C model merges them)."""
    readers: dict[str, int] = defaultdict(int)
    for op in ops:
        for name in op.inputs:
            readers[name] += 1
    producer = {name: op for op in ops for name in op.outputs}
    kept: list[Op] = []
    for op in ops:
        source = producer.get(op.inputs[0]) if op.inputs else None
        if (op.op_type in _FUSABLE and source is not None and len(source.outputs) == 1
                and source.kind in ("conv", "depthwise", "dense", "matmul", "eltwise")
                and readers[op.inputs[0]] == 1 and op.inputs[0] not in outputs
                and not source.attrs.get("activation")):
            tensors.pop(op.inputs[0], None)
            source.outputs = list(op.outputs)
            source.attrs["activation"] = op.op_type
            producer[op.outputs[0]] = source
            continue
        kept.append(op)
    for index, op in enumerate(kept):
        op.index = index
    return kept


def _onnx_attrs(op_type: str, kind: str, attrs: dict, inputs: list[Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kind in ("conv", "conv_transpose") and len(inputs) > 1:
        w = inputs[1].shape  # (O, I/groups, kh, kw)
        kernel = tuple(attrs.get("kernel_shape", w[2:] if len(w) == 4 else (1, 1)))
        out["kernel"] = (int(kernel[0]), int(kernel[1]) if len(kernel) > 1 else 1)
        strides = tuple(attrs.get("strides", (1, 1)))
        out["strides"] = (int(strides[0]), int(strides[1]) if len(strides) > 1 else 1)
        out["groups"] = int(attrs.get("group", 1))
        cin = inputs[0].shape[-1] if inputs[0].shape else 1
        if out["groups"] > 1 and out["groups"] == cin:
            out["depthwise"] = True
        out["bias"] = len(inputs) > 2
        pads = attrs.get("pads")
        out["pads"] = tuple(int(p) for p in pads) if pads else None
        out["same"] = str(attrs.get("auto_pad", b"")).find("SAME") >= 0
    elif kind in ("avgpool", "maxpool"):
        kernel = tuple(attrs.get("kernel_shape", (1, 1)))
        out["kernel"] = (int(kernel[0]), int(kernel[-1]))
        strides = tuple(attrs.get("strides", kernel))
        out["strides"] = (int(strides[0]), int(strides[-1]))
    elif kind == "dense":
        out["bias"] = len(inputs) > 2
        out["trans_b"] = bool(attrs.get("transB", 0))
    elif kind == "softmax" or kind == "view":
        pass
    return out


# ---------------------------------------------------------------------------------------------
# Weights and MACC

# Constant inputs that are layer parameters (stored in the weights); other constants (shapes,
# axes, paddings, permutations, slice bounds, resize scales, clip bounds) are code.
_WEIGHT_KINDS = {"conv", "depthwise", "conv_transpose", "dense", "matmul"}
_OPERAND_KINDS = {"eltwise", "concat", "scale", "other"}


def _is_param(graph: Graph, op: Op, position: int, name: str) -> bool:
    t = graph.tensors[name]
    if t.dtype == "int64":
        return False  # ONNX shapes and axes
    if op.kind in _WEIGHT_KINDS:
        return not (op.fmt_tflite_transpose_conv and position == 0)
    if op.kind in _OPERAND_KINDS:
        return t.dtype != "int32"
    return op.op_type in ("PRELU", "PRelu")  # per-channel slopes; other activations take scalars


def weight_tensors(graph: Graph) -> list[Tensor]:
    """The constant tensors stored in the weights (each once, even if several layers read it)."""
    seen: dict[str, Tensor] = {}
    for op in graph.ops:
        for position, name in enumerate(op.inputs):
            if name in graph.tensors and graph.tensors[name].const and name not in seen \
                    and _is_param(graph, op, position, name):
                seen[name] = graph.tensors[name]
    return list(seen.values())


def quant_params_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the per-tensor/per-channel (scale float32, zero point int8) pairs of the weights."""
    return sum(5 * t.quant_channels for t in tensors if t.dtype in ("int8", "uint8") and t.quant_channels)


def _is_depthwise(op: Op) -> bool:
    return op.kind == "depthwise" or bool(op.attrs.get("depthwise"))


def op_macc(graph: Graph, op: Op) -> int:
    """MACC of one layer (the conventions of the module docstring)."""
    t = graph.tensors
    acts = graph.activation_inputs(op)
    out = t[op.outputs[0]] if op.outputs and op.outputs[0] in t else None
    out_size = out.size if out is not None else 0
    if op.kind in ("conv", "depthwise", "conv_transpose"):
        if not acts:
            return 0
        x = t[acts[0]]
        kh, kw = op.attrs.get("kernel", (1, 1))
        cin = x.shape[-1] if x.shape else 1
        cout = out.shape[-1] if out is not None and out.shape else 1
        if op.kind == "conv_transpose":
            return x.size * cout * kh * kw
        per_output = kh * kw if _is_depthwise(op) else kh * kw * cin // max(int(op.attrs.get("groups", 1)), 1)
        return out_size * per_output + (cout if op.attrs.get("bias") else 0)
    if op.kind == "dense":
        if len(op.inputs) < 2 or op.inputs[1] not in t:
            return 0
        w = t[op.inputs[1]]
        units = out.shape[-1] if out is not None and out.shape else 1
        return (w.size // max(units, 1)) * out_size + (units if op.attrs.get("bias") else 0)
    if op.kind == "matmul":
        a = t[op.inputs[0]].shape if op.inputs and op.inputs[0] in t else ()
        k = a[-1] if a else 1
        return out_size * k
    if op.kind in ("eltwise", "activation", "scale", "softmax"):
        return out_size
    if op.kind in ("quantize", "dequantize"):
        return 2 * out_size
    if op.kind in ("avgpool", "maxpool"):
        kh, kw = op.attrs.get("kernel", (1, 1))
        return out_size * kh * kw
    if op.kind == "gap":
        return t[acts[0]].size if acts else out_size
    return 0


# ---------------------------------------------------------------------------------------------
# Activation planning


@dataclass(frozen=True)
class Conventions:
    """What may share memory in the activation arena, and the scratch buffers layers take.

    - ``views``: reshape/flatten/squeeze/identity/dropout are views of their input (no buffer;
      the ST C model has no layer for them).
    - ``inplace``: a single-input element-wise layer (stand-alone activation, quantize/dequantize
      between types of one size such as the uint8 → int8 input conversion) writes over its input
      when this is the input's last use (ST's generated code gives such outputs the input's
      offset).
    - ``input_overlap``: the first layer reading the model input (after in-place conversions)
      writes its output over the input buffer as it consumes it: the output starts just enough
      bytes before the input that output row ``r`` never overwrites an input row still to be
      read (sliding-window kernels read input rows ``r·stride − pad …`` before writing row
      ``r``). X-CUBE-AI 6 overlapped most layers this way (its generated code for a
      MobileNetV2-0.35@128 takes 197 KiB), far below the published STM32Cube.AI 10 figure
      (237 KiB); doing it for the input buffer only — allocated in the activations with
      ``--allocate-inputs`` — reproduces them (FD-MobileNet 0.25@128: 57.0 KiB vs 56.16
      published, 88.5 KiB without).
    - ``scratch``: temporary buffers live only while their layer runs.
      ``"stm32"`` (default): the sizes the ST int8 kernels take, as generated ``network.c``
      files and reports of X-CUBE-AI 8 show them — 1×1 conv ``4·cin``, k×k conv
      ``4·k·k·cin + 4·cout + 5120``, depthwise ``2·k·k·cin``, dense ``2·inputs``, global
      pooling ``4·C`` — plus, for k×k convolutions, an int16 im2col buffer of one output row
      (``2·out_w·k·k·cin``), the term that reproduces the STM32Cube.AI 10 figures of ResNet v1 8
      and FD-MobileNet (at 128 and 224 px). ``"stm32-v8"``: the X-CUBE-AI 8 sizes alone.
      ``"cmsis"``: CMSIS-NN's buffer sizes (k×k conv ``4·k·k·cin``, depthwise ``2·k·k·cin``).
      ``"none"``.
    - ``alignment``: buffer sizes and offsets rounded up to this many bytes (ST aligns on 4).
    """

    views: bool = True
    inplace: bool = True
    input_overlap: bool = True
    scratch: str = "stm32"
    alignment: int = 4

    def __post_init__(self) -> None:
        if self.scratch not in SCRATCH_MODELS:
            raise ValueError(f"scratch must be one of {SCRATCH_MODELS}, got {self.scratch!r}")


SCRATCH_MODELS = ("stm32", "stm32-v8", "cmsis", "none")
ST_CONVENTIONS = Conventions()
PLAIN_CONVENTIONS = Conventions(views=True, inplace=False, input_overlap=False, scratch="none", alignment=1)
"""A plain liveness plan: every tensor its own buffer, no scratch (TFLite-like arena)."""


def scratch_bytes(graph: Graph, op: Op, conventions: Conventions = ST_CONVENTIONS) -> int:
    """Temporary bytes the layer's kernel takes from the activation arena while it runs."""
    model = conventions.scratch
    if model == "none":
        return 0
    t = graph.tensors
    acts = graph.activation_inputs(op)
    if not acts:
        return 0
    x = t[acts[0]]
    cin = x.shape[-1] if x.shape else 1
    out = t[op.outputs[0]] if op.outputs and op.outputs[0] in t else None
    cout = out.shape[-1] if out is not None and out.shape else 1
    kh, kw = op.attrs.get("kernel", (1, 1))
    if op.kind == "depthwise" or (op.kind == "conv" and _is_depthwise(op)):
        return 2 * kh * kw * cin
    if op.kind == "conv":
        cin //= max(int(op.attrs.get("groups", 1)), 1)
        if model == "cmsis":
            return 4 * kh * kw * cin if kh * kw > 1 else 0
        if kh * kw == 1:
            return 4 * cin
        size = 4 * kh * kw * cin + 4 * cout + 5120
        if model == "stm32" and out is not None and len(out.shape) == 4:
            size += 2 * out.shape[2] * kh * kw * cin
        return size
    if model == "cmsis":
        return 0
    if op.kind == "dense":
        w = t[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] in t else None
        return 2 * ((w.size // max(cout, 1)) if w is not None else x.size)
    if op.kind == "gap":
        return 4 * cin
    return 0


@dataclass
class Buffer:
    """One arena allocation: tensors sharing memory (views, in-place layers) are one buffer."""

    name: str
    size: int
    first: int  # index of the layer that writes it (-1: before the first layer)
    last: int   # index of the last layer that reads it (len(ops): alive until the end)
    tensors: list[str] = field(default_factory=list)
    kind: str = "tensor"  # "tensor", "scratch" or "io"
    offset: int = -1
    anchor: Optional[str] = None  # placed at ``rel`` bytes from this buffer (input overwritten by layer 1)
    rel: int = 0

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class ArenaPlan:
    size: int                 # arena bytes (the plan's extent)
    peak_live: int            # max over layers of the arena bytes in use at once (≤ ``size``)
    peak_layer: Optional[int]  # layer index where ``peak_live`` is reached
    buffers: list[Buffer]
    io_bytes: int             # model input + output buffers (included in ``size``)
    input_bytes: int
    output_bytes: int

    def live_at(self, index: int) -> list[Buffer]:
        return [b for b in self.buffers if b.first <= index <= b.last]


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment if alignment > 1 else value


def _input_overlap_margin(op: Op, x: Tensor, y: Tensor) -> Optional[int]:
    """Bytes by which ``op``'s output must start before its input so that writing output row ``r``
    never overwrites an input row still to be read (None: the layer cannot overlap its input)."""
    if len(x.shape) != 4 or len(y.shape) != 4:
        return None
    _, h_in, w_in, c_in = x.shape
    _, h_out, w_out, c_out = y.shape
    if op.kind in ("quantize", "dequantize", "activation"):
        if y.nbytes <= x.nbytes:
            return 0
        return None
    if op.kind not in ("conv", "depthwise", "avgpool", "maxpool"):
        return None
    kh, _ = op.attrs.get("kernel", (1, 1))
    sh, _ = op.attrs.get("strides", (1, 1))
    pads = op.attrs.get("pads")
    if pads:
        top = int(pads[0])
    elif op.attrs.get("same", True):
        top = max((h_out - 1) * sh + kh - h_in, 0) // 2
    else:
        top = 0
    row_in = w_in * c_in * ITEMSIZE.get(x.dtype, 1)
    row_out = w_out * c_out * ITEMSIZE.get(y.dtype, 1)
    # while output row r is written, its own window (input rows from r·sh − top on) is still
    # being read: the end of output row r must stay at or below the start of that input row.
    margin = max(row_out * (r + 1) - row_in * max(0, r * sh - top) for r in range(h_out))
    return max(margin, 0)


def plan_activations(graph: Graph, conventions: Conventions = ST_CONVENTIONS) -> ArenaPlan:
    """Liveness analysis and greedy best-fit offset planning of the activation arena."""
    t = graph.tensors
    n = len(graph.ops)
    align = max(int(conventions.alignment), 1)
    producer: dict[str, int] = {}
    for op in graph.ops:
        for name in op.outputs:
            producer[name] = op.index
    last_use: dict[str, int] = {}
    for op in graph.ops:
        for name in graph.activation_inputs(op):
            last_use[name] = op.index
    for name in graph.outputs:
        last_use[name] = n

    parent: dict[str, str] = {}  # union-find of tensors sharing one buffer (views, in-place layers)

    def find(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    links: list[tuple[str, str, int]] = []  # (output tensor, input tensor, margin): output starts margin bytes before
    input_aliases = set(graph.inputs)  # the model input and its views / in-place conversions
    for op in graph.ops:
        acts = graph.activation_inputs(op)
        if not acts or not op.outputs or op.outputs[0] not in t:
            continue
        x, y = t[acts[0]], t[op.outputs[0]]
        dies_here = last_use.get(x.name) == op.index and x.name not in graph.outputs
        if conventions.views and op.kind == "view":
            parent[find(y.name)] = find(x.name)
        elif (conventions.inplace and op.kind in ("activation", "quantize", "dequantize") and dies_here
              and y.nbytes == x.nbytes and len(acts) == 1):
            parent[find(y.name)] = find(x.name)
        elif conventions.input_overlap and dies_here and len(acts) == 1 and x.name in input_aliases:
            margin = _input_overlap_margin(op, x, y)
            if margin is not None and margin < y.nbytes:
                links.append((y.name, x.name, _align(margin, align)))
            continue
        else:
            continue
        if x.name in input_aliases:
            input_aliases.add(y.name)

    groups: dict[str, list[str]] = defaultdict(list)
    for name, tensor in t.items():
        if tensor.const or (name not in producer and name not in graph.inputs):
            continue  # constants live in the weights; dangling tensors are never allocated
        groups[find(name)].append(name)
    io = set(graph.inputs) | set(graph.outputs)
    by_root: dict[str, Buffer] = {}
    for root, names in groups.items():
        first = min(producer.get(m, -1) for m in names)
        last = max(last_use.get(m, producer.get(m, -1)) for m in names)
        kind = "io" if any(m in io for m in names) else "tensor"
        by_root[root] = Buffer(root, _align(max(t[m].nbytes for m in names), align), first, last, sorted(names), kind)
    buffers = list(by_root.values())
    for op in graph.ops:
        size = scratch_bytes(graph, op, conventions)
        if size:
            buffers.append(Buffer(f"{op.name}#scratch", _align(size, align), op.index, op.index, [], "scratch"))
    for out_name, in_name, margin in links:
        out_buf, in_buf = by_root[find(out_name)], by_root[find(in_name)]
        if out_buf is not in_buf and in_buf.anchor is None:
            in_buf.anchor, in_buf.rel = out_buf.name, margin

    _place(buffers)
    size = max((b.offset + b.size for b in buffers), default=0)
    peak_live, peak_layer = 0, None
    for index in range(-1, n + 1):
        live = _occupied([b for b in buffers if b.first <= index <= b.last])
        if live > peak_live:
            peak_live, peak_layer = live, index
    input_bytes = sum(t[name].nbytes for name in graph.inputs if name in t)
    output_bytes = sum(t[name].nbytes for name in graph.outputs if name in t)
    return ArenaPlan(size, peak_live, peak_layer, buffers, input_bytes + output_bytes, input_bytes, output_bytes)


def _occupied(buffers: Sequence[Buffer]) -> int:
    """Bytes of the address space covered by ``buffers`` (overlapping buffers counted once)."""
    total, end = 0, 0
    for start, stop in sorted((b.offset, b.offset + b.size) for b in buffers):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _place(buffers: list[Buffer]) -> None:
    """Offsets by greedy best-fit, largest first (ties: earliest first): a buffer goes in the
    smallest gap left by the already placed buffers that are live at the same time, or on top.
    A buffer anchored to another (the model input overwritten by the first layer's output) is
    placed with it, at its fixed distance, at the lowest offset where both fit."""
    by_name = {b.name: b for b in buffers}

    def root(buf: Buffer) -> tuple[str, int]:  # the cluster's root buffer and this buffer's distance to it
        rel, seen = 0, 0
        while buf.anchor is not None and buf.anchor in by_name and seen < len(buffers):
            rel, buf, seen = rel + buf.rel, by_name[buf.anchor], seen + 1
        return buf.name, rel

    members: dict[str, list[Buffer]] = defaultdict(list)
    rel_of: dict[int, int] = {}
    for buf in buffers:
        name, rel = root(buf)
        members[name].append(buf)
        rel_of[id(buf)] = rel
    for cluster in members.values():  # shift so that the lowest member is at distance 0
        low = min(rel_of[id(b)] for b in cluster)
        for b in cluster:
            rel_of[id(b)] -= low
    clusters = sorted(members.values(), key=lambda c: (-max(b.size for b in c), min(b.first for b in c),
                                                      c[0].anchor or c[0].name))
    placed: list[Buffer] = []
    for cluster in clusters:
        if len(cluster) == 1:
            buf = cluster[0]
            busy = sorted((p.offset, p.offset + p.size) for p in placed if p.overlaps_in_time(buf))
            best_offset, best_gap, cursor = None, None, 0
            for start, end in busy:
                gap = start - cursor
                if gap >= buf.size and (best_gap is None or gap < best_gap):
                    best_offset, best_gap = cursor, gap
                cursor = max(cursor, end)
            buf.offset = best_offset if best_offset is not None else cursor
        else:
            rels = {id(b): rel_of[id(b)] for b in cluster}
            candidates = {0}
            for p in placed:
                for b in cluster:
                    if p.overlaps_in_time(b):
                        candidates.add(max(p.offset + p.size - rels[id(b)], 0))
            for base in sorted(candidates):
                if all(not (p.overlaps_in_time(b) and base + rels[id(b)] < p.offset + p.size
                            and p.offset < base + rels[id(b)] + b.size) for p in placed for b in cluster):
                    break
            for b in cluster:
                b.offset = base + rels[id(b)]
        placed.extend(cluster)


# ---------------------------------------------------------------------------------------------
# The estimate

# Allowances for what the offline estimate cannot see (the runtime library linked with the
# model): the medians of the published model-zoo footprints (§9: code flash 56–191 KiB, runtime
# RAM 7–30 KiB for the MCU models).
CODE_FLASH_ALLOWANCE = 70 * KIB
RUNTIME_RAM_ALLOWANCE = 16 * KIB


@dataclass
class LayerEstimate:
    index: int
    name: str
    op_type: str
    kind: str
    output_shape: tuple[int, ...]
    output_dtype: str
    macc: int
    weights_bytes: int
    scratch_bytes: int
    kernel: tuple[int, int] = (1, 1)   # conv/depthwise/pooling window (the latency model's layer types)
    depthwise: bool = False


@dataclass
class FitCheck:
    """Where the model's weights (flash) and activations (RAM) can live on a board."""

    board: str
    flash_needed: int           # weights + code allowance
    ram_needed: int             # activations + runtime allowance
    flash_internal: int
    ram_internal: int
    ram_largest_block: int
    flash_external: int
    ram_external: int
    flash: str                  # "internal", "external", "no"
    ram: str                    # "internal", "internal-split", "external", "no"
    mpu: bool = False
    ram_source: str = "estimate"  # whose RAM figure: "estimate", "tflm" (measured arena), "stedgeai", "cloud"

    @property
    def ram_what(self) -> str:
        """What ``ram_needed`` is, in words."""
        if self.ram_source == "tflm":
            return "TFLM measured arena"
        return f"activations ({self.ram_source}) + runtime"

    @property
    def fits(self) -> bool:
        return self.mpu or (self.flash != "no" and self.ram != "no")

    @property
    def fits_internal(self) -> bool:
        return not self.mpu and self.flash == "internal" and self.ram == "internal"

    def summary(self) -> str:
        if self.mpu:
            return f"{self.board} is an MPU board (Linux, external DDR): no MCU memory check"
        flash = {"internal": "fits in internal flash", "external": "needs the external flash",
                 "no": "does not fit in flash"}[self.flash]
        ram = {"internal": "fits in internal RAM", "internal-split": "fits in internal RAM split over several regions",
               "external": "needs the external RAM", "no": "does not fit in RAM"}[self.ram]
        return (f"{self.board}: weights + code ~{self.flash_needed / KIB:.1f} KiB {flash} "
                f"({self.flash_internal / KIB:.0f} KiB internal, {self.flash_external / KIB / KIB:g} MiB external); "
                f"{self.ram_what} ~{self.ram_needed / KIB:.1f} KiB {ram} "
                f"({self.ram_internal / KIB:.0f} KiB internal, largest block {self.ram_largest_block / KIB:.0f} KiB, "
                f"{self.ram_external / KIB / KIB:g} MiB external)")

    def problem(self) -> Optional[str]:
        """None when the model fits; else one line naming the board, each figure that does not fit
        and where it comes from."""
        if self.fits:
            return None
        def external(size: int, what: str) -> str:
            return f"{size / KIB / KIB:g} MiB external {what}" if size else f"no external {what}"

        parts = []
        if self.ram == "no":
            parts.append(f"RAM needs {self.ram_needed / KIB:.1f} KiB ({self.ram_what}) but the board has "
                         f"{self.ram_internal / KIB:.0f} KiB internal and {external(self.ram_external, 'RAM')}")
        if self.flash == "no":
            parts.append(f"flash needs {self.flash_needed / KIB:.1f} KiB (weights + code) but the board has "
                         f"{self.flash_internal / KIB:.0f} KiB internal and {external(self.flash_external, 'flash')}")
        return f"the model does not fit {self.board}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = {"board": self.board, "fits": self.fits, "fits_internal": self.fits_internal, "flash": self.flash,
               "ram": self.ram, "ram_source": self.ram_source, "ram_needed_bytes": self.ram_needed,
               "flash_needed_bytes": self.flash_needed, "summary": self.summary()}
        if self.problem():
            out["problem"] = self.problem()
        return out


def fit_check(weights_bytes: int, activations_bytes: int, board: str, *,
              code_flash: int = CODE_FLASH_ALLOWANCE, runtime_ram: int = RUNTIME_RAM_ALLOWANCE,
              ram_source: str = "estimate") -> FitCheck:
    """Compare a model's flash and RAM needs with ``board``'s memories (ConfigError for an
    unknown board). Flash: weights + ``code_flash``; RAM: activations + ``runtime_ram``, where
    ``ram_source`` says whose activation figure it is (``"tflm"``: TFLite Micro's measured arena,
    persistent runtime buffers included: pass ``runtime_ram=0``)."""
    from stmclf.benchmark.boards import get_board

    spec = get_board(board)
    flash_needed, ram_needed = weights_bytes + code_flash, activations_bytes + runtime_ram
    if spec.mpu:
        return FitCheck(spec.name, flash_needed, ram_needed, 0, 0, 0, 0, 0, "internal", "internal", mpu=True,
                        ram_source=ram_source)
    if flash_needed <= spec.flash_bytes:
        flash = "internal"
    elif weights_bytes <= spec.ext_flash_bytes and code_flash <= max(spec.flash_bytes, spec.ext_flash_bytes):
        flash = "external"  # weights (or a part of them) in the external flash
    else:
        flash = "no"
    if ram_needed <= spec.largest_ram_bytes:
        ram = "internal"
    elif ram_needed <= spec.ram_bytes:
        ram = "internal-split"
    elif activations_bytes <= spec.ext_ram_bytes:
        ram = "external"
    else:
        ram = "no"
    return FitCheck(spec.name, flash_needed, ram_needed, spec.flash_bytes, spec.ram_bytes, spec.largest_ram_bytes,
                    spec.ext_flash_bytes, spec.ext_ram_bytes, flash, ram, ram_source=ram_source)


@dataclass
class Estimate:
    """The offline footprint of one model file (bytes and MACC; see the module docstring)."""

    model: Path
    fmt: str
    quantized: bool
    macc: int
    weights_bytes: int
    quant_params_bytes: int
    activations_bytes: int
    io_bytes: int
    input_bytes: int
    output_bytes: int
    peak_live_bytes: int
    peak_layer: Optional[str]
    layers: list[LayerEstimate]
    plan: ArenaPlan
    conventions: Conventions
    fit: Optional[FitCheck] = None

    @property
    def activations_without_io(self) -> int:
        """The arena minus the I/O buffers (what a run with user-allocated I/O would need, roughly)."""
        return max(self.activations_bytes - self.io_bytes, 0)

    def footprint(self, board: Optional[str] = None):
        """This estimate as a :class:`~stmclf.benchmark.results.Footprint` (``source
        "estimate"``; runtime RAM and code flash unknown). As in ST's reports of a model
        generated with ``--allocate-inputs --allocate-outputs``, the I/O buffers are in
        ``ram_size`` and ``total_ram_io_size`` (the I/O buffers outside the activations) is 0."""
        from stmclf.benchmark.results import Footprint

        notes = [f"offline estimate ({self.fmt}, scratch model {self.conventions.scratch!r}); the input/output "
                 f"buffers ({self.io_bytes} B) are allocated in, and counted in, the activations"]
        return Footprint(source="estimate", board=board or (self.fit.board if self.fit else None),
                         target="mcu", ram_size=self.activations_bytes, rom_size=self.weights_bytes, macc=self.macc,
                         total_ram_io_size=0, model=self.model.name, notes=notes,
                         ram_fit=self.fit.to_dict() if self.fit is not None else None)

    def summary_lines(self) -> list[str]:
        lines = [f"Offline estimate of {self.model.name} ({self.fmt}, {'int8' if self.quantized else 'float'})",
                 f"  MACC                 {self.macc:,}",
                 f"  Flash weights        {self.weights_bytes / KIB:.2f} KiB  (+ {self.quant_params_bytes} B "
                 f"quantization parameters)",
                 f"  RAM activations      {self.activations_bytes / KIB:.2f} KiB  (input/output buffers "
                 f"{self.io_bytes / KIB:.2f} KiB included)",
                 f"  peak layer           {self.peak_layer}"]
        if self.fit is not None:
            lines.append("  " + self.fit.summary())
        return lines

    def layer_table(self) -> str:
        rows = [f"{'#':>4} {'layer':32} {'type':18} {'output':>18} {'MACC':>12} {'weights':>9} {'scratch':>8}"]
        for layer in self.layers:
            shape = "x".join(str(d) for d in layer.output_shape)
            rows.append(f"{layer.index:>4} {layer.name[-32:]:32} {layer.op_type[:18]:18} {shape:>18} {layer.macc:>12,} "
                        f"{layer.weights_bytes:>9,} {layer.scratch_bytes:>8,}")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": str(self.model), "format": self.fmt, "quantized": self.quantized, "macc": self.macc,
               "weights_bytes": self.weights_bytes, "quant_params_bytes": self.quant_params_bytes,
               "activations_bytes": self.activations_bytes, "io_bytes": self.io_bytes,
               "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
               "peak_live_bytes": self.peak_live_bytes, "peak_layer": self.peak_layer,
               "weights_kib": round(self.weights_bytes / KIB, 2),
               "activations_kib": round(self.activations_bytes / KIB, 2),
               "conventions": {"views": self.conventions.views, "inplace": self.conventions.inplace,
                               "input_overlap": self.conventions.input_overlap,
                               "scratch": self.conventions.scratch, "alignment": self.conventions.alignment}}
        if self.fit is not None:
            out["fit"] = self.fit.to_dict()
        return out


def estimate_footprint(model: str | Path, *, board: Optional[str] = None,
                       conventions: Conventions = ST_CONVENTIONS) -> Estimate:
    """Offline MACC / weights / activations of a ``.tflite`` or ``.onnx`` model, and whether it
    fits ``board`` (a name of :mod:`stmclf.benchmark.boards`; ConfigError if unknown)."""
    graph = load_graph(model)
    if board is not None:  # fail on a bad board name before the work
        from stmclf.benchmark.boards import check_board

        board = check_board(board)
    weights = weight_tensors(graph)
    weight_names = {w.name for w in weights}
    plan = plan_activations(graph, conventions)
    layers = []
    for op in graph.ops:
        out = graph.tensors.get(op.outputs[0]) if op.outputs else None
        wbytes = sum(graph.tensors[n].nbytes for n in set(op.inputs) if n in weight_names)
        layers.append(LayerEstimate(op.index, op.name, op.op_type, op.kind, out.shape if out else (),
                                    out.dtype if out else "", op_macc(graph, op), wbytes,
                                    scratch_bytes(graph, op, conventions),
                                    tuple(op.attrs.get("kernel", (1, 1))), _is_depthwise(op)))
    peak = plan.peak_layer
    peak_name = (graph.ops[peak].name if peak is not None and 0 <= peak < len(graph.ops)
                 else ("model input" if peak == -1 else None))
    weights_bytes = sum(w.nbytes for w in weights)
    result = Estimate(Path(model), graph.fmt, graph.quantized, sum(layer.macc for layer in layers), weights_bytes,
                      quant_params_bytes(weights), plan.size, plan.io_bytes, plan.input_bytes, plan.output_bytes,
                      plan.peak_live, peak_name, layers, plan, conventions)
    if board is not None:
        result.fit = fit_check(weights_bytes, plan.size, board)
    return result
