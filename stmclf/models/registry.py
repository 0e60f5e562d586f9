"""The model registry: ``training.model`` (name, version, attributes) → a :class:`KerasGraph`.

Each architecture file decorates its builder with :func:`register_model`; :func:`build_model`
validates the YAML ``training.model`` dict against the registration (name, version, exact set of
allowed attributes) and calls the builder. Builders get every ``training.model`` key except
``name`` as keyword arguments (``input_shape`` as a tuple of ints). The weight sources
``pretrained_weights`` / ``pretrained_model_path`` are validated here but loaded by the caller.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from stmclf.errors import ConfigError, did_you_mean
from stmclf.models.graph import KerasGraph

WEIGHT_KEYS = ("pretrained_weights", "pretrained_model_path")


class ModelBuilder(Protocol):
    def __call__(self, *, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
                 **keys: Any) -> KerasGraph: ...


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str | None
    required: tuple[str, ...]
    optional: tuple[str, ...]
    builder: ModelBuilder
    open_keys: bool = False
    """Accept any other key too (passed to the builder, which validates it): custom and timm models."""


UNSUPPORTED_MODELS = {
    "st_resnet_8_hybrid": "a Larq binary/QAT model (binary weights and activations) that stmclf does not "
                          "support; use name: resnet, version: v1, depth: 8 instead",
}
"""Reference model names stmclf refuses on purpose → why, and what to use instead."""

RESERVED_KEYS = ("num_classes", "dropout")  # set from the dataset and training.dropout, never in training.model
_MODELS: dict[str, dict[str | None, ModelEntry]] = {}
_PREFIXES: dict[str, Callable[[str], ModelEntry]] = {}


def register_prefix(prefix: str, factory: Callable[[str], ModelEntry]) -> None:
    """Resolve model names starting with ``prefix`` (e.g. ``timm/``) with ``factory(name)``, an
    unversioned entry built on demand."""
    _PREFIXES[prefix] = factory


def register_model(name: str, versions: tuple[str, ...] | None = None,
                   required: tuple[str, ...] = ("name", "input_shape"),
                   optional: tuple[str, ...] = (), open_keys: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder for ``name`` (and each of ``versions``; then it also gets ``version``).
    ``required`` / ``optional`` are the ``training.model`` keys allowed for it (exactly those,
    unless ``open_keys``)."""
    needed = {"name", "input_shape"} | ({"version"} if versions else set())
    if not needed <= set(required) or "version" in optional or (not versions and "version" in required):
        raise ValueError(f"model {name!r}: required keys must include {sorted(needed)} (version iff versioned)")

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        entries = _MODELS.setdefault(name, {})
        for version in versions or (None,):
            if version in entries or (entries and (version is None or None in entries)):
                raise ValueError(f"model {name!r} version {version!r} is registered twice or mixes "
                                 "versioned and unversioned entries")
            entries[version] = ModelEntry(name, version, tuple(required), tuple(optional), builder, open_keys)
        return builder

    return decorate


def registered_models() -> dict[str, tuple[str, ...] | None]:
    """Model names → supported versions (None for unversioned models)."""
    return {name: (None if None in entries else tuple(sorted(entries))) for name, entries in sorted(_MODELS.items())}


def _entry(spec: Mapping[str, Any]) -> ModelEntry:
    name = spec.get("name")
    for prefix, factory in _PREFIXES.items():
        if isinstance(name, str) and name.startswith(prefix):
            if spec.get("version") is not None:
                raise ConfigError("training.model.version", f"the version attribute is not applicable to {name}")
            return factory(name)
    if isinstance(name, str) and name in UNSUPPORTED_MODELS:
        raise ConfigError("training.model.name", f"{name} is {UNSUPPORTED_MODELS[name]}")
    if name not in _MODELS:
        problem = "missing model name" if name is None else \
            f"unknown model name {name!r}{did_you_mean(str(name), _MODELS)}"
        raise ConfigError("training.model.name", f"{problem}. Supported model names are {sorted(_MODELS)}")
    entries = _MODELS[name]
    version = spec.get("version")
    if None in entries:
        if version is not None:
            raise ConfigError("training.model.version", f"the version attribute is not applicable to {name}")
        return entries[None]
    supported = sorted(entries)
    if version is None:
        raise ConfigError("training.model.version", f"missing version attribute. Supported versions for {name} "
                                                    f"are {supported}")
    if version not in entries:
        raise ConfigError("training.model.version", f"unsupported version {version!r}. Supported versions for "
                                                    f"{name} are {supported}")
    return entries[version]


def _input_shape(value: Any) -> tuple[int, int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)):
        raise ConfigError("training.model.input_shape",
                          f"expected (height, width, channels) as positive integers, got {value!r}")
    return value[0], value[1], value[2]


def check_model_spec(spec: Mapping[str, Any]) -> ModelEntry:
    """Validate a YAML ``training.model`` dict (name, version, allowed and required keys,
    weight sources) without building anything; returns its registry entry."""
    entry = _entry(spec)
    label = entry.name if entry.version is None else f"{entry.name} {entry.version}"
    allowed = entry.required + entry.optional
    for key in spec:
        if key in RESERVED_KEYS or (key not in allowed and not entry.open_keys):
            raise ConfigError(f"training.model.{key}", f"unexpected attribute for {label}. "
                                                       f"Allowed attributes are {list(allowed)}")
    for key in entry.required:
        if spec.get(key) is None:
            raise ConfigError(f"training.model.{key}", f"missing required attribute of {label}. "
                                                       f"Required attributes are {list(entry.required)}")
    if all(spec.get(key) is not None for key in WEIGHT_KEYS):
        raise ConfigError("training.model.pretrained_model_path",
                          "pretrained_weights and pretrained_model_path are mutually exclusive")
    weights = spec.get("pretrained_weights")
    if weights is not None and (not isinstance(weights, str)
                                or weights != "imagenet" and not weights.lower().endswith((".h5", ".hdf5"))):
        raise ConfigError("training.model.pretrained_weights",
                          f"expected 'imagenet', None or the path of a Keras .h5 weights file, got {weights!r}")
    _input_shape(spec["input_shape"])
    return entry


def build_model(spec: Mapping[str, Any], num_classes: int, dropout: float | None) -> KerasGraph:
    """Build the model described by the YAML ``training.model`` dict, with a ``num_classes``-way
    logits head (2 outputs when ``num_classes <= 2``) and a Dropout layer iff ``dropout`` is truthy."""
    entry = check_model_spec(spec)
    if dropout and not 0.0 < dropout < 1.0:
        raise ConfigError("training.dropout", f"expected a rate between 0 and 1, got {dropout!r}")
    keys = {k: v for k, v in spec.items() if k not in ("name", "input_shape")}
    return entry.builder(num_classes=num_classes, input_shape=_input_shape(spec["input_shape"]),
                         dropout=dropout or None, **keys)
