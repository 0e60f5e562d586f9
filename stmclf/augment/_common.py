"""Shared helpers for the batch kernels: the call context, random sampling on the images'
device, and conversions between ``pixels_range`` and the [0, 1] / [0, 255] spaces some
reference functions work in, and the ``pixels_range`` check."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from stmclf.augment.registry import _fmt, _is_number
from stmclf.errors import ConfigError


def check_pixels_range(pixels_range: Any) -> tuple[float, float]:
    """``pixels_range`` (offset, 255·scale + offset) as 2 increasing floats, or a ConfigError."""
    if (not isinstance(pixels_range, (list, tuple)) or len(pixels_range) != 2
            or not all(_is_number(v) for v in pixels_range) or not pixels_range[1] > pixels_range[0]):
        raise ConfigError("preprocessing.rescaling", "the pixel range (offset, 255·scale + offset) must be 2 "
                          f"increasing numbers (scale > 0); got {_fmt(pixels_range)}")
    return (float(pixels_range[0]), float(pixels_range[1]))


@dataclass
class Context:
    """What a kernel may use besides the images and its arguments.

    ``state`` is private to one pipeline step and survives between calls (periodic resizing
    keeps its current size there). ``batch_index`` counts the pipeline's calls from 0.
    """

    pixels_range: tuple[float, float]
    generator: Optional[torch.Generator] = None
    batch_index: int = 0
    epoch: Optional[int] = None
    state: dict[str, Any] = field(default_factory=dict)


def rand(ctx: Context, x: torch.Tensor, *shape: int) -> torch.Tensor:
    """U[0, 1) float32 on the images' device."""
    return torch.rand(shape, device=x.device, generator=ctx.generator, dtype=torch.float32)


def uniform(ctx: Context, x: torch.Tensor, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """U[lo, hi) float32 on the images' device (one value per image by default)."""
    if not shape:
        shape = (x.shape[0],)
    return rand(ctx, x, *shape).mul_(hi - lo).add_(lo)


def randint(ctx: Context, x: torch.Tensor, lo: int, hi: int, *shape: int) -> torch.Tensor:
    """Integers uniform in {lo, ..., hi} (both included), int64 on the images' device."""
    if not shape:
        shape = (x.shape[0],)
    return torch.randint(int(lo), int(hi) + 1, shape, device=x.device, generator=ctx.generator)


def host_randint(ctx: Context, lo: int, hi: int) -> int:
    """One integer in {lo, ..., hi} drawn on the host (for values that decide a shape, such as
    a blur kernel size). Uses the caller's generator when it lives on the CPU, otherwise
    torch's default CPU generator (seeded by ``seed_everything``). Never syncs the device."""
    gen = ctx.generator if ctx.generator is not None and ctx.generator.device.type == "cpu" else None
    return int(torch.randint(int(lo), int(hi) + 1, (1,), generator=gen)[0])


def per_image(v: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1, 1) for broadcasting over NCHW."""
    return v.view(-1, 1, 1, 1)


def to_unit(x: torch.Tensor, pr: tuple[float, float]) -> torch.Tensor:
    """pixels_range → [0, 1] (clipped, like the reference's remap)."""
    lo, hi = pr
    if (lo, hi) == (0.0, 1.0):
        return x.clamp(0.0, 1.0)
    return ((x - lo) * (1.0 / (hi - lo))).clamp_(0.0, 1.0)


def from_unit(u: torch.Tensor, pr: tuple[float, float]) -> torch.Tensor:
    """[0, 1] → pixels_range."""
    lo, hi = pr
    if (lo, hi) == (0.0, 1.0):
        return u
    return u * (hi - lo) + lo


def to_255(x: torch.Tensor, pr: tuple[float, float]) -> torch.Tensor:
    lo, hi = pr
    return ((x - lo) * (255.0 / (hi - lo))).clamp_(0.0, 255.0)


def from_255(v: torch.Tensor, pr: tuple[float, float]) -> torch.Tensor:
    lo, hi = pr
    return v * ((hi - lo) / 255.0) + lo


def clip(x: torch.Tensor, pr: tuple[float, float]) -> torch.Tensor:
    return x.clamp(pr[0], pr[1])
