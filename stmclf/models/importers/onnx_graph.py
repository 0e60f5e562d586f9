"""Float ONNX models converted to trainable torch modules.

:class:`OnnxModel` executes the ONNX graph node by node in the file's (topological) order. Each node
that computes something is one child module (one "layer" of the :class:`ModuleGraph` view, named
after the node, typed by its op); ``Constant`` nodes and everything computed from constants only are
folded while converting. Float initializers in weight positions become ``nn.Parameter``\\ s: the
weights and biases of ``Conv`` / ``Gemm`` / ``MatMul`` (and the constant ``Add`` after a MatMul,
Gemm or Conv: its bias), ``BatchNormalization`` scale and bias (its mean and variance are running
statistics of a torch batch norm, updated in training), ``LayerNormalization`` scale and bias,
``PRelu`` slopes. Other float constants are buffers (not trained); integer constants (shapes,
pads, axes) stay Python values or CPU tensors. An initializer used by several nodes stays one
shared tensor.

The input is NCHW with a fixed channel count, height and width (the batch may be dynamic); the
output is one ``(batch, classes)`` tensor. A final ``Softmax`` / ``LogSoftmax`` over the classes is
kept as a layer but computes nothing (the model outputs logits). ``Dropout`` nodes drop in training
with their ratio (settable). Ops outside :data:`SUPPORTED_OPS` (and every op of another domain,
such as quantized ``QLinearConv``) are refused with a one-line error naming the op and the node.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from stmclf.errors import UserError
from stmclf.models.importers import onnx_nodes
from stmclf.models.importers.base import ImportedModel, file_error, first_line


class OnnxConversionError(UserError):
    pass


# ---------------------------------------------------------------------------------------------
# Helpers.

_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def _ints(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, np.ndarray):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (Tensor, np.ndarray)):
        return float(value.reshape(-1)[0])
    if isinstance(value, (list, tuple)):
        return float(value[0])
    return float(value)


def _bound(value: Any) -> Any:
    """A Clip bound: a Python float, or a tensor when it is computed on the device."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, Tensor) and (value.device.type != "cpu" or value.numel() != 1):
        return value
    return _scalar(value)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


class _AnyBatchNorm(_BatchNorm):
    """Batch norm over dim 1 of an input of any rank >= 2 (ONNX BatchNormalization)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank 2 or more, got {input.dim()}")


# ---------------------------------------------------------------------------------------------
# Node modules.

class OnnxNode(nn.Module):
    """One ONNX node: its attributes, and per input slot where the value comes from — a dynamic
    input (``("dyn", k)``: the k-th argument of ``forward``), a tensor held by this module
    (``("tensor", attribute)``: a parameter or buffer), a Python or CPU constant (``("py", value)``)
    or nothing (``("none", None)``)."""

    op_type: str = ""

    def __init__(self, node_name: str, attrs: dict[str, Any], slots: Sequence[tuple[str, Any]], opset: int) -> None:
        super().__init__()
        self.node_name = node_name
        self.attrs = dict(attrs)
        self.slots = list(slots)
        self.opset = opset

    def forward(self, *dyn: Tensor) -> Any:
        args: list[Any] = []
        for kind, ref in self.slots:
            if kind == "dyn":
                args.append(dyn[ref])
            elif kind == "tensor":
                args.append(getattr(self, ref))
            elif kind == "py":
                args.append(ref)
            else:
                args.append(None)
        return OPS[self.op_type](self, args)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.attrs.items() if not isinstance(v, (Tensor, np.ndarray))}
        return f"{self.node_name!r}" + (f", {shown}" if shown else "")


def node_class(op_type: str) -> type[OnnxNode]:
    """The node class of an op (created once, registered in :mod:`onnx_nodes`)."""
    cls = getattr(onnx_nodes, op_type, None)
    if cls is None:
        cls = type(op_type, (OnnxNode,), {"op_type": op_type, "__module__": onnx_nodes.__name__,
                                          "__qualname__": op_type})
        setattr(onnx_nodes, op_type, cls)
    return cls


class _Evaluator:
    """A stand-in for a node module when folding constants."""

    training = False

    def __init__(self, op_type: str, attrs: dict[str, Any], opset: int) -> None:
        self.op_type, self.attrs, self.opset = op_type, attrs, opset


# ---------------------------------------------------------------------------------------------
# Ops: f(node, args) → tensor or tuple of tensors.

def _pads_2d(node: Any, x: Tensor, kernel: Sequence[int], strides: Sequence[int],
             dilations: Sequence[int]) -> tuple[int, int, int, int]:
    """ONNX (auto_pad / pads) → (top, left, bottom, right) for a 2-D window op."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            out = -(-int(size) // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return pads[0][0], pads[1][0], pads[0][1], pads[1][1]
    if auto == "VALID":
        return 0, 0, 0, 0
    pads = node.attrs.get("pads") or [0, 0, 0, 0]
    return int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])


def _window(node: Any, x: Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], tuple[int, int, int, int]]:
    if x.dim() != 4 or len(kernel) != 2:
        raise OnnxConversionError(f"{node.op_type}: 2-D (NCHW) windows only, got a {x.dim()}-D input")
    strides = list(node.attrs.get("strides") or [1, 1])
    dilations = list(node.attrs.get("dilations") or [1, 1])
    return strides, dilations, _pads_2d(node, x, kernel, strides, dilations)


def op_conv(node: Any, args: list[Any]) -> Tensor:
    x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
    kernel = list(w.shape[2:])
    strides, dilations, (top, left, bottom, right) = _window(node, x, kernel)
    group = int(node.attrs.get("group", 1))
    if top == bottom and left == right:
        return F.conv2d(x, w, b, strides, (top, left), dilations, group)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, strides, 0, dilations, group)


def op_maxpool(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    kernel = list(node.attrs["kernel_shape"])
    strides, dilations, (top, left, bottom, right) = _window(node, x, kernel)
    ceil = bool(node.attrs.get("ceil_mode", 0))
    if top == bottom and left == right and top <= kernel[0] // 2 and left <= kernel[1] // 2:
        return F.max_pool2d(x, kernel, strides, (top, left), dilations, ceil_mode=ceil)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, strides, 0, dilations, ceil_mode=ceil)


def op_avgpool(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    kernel = list(node.attrs["kernel_shape"])
    strides, dilations, (top, left, bottom, right) = _window(node, x, kernel)
    if dilations != [1, 1]:
        raise OnnxConversionError("AveragePool: dilations other than 1")
    ceil = bool(node.attrs.get("ceil_mode", 0))
    include = bool(node.attrs.get("count_include_pad", 0))
    if top == bottom and left == right and top <= kernel[0] // 2 and left <= kernel[1] // 2:
        return F.avg_pool2d(x, kernel, strides, (top, left), ceil_mode=ceil, count_include_pad=include)
    sums = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), kernel, strides, 0, ceil_mode=ceil)
    if include:
        return sums
    ones = torch.ones((1, 1, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
    counts = F.avg_pool2d(F.pad(ones, (left, right, top, bottom)), kernel, strides, 0, ceil_mode=ceil)
    return sums / counts


def op_gemm(node: Any, args: list[Any]) -> Tensor:
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if node.attrs.get("transA", 0):
        a = a.t()
    if node.attrs.get("transB", 0) and alpha == 1.0 and beta == 1.0:
        return F.linear(a, b, c)
    y = a @ (b.t() if node.attrs.get("transB", 0) else b)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (beta * c if beta != 1.0 else c)
    return y


def op_batchnorm(node: Any, args: list[Any]) -> Tensor:
    if isinstance(node, _Evaluator):
        raise OnnxConversionError("BatchNormalization of a constant")
    return node.bn(args[0])


def op_layernorm(node: Any, args: list[Any]) -> Tensor:
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = _axis(int(node.attrs.get("axis", -1)), x.dim())
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, float(node.attrs.get("epsilon", 1e-5)))


def op_clip(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    if node.opset < 11:
        low, high = node.attrs.get("min"), node.attrs.get("max")
    else:
        low = args[1] if len(args) > 1 else None
        high = args[2] if len(args) > 2 else None
    low, high = _bound(low), _bound(high)
    if low is None and high is None:
        return x
    if low == 0.0 and high == 6.0:
        return F.relu6(x)
    if low == 0.0 and high is None:
        return F.relu(x)
    return torch.clamp(x, low, high)


def _softmax(node: Any, args: list[Any], fn: Callable[..., Tensor]) -> Tensor:
    x = args[0]
    if node.attrs.get("_logits"):
        return x
    if node.opset >= 13:
        return fn(x, dim=int(node.attrs.get("axis", -1)))
    axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
    shape = x.shape
    flat = x.reshape(int(np.prod(shape[:axis])), -1)
    return fn(flat, dim=1).reshape(shape)


def op_flatten(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
    return x.reshape(int(np.prod(x.shape[:axis])), -1) if axis else x.reshape(1, -1)


def op_reshape(node: Any, args: list[Any]) -> Tensor:
    x, shape = args[0], _ints(args[1])
    if not node.attrs.get("allowzero", 0):
        shape = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def op_transpose(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    perm = node.attrs.get("perm") or list(range(x.dim()))[::-1]
    return x.permute(*perm)


def _axes(node: Any, args: list[Any], slot: int, since: int) -> list[int] | None:
    if node.opset >= since:
        return _ints(args[slot]) if len(args) > slot and args[slot] is not None else None
    axes = node.attrs.get("axes")
    return list(axes) if axes is not None else None


def op_squeeze(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    axes = _axes(node, args, 1, 13)
    if axes is None:
        return x.squeeze()
    for axis in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def op_unsqueeze(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    axes = _axes(node, args, 1, 13) or []
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


def op_concat(node: Any, args: list[Any]) -> Tensor:
    tensors = [a if isinstance(a, Tensor) else torch.as_tensor(a) for a in args if a is not None]
    return torch.cat(tensors, dim=int(node.attrs["axis"]))


def op_pad(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    mode = node.attrs.get("mode", "constant")
    if node.opset < 11:
        pads, value, axes = list(node.attrs.get("pads", [])), float(node.attrs.get("value", 0.0)), None
    else:
        pads = _ints(args[1])
        value = _scalar(args[2]) if len(args) > 2 and args[2] is not None else 0.0
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else None
    rank = x.dim()
    axes = [_axis(a, rank) for a in axes] if axes is not None else list(range(rank))
    n = len(axes)
    begin, end = dict(zip(axes, pads[:n])), dict(zip(axes, pads[n:]))
    torch_pads: list[int] = []
    for dim in range(rank - 1, -1, -1):
        torch_pads += [begin.get(dim, 0), end.get(dim, 0)]
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return F.pad(x, torch_pads, value=value or 0.0)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise OnnxConversionError(f"Pad mode {mode!r}")
    return F.pad(x, torch_pads, mode=torch_mode)


def op_slice(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    if node.opset < 10:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else None
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 1:
            raise OnnxConversionError("Slice with a negative step")
        index[_axis(axis, x.dim())] = slice(start, end, step)
    return x[tuple(index)]


def op_gather(node: Any, args: list[Any]) -> Tensor:
    x, idx = args[0], args[1]
    idx = idx if isinstance(idx, Tensor) else torch.as_tensor(idx)
    axis = _axis(int(node.attrs.get("axis", 0)), x.dim())
    size = x.shape[axis]
    idx = idx.to(device=x.device, dtype=torch.int64)
    idx = torch.where(idx < 0, idx + size, idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


def op_shape(node: Any, args: list[Any]) -> Tensor:
    shape = list(args[0].shape)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return torch.tensor(shape[start:end], dtype=torch.int64)


def op_constant_of_shape(node: Any, args: list[Any]) -> Tensor:
    value = node.attrs.get("value")
    value = torch.zeros(1) if value is None else torch.as_tensor(value)
    return torch.full(_ints(args[0]), value.reshape(-1)[0].item(), dtype=value.dtype)


def op_cast(node: Any, args: list[Any]) -> Tensor:
    to = int(node.attrs["to"])
    if to not in _DTYPES:
        raise OnnxConversionError(f"Cast to ONNX type {to}")
    x = args[0]
    return (x if isinstance(x, Tensor) else torch.as_tensor(x)).to(_DTYPES[to])


def op_expand(node: Any, args: list[Any]) -> Tensor:
    x = args[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(args[1])))
    return x.expand(shape)


def op_split(node: Any, args: list[Any]) -> tuple[Tensor, ...]:
    x = args[0]
    axis = _axis(int(node.attrs.get("axis", 0)), x.dim())
    if node.opset >= 13:
        split = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    else:
        split = node.attrs.get("split")
    if not split:
        count = int(node.attrs.get("num_outputs") or node.attrs["_num_outputs"])
        size = x.shape[axis]
        chunk = -(-size // count)
        split = [min(chunk, size - i * chunk) for i in range(count)]
    return tuple(torch.split(x, list(split), dim=axis))


def _reduce(fn: Callable[..., Tensor]) -> Callable[[Any, list[Any]], Tensor]:
    def op(node: Any, args: list[Any]) -> Tensor:
        x = args[0]
        since = 18 if node.op_type != "ReduceSum" else 13
        axes = _axes(node, args, 1, since)
        keep = bool(node.attrs.get("keepdims", 1))
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(_axis(a, x.dim()) for a in axes), keepdim=keep)
    return op


def op_dropout(node: Any, args: list[Any]) -> Tensor:
    return F.dropout(args[0], float(node.attrs.get("_rate", 0.5)), bool(node.training))


def op_prelu(node: Any, args: list[Any]) -> Tensor:
    x, slope = args[0], args[1]
    return torch.where(x >= 0, x, x * slope)


def op_hard_sigmoid(node: Any, args: list[Any]) -> Tensor:
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    if abs(alpha - 1.0 / 6.0) < 1e-7 and beta == 0.5:
        return F.hardsigmoid(args[0])
    return torch.clamp(alpha * args[0] + beta, 0.0, 1.0)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Any, list[Any]], Tensor]:
    def op(node: Any, args: list[Any]) -> Tensor:
        out = args[0]
        for arg in args[1:]:
            out = fn(out, arg)
        return out
    return op


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[[Any, list[Any]], Tensor]:
    return lambda node, args: fn(args[0])


def _binary(fn: Callable[[Any, Any], Tensor]) -> Callable[[Any, list[Any]], Tensor]:
    return lambda node, args: fn(args[0], args[1])


OPS: dict[str, Callable[[Any, list[Any]], Any]] = {
    "Conv": op_conv,
    "Gemm": op_gemm,
    "MatMul": _binary(torch.matmul),
    "BatchNormalization": op_batchnorm,
    "LayerNormalization": op_layernorm,
    "Relu": _unary(F.relu),
    "LeakyRelu": lambda node, args: F.leaky_relu(args[0], float(node.attrs.get("alpha", 0.01))),
    "PRelu": op_prelu,
    "Elu": lambda node, args: F.elu(args[0], float(node.attrs.get("alpha", 1.0))),
    "Selu": lambda node, args: float(node.attrs.get("gamma", 1.0507009873554805)) * torch.where(
        args[0] > 0, args[0], float(node.attrs.get("alpha", 1.6732632423543772)) * torch.expm1(args[0])),
    "Clip": op_clip,
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": op_hard_sigmoid,
    "HardSwish": _unary(F.hardswish),
    "Tanh": _unary(torch.tanh),
    "Softplus": _unary(F.softplus),
    "Softsign": _unary(F.softsign),
    "Gelu": lambda node, args: F.gelu(args[0], approximate=node.attrs.get("approximate", "none")),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Reciprocal": _unary(torch.reciprocal),
    "Identity": _unary(lambda x: x),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(lambda a, b: torch.div(a, b, rounding_mode="trunc") if not a.is_floating_point() else a / b),
    "Pow": _binary(torch.pow),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt),
    "Where": lambda node, args: torch.where(args[0], args[1], args[2]),
    "Softmax": lambda node, args: _softmax(node, args, torch.softmax),
    "LogSoftmax": lambda node, args: _softmax(node, args, torch.log_softmax),
    "MaxPool": op_maxpool,
    "AveragePool": op_avgpool,
    "GlobalAveragePool": lambda node, args: args[0].mean(dim=tuple(range(2, args[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda node, args: args[0].amax(dim=tuple(range(2, args[0].dim())), keepdim=True),
    "ReduceMean": _reduce(torch.mean),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "ReduceSum": _reduce(torch.sum),
    "Flatten": op_flatten,
    "Reshape": op_reshape,
    "Transpose": op_transpose,
    "Squeeze": op_squeeze,
    "Unsqueeze": op_unsqueeze,
    "Concat": op_concat,
    "Pad": op_pad,
    "Slice": op_slice,
    "Gather": op_gather,
    "Shape": op_shape,
    "ConstantOfShape": op_constant_of_shape,
    "Cast": op_cast,
    "Expand": op_expand,
    "Split": op_split,
    "Dropout": op_dropout,
}
SUPPORTED_OPS = tuple(sorted(OPS)) + ("Constant",)

# Input slots read as Python values when they are constants (shapes, pads, axes, bounds).
_PY_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Pad": (1, 2, 3), "Clip": (1, 2), "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,),
    "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceSum": (1,), "Dropout": (1, 2),
    "Expand": (1,), "Split": (1,), "ConstantOfShape": (0,),
}
# Input slots whose float constants are trained.
_WEIGHT_SLOTS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "PRelu": {1: "slope"},
}
_BIAS_PRODUCERS = {"MatMul", "Gemm", "Conv"}


# ---------------------------------------------------------------------------------------------
# The converted model.

class OnnxModel(nn.Module):
    """An ONNX graph as a torch module: one child per computing node, run in order."""

    def __init__(self, name: str, input_name: str, output_name: str,
                 steps: Sequence[tuple[str, OnnxNode, tuple[str, ...], tuple[str, ...]]],
                 constants: dict[str, Any]) -> None:
        super().__init__()
        self.model_name = name
        self.input_name = input_name
        self.output_name = output_name
        self._constants = constants  # values the graph reads directly (folded outputs, CPU ints)
        last_use: dict[str, int] = {}
        for i, (_, _, inputs, _) in enumerate(steps):
            for value in inputs:
                last_use[value] = i
        plan = []
        for i, (child, module, inputs, outputs) in enumerate(steps):
            self.add_module(child, module)
            release = tuple(v for v in dict.fromkeys(inputs) if last_use.get(v) == i and v != output_name)
            plan.append((child, inputs, outputs, release))
        self._plan = tuple(plan)

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Any] = {self.input_name: x}
        for child, inputs, outputs, release in self._plan:
            out = self._modules[child](*[env[v] if v in env else self._constants[v] for v in inputs])
            if len(outputs) == 1:
                env[outputs[0]] = out
            else:
                for name, value in zip(outputs, out):
                    if name:
                        env[name] = value
            for value in release:
                env.pop(value, None)
        return env[self.output_name]

    def dropout_nodes(self) -> list[OnnxNode]:
        return [m for m in self.children() if isinstance(m, OnnxNode) and m.op_type == "Dropout"]

    def set_dropout_rate(self, rate: float) -> None:
        for node in self.dropout_nodes():
            node.attrs["_rate"] = float(rate)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto
            value = numpy_helper.to_array(value)
        attrs[attr.name] = value
    return attrs


def _constant_value(node: Any, attrs: dict[str, Any]) -> np.ndarray:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            value = np.asarray(attrs[key])
            if key in ("value_int", "value_ints"):
                value = value.astype(np.int64)
            elif key in ("value_float", "value_floats"):
                value = value.astype(np.float32)
            return value
    raise OnnxConversionError(f"Constant node {node.name!r}: unsupported value ({sorted(attrs)})")


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype in (np.float16, np.float64) or value.dtype.kind == "f":
            value = value.astype(np.float32)
        return torch.from_numpy(np.array(value, copy=True))
    return value


def _child_name(raw: str, op_type: str, index: int, taken: set[str], reserved: nn.Module) -> str:
    name = re.sub(r"[^0-9A-Za-z_]+", "_", raw).strip("_") or f"{op_type}_{index}"
    base, n = name, 1
    while name in taken or hasattr(reserved, name):
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def convert(model: Any, name: str) -> tuple[OnnxModel, tuple[int, int, int], dict[str, Any]]:
    """An ``onnx.ModelProto`` → (:class:`OnnxModel`, input shape (H, W, C), facts)."""
    from onnx import numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise OnnxConversionError("the model imports no standard ONNX opset")
    consts: dict[str, Any] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    real_inputs = [value for value in graph.input if value.name not in consts]
    if len(real_inputs) != 1 or len(graph.output) != 1:
        raise OnnxConversionError(f"the model has {len(real_inputs)} inputs and {len(graph.output)} outputs: one "
                                  "image input and one output are supported")
    graph_input, output_name = real_inputs[0], graph.output[0].name
    tensor_type = graph_input.type.tensor_type
    if tensor_type.elem_type not in (1, 10, 11, 16):
        raise OnnxConversionError(f"the input {graph_input.name!r} is not a float tensor (a float model is needed)")
    dims = [(d.dim_value if d.HasField("dim_value") else None) for d in tensor_type.shape.dim]
    if len(dims) != 4:
        raise OnnxConversionError(f"the input {graph_input.name!r} has shape {dims}: an NCHW image batch is needed")
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise OnnxConversionError(f"the input {graph_input.name!r} has dynamic or unknown channel, height or width "
                                  f"dimensions {[d if d else '?' for d in dims]}: a fixed (N, C, H, W) shape is "
                                  "needed (only the batch may be dynamic)")
    channels, height, width = dims[1], dims[2], dims[3]

    # Fold constants; keep the nodes that compute from the input.
    known: set[str] = {graph_input.name}
    nodes: list[tuple[Any, dict[str, Any]]] = []
    for index, node in enumerate(graph.node):
        label = f"{node.op_type} node {node.name or index!r}"
        if node.domain not in ("", "ai.onnx"):
            raise OnnxConversionError(f"unsupported ONNX op {node.domain}.{node.op_type} ({label}); supported ops: "
                                      f"{', '.join(SUPPORTED_OPS)}")
        attrs = _attributes(node)
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant_value(node, attrs)
            continue
        if node.op_type not in OPS:
            raise OnnxConversionError(f"unsupported ONNX op {node.op_type} ({label}); supported ops: "
                                      f"{', '.join(SUPPORTED_OPS)}")
        for value in node.input:
            if value and value not in known and value not in consts:
                raise OnnxConversionError(f"{label} reads {value!r}, which no earlier node computes (the graph "
                                          "is not in topological order or has subgraph inputs)")
        if node.op_type == "Split":
            attrs["_num_outputs"] = len(node.output)
        dynamic = [v for v in node.input if v and v in known]
        if not dynamic and node.op_type not in ("Dropout", "BatchNormalization"):
            try:
                out = OPS[node.op_type](_Evaluator(node.op_type, attrs, opset),
                                        [_to_torch(consts[v]) if v else None for v in node.input])
            except OnnxConversionError:
                raise
            except Exception as exc:  # noqa: BLE001 - a malformed constant subgraph
                raise OnnxConversionError(f"cannot evaluate the constant {label}: {first_line(exc)}") from None
            outs = out if isinstance(out, tuple) else (out,)
            for value, result in zip(node.output, outs):
                if value:
                    consts[value] = result.numpy() if isinstance(result, Tensor) else np.asarray(result)
            continue
        known.update(v for v in node.output if v)
        nodes.append((node, attrs))
    if output_name not in known:
        raise OnnxConversionError(f"the output {output_name!r} does not depend on the input")

    # Drop the nodes the output does not need.
    needed, kept = {output_name}, []
    for node, attrs in reversed(nodes):
        if any(v in needed for v in node.output if v):
            kept.append((node, attrs))
            needed.update(v for v in node.input if v)
    kept.reverse()
    producers = {v: node for node, _ in kept for v in node.output if v}
    consumers: dict[str, int] = {}
    for node, _ in kept:
        for v in node.input:
            if v:
                consumers[v] = consumers.get(v, 0) + 1
    for node, _ in kept:
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] in needed:
            raise OnnxConversionError(f"Dropout node {node.name!r}: its mask output is used (not supported)")

    # Which constants are trained: used in a weight position by some node.
    trained: set[str] = set()
    for node, _ in kept:
        for slot, value in enumerate(node.input):
            if not value or value not in consts or consts[value].dtype.kind != "f":
                continue
            if slot in _WEIGHT_SLOTS.get(node.op_type, {}):
                trained.add(value)
            elif node.op_type == "BatchNormalization" and slot in (1, 2):
                trained.add(value)
            elif node.op_type == "Add" and len(node.input) == 2:
                other = node.input[1 - slot]
                if other in producers and producers[other].op_type in _BIAS_PRODUCERS and other not in consts:
                    trained.add(value)
    tensors: dict[str, Tensor] = {}

    def tensor_of(value: str) -> Tensor:
        if value not in tensors:
            t = _to_torch(consts[value])
            tensors[value] = nn.Parameter(t) if value in trained else t
        return tensors[value]

    # Build the node modules.
    steps: list[tuple[str, OnnxNode, tuple[str, ...], tuple[str, ...]]] = []
    taken: set[str] = set()
    runtime_consts: dict[str, Any] = {}
    reserved = OnnxModel("", "", "", [], {})
    dropout_rates: list[float] = []
    for index, (node, attrs) in enumerate(kept):
        child = _child_name(node.name, node.op_type, index, taken, reserved)
        cls = node_class(node.op_type)
        slots: list[tuple[str, Any]] = []
        dyn_inputs: list[str] = []
        holders: dict[str, Tensor] = {}
        for slot, value in enumerate(node.input):
            if not value:
                slots.append(("none", None))
            elif value not in consts:
                if value not in dyn_inputs:
                    dyn_inputs.append(value)
                slots.append(("dyn", dyn_inputs.index(value)))
            elif node.op_type == "BatchNormalization":
                slots.append(("none", None))
            elif slot in _PY_SLOTS.get(node.op_type, ()):
                array = consts[value]
                slots.append(("py", array.reshape(-1).tolist() if array.dtype.kind in "iub" else
                              [float(v) for v in array.reshape(-1)]))
            elif consts[value].dtype.kind != "f":
                # Integer/bool constants stay on the CPU with the shape arithmetic that reads them.
                runtime_consts[value] = _to_torch(consts[value])
                if value not in dyn_inputs:
                    dyn_inputs.append(value)
                slots.append(("dyn", dyn_inputs.index(value)))
            else:
                role = _WEIGHT_SLOTS.get(node.op_type, {}).get(slot) or \
                    ("bias" if value in trained and node.op_type == "Add" else f"const{slot}")
                holders[role] = tensor_of(value)
                slots.append(("tensor", role))
        module = cls(node.name or child, attrs, slots, opset)
        for role, tensor in holders.items():
            if isinstance(tensor, nn.Parameter):
                module.register_parameter(role, tensor)
            else:
                module.register_buffer(role, tensor)
        if node.op_type == "BatchNormalization":
            module.bn = _batch_norm(node, attrs, consts, tensor_of)
            module.slots = [("dyn", 0)]
        if node.op_type == "Dropout":
            rate = attrs.get("ratio", 0.5) if opset < 12 else \
                (_scalar(consts[node.input[1]]) if len(node.input) > 1 and node.input[1] in consts else 0.5)
            module.attrs["_rate"] = float(rate if rate is not None else 0.5)
            dropout_rates.append(module.attrs["_rate"])
        outputs = tuple(node.output)
        if node.op_type == "Dropout":
            outputs = outputs[:1]
        steps.append((child, module, tuple(dyn_inputs), outputs))

    onnx_model = OnnxModel(name, graph_input.name, output_name, steps, runtime_consts)
    facts = {"dropout_rates": dropout_rates, "opset": opset, "consumers": consumers, "producers": producers}
    return onnx_model, (height, width, channels), facts


def _batch_norm(node: Any, attrs: dict[str, Any], consts: dict[str, Any],
                tensor_of: Callable[[str], Tensor]) -> _AnyBatchNorm:
    names = list(node.input[1:5])
    if len(names) != 4 or not all(v in consts for v in names):
        raise OnnxConversionError(f"BatchNormalization node {node.name!r}: scale, bias, mean and variance must be "
                                  "constants")
    scale, bias = tensor_of(names[0]), tensor_of(names[1])
    mean, var = _to_torch(consts[names[2]]), _to_torch(consts[names[3]])
    momentum = float(attrs.get("momentum", 0.9))
    bn = _AnyBatchNorm(scale.numel(), eps=float(attrs.get("epsilon", 1e-5)), momentum=1.0 - momentum)
    bn.weight, bn.bias = scale, bias  # the shared Parameters
    with torch.no_grad():
        bn.running_mean.copy_(mean.reshape(-1))
        bn.running_var.copy_(var.reshape(-1))
    return bn


def _strip_final_softmax(model: OnnxModel, facts: dict[str, Any], input_shape: tuple[int, int, int]) -> str | None:
    """Make the final Softmax / LogSoftmax (through Identity / Flatten / Reshape / Squeeze / Dropout
    nodes with one consumer) compute nothing; returns its node name."""
    steps = {outputs[0]: (child, inputs) for child, inputs, outputs, _ in model._plan}
    value = model.output_name
    consumers = facts["consumers"]
    shapes = _value_shapes(model, input_shape)
    while value in steps:
        child, inputs = steps[value]
        module = model._modules[child]
        if module.op_type in ("Softmax", "LogSoftmax"):
            shape = shapes.get(inputs[0])
            if shape is None:
                return None
            rank = len(shape)
            if module.opset >= 13:
                axis = _axis(int(module.attrs.get("axis", -1)), rank)
                ok = all(d == 1 for i, d in enumerate(shape) if i not in (0, axis))
            else:
                ok = _axis(int(module.attrs.get("axis", 1)), rank) == 1
            if not ok or axis_is_batch(module, rank):
                return None
            module.attrs["_logits"] = True
            return module.node_name
        if module.op_type not in ("Identity", "Flatten", "Reshape", "Squeeze", "Dropout") or not inputs:
            return None
        value = inputs[0]
        if consumers.get(value, 0) != 1:
            return None
    return None


def axis_is_batch(module: OnnxNode, rank: int) -> bool:
    default = -1 if module.opset >= 13 else 1
    return _axis(int(module.attrs.get("axis", default)), rank) == 0


def _value_shapes(model: OnnxModel, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """The shape of every value for a batch of 2 zero images (eval mode, no grad)."""
    h, w, c = input_shape
    shapes: dict[str, tuple[int, ...]] = {}
    env: dict[str, Any] = {model.input_name: torch.zeros(2, c, h, w)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for child, inputs, outputs, _ in model._plan:
                out = model._modules[child](*[env[v] if v in env else model._constants[v] for v in inputs])
                outs = (out,) if len(outputs) == 1 else tuple(out)
                for name, value in zip(outputs, outs):
                    if name:
                        env[name] = value
                        shapes[name] = tuple(value.shape) if isinstance(value, Tensor) else ()
    finally:
        model.train(was_training)
    return shapes


def load_onnx(path: Path, key: str) -> ImportedModel:
    import onnx

    from stmclf.models.custom import ModuleGraph

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf / external data errors
        raise file_error(key, path, f"not a readable ONNX model ({first_line(exc)})") from None
    name = proto.graph.name or path.stem
    try:
        model, input_shape, facts = convert(proto, name)
        stripped = _strip_final_softmax(model, facts, input_shape)
    except OnnxConversionError as exc:
        raise file_error(key, path, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - an op failing on the model's own shapes
        raise file_error(key, path, f"cannot run the converted ONNX graph ({first_line(exc)})") from None
    try:
        graph = ModuleGraph(model, input_shape, name=re.sub(r"[^0-9A-Za-z_]+", "_", name) or "onnx_model")
    except Exception as exc:  # noqa: BLE001
        inits = {init.name for init in proto.graph.initializer}
        image = next(value for value in proto.graph.input if value.name not in inits)
        batch = image.type.tensor_type.shape.dim[0]
        hint = (f"; its batch dimension is fixed to {batch.dim_value}: export it with a dynamic batch"
                if batch is not None and batch.HasField("dim_value") else "")
        raise file_error(key, path, f"cannot run the converted ONNX graph on a batch of 2 "
                                    f"({first_line(exc)}){hint}") from None
    if len(graph.output_shape) != 1:
        raise file_error(key, path, f"the model outputs {graph.output_shape} per image; a vector of class scores "
                                    "is needed")
    rates = facts["dropout_rates"]
    notes = [f"ONNX opset {facts['opset']}"]
    if stripped:
        notes.append(f"final softmax node {stripped!r} removed (training uses logits)")
    metadata = {p.key: p.value for p in proto.metadata_props}
    return ImportedModel(graph=graph, input_shape=input_shape, num_outputs=int(graph.output_shape[0]),
                         has_dropout=bool(rates), dropout_rate=rates[0] if rates else None, kind="onnx",
                         output_is_softmax=stripped is not None, path=path, name=name, metadata=metadata,
                         notes=notes, _set_dropout=model.set_dropout_rate)

