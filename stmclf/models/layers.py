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

from stmclf.models.depthwise_grad import strided_depthwise_conv2d, use_fast_depthwise_grad

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


def keras_padding(h: int, w: int, kernel: tuple[int, int], strides: tuple[int, int],
                  padding: Padding) -> tuple[int, int, int, int]:
    """Keras ``padding`` of an (h, w) map as (left, right, top, bottom) pixels."""
    if padding == "same":
        (top, bottom), (left, right) = same_padding(h, kernel[0], strides[0]), same_padding(w, kernel[1], strides[1])
        return left, right, top, bottom
    if padding == "valid":
        return 0, 0, 0, 0
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


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
    """Conv2d with Keras padding semantics for a fixed input size, glorot-uniform init and the
    Keras ``activation`` argument applied inside the layer (one layer index)."""

    keras_type: ClassVar[str]

    def __init__(self, in_shape: Shape, out_channels: int, kernel_size: IntPair, strides: IntPair,
                 padding: Padding, use_bias: bool, groups: int, activation: str | None = None) -> None:
        h, w, c = _check_map(in_shape, self.keras_type)
        (kh, kw), (sh, sw) = _pair(kernel_size), _pair(strides)
        left, right, top, bottom = keras_padding(h, w, (kh, kw), (sh, sw), padding)
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
        self.activation = None if activation in (None, "linear") else _activation_fn(activation)
        self.activation_name = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_pad is not None:
            x = zero_pad(x, self.pre_pad)
        x = self._conv_forward(x, self.weight, self.bias)
        return x if self.activation is None else self.activation(x)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return self.output_shape

    def extra_repr(self) -> str:
        text = super().extra_repr() + (f", pre_pad={self.pre_pad}" if self.pre_pad else "")
        return text + (f", activation={self.activation_name}" if self.activation else "")


class Conv2D(_KerasConv):
    """Keras ``Conv2D`` (kernel stored as torch ``(filters, C, kh, kw)``). ``activation`` is the
    Keras argument of the same name (``None``, ``"relu"``, ``"relu6"``, ``"sigmoid"``), applied
    inside the layer as Keras does (one layer index)."""

    keras_type = "Conv2D"

    def __init__(self, in_shape: Shape, filters: int, kernel_size: IntPair, strides: IntPair = 1,
                 padding: Padding = "valid", use_bias: bool = True, activation: str | None = None) -> None:
        super().__init__(in_shape, filters, kernel_size, strides, padding, use_bias, groups=1, activation=activation)


class DepthwiseConv2D(_KerasConv):
    """Keras ``DepthwiseConv2D`` (kernel stored as torch ``(C * depth_multiplier, 1, kh, kw)``)."""

    keras_type = "DepthwiseConv2D"

    def __init__(self, in_shape: Shape, kernel_size: IntPair, strides: IntPair = 1,
                 padding: Padding = "valid", use_bias: bool = True, depth_multiplier: int = 1,
                 activation: str | None = None) -> None:
        channels = _check_map(in_shape, self.keras_type)[2]
        super().__init__(in_shape, channels * depth_multiplier, kernel_size, strides, padding, use_bias,
                         groups=channels, activation=activation)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if use_fast_depthwise_grad(x, weight, self.stride, self.groups, self.dilation, self.padding):
            return strided_depthwise_conv2d(x, weight, bias, self.stride, self.padding)
        return super()._conv_forward(x, weight, bias)


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
    """Keras ``Dense`` (kernel stored as torch ``(units, in)``); ``activation`` (default none) as
    in :class:`Conv2D`."""

    keras_type = "Dense"

    def __init__(self, in_shape: Shape, units: int, use_bias: bool = True, activation: str | None = None) -> None:
        if len(in_shape) != 1:
            raise ValueError(f"Dense expects a (units,) input, got {in_shape}")
        super().__init__(in_shape[0], units, bias=use_bias)
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.activation = None if activation in (None, "linear") else _activation_fn(activation)
        self.activation_name = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return x if self.activation is None else self.activation(x)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return (self.out_features,)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", activation={self.activation_name}" if self.activation else "")


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


class _GlobalPooling(nn.Module):
    """Keras global pooling over H and W (``keepdims`` keeps a 1×1 map)."""

    keras_type = ""

    def __init__(self, keepdims: bool = False) -> None:
        super().__init__()
        self.keepdims = keepdims

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        c = _check_map(input_shapes[0], self.keras_type)[2]
        return (1, 1, c) if self.keepdims else (c,)


class GlobalAveragePooling2D(_GlobalPooling):
    keras_type = "GlobalAveragePooling2D"

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=self.keepdims)


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
           use_bias: bool = True, activation: str | None = None) -> LayerFn:
    """:class:`Conv2D` for the input shape the graph builder passes in."""
    return lambda in_shape: Conv2D(in_shape, filters, kernel_size, strides, padding, use_bias, activation)


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


# ---------------------------------------------------------------------------------------------
# Layers of the other zoo architectures (pooling, merges, activations, SE clip) and Keras'
# automatic layer names.

def _identity(x: Tensor) -> Tensor:
    return x


def _channel_softmax(x: Tensor) -> Tensor:
    return torch.softmax(x, dim=1)  # the Keras last (channel) axis is torch dim 1 for maps and vectors


def _keras2_hard_sigmoid(x: Tensor) -> Tensor:
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)  # tf_keras / Keras 2 (Keras 3 uses relu6(x + 3) / 6)


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "linear": _identity,
    # Further Keras activation names (imported Keras models, stmclf.models.importers).
    "softmax": _channel_softmax,
    "tanh": torch.tanh,
    "swish": F.silu,
    "silu": F.silu,
    "hard_sigmoid": _keras2_hard_sigmoid,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "exponential": torch.exp,
}


def _activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class Activation(_SameShape):
    """Keras ``Activation(name)`` for ``relu``, ``relu6`` (``tf.nn.relu6``), ``sigmoid``, ``linear``."""

    keras_type = "Activation"

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.fn = _activation_fn(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.activation


class SoftmaxLogits(_SameShape):
    """The reference's ``Activation("softmax")`` output layer, kept (same Keras type, name and index)
    so that layer indices match, but an identity here: models output logits and the loss applies
    the softmax. Exported graphs therefore end with logits too."""

    keras_type = "Activation"

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return "softmax in Keras; identity here (logits)"


class SampleDropout(Dropout):
    """Keras ``Dropout(rate, noise_shape=(None, 1, 1, 1))``: drops whole samples (stochastic depth),
    scaling the kept ones by ``1 / (1 - rate)``. Like :class:`Dropout`, the rate is ``p``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class ClipLambda(_SameShape):
    """The reference's ``Lambda(lambda x: tf.clip_by_value(x, low, high))`` (before the SE sigmoid)."""

    keras_type = "Lambda"

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = float(low), float(high)

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.low, self.high)

    def extra_repr(self) -> str:
        return f"clip_by_value({self.low}, {self.high})"


def _broadcast_shape(layer: str, shapes: tuple[Shape, ...]) -> Shape:
    """Keras' element-wise merge shape: equal sizes, or 1 broadcast against any size."""
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"{layer} needs inputs of the same rank, got {list(shapes)}")
    out = []
    for dims in zip(*shapes):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise ValueError(f"{layer} cannot broadcast inputs of shapes {list(shapes)}")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


class Multiply(nn.Module):
    """Keras ``Multiply``: element-wise product (a (1, 1, C) input broadcasts, as in squeeze-excite)."""

    keras_type = "Multiply"

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return _broadcast_shape(self.keras_type, input_shapes)

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Concatenate(nn.Module):
    """Keras ``Concatenate(axis=-1)`` of (H, W, C) maps: along the channels (torch dim 1)."""

    keras_type = "Concatenate"

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        if axis not in (-1, 3):
            raise ValueError(f"Concatenate supports the channel axis (-1 or 3) only, got {axis}")

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        maps = [_check_map(s, self.keras_type) for s in input_shapes]
        if len({m[:2] for m in maps}) != 1:
            raise ValueError(f"Concatenate needs inputs of the same height and width, got {list(input_shapes)}")
        return maps[0][0], maps[0][1], sum(m[2] for m in maps)

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=1)


class _KerasPool(nn.Module):
    """2-D pooling with Keras ``pool_size`` / ``strides`` (default: the pool size) and padding."""

    keras_type: ClassVar[str]

    def __init__(self, in_shape: Shape, pool_size: IntPair = 2, strides: IntPair | None = None,
                 padding: Padding = "valid") -> None:
        super().__init__()
        h, w, c = _check_map(in_shape, self.keras_type)
        self.pool_size = _pair(pool_size)
        self.strides = self.pool_size if strides is None else _pair(strides)
        (kh, kw), (sh, sw) = self.pool_size, self.strides
        left, right, top, bottom = keras_padding(h, w, (kh, kw), (sh, sw), padding)
        self.padding = padding
        self.pre_pad: tuple[int, int, int, int] | None = (left, right, top, bottom) if top or bottom or left or right \
            else None
        self.output_shape: Shape = (_spatial_out(h, kh, sh, padding), _spatial_out(w, kw, sw, padding), c)

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return self.output_shape

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}, strides={self.strides}, padding={self.padding!r}"


class MaxPooling2D(_KerasPool):
    """Keras ``MaxPooling2D``; "same" padding never selects the padded positions (as in TF)."""

    keras_type = "MaxPooling2D"

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad, value=float("-inf"))
        return F.max_pool2d(x, self.pool_size, self.strides)


class AveragePooling2D(_KerasPool):
    """Keras ``AveragePooling2D``; "same" padding averages over the real pixels only (as in TF)."""

    keras_type = "AveragePooling2D"

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_pad is None:
            return F.avg_pool2d(x, self.pool_size, self.strides)
        sums = F.avg_pool2d(zero_pad(x, self.pre_pad), self.pool_size, self.strides)
        ones = torch.ones((1, 1, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
        counts = F.avg_pool2d(zero_pad(ones, self.pre_pad), self.pool_size, self.strides)
        return sums / counts


def max_pooling2d(pool_size: IntPair = 2, strides: IntPair | None = None, padding: Padding = "valid") -> LayerFn:
    """:class:`MaxPooling2D` for the input shape the graph builder passes in."""
    return lambda in_shape: MaxPooling2D(in_shape, pool_size, strides, padding)


def average_pooling2d(pool_size: IntPair = 2, strides: IntPair | None = None, padding: Padding = "valid") -> LayerFn:
    """:class:`AveragePooling2D` for the input shape the graph builder passes in."""
    return lambda in_shape: AveragePooling2D(in_shape, pool_size, strides, padding)


class KerasNames:
    """Keras' automatic layer names in a fresh session: the snake-case class name, then ``_1``,
    ``_2``, ... per base name, in the order the reference *creates* its unnamed layers
    (``names("conv2d")`` → ``conv2d``, ``conv2d_1``, ...). Explicitly named layers take no number."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"


# ---------------------------------------------------------------------------------------------
# Further Keras layers, for Keras models imported from .h5 files (stmclf.models.importers).

class SeparableConv2D(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise convolution (TF padding, no bias) then a 1×1 pointwise
    convolution with the layer's bias and activation, in one layer (one Keras layer index). Keras
    arrays: depthwise kernel ``(kh, kw, C, m)``, pointwise kernel ``(1, 1, C·m, filters)``, bias."""

    keras_type = "SeparableConv2D"

    def __init__(self, in_shape: Shape, filters: int, kernel_size: IntPair, strides: IntPair = 1,
                 padding: Padding = "valid", use_bias: bool = True, depth_multiplier: int = 1,
                 activation: str | None = None) -> None:
        super().__init__()
        self.depthwise = DepthwiseConv2D(in_shape, kernel_size, strides, padding, use_bias=False,
                                         depth_multiplier=depth_multiplier)
        self.pointwise = Conv2D(self.depthwise.output_shape, filters, 1, use_bias=use_bias, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))

    def compute_output_shape(self, *input_shapes: Shape) -> Shape:
        return self.pointwise.output_shape


class Rescaling(_SameShape):
    """Keras ``Rescaling(scale, offset)``: ``x * scale + offset``; a scale or offset given per
    channel applies along the channel axis."""

    keras_type = "Rescaling"

    def __init__(self, scale: float | list[float] = 1.0, offset: float | list[float] = 0.0) -> None:
        super().__init__()
        self.scale_value, self.offset_value = scale, offset
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).reshape(-1), persistent=False)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32).reshape(-1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.to(x.dtype).view(view) + self.offset.to(x.dtype).view(view)

    def extra_repr(self) -> str:
        return f"scale={self.scale_value}, offset={self.offset_value}"


class GlobalMaxPooling2D(_GlobalPooling):
    keras_type = "GlobalMaxPooling2D"

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=(2, 3), keepdim=self.keepdims)


class LeakyReLU(_SameShape):
    """Keras ``LeakyReLU(alpha)`` (Keras 3 calls it ``negative_slope``; default 0.3)."""

    keras_type = "LeakyReLU"

    def __init__(self, alpha: float = 0.3) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
