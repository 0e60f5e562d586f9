"""Strided depthwise convolution with a fast input gradient on CPU.

oneDNN's backward-data kernel for *strided* depthwise convolutions takes a slow path on CPU
(bf16 especially: 25 ms for MobileNetV2-0.35's first 48-channel stride-2 layer at batch 64,
against 1 ms for the forward), which made those four layers half of a MobileNetV2 training
step. The input gradient of a stride-``s`` convolution is a stride-1 convolution of the
zero-upsampled output gradient with the flipped kernel, and stride-1 depthwise kernels are
fast, so :func:`strided_depthwise_conv2d` computes it that way (3–40× faster); the forward pass
and the weight gradient stay oneDNN's. Results equal the native gradient up to float
summation order (tested).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["strided_depthwise_conv2d", "use_fast_depthwise_grad"]


def use_fast_depthwise_grad(x: Tensor, weight: Tensor, stride: tuple[int, ...], groups: int,
                            dilation: tuple[int, ...], padding: Any) -> bool:
    """Whether the custom gradient applies (and pays): CPU, autograd on, 16-bit compute (bf16
    weights/inputs or CPU autocast; in fp32 oneDNN's own kernel is 5–15 % faster), strided, one
    filter per channel, no dilation, numeric padding smaller than the kernel."""
    low_precision = x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
    return (x.device.type == "cpu" and low_precision and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad)
            and max(stride) > 1 and groups == x.shape[1] == weight.shape[0] and tuple(dilation) == (1, 1)
            and not isinstance(padding, str) and all(p < k for p, k in zip(padding, weight.shape[2:]))
            and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export())


class _StridedDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        x, weight = ctx.saved_tensors
        (sh, sw), (ph, pw) = ctx.stride, ctx.padding
        channels, (kh, kw) = x.shape[1], weight.shape[2:]
        memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        grad = grad.contiguous(memory_format=memory_format)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            b, _, ho, wo = grad.shape
            up = torch.empty((b, channels, (ho - 1) * sh + 1, (wo - 1) * sw + 1), dtype=grad.dtype,
                             device=grad.device, memory_format=memory_format).zero_()
            up[:, :, ::sh, ::sw] = grad
            # full correlation = gradient of the zero-padded input, rows 0 .. (ho−1)·sh + kh − 1
            grad_x = F.conv2d(up, weight.flip(-2, -1), None, 1, (kh - 1, kw - 1), 1, channels)
            # drop the padding and zero-fill the input rows/columns past the last window
            crop = (-pw, pw + x.shape[3] - grad_x.shape[3], -ph, ph + x.shape[2] - grad_x.shape[2])
            if any(crop):
                grad_x = F.pad(grad_x, crop)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [sh, sw], [ph, pw], [1, 1],
                False, [0, 0], channels, [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_w, grad_b, None, None


def strided_depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: tuple[int, int],
                             padding: tuple[int, int]) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, groups=C)`` with the fast input gradient.

    Under CPU autocast the operands are cast to the autocast dtype first (what autocast does
    for ``conv2d``), so the custom function sees one dtype."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast("cpu", enabled=False):
            return _StridedDepthwise.apply(x, weight, bias, tuple(stride), tuple(padding))
    return _StridedDepthwise.apply(x, weight, bias, tuple(stride), tuple(padding))
