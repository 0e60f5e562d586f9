"""Torch modules named and behaving like the Keras layers of the reference models.

Tensors are NCHW (any memory format); shapes in the Keras sense are ``(H, W, C)`` for feature
maps and ``(units,)`` for vectors. Every layer has a ``keras_type`` (the Keras class name) and
``compute_output_shape(*input_shapes)``, which :class:`~stmclf.models.graph.GraphBuilder` uses to
track shapes. Layers whose weights depend on the input shape (convolutions, batch norm, dense)
take it as their first argument; the lowercase helpers (:func:`conv2d`, ...) defer that argument
so graph code reads like Keras: ``g.add("Conv1", conv2d(16, 3, strides=2, padding="same"), x)``.

TF "same" padding is computed once from the known input size: when it is asymmetric (stride 2
on an even size) the extra row/column goes after, as in TensorFlow, via an explicit zero pad.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shape = tuple[int, ...]
"""A Keras shape without the batch axis: ``(H, W, C)`` or ``(units,)``."""
LayerFn = Callable[[Shape], nn.Module]
"""Builds a layer for a given input shape (what the lowercase helpers return)."""
Padding = Literal["valid", "same"]
IntPair = int | tuple[int, int]


def _pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) of one spatial axis: the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def correct_pad(hw: tuple[int, int], kernel: IntPair) -> tuple[tuple[int, int], tuple[int, int]]:
    """Zero padding ((top, bottom), (left, right)) that Keras applications put before a valid
    stride-2 convolution: one pixel less before on even sizes."""
    pads = []
    for size, k in zip(hw, _pair(kernel)):
        half = k // 2
        pads.append((half - (1 - size % 2), half))
    return pads[0], pads[1]


class _OnnxZeroPad(torch.autograd.Function):
    """Zero padding that the TorchScript ONNX exporter writes as one ``Pad`` with constant pads
    (its generic ``F.pad`` export adds seven shape-computing nodes per pad)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
        return F.pad(x, pad)

    @staticmethod
    def symbolic(g: Any, x: Any, pad: tuple[int, int, int, int]) -> Any:
        left, right, top, bottom = pad
        pads = torch.tensor([0, 0, top, left, 0, 0, bottom, right], dtype=torch.int64)
        return g.op("Pad", x, g.op("Constant", value_t=pads), mode_s="constant")


def zero_pad(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Pad an NCHW tensor with zeros: ``pad = (left, right, top, bottom)``."""
    if torch.onnx.is_in_onnx_export():
        return _OnnxZeroPad.apply(x, pad)
    return F.pad(x, pad)


def _spatial_out(size: int, kernel: int, stride: int, padding: Padding) -> int:
    out = -(-size // stride) if padding == "same" else (size - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"input size {size} is too small for kernel {kernel}, stride {stride}")
    return out


def _check_map(in_shape: Shape, layer: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"{layer} expects an (H, W, C) input, got {in_shape}")
    return in_shape[0], in_shape[1], in_shape[2]


class _KerasConv(nn.Conv2d):
    """Conv2d with Keras padding semantics for a fixed input size and glorot-uniform init."""

    keras_type: ClassVar[str]

    def __init__(self, in_shape: Shape, out_channels: int, kernel_size: IntPair, strides: IntPair,
                 padding: Padding, use_bias: bool, groups: int) -> None:
        h, w, c = _check_map(in_shape, self.keras_type)
        (kh, kw), (sh, sw) = _pair(kernel_size), _pair(strides)
        if padding == "same":
            (top, bottom), (left, right) = same_padding(h, kh, sh), same_padding(w, kw, sw)
        elif padding == "valid":
            top = bottom = left = right = 0
        else:
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        symmetric = top == bottom and left == right
        super().__init__(c, out_channels, (kh, kw), (sh, sw), padding=(top, left) if symmetric else 0,
                         groups=groups, bias=use_bias)
        # Asymmetric "same" padding: pad explicitly (left, right, top, bottom), then a valid conv.
        self.pre_pad: tuple[int, int, int, int] | None = None if symmetric else (left, right, top, bottom)
        self.output_shape: Shape = (_spatial_out(h, kh, sh, padding), _spatial_out(w, kw, sw, padding),
                                    out_channels)
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_pad is not None:
            x = zero_pad(x, self.pre_pad)
        return self._conv_forward(x, self.weight, self.bias)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return self.output_shape

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", pre_pad={self.pre_pad}" if self.pre_pad else "")


class Conv2D(_KerasConv):
    """Keras ``Conv2D`` (kernel stored as torch ``(filters, C, kh, kw)``)."""

    keras_type = "Conv2D"

    def __init__(self, in_shape: Shape, filters: int, kernel_size: IntPair, strides: IntPair = 1,
                 padding: Padding = "valid", use_bias: bool = True) -> None:
        super().__init__(in_shape, filters, kernel_size, strides, padding, use_bias, groups=1)


class DepthwiseConv2D(_KerasConv):
    """Keras ``DepthwiseConv2D`` (kernel stored as torch ``(C * depth_multiplier, 1, kh, kw)``)."""

    keras_type = "DepthwiseConv2D"

    def __init__(self, in_shape: Shape, kernel_size: IntPair, strides: IntPair = 1,
                 padding: Padding = "valid", use_bias: bool = True, depth_multiplier: int = 1) -> None:
        channels = _check_map(in_shape, self.keras_type)[2]
        super().__init__(in_shape, channels * depth_multiplier, kernel_size, strides, padding, use_bias,
                         groups=channels)


class BatchNormalization(nn.BatchNorm2d):
    """Keras ``BatchNormalization`` over the channel axis of (H, W, C) or (units,) inputs.

    ``momentum`` is the Keras one (weight of the old moving average); torch's is ``1 - momentum``.
    """

    keras_type = "BatchNormalization"

    def __init__(self, in_shape: Shape, epsilon: float = 1e-3, momentum: float = 0.99) -> None:
        super().__init__(in_shape[-1], eps=epsilon, momentum=1.0 - momentum)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected a 2-D or 4-D input, got {input.dim()}-D")

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return input_shapes[0]


class Dense(nn.Linear):
    """Keras ``Dense`` without activation (kernel stored as torch ``(units, in)``)."""

    keras_type = "Dense"

    def __init__(self, in_shape: Shape, units: int, use_bias: bool = True) -> None:
        if len(in_shape) != 1:
            raise ValueError(f"Dense expects a (units,) input, got {in_shape}")
        super().__init__(in_shape[0], units, bias=use_bias)
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return (self.out_features,)


class _SameShape(nn.Module):
    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return input_shapes[0]


class ReLU(_SameShape):
    """Keras ``ReLU(max_value)``; ``max_value=6`` is ReLU6."""

    keras_type = "ReLU"

    def __init__(self, max_value: float | None = None) -> None:
        super().__init__()
        self.max_value = max_value

    def forward(self, x: Tensor) -> Tensor:
        if self.max_value is None:
            return F.relu(x)
        if self.max_value == 6.0:
            return F.relu6(x)
        return torch.clamp(x, 0.0, self.max_value)

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}"


class Dropout(nn.Dropout):
    keras_type = "Dropout"

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return input_shapes[0]


class Add(nn.Module):
    """Keras ``Add``: element-wise sum of inputs of the same shape."""

    keras_type = "Add"

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        if len(set(input_shapes)) != 1:
            raise ValueError(f"Add needs inputs of the same shape, got {list(input_shapes)}")
        return input_shapes[0]

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class ZeroPadding2D(nn.Module):
    """Keras ``ZeroPadding2D(((top, bottom), (left, right)))``."""

    keras_type = "ZeroPadding2D"

    def __init__(self, padding: tuple[tuple[int, int], tuple[int, int]]) -> None:
        super().__init__()
        (self.top, self.bottom), (self.left, self.right) = padding
        self.pad = (self.left, self.right, self.top, self.bottom)

    def forward(self, x: Tensor) -> Tensor:
        return zero_pad(x, self.pad)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        h, w, c = _check_map(input_shapes[0], self.keras_type)
        return h + self.top + self.bottom, w + self.left + self.right, c

    def extra_repr(self) -> str:
        return f"padding=(({self.top}, {self.bottom}), ({self.left}, {self.right}))"


class GlobalAveragePooling2D(nn.Module):
    keras_type = "GlobalAveragePooling2D"

    def __init__(self, keepdims: bool = False) -> None:
        super().__init__()
        self.keepdims = keepdims

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=self.keepdims)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        c = _check_map(input_shapes[0], self.keras_type)[2]
        return (1, 1, c) if self.keepdims else (c,)


def _to_keras_layout(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


class Flatten(nn.Module):
    """Keras ``Flatten``: flattens in (H, W, C) order, so Keras Dense kernels apply unchanged."""

    keras_type = "Flatten"

    def forward(self, x: Tensor) -> Tensor:
        return _to_keras_layout(x).flatten(1)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        size = 1
        for dim in input_shapes[0]:
            size *= dim
        return (size,)


class Reshape(nn.Module):
    """Keras ``Reshape(target_shape)``, with target and element order in the Keras (H, W, C) sense."""

    keras_type = "Reshape"

    def __init__(self, target_shape: Shape) -> None:
        super().__init__()
        self.target_shape = tuple(int(d) for d in target_shape)

    def forward(self, x: Tensor) -> Tensor:
        x = _to_keras_layout(x).reshape((-1, *self.target_shape))
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return self.target_shape

    def extra_repr(self) -> str:
        return f"target_shape={self.target_shape}"


def conv2d(filters: int, kernel_size: IntPair, strides: IntPair = 1, padding: Padding = "valid",
           use_bias: bool = True) -> LayerFn:
    """:class:`Conv2D` for the input shape the graph builder passes in."""
    return lambda in_shape: Conv2D(in_shape, filters, kernel_size, strides, padding, use_bias)


def depthwise_conv2d(kernel_size: IntPair, strides: IntPair = 1, padding: Padding = "valid",
                     use_bias: bool = True, depth_multiplier: int = 1) -> LayerFn:
    """:class:`DepthwiseConv2D` for the input shape the graph builder passes in."""
    return lambda in_shape: DepthwiseConv2D(in_shape, kernel_size, strides, padding, use_bias, depth_multiplier)


def batch_norm(epsilon: float = 1e-3, momentum: float = 0.99) -> LayerFn:
    """:class:`BatchNormalization` (Keras defaults) for the input shape the graph builder passes in."""
    return lambda in_shape: BatchNormalization(in_shape, epsilon, momentum)


def dense(units: int, use_bias: bool = True) -> LayerFn:
    """:class:`Dense` for the input shape the graph builder passes in."""
    return lambda in_shape: Dense(in_shape, units, use_bias)
