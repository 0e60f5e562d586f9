"""Miscellaneous augmentations (the reference's ``random_misc.py``): blur, gaussian noise,
crop, JPEG quality and periodic resizing.

- ``random_blur``: mean filter whose size k ~ U{k0..k1} is drawn **once per batch** (as the
  reference does; a kernel size decides the convolution's shape). ``constant_values`` is in
  the [0, 1] space the reference pads in.
- ``random_gaussian_noise``: σ ~ U(s0, s1) drawn **once per batch** (the MDA has no ``mode``
  argument although the README documents one; we follow the MDA), noise N(0, σ) added in
  [0, 1] space, clipped.
- ``random_crop``: per image a box (centre and size as fractions, clipped to the image) is cut
  and resized back to the full size, exactly like ``tf.image.crop_and_resize`` (it shares the
  affine sampler).
- ``random_jpeg_quality``: each image goes through a real JPEG encode/decode round-trip
  (torchvision, on the CPU, uint8) with q ~ U{q0..q1}; this is the one per-image loop.
- ``random_periodic_resizing``: resizes the whole batch to a size drawn from ``image_sizes``
  every ``period`` batches (see its docstring).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from stmclf.augment._common import Context, clip, from_unit, host_randint, to_unit, uniform
from stmclf.augment.affine import affine_sample, crop_matrices
from stmclf.augment.registry import (MAX_IMAGE_SIDE, ImageSize, _fmt, _from_text, _is_number, arg, choice,
                                     integer, number, rate, register_augmentation)
from stmclf.config.rules import batch_memory_problem
from stmclf.errors import ConfigError

__all__ = ["box_blur", "pad_indices"]


# ------------------------------------------------------------------------------------------
# blur
# ------------------------------------------------------------------------------------------
def pad_indices(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source indices of a padded axis: ``reflect`` (edge not repeated, like TF/NumPy
    "reflect") or ``symmetric`` (edge repeated). Works for any pad width (periodic)."""
    i = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(i)
    if mode == "reflect":
        period = 2 * (n - 1)
        m = torch.remainder(i, period)
        return torch.where(m < n, m, period - m)
    period = 2 * n
    m = torch.remainder(i, period)
    return torch.where(m < n, m, period - 1 - m)


def box_blur(u: torch.Tensor, k: int, padding: str = "reflect", constant_values: float = 0.0) -> torch.Tensor:
    """k×k mean filter with TF's padding split (top/left gets (k−1)//2)."""
    if k <= 1:
        return u
    _, _, h, w = u.shape
    before = (k - 1) // 2
    after = k - 1 - before
    if padding == "constant":
        padded = F.pad(u, (before, after, before, after), mode="constant", value=float(constant_values))
    else:
        padded = u.index_select(2, pad_indices(h, before, after, padding, u.device))
        padded = padded.index_select(3, pad_indices(w, before, after, padding, u.device))
    return F.avg_pool2d(padded, kernel_size=k, stride=1)


def _blur_sized(p: SimpleNamespace, key: str, size: ImageSize) -> None:
    """A filter at most the image's larger side (a larger one only averages reflections)."""
    side = max(size.height, size.width)
    if p.filter_size[1] > side:
        raise ConfigError(f"{key}.filter_size", f"must be at most the image side, {side} (the model input is "
                                                f"{size}); got {_fmt(p.filter_size[1])}")


@register_augmentation("random_blur", {
    "filter_size": arg(check=number("int", lo=1, hi=MAX_IMAGE_SIDE, scalar=lambda v: (v, v))),
    "padding": arg("reflect", choice("reflect", "constant", "symmetric")),
    "constant_values": arg(0, number("float", tuples=0, lo=0.0, hi=1.0)),
    "change_rate": arg(1.0, rate()),
}, example={"filter_size": (2, 4)}, sized=_blur_sized)
def random_blur(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Mean filter k×k, k ~ U{k0..k1} once per batch (an integer v means k = v)."""
    k = host_randint(ctx, *p.filter_size)
    if k <= 1:
        return x
    u = to_unit(x, ctx.pixels_range)
    return from_unit(box_blur(u, k, p.padding, p.constant_values), ctx.pixels_range)


# ------------------------------------------------------------------------------------------
# noise
# ------------------------------------------------------------------------------------------
@register_augmentation("random_gaussian_noise", {
    "stddev": arg(check=number("float", tuples=2, lo=0.0, hi=1.0)),
    "change_rate": arg(1.0, rate()),
}, example={"stddev": (0.02, 0.1)})
def random_gaussian_noise(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Adds N(0, σ) noise in [0, 1] space, σ ~ U(s0, s1) once per batch; clipped."""
    sigma = uniform(ctx, x, *p.stddev, 1)
    noise = torch.randn(x.shape, device=x.device, generator=ctx.generator, dtype=x.dtype)
    u = to_unit(x, ctx.pixels_range)
    return from_unit(torch.addcmul(u, noise, sigma).clamp_(0.0, 1.0), ctx.pixels_range)


# ------------------------------------------------------------------------------------------
# crop
# ------------------------------------------------------------------------------------------
_OPEN01 = dict(lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@register_augmentation("random_crop", {
    "crop_center_x": arg((0.25, 0.75), number("float", tuples=2, **_OPEN01)),
    "crop_center_y": arg((0.25, 0.75), number("float", tuples=2, **_OPEN01)),
    "crop_width": arg((0.6, 0.9), number("float", scalar=lambda v: (v, v), **_OPEN01)),
    "crop_height": arg((0.6, 0.9), number("float", scalar=lambda v: (v, v), **_OPEN01)),
    "interpolation": arg("bilinear", choice("bilinear", "nearest")),
    "change_rate": arg(0.9, rate()),
}, example={"change_rate": 1.0})
def random_crop(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Per image: centre (fractions in (0, 1)) and size (fractions) are sampled, the box is
    clipped to the image and resized back to the original size (``crop_and_resize``
    semantics). Default change_rate 0.9."""
    _, _, h, w = x.shape
    cx = uniform(ctx, x, *p.crop_center_x)
    cy = uniform(ctx, x, *p.crop_center_y)
    cw = uniform(ctx, x, *p.crop_width)
    ch = uniform(ctx, x, *p.crop_height)
    x1 = (cx - cw / 2).clamp(0.0, 1.0)
    x2 = (cx + cw / 2).clamp(0.0, 1.0)
    y1 = (cy - ch / 2).clamp(0.0, 1.0)
    y2 = (cy + ch / 2).clamp(0.0, 1.0)
    return affine_sample(x, crop_matrices(x1, y1, x2, y2, h, w), "nearest", p.interpolation,
                         separable=True)


# ------------------------------------------------------------------------------------------
# JPEG quality
# ------------------------------------------------------------------------------------------
@register_augmentation("random_jpeg_quality", {
    "jpeg_quality": arg(check=number("int", lo=0, hi=100, scalar=lambda v: (v, v))),
    "change_rate": arg(1.0, rate()),
}, example={"jpeg_quality": (20, 100)})
def random_jpeg_quality(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """JPEG encode/decode round-trip per image with quality q ~ U{q0..q1} (an integer v means
    q = v, as the README allows; quality 0 is encoded as 1, the lowest libjpeg accepts).
    Runs on the CPU in uint8 and moves the result back to the images' device."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    b, c, h, w = x.shape
    if c not in (1, 3):
        return x
    u8 = (to_unit(x, ctx.pixels_range) * 255.0).round_().to(torch.uint8).cpu().contiguous()
    out = torch.empty_like(u8)
    lo, hi = p.jpeg_quality
    for i in range(b):
        q = max(1, host_randint(ctx, lo, hi))
        data = encode_jpeg(u8[i], quality=q)
        out[i] = decode_jpeg(data, mode=ImageReadMode.GRAY if c == 1 else ImageReadMode.RGB)
    u = out.to(device=x.device, dtype=x.dtype, non_blocking=True) / 255.0
    return from_unit(u, ctx.pixels_range)


# ------------------------------------------------------------------------------------------
# periodic resizing
# ------------------------------------------------------------------------------------------
def _image_sizes(value: Any, key: str) -> tuple[tuple[int, int], ...]:
    """A list of sizes, each an integer (square) or (width, height); returns (height, width)s."""
    value = _from_text(value)
    msg = (f"expecting a list of image sizes, each an integer or a (width, height) pair of integers from 1 to "
           f"{MAX_IMAGE_SIDE}")
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(key, f"{msg}; got {_fmt(value)}")
    sizes = []
    side = lambda v: _is_number(v) and float(v).is_integer() and 1 <= v <= MAX_IMAGE_SIDE  # noqa: E731
    for s in value:
        if side(s):
            sizes.append((int(s), int(s)))
        elif isinstance(s, (list, tuple)) and len(s) == 2 and all(side(v) for v in s):
            sizes.append((int(s[1]), int(s[0])))
        else:
            raise ConfigError(key, f"{msg}; got {_fmt(s)} in {_fmt(value)}")
    return tuple(sizes)


MAX_PERIOD = 2**31 - 1
"""``random_periodic_resizing.period`` at most (batches: a 32-bit count)."""

_RESIZE_MODES = {"bilinear": "bilinear", "nearest": "nearest-exact", "bicubic": "bicubic", "area": "area"}


def _resizing_sized(p: SimpleNamespace, key: str, size: ImageSize) -> None:
    """Resized batches under the memory estimate of ``training.model.input_shape``."""
    if size.batch_size is None:
        return
    height, width = max(p.image_sizes, key=lambda hw: hw[0] * hw[1])
    problem = batch_memory_problem(size.batch_size, height, width, size.channels)
    if problem is not None:
        raise ConfigError(f"{key}.image_sizes", f"{problem}: use smaller sizes (or lower training.batch_size)")


@register_augmentation("random_periodic_resizing", {
    "period": arg(check=integer(lo=1, hi=MAX_PERIOD)),
    "image_sizes": arg(check=_image_sizes),
    "interpolation": arg("bilinear", choice(*_RESIZE_MODES)),
}, example={"period": 2, "image_sizes": [(24, 24), (32, 32), (40, 40)]}, stateful=True, sized=_resizing_sized)
def random_periodic_resizing(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Resizes the whole batch to a size drawn uniformly from ``image_sizes`` (each an integer
    or a (width, height) pair, the reference's order), held for ``period`` batches: a new size
    is drawn at batches 0, period, 2·period, ... of this pipeline. ``interpolation``: bilinear
    (default), nearest, bicubic or area (half-pixel centres, no antialiasing: bilinear and
    nearest equal ``tf.image.resize``; area equals it for integer down-scaling (torch's adaptive
    average pooling otherwise); bicubic uses torch's a = −0.75 kernel, TF's uses −0.5). There is no
    ``change_rate``: every image of a batch must share
    one size. The batch size of the output therefore differs from the input's; the model must
    accept variable input sizes (global pooling). Documented by the reference README and used by
    its object-detection code, not dispatched by its image-classification code."""
    if "size" not in ctx.state or ctx.batch_index % p.period == 0:
        ctx.state["size"] = p.image_sizes[host_randint(ctx, 0, len(p.image_sizes) - 1)]
    size = ctx.state["size"]
    if tuple(x.shape[-2:]) == size:
        return x
    mode = _RESIZE_MODES[p.interpolation]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(x, size=size, mode=mode, **kwargs)
    return clip(out, ctx.pixels_range) if mode == "bicubic" else out
