"""Erasing augmentations (the reference's ``random_erasing.py``), vectorised over the batch.

Colours are chosen in [0, 255] space and converted to ``pixels_range``; pixels outside the
erased areas are returned untouched (the reference round-trips whole images through int32).
RGB images whose three planes are identical ("gray-looking") get gray fills, as in the
reference; 1-channel images are supported (the README documents gray fills for them).

Deliberate differences from the reference:

- rectangles cover the half-open pixel ranges [x1, x2) × [y1, y2) (the reference's inclusive
  bounds make every rectangle one pixel wider and taller than its sampled size);
- rectangles beyond the sampled count are simply absent (the reference collapses them to a
  single erased pixel at the top-left corner);
- ``random_rectangle_erasing`` uses the defaults the reference README documents (the
  function's own): nrec 1, area (0.05, 0.4), wh_ratio (0.3, 2.0). The image-classification MDA
  overrides them with nrec (0, 3), area (0.05, 0.2), wh_ratio (0.2, 1.5).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch

from stmclf.augment._common import Context, from_255, rand, randint, uniform
from stmclf.augment.registry import (MAX_IMAGE_SIDE, ImageSize, _fmt, arg, choice, color_spec, integer, number, rate,
                                     register_augmentation)
from stmclf.errors import ConfigError

FILL_METHODS = ("uniform", "random", "mosaic")


def _color_check(p: SimpleNamespace, key: str) -> SimpleNamespace:
    if p.color is not None and p.fill_method != "uniform":
        raise ConfigError(f"{key}.color", f"only applicable to fill_method 'uniform' (fill_method is {p.fill_method!r})")
    return p


def _gray_looking(x: torch.Tensor) -> torch.Tensor:
    """(B,) bool: RGB images whose three planes are identical."""
    if x.shape[1] != 3:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    flat = x.flatten(2)
    return ((flat[:, 0] == flat[:, 1]) & (flat[:, 0] == flat[:, 2])).all(1)


def _uniform_color(color: Any, c: int, x: torch.Tensor) -> torch.Tensor:
    """(C,) fill colour in [0, 255] for the 'uniform' method (None → black)."""
    if color is None:
        vals = [0.0] * c
    elif isinstance(color, tuple):
        if c == 3:
            vals = [float(v) for v in color]
        else:
            vals = [float(round(0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]))] * c
    else:
        vals = [float(color)] * c
    out = x.new_empty(c)  # filled on the device: no host→device copy
    for i, v in enumerate(vals):
        out[i] = v
    return out


def _grayify(colors: torch.Tensor, gray: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Replace all channels by channel 0 where ``gray`` (B,) is set."""
    if colors.shape[channel_dim] != 3:
        return colors
    first = colors.narrow(channel_dim, 0, 1).expand_as(colors)
    shape = [-1] + [1] * (colors.dim() - 1)
    return torch.where(gray.view(shape), first, colors)


def _apply_fill(x: torch.Tensor, erased: torch.Tensor, fill: torch.Tensor, ctx: Context) -> torch.Tensor:
    """``erased`` (B, 1, H, W) bool, ``fill`` broadcastable to x in [0, 255]."""
    return torch.where(erased, from_255(fill, ctx.pixels_range), x)


# ------------------------------------------------------------------------------------------
# rectangles
# ------------------------------------------------------------------------------------------
def _rect_finalize(p: SimpleNamespace, key: str) -> SimpleNamespace:
    if p.nrec[1] < 1:
        raise ConfigError(f"{key}.nrec", "expecting an integer >= 1 or a tuple (n1, n2) with n1 >= 0; "
                          f"got {p.nrec[1] if p.nrec[0] == p.nrec[1] else p.nrec}")
    return _color_check(p, key)


MAX_RECTANGLES = 100
"""``random_rectangle_erasing.nrec`` at most: each rectangle is a full-image mask plane of every image."""


@register_augmentation("random_rectangle_erasing", {
    "nrec": arg(1, number("int", lo=0, hi=MAX_RECTANGLES, scalar=lambda v: (v, v))),
    "area": arg((0.05, 0.4), number("float", lo=0.0, hi=1.0, scalar=lambda v: (v, v))),
    "wh_ratio": arg((0.3, 2.0), number("float", lo=0.0, hi=MAX_IMAGE_SIDE, scalar=lambda v: (v, v))),
    "fill_method": arg("random", choice(*FILL_METHODS)),
    "color": arg(None, color_spec()),
    "change_rate": arg(1.0, rate()),
    "mode": arg("image", choice("image", "batch")),
}, finalize=_rect_finalize, example={"nrec": (0, 4)})
def random_rectangle_erasing(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Erases n ~ U{n0..n1} rectangles per image (``mode: image``) or one set shared by the
    batch (``mode: batch``). Each rectangle has an area fraction ~ U(area) of the image and a
    width/height ratio ~ U(wh_ratio); its centre is uniform over the image; it is clipped to the
    image. Where rectangles overlap the highest-numbered one wins. Fill: ``uniform`` (``color``,
    default black), ``random`` (one random colour per rectangle) or ``mosaic`` (random pixels).
    Defaults are the README's: nrec 1, area (0.05, 0.4), wh_ratio (0.3, 2.0)."""
    b, c, h, w = x.shape
    n_lo, n_hi = p.nrec
    planes = n_hi
    if planes == 0:
        return x
    nb = b if p.mode == "image" else 1
    area = uniform(ctx, x, *p.area, nb, planes) * float(h * w)
    ratio = uniform(ctx, x, *p.wh_ratio, nb, planes).clamp_min(1e-6)
    cx = randint(ctx, x, 0, w, nb, planes).to(x.dtype)
    cy = randint(ctx, x, 0, h, nb, planes).to(x.dtype)
    rw = torch.sqrt(ratio * area)
    rh = rw / ratio
    x1 = torch.round(cx - rw / 2).clamp_min(0)
    x2 = torch.round(cx + rw / 2).clamp_max(w)
    y1 = torch.round(cy - rh / 2).clamp_min(0)
    y2 = torch.round(cy + rh / 2).clamp_max(h)
    count = randint(ctx, x, n_lo, n_hi, nb, 1)
    active = torch.arange(planes, device=x.device).view(1, planes) < count  # (nb, P)
    cols = torch.arange(w, device=x.device, dtype=x.dtype)
    rows = torch.arange(h, device=x.device, dtype=x.dtype)
    in_x = (cols >= x1.unsqueeze(-1)) & (cols < x2.unsqueeze(-1))  # (nb, P, W)
    in_y = ((rows >= y1.unsqueeze(-1)) & (rows < y2.unsqueeze(-1))) & active.unsqueeze(-1)  # (nb, P, H)
    mask = in_y.unsqueeze(-1) & in_x.unsqueeze(-2)  # (nb, P, H, W)
    number_ = torch.arange(1, planes + 1, device=x.device, dtype=torch.int64).view(1, planes, 1, 1)
    winner = (mask.to(torch.int64) * number_).amax(1)  # (nb, H, W), 0 = not erased
    erased = (winner > 0).unsqueeze(1)
    gray = _gray_looking(x)
    if p.fill_method == "uniform":
        fill = _uniform_color(p.color, c, x).view(1, c, 1, 1)
    elif p.fill_method == "random":
        colors = randint(ctx, x, 0, 255, nb, planes + 1, c).to(x.dtype)  # index 0 unused
        idx = winner.view(nb, 1, h * w).expand(nb, c, h * w)
        fill = colors.transpose(1, 2).gather(2, idx).view(nb, c, h, w)
    else:
        fill = randint(ctx, x, 0, 255, nb, c, h, w).to(x.dtype)
    if erased.shape[0] != b:
        erased = erased.expand(b, 1, h, w)
    fill = _grayify(fill.expand(b, *fill.shape[1:]), gray, 1)
    return _apply_fill(x, erased, fill, ctx)


# ------------------------------------------------------------------------------------------
# grid cells
# ------------------------------------------------------------------------------------------
def _grid_sized(p: SimpleNamespace, key: str, size: ImageSize) -> None:
    """At most one cell per pixel: ``ncells_x`` ≤ width, ``ncells_y`` ≤ height."""
    for name, cells, side, what in (("ncells_x", p.ncells_x, size.width, "width"),
                                    ("ncells_y", p.ncells_y, size.height, "height")):
        if cells > side:
            raise ConfigError(f"{key}.{name}", f"must be at most the image {what}, {side} (one cell per pixel; "
                                               f"the model input is {size}); got {_fmt(cells)}")


@register_augmentation("random_grid_cell_erasing", {
    "ncells_x": arg(5, integer(lo=1, hi=MAX_IMAGE_SIDE)),
    "ncells_y": arg(5, integer(lo=1, hi=MAX_IMAGE_SIDE)),
    "fill_method": arg("uniform", choice(*FILL_METHODS)),
    "color": arg(None, color_spec()),
    "erasing_prob": arg(0.2, rate()),
    "change_rate": arg(1.0, rate()),
}, finalize=_color_check, example={"fill_method": "random"}, sized=_grid_sized)
def random_grid_cell_erasing(x: torch.Tensor, p: SimpleNamespace, ctx: Context) -> torch.Tensor:
    """Places an ``ncells_x`` × ``ncells_y`` grid (cells of ceil(W/ncells_x) × ceil(H/ncells_y)
    pixels, the last ones clipped) and erases each cell with probability ``erasing_prob``.
    Fill as for rectangle erasing (default ``uniform`` black). ``color`` is referenced by the
    README's fill-method text though missing from its table; it is accepted here. Documented by
    the reference README, not dispatched by its image-classification code."""
    b, c, h, w = x.shape
    cell_w = math.ceil(w / p.ncells_x)
    cell_h = math.ceil(h / p.ncells_y)
    col_cell = torch.arange(w, device=x.device) // cell_w
    row_cell = torch.arange(h, device=x.device) // cell_h
    cells = rand(ctx, x, b, p.ncells_y, p.ncells_x) < p.erasing_prob
    erased = cells[:, row_cell.view(h, 1), col_cell.view(1, w)].unsqueeze(1)  # (B, 1, H, W)
    gray = _gray_looking(x)
    if p.fill_method == "uniform":
        fill = _uniform_color(p.color, c, x).view(1, c, 1, 1).expand(b, c, 1, 1)
    elif p.fill_method == "random":
        colors = randint(ctx, x, 0, 255, b, c, p.ncells_y, p.ncells_x).to(x.dtype)
        fill = colors[:, :, row_cell.view(h, 1), col_cell.view(1, w)]
    else:
        fill = randint(ctx, x, 0, 255, b, c, h, w).to(x.dtype)
    return _apply_fill(x, erased, _grayify(fill, gray, 1), ctx)
