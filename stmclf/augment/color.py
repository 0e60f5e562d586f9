"""Colour augmentations (the reference's ``random_color.py``), vectorised over the batch.

Every kernel receives float NCHW images in ``pixels_range`` and returns the augmented batch
for all images; the pipeline mixes in originals according to ``change_rate``. Functions that
the reference computes in [0, 1] or [0, 255] space convert from ``pixels_range``, apply and
convert back. Random values are drawn per image (``torch.rand`` on the images' device).

Deliberate differences from the reference (all only matter for out-of-range values):

- ``random_hue`` / ``random_hsv`` wrap the shifted hue around the colour circle
  (``h mod 1``). The reference feeds the unwrapped hue to ``tf.image.hsv_to_rgb``, whose
  formula saturates outside [0, 1] and turns every hue pushed past red into pure red.
- ``random_saturation`` / ``random_value`` / ``random_hsv`` clamp the shifted S and V to
  [0, 1] before converting back to RGB (the reference converts the out-of-range values and
  clips the RGB result, which e.g. raises the darkest channel when S goes negative).
- Functions that the reference runs on uint8-cast values (posterize, solarize) round instead
  of truncating, so a value like 254.99996 that came from rescaling 255 stays 255.
- Unchanged images (``change_rate`` < 1) are returned bit-exact: the reference sends them
  through the same quantising remaps as the augmented ones.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from stmclf.augment._common import (Context, clip, from_255, from_unit, per_image, randint, to_255,
                                    to_unit, uniform)
from stmclf.augment.registry import _fmt as _fmt_value
from stmclf.augment.registry import arg, number, rate, register_augmentation, symmetric
from stmclf.errors import ConfigError

__all__ = ["rgb_to_hsv", "hsv_to_rgb", "adjust_contrast", "sharpen_255", "equalize_255", "autocontrast_255"]


def _sym(v: float) -> tuple[float, float]:
    return (-v, v)


CONTRAST_MAX = 255.0
"""Largest contrast multiplier |α|: 255 stretches a difference of one level (of 255) over the range."""
GAMMA_MAX = 1600.0
"""Largest gamma: (254/255)**1600 < 0.5/255, every 8-bit value below 255 is already black."""
SHARPNESS_MAX = 255.0 * 13.0
"""Largest sharpness factor: the smallest non-zero difference to the 3×3 smooth is 1/13 of a level."""


# ------------------------------------------------------------------------------------------
# deterministic building blocks (exposed for tests and custom functions)
# ------------------------------------------------------------------------------------------
def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → HSV in [0, 1] (``tf.image.rgb_to_hsv``'s formulas)."""
    r, g, b = rgb.unbind(1)
    v, _ = rgb.max(1)
    mn, _ = rgb.min(1)
    rng = v - mn
    s = torch.where(v > 0, rng / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    safe = torch.where(rng > 0, rng, torch.ones_like(rng))
    norm = 1.0 / (6.0 * safe)
    h = torch.where(r == v, norm * (g - b),
                    torch.where(g == v, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0))
    h = torch.where(rng > 0, h, torch.zeros_like(h))
    h = torch.where(h < 0, h + 1.0, h)
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV → RGB (``tf.image.hsv_to_rgb``'s formulas; hue expected in [0, 1])."""
    h, s, v = hsv.unbind(1)
    dh = h * 6.0
    dr = ((dh - 3.0).abs() - 1.0).clamp(0.0, 1.0)
    dg = (2.0 - (dh - 2.0).abs()).clamp(0.0, 1.0)
    db = (2.0 - (dh - 4.0).abs()).clamp(0.0, 1.0)
    oms = 1.0 - s
    return torch.stack(((oms + s * dr) * v, (oms + s * dg) * v, (oms + s * db) * v), 1)


def adjust_contrast(x: torch.Tensor, alpha: torch.Tensor, pr: tuple[float, float]) -> torch.Tensor:
    """``alpha·(x − m) + m`` with ``m`` the per-image per-channel mean, clipped to ``pr``."""
    m = x.mean(dim=(2, 3), keepdim=True)
    return clip(torch.addcmul(m, per_image(alpha), x - m), pr)


def sharpen_255(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL-style sharpness in [0, 255] space: ``v + f·(v − smooth(v))`` rounded, with the
    one-pixel border kept (the 3×3 SMOOTH filter is only applied where it fits)."""
    b, c, h, w = v.shape
    if h < 3 or w < 3:
        return v
    kernel = torch.full((c, 1, 3, 3), 1.0 / 13.0, device=v.device, dtype=v.dtype)  # no host→device copy
    kernel[:, :, 1, 1] = 5.0 / 13.0
    interior = F.conv2d(v, kernel, groups=c)
    diff = F.pad(v[:, :, 1:-1, 1:-1] - interior, (1, 1, 1, 1))
    return torch.addcmul(v, per_image(factor), diff).clamp_(0.0, 255.0).round_()


def equalize_255(v: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per image and channel on values in [0, 255] (rounded first)."""
    b, c, h, w = v.shape
    idx = v.round().clamp(0, 255).to(torch.int64).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=v.device, dtype=torch.int64)
    hist.scatter_add_(1, idx, torch.ones_like(idx))
    last = 255 - (hist > 0).flip(1).to(torch.uint8).argmax(1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255
    excl = hist.cumsum(1) - hist
    lut = ((excl + step // 2) // step.clamp_min(1)).clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=v.device).expand(b * c, 256))
    return lut.gather(1, idx).reshape(b, c, h, w).to(v.dtype)


def autocontrast_255(v: torch.Tensor, cutoff: int) -> torch.Tensor:
    """Per image and channel: drop ``cutoff``% of the darkest and lightest pixels, remap the
    remaining [lo, hi] to [0, 255] (clipped); channels with hi <= lo are left unchanged."""
    b, c, h, w = v.shape
    n = h * w
    cut = (n * cutoff) // 100
    if cutoff == 0 or 2 * cut >= n:
        return v
    srt = v.reshape(b, c, n).sort(-1).values
    lo = srt[..., cut].view(b, c, 1, 1)
    hi = srt[..., n - 1 - cut].view(b, c, 1, 1)
    ok = hi > lo
    scale = 255.0 / torch.where(ok, hi - lo, torch.ones_like(hi))
    out = ((v - lo) * scale).clamp_(0.0, 255.0)
    return torch.where(ok, out, v)


# ------------------------------------------------------------------------------------------
# registered functions
# ------------------------------------------------------------------------------------------
@register_augmentation("random_contrast", {
    "factor": arg(check=number("float", lo=-CONTRAST_MAX, hi=CONTRAST_MAX, scalar_lo=0.0,
                               scalar_hi=CONTRAST_MAX - 1.0, scalar=lambda v: (1.0 - v, 1.0 + v))),
    "change_rate": arg(1.0, rate()),
}, example={"factor": 0.7})
def random_contrast(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Contrast multiplier α ~ U(1−v, 1+v) for a scalar v (U(a, b) for a tuple), applied
    around each image's per-channel mean, then clipped to pixels_range. (The README says a
    scalar means (−v, v); the code, which we follow, uses (1−v, 1+v).)"""
    alpha = uniform(ctx, x, *p.factor)
    return adjust_contrast(x, alpha, ctx.pixels_range)


def _brightness_ranged(p: SimpleNamespace, key: str, pixels_range: tuple[float, float]) -> None:
    """An offset at most the width of the pixel range (a larger one turns every image white or black)."""
    width = pixels_range[1] - pixels_range[0]
    if max(abs(v) for v in p.factor) > width:
        raise ConfigError(f"{key}.factor", f"the offsets are in rescaled units and must be in [-{width:g}, {width:g}], "
                                           f"the width of the pixel range {_fmt_value(pixels_range)} "
                                           f"(preprocessing.rescaling); got {_fmt_value(p.factor)}")


@register_augmentation("random_brightness", {
    "factor": arg(check=number("float", scalar_lo=0.0, scalar=_sym)),
    "change_rate": arg(1.0, rate()),
}, example={"factor": 0.4}, ranged=_brightness_ranged)
def random_brightness(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Adds β ~ U(−v, v) (or U(a, b)) per image, in rescaled units, then clips."""
    beta = uniform(ctx, x, *p.factor)
    return clip(x + per_image(beta), ctx.pixels_range)


@register_augmentation("random_gamma", {
    "gamma": arg(check=number("float", tuples=2, lo=0.0, hi=GAMMA_MAX)),
    "change_rate": arg(1.0, rate()),
}, example={"gamma": (0.2, 2.0)}, aliases=("random_gamma_adjust",))
def random_gamma(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """In [0, 1] space out = x**γ with γ ~ U(g0, g1) per image (tuple only, values >= 0).
    Also registered as ``random_gamma_adjust``, the name the reference README uses."""
    g = uniform(ctx, x, *p.gamma)
    u = to_unit(x, ctx.pixels_range)
    return from_unit(u.pow(per_image(g)), ctx.pixels_range)


def _hsv_shift(x: torch.Tensor, ctx: Context, dh=None, ds=None, dv=None) -> torch.Tensor:
    hsv = rgb_to_hsv(to_unit(x, ctx.pixels_range))
    h, s, v = hsv.unbind(1)
    if dh is not None:
        h = h + dh.view(-1, 1, 1)
        h = h - torch.floor(h)
    if ds is not None:
        s = (s + ds.view(-1, 1, 1)).clamp(0.0, 1.0)
    if dv is not None:
        v = (v + dv.view(-1, 1, 1)).clamp(0.0, 1.0)
    rgb = hsv_to_rgb(torch.stack((h, s, v), 1)).clamp_(0.0, 1.0)
    return from_unit(rgb, ctx.pixels_range)


@register_augmentation("random_hue", {
    "delta": arg(check=symmetric(1.0)),
    "change_rate": arg(1.0, rate()),
}, colour_only=True, example={"delta": 0.1})
def random_hue(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """RGB only. Adds δ ~ U(−v, v) to the hue (HSV space, [0, 1] units; wrapped modulo 1)."""
    return _hsv_shift(x, ctx, dh=uniform(ctx, x, *p.delta))


@register_augmentation("random_saturation", {
    "delta": arg(check=symmetric(1.0)),
    "change_rate": arg(1.0, rate()),
}, colour_only=True, example={"delta": 0.2})
def random_saturation(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """RGB only. Adds δ ~ U(−v, v) to the saturation (clamped to [0, 1])."""
    return _hsv_shift(x, ctx, ds=uniform(ctx, x, *p.delta))


@register_augmentation("random_value", {
    "delta": arg(check=symmetric(1.0)),
    "change_rate": arg(1.0, rate()),
}, colour_only=True, example={"delta": 0.2})
def random_value(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """RGB only. Adds δ ~ U(−v, v) to the value (clamped to [0, 1])."""
    return _hsv_shift(x, ctx, dv=uniform(ctx, x, *p.delta))


@register_augmentation("random_hsv", {
    "hue_delta": arg(check=symmetric(1.0)),
    "saturation_delta": arg(check=symmetric(1.0)),
    "value_delta": arg(check=symmetric(1.0)),
    "change_rate": arg(1.0, rate()),
}, colour_only=True, example={"hue_delta": 0.1, "saturation_delta": 0.2, "value_delta": 0.2})
def random_hsv(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """RGB only. Hue, saturation and value offsets together, each sampled per image. The
    argument names are the code's (``hue_delta``...); the README's ``delta_hue`` spelling
    is not accepted by the reference either."""
    return _hsv_shift(x, ctx, dh=uniform(ctx, x, *p.hue_delta), ds=uniform(ctx, x, *p.saturation_delta),
                      dv=uniform(ctx, x, *p.value_delta))


@register_augmentation("random_rgb_to_hsv", {"change_rate": arg(0.25, rate())}, colour_only=True,
                       example={"change_rate": 1.0})
def random_rgb_to_hsv(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """RGB only. Replaces the RGB planes by the H, S, V planes ([0, 1] mapped to pixels_range)."""
    return from_unit(rgb_to_hsv(to_unit(x, ctx.pixels_range)).clamp_(0.0, 1.0), ctx.pixels_range)


@register_augmentation("random_rgb_to_grayscale", {"change_rate": arg(0.25, rate())}, colour_only=True,
                       example={"change_rate": 1.0})
def random_rgb_to_grayscale(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """RGB only. 0.299·R + 0.587·G + 0.114·B replicated to the 3 channels (the weights sum
    to 1, so this is computed directly in pixels_range)."""
    g = x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
    g = clip(g, ctx.pixels_range)
    return g.expand_as(x).contiguous(memory_format=_fmt(x))


def _fmt(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if (x.dim() == 4 and not x.is_contiguous()
                                   and x.is_contiguous(memory_format=torch.channels_last)) else torch.contiguous_format


@register_augmentation("random_sharpness", {
    "factor": arg(check=number("float", lo=0.0, hi=SHARPNESS_MAX, scalar=lambda v: (0.0, v))),
    "change_rate": arg(1.0, rate()),
}, example={"factor": (1.0, 4.0)})
def random_sharpness(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """PIL-style sharpening with f ~ U(0, v) (or U(a, b)), values >= 0: in [0, 255] space
    ``x + f·(x − smooth(x))`` with the 3×3 SMOOTH kernel (border pixels kept), rounded."""
    f = uniform(ctx, x, *p.factor)
    return from_255(sharpen_255(to_255(x, ctx.pixels_range), f), ctx.pixels_range)


@register_augmentation("random_posterize", {
    "bits": arg(check=number("int", tuples=2, lo=1, hi=8)),
    "change_rate": arg(1.0, rate()),
}, example={"bits": (1, 8)})
def random_posterize(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Keeps the top b bits of each 8-bit value, b ~ U{b0..b1} per image (tuple in [1, 8])."""
    bits = randint(ctx, x, *p.bits)
    step = per_image(torch.pow(2.0, (8 - bits).to(x.dtype)))
    v = to_255(x, ctx.pixels_range).round_()
    return from_255(torch.floor(v / step) * step, ctx.pixels_range)


@register_augmentation("random_invert", {"change_rate": arg(0.25, rate())}, example={"change_rate": 1.0})
def random_invert(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """1 − x in [0, 1] space, i.e. lo + hi − x in pixels_range."""
    lo, hi = ctx.pixels_range
    return (lo + hi) - x


@register_augmentation("random_solarize", {"change_rate": arg(0.25, rate())}, example={"change_rate": 1.0})
def random_solarize(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Threshold t ~ U{0..255} per image; in [0, 255] space pixels >= t become 255 − p."""
    t = per_image(randint(ctx, x, 0, 255).to(x.dtype))
    v = to_255(x, ctx.pixels_range)
    return from_255(torch.where(v.round() >= t, 255.0 - v, v), ctx.pixels_range)


@register_augmentation("random_autocontrast", {
    "cutoff": arg(10, number("int", tuples=0, lo=0, hi=100)),
    "change_rate": arg(0.25, rate()),
}, colour_only=True, example={"change_rate": 1.0})
def random_autocontrast(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """RGB only (as in the reference). Per image and channel, ``cutoff``% of the darkest and
    lightest pixels are dropped and [lo, hi] is stretched to [0, 255]; cutoff 0 leaves the
    images unchanged (README)."""
    return from_255(autocontrast_255(to_255(x, ctx.pixels_range), p.cutoff), ctx.pixels_range)


@register_augmentation("random_equalize", {"change_rate": arg(0.25, rate())}, example={"change_rate": 1.0})
def random_equalize(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Histogram equalisation per image and channel (PIL ``ImageOps.equalize`` on 8-bit values).
    Documented by the reference README (default change_rate 0.25) but not dispatched by its
    image-classification code; implemented here from the README."""
    return from_255(equalize_255(to_255(x, ctx.pixels_range)), ctx.pixels_range)
