"""The strided depthwise convolution's custom input gradient equals autograd's native one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stmclf.models.depthwise_grad import strided_depthwise_conv2d, use_fast_depthwise_grad
from stmclf.models.layers import DepthwiseConv2D


def _native_and_custom(x, w, b, stride, padding):
    results = []
    for fn in (lambda *a: F.conv2d(*a, 1, x.shape[1]), strided_depthwise_conv2d):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        bs = b.clone().requires_grad_(True) if b is not None else None
        y = fn(xs, ws, bs, stride, padding)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape))
        results.append((y, xs.grad, ws.grad, None if bs is None else bs.grad))
    return results


@pytest.mark.parametrize("size,stride,padding,kernel", [
    ((13, 13), (2, 2), (0, 0), 3),   # odd input, every row used
    ((12, 11), (2, 2), (0, 0), 3),   # even height: the last row never reaches the output
    ((16, 16), (2, 2), (1, 1), 3),   # symmetric padding
    ((15, 10), (2, 1), (2, 0), 5),   # one strided axis, 5×5 kernel
    ((17, 17), (3, 3), (1, 1), 3),   # stride 3
])
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_equal_native_in_float64(size, stride, padding, kernel, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, *size, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 1, kernel, kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(4, generator=gen, dtype=torch.float64) if bias else None
    native, custom = _native_and_custom(x, w, b, stride, padding)
    for a, c in zip(native, custom):
        if a is not None:
            torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)


def test_gradients_in_bfloat16_channels_last():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, 33, 33, generator=gen).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 1, 3, 3, generator=gen).to(torch.bfloat16)
    (y0, gx0, gw0, _), (y1, gx1, gw1, _) = _native_and_custom(x, w, None, (2, 2), (0, 0))
    assert torch.equal(y0, y1)
    assert gx1.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gx1.float(), gx0.float(), rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(gw1.float(), gw0.float(), rtol=1e-2, atol=1e-1)


def test_layer_uses_it_only_for_strided_16_bit_training():
    layer = DepthwiseConv2D((33, 33, 8), 3, strides=2, use_bias=False)
    x = torch.randn(2, 8, 33, 33, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "ConvolutionBackward0"  # fp32: oneDNN's kernel is faster
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert "StridedDepthwise" in type(y.grad_fn).__name__ and y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).grad_fn is None
    unit = DepthwiseConv2D((33, 33, 8), 3, strides=1, use_bias=False)
    assert not use_fast_depthwise_grad(x.bfloat16(), unit.weight, unit.stride, unit.groups, unit.dilation,
                                       unit.padding)
