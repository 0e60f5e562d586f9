"""``build_augmentation``: the YAML ``data_augmentation`` section → one callable batch pipeline.

The section is validated when the pipeline is built (unknown function or argument, bad value,
``pixels_range`` set by the user, colour-only function on grayscale input) and every error is a
one-line :class:`~stmclf.errors.ConfigError` naming the key path. Functions run in YAML order,
each at most once, on the whole batch on its device.

``change_rate`` is handled here, once, for every function: each image is independently kept
augmented with probability ``change_rate`` (``torch.where`` of the augmented and original
batches); 1.0 uses the augmented batch directly and 0.0 skips the function.

The pipeline is a plain picklable object (no parameters, no ``nn.Module``): it stores function
names and validated arguments and looks the kernels up in the registry when called.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Optional

import torch

from stmclf.augment._common import Context, check_pixels_range
from stmclf.augment.custom import build_custom_augmentation
from stmclf.augment.kernels import AUGMENTATIONS
from stmclf.augment.registry import ImageSize, _fmt, validate_args
from stmclf.errors import ConfigError, is_allocation_failure, one_line

__all__ = ["AugmentationPipeline", "ImageSize", "build_augmentation", "apply_augmentation", "check_pixels_range"]



class _Step:
    __slots__ = ("name", "key", "params", "change_rate", "state")

    def __init__(self, name: str, key: str, params: SimpleNamespace, change_rate: float) -> None:
        self.name = name
        self.key = key
        self.params = params
        self.change_rate = change_rate
        self.state: dict[str, Any] = {}

    def __getstate__(self):
        return {s: getattr(self, s) for s in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class AugmentationPipeline:
    """``aug(images, generator=None, *, epoch=None)`` → augmented images.

    ``images``: float NCHW already rescaled into ``pixels_range`` (any memory format; a
    channels_last input gives a channels_last output). Same shape, dtype and device come back
    (except after ``random_periodic_resizing``, which changes H and W). ``generator``: an
    optional ``torch.Generator`` on the images' device for reproducible draws. ``epoch`` is
    accepted for symmetry with custom functions and ignored by the built-in ones.
    """

    def __init__(self, steps: list[_Step], pixels_range: tuple[float, float], channels: Optional[int] = None,
                 key: str = "data_augmentation") -> None:
        self.steps = steps
        self.pixels_range = (float(pixels_range[0]), float(pixels_range[1]))
        self.channels = channels
        self.key = key
        self.batch_count = 0

    # -- introspection ----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def describe(self) -> list[tuple[str, dict[str, Any]]]:
        """(function, validated arguments incl. change_rate) per step, in order."""
        out = []
        for s in self.steps:
            args = dict(vars(s.params))
            if AUGMENTATIONS[s.name].has_change_rate:
                args["change_rate"] = s.change_rate
            out.append((s.name, args))
        return out

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for n, a in self.describe())
        return f"AugmentationPipeline(pixels_range={self.pixels_range}, [{inner}])"

    # -- call ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None, *,
                 epoch: Optional[int] = None) -> torch.Tensor:
        if not self.steps:
            self.batch_count += 1
            return images
        if not torch.is_floating_point(images):
            raise TypeError(f"augmentation expects float images already rescaled into {self.pixels_range}, "
                            f"got {images.dtype}")
        channels_last = _is_channels_last(images)
        # The kernels' broadcasts and reductions are several times slower on channels_last
        # strides on CPU: run them on NCHW and restore the layout once at the end.
        x = images.contiguous() if channels_last else images
        for step in self.steps:
            spec = AUGMENTATIONS[step.name]
            rate = step.change_rate
            if rate <= 0.0 or (spec.colour_only and x.shape[1] != 3):
                continue
            ctx = Context(self.pixels_range, generator, self.batch_count, epoch, step.state)
            try:
                out = spec.kernel(x, step.params, ctx)
            except (MemoryError, RuntimeError) as exc:  # the size bounds' backstop: one line, exit 2
                if not is_allocation_failure(exc):
                    raise
                raise ConfigError(step.key, f"the augmentation of a batch of {tuple(x.shape)} ran out of memory "
                                            f"({one_line(exc, 120)}): lower its sizes or training.batch_size") from None
            if rate < 1.0 and out.shape == x.shape:
                keep = torch.rand(x.shape[0], device=x.device, generator=generator) < rate
                out = torch.where(keep.view(-1, 1, 1, 1), out, x)
            x = out
        self.batch_count += 1
        if x.dtype != images.dtype:
            x = x.to(images.dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def build_augmentation(section: Optional[Mapping[str, Any]], pixels_range: tuple[float, float], *,
                       key: str = "data_augmentation", channels: Optional[int] = None,
                       size: Optional[ImageSize] = None) -> AugmentationPipeline:
    """Validate ``section`` (the YAML mapping ``{function: args or None}``, in file order) and
    return the pipeline. ``pixels_range = (offset, 255·scale + offset)``. ``channels`` (1 or 3),
    when known, lets colour-only functions be refused for grayscale input at build time; when
    unknown they leave non-RGB batches unchanged. ``size``: the input size (and batch size), when
    known, for the functions' size bounds (a blur filter larger than the image is refused).

    A ``key`` ending in ``custom_data_augmentation`` builds a custom pipeline instead
    (see :func:`stmclf.augment.custom.build_custom_augmentation`).
    """
    if key.split(".")[-1] == "custom_data_augmentation":
        return build_custom_augmentation(section, pixels_range, key=key)  # type: ignore[return-value]
    pr = check_pixels_range(pixels_range)
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(key, f"expecting a mapping {{function_name: arguments}}, got {_fmt(section)}")
    steps: list[_Step] = []
    valid = ", ".join(sorted(AUGMENTATIONS))
    for name, raw in section.items():
        sub = f"{key}.{name}"
        if not isinstance(name, str) or name not in AUGMENTATIONS:
            raise ConfigError(sub, f"unknown or unsupported data augmentation function; valid functions: {valid}")
        spec = AUGMENTATIONS[name]
        if spec.colour_only and channels is not None and channels != 3:
            raise ConfigError(sub, f"{name} needs RGB images (3 channels); the input has {channels} channel"
                              f"{'s' if channels != 1 else ''} (preprocessing.color_mode)")
        params = validate_args(name, raw, sub, size, pr)
        change_rate = 1.0
        if spec.has_change_rate:
            change_rate = float(params.change_rate)
            del params.change_rate
        steps.append(_Step(spec.name, sub, params, change_rate))
    return AugmentationPipeline(steps, pr, channels, key)


_SINGLE_CACHE: dict[Any, AugmentationPipeline] = {}


def apply_augmentation(images: torch.Tensor, name: str, pixels_range: tuple[float, float], *,
                       generator: Optional[torch.Generator] = None, **args: Any) -> torch.Tensor:
    """Run one registered function on a batch, e.g. from a custom augmentation function::

        images = apply_augmentation(images, "random_flip", pixels_range, mode="horizontal")

    Arguments are validated like YAML ones (pipelines are cached per argument set).
    """
    cache_key = (name, repr(sorted(args.items())), tuple(pixels_range))
    pipe = _SINGLE_CACHE.get(cache_key)
    if pipe is None:
        pipe = build_augmentation({name: args}, pixels_range, key="augmentation")
        if len(_SINGLE_CACHE) > 256:
            _SINGLE_CACHE.clear()
        _SINGLE_CACHE[cache_key] = pipe
    return pipe(images, generator)
