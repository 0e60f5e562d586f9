"""Geometric augmentations (the reference's ``random_affine.py``) on one shared batched sampler.

Every function builds one 2×3 matrix per image that maps an *output* pixel ``(x, y, 1)``
(x = column, y = row, integer pixel indices) to the *input* location it reads, exactly the
convention of TF's ``ImageProjectiveTransformV3`` that the reference uses. :func:`affine_sample`
then reproduces that op's semantics:

- ``fill_mode``: ``reflect`` (``dcba|abcd|dcba``, edge pixel repeated), ``wrap``, ``nearest``
  (clamp) and ``constant`` (``fill_value`` outside), with TF's coordinate mapping functions
  applied to the continuous input coordinate before interpolation;
- ``interpolation``: ``nearest`` (round half away from zero) or ``bilinear``; out-of-image
  neighbours read ``fill_value`` (only visible in constant mode).

The resampling itself is one ``F.grid_sample`` call over the whole batch, so it runs on any
device without a loop. Bilinear sampling with ``reflect``/``nearest``/``constant`` fill leaves the
fill mapping to grid_sample's own ``reflection``/``border``/``zeros`` padding (identical to TF's
mapping when pixel centres sit at (i + 0.5)/n, i.e. ``align_corners=False``), with the grid one
broadcast add: 2–4× faster than mapping every coordinate ourselves, which the other cases
(``wrap``, ``nearest`` interpolation) still do with ``align_corners=True``.

Deliberate fixes of two reference quirks:

- ``random_flip`` is an exact mirror (``torch.flip``). The reference's flip matrix uses an
  offset of ``width`` instead of ``width − 1`` with reflect fill, which shifts the flipped
  image by one pixel.
- ``random_shear_y`` uses the sin-based matrix symmetric to ``random_shear_x``
  (``[[1, 0, 0], [−sin a, 1, 0]]``). The reference puts ``cos a`` there, which makes a small
  angle a near-unit (about 45°) shear.

The reference reads tensor dimension 1 as "width" and 2 as "height" although TF images are
[B, H, W, C]; we use the real width for x and the real height for y (identical for square
images).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from stmclf.augment._common import Context, randint, uniform
from stmclf.augment.registry import (MAX_IMAGE_SIDE, _fmt, arg, choice, nonneg_number, number, rate,
                                     register_augmentation, symmetric)
from stmclf.errors import ConfigError

__all__ = ["affine_sample", "map_coordinates", "rotation_matrices", "zoom_matrices",
           "translation_matrices", "shear_matrices", "crop_matrices"]

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("nearest", "bilinear")


# ------------------------------------------------------------------------------------------
# the sampler
# ------------------------------------------------------------------------------------------
def map_coordinates(c: torch.Tensor, n: int, fill_mode: str) -> torch.Tensor:
    """TF's ``MapCoordinate`` for one axis of length ``n`` (continuous pixel coordinates).

    ``reflect`` is computed as a floor-modulo of period 2n (``dcba|abcd|dcba``), which equals
    TF's truncation-based formula for every input; ``wrap`` keeps TF's exact formula (its
    period quirk included)."""
    if fill_mode == "constant":
        return c
    if n <= 1:
        return torch.zeros_like(c)
    if fill_mode == "nearest":
        return c.clamp(0.0, n - 1.0)
    if fill_mode == "reflect":
        t = torch.remainder(c, 2.0 * n)
        return torch.where(t < n, t, (2.0 * n - 1.0) - t).clamp_(0.0, n - 1.0)
    if fill_mode == "wrap":
        sz = n - 1.0
        neg = c + n * (torch.trunc(-c / sz) + 1.0)
        pos = c - n * torch.trunc(c / sz)
        return torch.where(c < 0, neg, torch.where(c > sz, pos, c)).clamp_(0.0, sz)
    raise ValueError(f"unknown fill_mode {fill_mode!r}")  # pragma: no cover - validated earlier


def _round_half_away(c: torch.Tensor) -> torch.Tensor:
    return torch.sign(c) * torch.floor(c.abs() + 0.5)


def _axis(c: torch.Tensor, n: int, fill_mode: str, interpolation: str) -> torch.Tensor:
    """Input pixel coordinates along one axis → grid_sample's normalised coordinates."""
    c = map_coordinates(c, n, fill_mode)
    if interpolation == "nearest":
        c = _round_half_away(c)
    return c * (2.0 / (n - 1)) - 1.0 if n > 1 else c * 2.0


# TF's fill modes that grid_sample's own padding reproduces for bilinear sampling when pixel
# centres sit at (i + 0.5) / n (align_corners=False): "reflection" reflects about −0.5 and
# n − 0.5 (TF's dcba|abcd|dcba) and then clamps, "border" clamps, "zeros" reads 0 outside.
_GRID_PADDING = {"reflect": "reflection", "nearest": "border", "constant": "zeros"}


def _normalised_theta(matrices: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel-unit output→input matrices (B, 2, 3) → ``affine_grid`` thetas in normalised
    coordinates (align_corners=False): theta = N · M · N⁻¹ with N: pixel → [−1, 1]."""
    m = matrices.to(torch.float64)
    n = m.new_tensor([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])
    n_inv = m.new_tensor([[w / 2.0, 0.0, (w - 1) / 2.0], [0.0, h / 2.0, (h - 1) / 2.0], [0.0, 0.0, 1.0]])
    m3 = torch.cat((m, m.new_tensor([0.0, 0.0, 1.0]).expand(m.shape[0], 1, 3)), dim=1)
    return (n @ m3 @ n_inv)[:, :2, :]


def _affine_sample_fused(x: torch.Tensor, matrices: torch.Tensor, fill_mode: str, fill_value: float) -> torch.Tensor:
    """Bilinear reflect/nearest/constant sampling with the fill mapping done inside grid_sample
    (one broadcast add for the coordinates instead of ~20 elementwise passes)."""
    b, c, h, w = x.shape
    theta = _normalised_theta(matrices, h, w).to(device=x.device, dtype=torch.float32)
    # grid[b, i, j] = theta[b] · (u_j, v_i, 1): a (B, 2, 1, W) + (B, 2, H, 1) broadcast, viewed
    # as (B, H, W, 2) (~25× faster than affine_grid's batched matmul on CPU)
    u = torch.arange(w, device=x.device, dtype=torch.float32).mul_(2.0 / w).add_(1.0 / w - 1.0)
    v = torch.arange(h, device=x.device, dtype=torch.float32).mul_(2.0 / h).add_(1.0 / h - 1.0)
    grid = ((theta[:, :, 0:1] * u).view(b, 2, 1, w) + (theta[:, :, 1:2] * v + theta[:, :, 2:3]).view(b, 2, h, 1))
    grid = grid.to(x.dtype).permute(0, 2, 3, 1)
    shift = fill_mode == "constant" and fill_value != 0.0
    src = x - fill_value if shift else x
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode=_GRID_PADDING[fill_mode], align_corners=False)
    return out + fill_value if shift else out


def affine_sample(x: torch.Tensor, matrices: torch.Tensor, fill_mode: str = "reflect",
                  interpolation: str = "bilinear", fill_value: float = 0.0, *,
                  separable: bool = False) -> torch.Tensor:
    """Resample each image with its output→input matrix (``matrices``: (B, 2, 3), pixel units).

    Same output size as the input. Matches ``ImageProjectiveTransformV3`` for affine matrices.
    ``separable=True`` promises axis-aligned matrices (no rotation/shear terms: translation,
    zoom, crop); the coordinates are then computed per row and per column only.
    """
    b, c, h, w = x.shape
    if interpolation == "bilinear" and fill_mode in _GRID_PADDING:
        return _affine_sample_fused(x, matrices, fill_mode, fill_value)
    m = matrices.to(device=x.device, dtype=torch.float32)
    xs = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    ys = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    if separable:
        gx = _axis(m[:, 0, 0].view(b, 1, 1) * xs + m[:, 0, 2].view(b, 1, 1), w, fill_mode, interpolation)
        gy = _axis(m[:, 1, 1].view(b, 1, 1) * ys + m[:, 1, 2].view(b, 1, 1), h, fill_mode, interpolation)
    else:
        in_x = m[:, 0, 0].view(b, 1, 1) * xs + m[:, 0, 1].view(b, 1, 1) * ys + m[:, 0, 2].view(b, 1, 1)
        in_y = m[:, 1, 0].view(b, 1, 1) * xs + m[:, 1, 1].view(b, 1, 1) * ys + m[:, 1, 2].view(b, 1, 1)
        gx = _axis(in_x, w, fill_mode, interpolation)
        gy = _axis(in_y, h, fill_mode, interpolation)
    grid = torch.empty(b, h, w, 2, device=x.device, dtype=x.dtype)
    grid[..., 0] = gx
    grid[..., 1] = gy
    shift = fill_mode == "constant" and fill_value != 0.0
    src = x - fill_value if shift else x
    out = F.grid_sample(src, grid, mode=interpolation, padding_mode="zeros", align_corners=True)
    return out + fill_value if shift else out


# ------------------------------------------------------------------------------------------
# matrices (output pixel → input pixel), one per image
# ------------------------------------------------------------------------------------------
def _stack(a, b_, c, d, e, f) -> torch.Tensor:
    return torch.stack((torch.stack((a, b_, c), -1), torch.stack((d, e, f), -1)), -2)


def translation_matrices(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift by (dx, dy) pixels; positive = right / down."""
    one, zero = torch.ones_like(dx), torch.zeros_like(dx)
    return _stack(one, zero, -dx, zero, one, -dy)


def rotation_matrices(angles: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Rotation about the image centre by ``angles`` radians, positive = counter-clockwise."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    return _stack(cos, -sin, x_off, sin, cos, y_off)


def zoom_matrices(zx: torch.Tensor, zy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zoom about the centre; z > 1 zooms out (the image gets smaller), z < 1 zooms in."""
    zero = torch.zeros_like(zx)
    return _stack(zx, zero, (w - 1) / 2.0 * (1.0 - zx), zero, zy, (h - 1) / 2.0 * (1.0 - zy))


def shear_matrices(angles: torch.Tensor, axis: str) -> torch.Tensor:
    """Shear about the top-left corner. x: [1, −sin a, 0; 0, 1, 0]; y (fixed, symmetric):
    [1, 0, 0; −sin a, 1, 0]; xy: [1, −sin a, 0; 0, cos a, 0] (the reference's matrices)."""
    one, zero = torch.ones_like(angles), torch.zeros_like(angles)
    s = -torch.sin(angles)
    if axis == "x":
        return _stack(one, s, zero, zero, one, zero)
    if axis == "y":
        return _stack(one, zero, zero, s, one, zero)
    return _stack(one, s, zero, zero, torch.cos(angles), zero)


def crop_matrices(x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor,
                  h: int, w: int) -> torch.Tensor:
    """``tf.image.crop_and_resize`` of normalised boxes back to the full (h, w) size."""
    zero = torch.zeros_like(x1)
    return _stack(x2 - x1, zero, x1 * (w - 1), zero, y2 - y1, y1 * (h - 1))


# ------------------------------------------------------------------------------------------
# registered functions
# ------------------------------------------------------------------------------------------
def _fill_args() -> dict:
    return {
        "fill_mode": arg("reflect", choice(*FILL_MODES)),
        "interpolation": arg("bilinear", choice(*INTERPOLATIONS)),
        "fill_value": arg(0.0, nonneg_number()),
        "change_rate": arg(1.0, rate()),
    }


def _fill_ranged(p: SimpleNamespace, key: str, pixels_range: tuple[float, float]) -> None:
    """``fill_value`` is a pixel value in rescaled units: at most the top of the pixel range."""
    if p.fill_value > pixels_range[1]:
        raise ConfigError(f"{key}.fill_value", f"a pixel value in rescaled units, expecting a number in "
                                               f"[0, {pixels_range[1]:g}] (the pixel range is {_fmt(pixels_range)}, "
                                               f"preprocessing.rescaling); got {_fmt(p.fill_value)}")


def _sample(x: torch.Tensor, m: torch.Tensor, p: SimpleNamespace, separable: bool = False) -> torch.Tensor:
    return affine_sample(x, m, p.fill_mode, p.interpolation, float(p.fill_value), separable=separable)


@register_augmentation("random_flip", {
    "mode": arg(check=choice("horizontal", "vertical", "horizontal_and_vertical")),
    "change_rate": arg(0.5, rate()),
}, example={"mode": "horizontal_and_vertical", "change_rate": 1.0})
def random_flip(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Exact mirror: ``horizontal`` (left-right), ``vertical`` (up-down) or
    ``horizontal_and_vertical`` (per image one of {horizontal, vertical, both}, uniformly).
    Default change_rate 0.5."""
    if p.mode == "horizontal":
        return torch.flip(x, dims=[3])
    if p.mode == "vertical":
        return torch.flip(x, dims=[2])
    k = randint(ctx, x, 0, 2).view(-1, 1, 1, 1)  # 0: horizontal, 1: vertical, 2: both
    y = torch.where(k != 1, torch.flip(x, dims=[3]), x)
    return torch.where(k != 0, torch.flip(y, dims=[2]), y)


@register_augmentation("random_translation", {
    "width_factor": arg(check=symmetric(1.0)),
    "height_factor": arg(check=symmetric(1.0)),
    **_fill_args(),
}, example={"width_factor": 0.2, "height_factor": 0.2}, ranged=_fill_ranged)
def random_translation(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Shift by U(width_factor)·width and U(height_factor)·height pixels per image (scalar v
    means (−v, v)); positive = right / down."""
    _, _, h, w = x.shape
    dx = uniform(ctx, x, *p.width_factor) * w
    dy = uniform(ctx, x, *p.height_factor) * h
    return _sample(x, translation_matrices(dx, dy), p, separable=True)


@register_augmentation("random_rotation", {
    "factor": arg(check=symmetric(1.0)),
    **_fill_args(),
}, example={"factor": 0.075}, ranged=_fill_ranged)
def random_rotation(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Angle U(f0, f1)·2π radians per image (scalar v means (−v, v)); positive =
    counter-clockwise; about the image centre."""
    _, _, h, w = x.shape
    angles = uniform(ctx, x, *p.factor) * (2.0 * math.pi)
    return _sample(x, rotation_matrices(angles, h, w), p)


def _shear(axis: str):
    def kernel(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
        angles = uniform(ctx, x, *p.factor) * (2.0 * math.pi)
        return _sample(x, shear_matrices(angles, axis), p)

    return kernel


_SHEAR_DOC = ("Shear angle U(f0, f1)·2π per image (scalar v means (−v, v)), about the top-left "
              "corner. Matrix {m}.")
for _name, _shear_axis, _m in (("random_shear", "xy", "[1, −sin a, 0; 0, cos a, 0]"),
                         ("random_shear_x", "x", "[1, −sin a, 0; 0, 1, 0]"),
                         ("random_shear_y", "y", "[1, 0, 0; −sin a, 1, 0] (fixed: the reference uses cos a)")):
    _k = _shear(_shear_axis)
    _k.__name__ = _name
    _k.__doc__ = _SHEAR_DOC.format(m=_m)
    register_augmentation(_name, {"factor": arg(check=symmetric(1.0)), **_fill_args()},
                          example={"factor": 0.075}, ranged=_fill_ranged)(_k)


@register_augmentation("random_zoom", {
    "width_factor": arg(check=number("float", lo=-1.0, hi=MAX_IMAGE_SIDE - 1.0, scalar_lo=0.0, scalar_hi=1.0,
                                     scalar=lambda v: (-v, v))),
    "height_factor": arg(None, symmetric(1.0)),
    **_fill_args(),
}, example={"width_factor": 0.3}, ranged=_fill_ranged)
def random_zoom(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Zoom z ~ U(1 + lo, 1 + hi) per image (scalar v means (−v, v)) about the centre;
    z > 1 zooms out, z < 1 zooms in. Without ``height_factor`` the same z is used on both
    axes (no distortion). ``width_factor`` values in [−1, 8191] (zoomed out by 8,192 the largest
    image is one pixel), ``height_factor`` values in [−1, 1] (the reference's bound); a scalar in [0, 1]."""
    _, _, h, w = x.shape
    lo, hi = p.width_factor
    zx = uniform(ctx, x, 1.0 + lo, 1.0 + hi)
    if p.height_factor is None:
        zy = zx
    else:
        zy = uniform(ctx, x, 1.0 + p.height_factor[0], 1.0 + p.height_factor[1])
    return _sample(x, zoom_matrices(zx, zy, h, w), p, separable=True)
