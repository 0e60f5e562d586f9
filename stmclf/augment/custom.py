"""``custom_data_augmentation``: the user's own batch augmentation function.

YAML::

    custom_data_augmentation:
      function_name: my_pkg.my_aug:augment        # "module:function" (importable module), or
      # function_name: path/to/my_aug.py:augment  # "file.py:function" (relative to the CWD)
      config: {anything: you like}                 # optional, passed through as is

The function is called on every training batch as ``fn(images, config, epoch)``: ``images``
are float NCHW on the training device, already rescaled into ``pixels_range``; it returns the
augmented batch. If its signature also accepts ``pixels_range`` and/or ``generator`` (by name,
or through ``**kwargs``) they are passed as keywords. Built-in functions are available to it
through :func:`stmclf.augment.apply_augmentation`. (The reference resolves a bare function
name inside its own ``data_augmentation.py`` and passes ``(images, config, pixels_range,
batch_info)``; a file or module path is the equivalent here.)

The file or module runs Python code named by the config: it is imported only with
``--trust-code`` on the command line (:mod:`stmclf.trust`). Every problem (no ``--trust-code``,
bad format, file or module not found, import error, missing attribute, uncallable object, wrong
signature) is a one-line ConfigError on ``custom_data_augmentation.function_name``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable, Optional

import torch

from stmclf.augment._common import check_pixels_range
from stmclf.errors import ConfigError, one_line
from stmclf.trust import require_trusted_code

__all__ = ["CustomAugmentation", "build_custom_augmentation", "load_function"]


def _split(spec: str, key: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(key, f"expecting 'module:function' or 'path/to/file.py:function', got {spec!r}")
    spec = spec.strip()
    target, sep, func = spec.rpartition(":")
    # "C:\\dir\\file.py" without a function part: rpartition finds the drive colon.
    if not sep or not target or not func or any(ch in func for ch in "/\\."):
        raise ConfigError(key, f"expecting 'module:function' or 'path/to/file.py:function', got {spec!r}")
    return target, func


def _load_module(target: str, key: str, text: str, trusted: bool = False):
    is_path = target.endswith(".py") or os.sep in target or "/" in target
    if not trusted:  # before anything is imported
        require_trusted_code(key, text, "file" if is_path else "module")
    if is_path:
        path = os.path.abspath(os.path.expanduser(target))
        if not os.path.isfile(path):
            raise ConfigError(key, f"file not found: {target}")
        name = "stmclf_custom_aug_" + hashlib.sha1(path.encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None) == path:
            return module
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(key, f"cannot load a Python module from {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            sys.modules.pop(name, None)
            raise ConfigError(key, f"importing {target} failed: {one_line(exc, typed=True)}") from None
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise ConfigError(key, f"module not found: {target} ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(key, f"importing {target} failed: {one_line(exc, typed=True)}") from None


def load_function(spec: str, key: str = "custom_data_augmentation.function_name", *,
                  trusted: bool = False) -> Callable[..., Any]:
    """Resolve ``"module:function"`` or ``"file.py:function"`` to the callable. The module is
    imported only with ``--trust-code`` (:mod:`stmclf.trust`) or ``trusted`` (an object that was
    allowed to load it is being unpickled, e.g. in a spawned process)."""
    target, func = _split(spec, key)
    module = _load_module(target, key, spec.strip(), trusted)
    fn = getattr(module, func, None)
    if fn is None:
        raise ConfigError(key, f"{target} has no attribute {func!r}")
    if not callable(fn):
        raise ConfigError(key, f"{target}:{func} is not callable")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    try:
        sig.bind(None, None, None, **{k: None for k in _extra_kwargs(fn)})
    except TypeError:
        raise ConfigError(key, f"{target}:{func} must accept (images, config, epoch) (plus optional "
                          f"pixels_range=, generator= keywords); its signature is {func}{sig}") from None
    return fn


def _extra_kwargs(fn: Callable[..., Any]) -> frozenset[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset({"pixels_range", "generator"})
    return frozenset(n for n in ("pixels_range", "generator") if n in params
                     and params[n].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


class CustomAugmentation:
    """Callable like the built-in pipeline: ``aug(images, generator=None, *, epoch=None)``.

    Picklable: it keeps the ``function_name`` string and reloads the function after
    unpickling. ``epoch`` defaults to 0 when the caller does not pass it.
    """

    def __init__(self, function_name: str, config: Any, pixels_range: tuple[float, float],
                 key: str = "custom_data_augmentation") -> None:
        self.function_name = function_name
        self.config = config
        self.pixels_range = pixels_range
        self.key = key
        self._fn: Optional[Callable[..., Any]] = None
        self._extra: frozenset[str] = frozenset()
        self._load()

    def _load(self, trusted: bool = False) -> None:
        self._fn = load_function(self.function_name, f"{self.key}.function_name", trusted=trusted)
        self._extra = _extra_kwargs(self._fn)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fn"] = None
        state["_extra"] = frozenset()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load(trusted=True)  # this object passed the --trust-code check when it was built

    def __repr__(self) -> str:
        return f"CustomAugmentation({self.function_name!r}, config={self.config!r})"

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None, *,
                 epoch: Optional[int] = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if "pixels_range" in self._extra:
            kwargs["pixels_range"] = self.pixels_range
        if "generator" in self._extra:
            kwargs["generator"] = generator
        with torch.no_grad():
            out = self._fn(images, self.config, 0 if epoch is None else int(epoch), **kwargs)  # type: ignore[misc]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.function_name} returned {type(out).__name__}, expecting the augmented "
                            "images as a torch.Tensor")
        return out


def build_custom_augmentation(section: Any, pixels_range: tuple[float, float], *,
                              key: str = "custom_data_augmentation") -> CustomAugmentation:
    """``section``: a mapping (or an object with attributes) with ``function_name`` and an
    optional ``config``."""
    pr = check_pixels_range(pixels_range)
    if isinstance(section, dict):
        unknown = sorted(set(section) - {"function_name", "config"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", "unknown key; valid keys: function_name, config")
        function_name = section.get("function_name")
        config = section.get("config")
    elif section is not None and hasattr(section, "function_name"):
        function_name = getattr(section, "function_name")
        config = getattr(section, "config", None)
    else:
        raise ConfigError(key, "expecting a mapping with function_name (and optionally config)")
    if function_name is None:
        raise ConfigError(f"{key}.function_name", "the argument is not set")
    return CustomAugmentation(function_name, config, pr, key)
