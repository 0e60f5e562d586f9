"""The augmentation registry and the argument checks shared by every function.

One dict, :data:`AUGMENTATIONS`, maps a YAML function name (``random_flip``) to an
:class:`AugmentationSpec`: the batch kernel, its argument table (defaults, required arguments,
checks) and flags. Functions are added with :func:`register_augmentation`; nothing dispatches on
names with if/else chains. The kernel modules import this one; :mod:`stmclf.augment.kernels`
imports them all, so the dict is complete once that module is imported.

Argument rules (those of the reference's ``check_dataaug_argument`` plus each function's own):

- a required argument left out, or set to ``None``, is an error ("argument not set");
- tuples (YAML lists or ``"(a, b)"`` strings) must have exactly 2 elements with right > left;
- ranges are checked per argument (``change_rate`` in [0, 1], ``bits`` in [1, 8], ...);
- numbers: an argument documented as integer refuses non-integral values (``bits: (2.5, 8)``);
  one documented as float also accepts an integer (``factor: 1`` means 1.0). The reference
  refuses integers for float arguments; we deliberately accept them because the value is
  unambiguous. Booleans are never numbers.

A failed check raises :class:`stmclf.errors.ConfigError` naming the full key path
(``data_augmentation.random_flip.mode``) and what is allowed.

Sizes have upper bounds: at most :data:`~stmclf.config.rules.MAX_IMAGE_SIDE` always, and, when
the model input size is known (:class:`ImageSize`, given to :func:`validate_args`), the bounds
of each function's ``sized`` check (a blur filter at most the image side, grid cells at most
one per pixel, resized batches under the same memory estimate as ``training.model.input_shape``).

Every numeric argument has a finite range (NaN and infinities are refused everywhere): where the
reference gives none, the range stops where a larger value can no longer change the images
(a contrast multiplier of 255 already stretches one level to the whole range; a translation of
one image side moves it out; a rotation or shear of one turn comes back) or where the value
would leave the pixel range (``random_brightness.factor``, ``fill_value``: the ``ranged`` check,
given the pixel range). ``docs/config.md`` (``data_augmentation``) lists them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Optional

from stmclf.config.rules import MAX_IMAGE_SIDE
from stmclf.errors import ConfigError

__all__ = [
    "REQUIRED", "ArgSpec", "AugmentationSpec", "AUGMENTATIONS", "register_augmentation", "arg",
    "number", "choice", "rate", "integer", "nonneg_number", "symmetric", "color_spec", "validate_args", "ImageSize",
    "MAX_IMAGE_SIDE",
]


@dataclass(frozen=True)
class ImageSize:
    """The batches an augmentation will see: the model input's ``height`` × ``width`` ×
    ``channels`` and, when known, the ``batch_size`` (for memory estimates)."""

    height: int
    width: int
    channels: int = 3
    batch_size: Optional[int] = None

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"


class _Required:
    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return "REQUIRED"

    def __reduce__(self):
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default marker of an argument that the YAML must set."""

Check = Callable[[Any, str], Any]


@dataclass(frozen=True)
class ArgSpec:
    """One argument: its default (or :data:`REQUIRED`), a check that returns the normalised
    value or raises ConfigError (``check(value, key_path)``), and whether ``None`` is a legal
    explicit value."""

    default: Any = REQUIRED
    check: Optional[Check] = None
    allow_none: bool = False
    doc: str = ""


def arg(default: Any = REQUIRED, check: Optional[Check] = None, *, allow_none: bool = False,
        doc: str = "") -> ArgSpec:
    return ArgSpec(default, check, allow_none or default is None, doc)


@dataclass(frozen=True)
class AugmentationSpec:
    """A registered function.

    ``kernel(images, p, ctx)`` receives the whole float NCHW batch (values in
    ``ctx.pixels_range``), the validated arguments ``p`` (a namespace; ``change_rate`` is
    handled by the pipeline and never reaches the kernel) and the call context, and returns
    the augmented batch for *every* image. ``finalize(p, key)`` runs cross-argument checks after
    the per-argument ones. ``colour_only`` functions need 3-channel (RGB) images.
    ``sized(p, key, size)`` checks the arguments against the input size (:class:`ImageSize`)
    when it is known (a ConfigError naming the argument when a size is too large).
    ``ranged(p, key, pixels_range)`` checks the arguments given in rescaled units (a brightness
    offset, a fill value) against the pixel range ``(offset, 255·scale + offset)``.
    """

    name: str
    kernel: Callable[..., Any]
    args: dict[str, ArgSpec]
    colour_only: bool = False
    finalize: Optional[Callable[[SimpleNamespace, str], SimpleNamespace]] = None
    example: dict[str, Any] = field(default_factory=dict)
    stateful: bool = False
    doc: str = ""
    sized: Optional[Callable[[SimpleNamespace, str, ImageSize], None]] = None
    ranged: Optional[Callable[[SimpleNamespace, str, tuple[float, float]], None]] = None

    @property
    def has_change_rate(self) -> bool:
        return "change_rate" in self.args

    def defaults(self) -> dict[str, Any]:
        return {k: (None if a.default is REQUIRED else a.default) for k, a in self.args.items()}


AUGMENTATIONS: dict[str, AugmentationSpec] = {}


def register_augmentation(name: str, args: dict[str, ArgSpec], *, colour_only: bool = False,
                          finalize: Optional[Callable[[SimpleNamespace, str], SimpleNamespace]] = None,
                          example: Optional[dict[str, Any]] = None, stateful: bool = False,
                          aliases: Iterable[str] = (),
                          sized: Optional[Callable[[SimpleNamespace, str, ImageSize], None]] = None,
                          ranged: Optional[Callable[[SimpleNamespace, str, tuple[float, float]], None]] = None
                          ) -> Callable:
    """Decorator: register ``kernel(images, p, ctx)`` under ``name`` (and ``aliases``).

    ``args`` maps each argument name to :func:`arg` (default or REQUIRED plus a check).
    ``example`` is a valid argument set used by the demo/benchmark helpers and the tests.
    """

    def decorate(kernel: Callable) -> Callable:
        spec = AugmentationSpec(name=name, kernel=kernel, args=dict(args), colour_only=colour_only,
                                finalize=finalize, example=dict(example or {}), stateful=stateful,
                                doc=(kernel.__doc__ or "").strip(), sized=sized, ranged=ranged)
        for n in (name, *aliases):
            if n in AUGMENTATIONS:
                raise RuntimeError(f"augmentation {n!r} registered twice")
            AUGMENTATIONS[n] = spec
        return kernel

    return decorate


# ------------------------------------------------------------------------------------------
# value helpers
# ------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    if isinstance(value, list):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return repr(value)


def _from_text(value: Any) -> Any:
    """YAML values normally arrive parsed; a stray ``"(0.1, 0.2)"`` string is parsed safely."""
    if isinstance(value, str):
        try:
            from stmclf.config.values import parse_value
        except Exception:  # pragma: no cover - config package always present
            return value
        return parse_value(value)
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _as_kind(v: Any, kind: str, key: str, what: str) -> float | int:
    if not _is_number(v):
        raise ConfigError(key, f"expecting {what}, got {_fmt(v)}")
    if kind == "int":
        if isinstance(v, float) and not v.is_integer():
            raise ConfigError(key, f"expecting {what} (integers), got {_fmt(v)}")
        return int(v)
    return float(v)


def number(kind: str = "float", *, tuples: int = 1, lo: Optional[float] = None, hi: Optional[float] = None,
           lo_open: bool = False, hi_open: bool = False,
           scalar: Optional[Callable[[Any], Any]] = None,
           scalar_lo: Optional[float] = None, scalar_hi: Optional[float] = None) -> Check:
    """Check a number or a 2-tuple of numbers.

    ``kind`` is "float" (ints accepted) or "int". ``tuples``: 0 scalars only, 1 both,
    2 tuples only (the reference's convention). ``lo``/``hi`` bound every element
    (inclusive unless ``*_open``); ``scalar_lo``/``scalar_hi``, when given, bound a scalar
    instead (inclusive: a scalar v meaning (−v, v) is in [0, hi]). ``scalar(v)`` converts an
    accepted scalar into the normalised value (e.g. ``lambda v: (-v, v)``); without it a scalar
    is returned as is. Tuples come back as Python tuples of ``kind``. NaN and infinities are
    never numbers.
    """
    what_one = "an integer" if kind == "int" else "a number"
    if tuples == 0:
        what = what_one
    elif tuples == 2:
        what = f"a tuple of 2 {'integers' if kind == 'int' else 'numbers'} (low, high) with high > low"
    else:
        what = f"{what_one} or a tuple of 2 (low, high) with high > low"
    bounds = ""
    if lo is not None or hi is not None:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        bounds = f" in {left}{'-inf' if lo is None else _num(lo)}, {'inf' if hi is None else _num(hi)}{right}"
    s_lo = lo if scalar_lo is None else scalar_lo
    s_hi = hi if scalar_hi is None else scalar_hi
    s_bounds = bounds
    if scalar_lo is not None or scalar_hi is not None:
        s_bounds = f" in [{'-inf' if s_lo is None else _num(s_lo)}, {'inf' if s_hi is None else _num(s_hi)}]"
        if tuples == 1:
            what = f"{what_one}{s_bounds} or a tuple of 2 (low, high) with high > low"

    def in_range(x: float) -> bool:
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        if hi is not None and (x >= hi if hi_open else x > hi):
            return False
        return True

    def scalar_in_range(x: float) -> bool:
        if scalar_lo is None and scalar_hi is None:
            return in_range(x)
        return (s_lo is None or x >= s_lo) and (s_hi is None or x <= s_hi)

    def check(value: Any, key: str) -> Any:
        value = _from_text(value)
        if isinstance(value, (list, tuple)):
            if tuples == 0:
                raise ConfigError(key, f"tuples are not supported, expecting {what}{bounds}; got {_fmt(value)}")
            if len(value) != 2:
                raise ConfigError(key, f"the tuple must have 2 elements (low, high); got {_fmt(value)}")
            a = _as_kind(value[0], kind, key, what)
            b = _as_kind(value[1], kind, key, what)
            if not b > a:
                raise ConfigError(key, f"the tuple's right value must be greater than its left value; got {_fmt(value)}")
            if not (in_range(a) and in_range(b)):
                raise ConfigError(key, f"expecting values{bounds}; got {_fmt(value)}")
            return (a, b)
        if tuples == 2:
            raise ConfigError(key, f"expecting {what}{bounds}; got {_fmt(value)}")
        v = _as_kind(value, kind, key, what + bounds)
        if not scalar_in_range(v):
            if tuples == 1 and s_bounds != bounds:
                raise ConfigError(key, f"expecting {what_one}{s_bounds} or a tuple of 2 (low, high) with values"
                                       f"{bounds}; got {_fmt(value)}")
            raise ConfigError(key, f"expecting {what_one}{s_bounds}; got {_fmt(value)}")
        return scalar(v) if scalar is not None else v

    return check


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def symmetric(bound: float) -> Check:
    """A scalar v in [0, ``bound``] meaning (−v, v), or a tuple (a, b) in [−bound, bound]."""
    return number("float", lo=-bound, hi=bound, scalar_lo=0.0, scalar_hi=bound, scalar=lambda v: (-v, v))


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Check:
    return number("int", tuples=0, lo=lo, hi=hi)


def nonneg_number() -> Check:
    return number("float", tuples=0, lo=0.0)


def rate(name: str = "a probability") -> Check:
    inner = number("float", tuples=0, lo=0.0, hi=1.0)

    def check(value: Any, key: str) -> float:
        return float(inner(value, key))

    return check


def choice(*values: str) -> Check:
    """A string among ``values`` (case-insensitive; returned lower-case)."""
    allowed = ", ".join(repr(v) for v in values)

    def check(value: Any, key: str) -> str:
        if not isinstance(value, str) or value.lower() not in values:
            raise ConfigError(key, f"expecting one of {allowed}; got {_fmt(value)}")
        return value.lower()

    return check


def color_spec() -> Check:
    """``None``, an integer in [0, 255] (gray) or a tuple of 3 integers in [0, 255] (RGB)."""

    def check(value: Any, key: str) -> Any:
        value = _from_text(value)
        msg = "expecting an integer in [0, 255] or a tuple of 3 integers in [0, 255]"
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            if len(value) != 3 or not all(_is_number(v) and float(v).is_integer() and 0 <= v <= 255 for v in value):
                raise ConfigError(key, f"{msg}; got {_fmt(value)}")
            return tuple(int(v) for v in value)
        if not (_is_number(value) and float(value).is_integer() and 0 <= value <= 255):
            raise ConfigError(key, f"{msg}; got {_fmt(value)}")
        return int(value)

    return check


# ------------------------------------------------------------------------------------------
# validation of one function's arguments
# ------------------------------------------------------------------------------------------
def validate_args(name: str, raw: Any, key: str, size: Optional[ImageSize] = None,
                  pixels_range: Optional[tuple[float, float]] = None) -> SimpleNamespace:
    """Validate the YAML arguments of function ``name`` (``key`` is its key path); ``size``: the
    input size, when known, for the function's size bounds; ``pixels_range``: the rescaled pixel
    range, when known, for the bounds of arguments in rescaled units.

    Returns the normalised arguments, defaults filled in, as a namespace.
    """
    spec = AUGMENTATIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(key, f"expecting a mapping of arguments (or nothing), got {_fmt(raw)}")
    valid = ", ".join(spec.args) if spec.args else "(none)"
    values: dict[str, Any] = {}
    for k in raw:
        if k == "pixels_range":
            raise ConfigError(f"{key}.{k}", "this argument is managed internally (derived from "
                              "preprocessing.rescaling) and must not be set")
        if k not in spec.args:
            raise ConfigError(f"{key}.{k}", f"unknown or unsupported argument of {name}; valid arguments: {valid}")
    for k, a in spec.args.items():
        sub = f"{key}.{k}"
        value = raw.get(k, a.default)
        if isinstance(value, str) and value.strip() == "None":
            value = None
        if value is REQUIRED or (value is None and not a.allow_none):
            raise ConfigError(sub, f"the argument is not set (required by {name})")
        if value is None:
            values[k] = None
        else:
            values[k] = a.check(value, sub) if a.check is not None else value
    p = SimpleNamespace(**values)
    if spec.finalize is not None:
        p = spec.finalize(p, key)
    if spec.sized is not None and size is not None:
        spec.sized(p, key, size)
    if spec.ranged is not None and pixels_range is not None:
        spec.ranged(p, key, pixels_range)
    return p
