"""``${...}`` interpolation in config strings.

Supported forms (Hydra/OmegaConf spellings that ST configs use):
- ``${now:%Y_%m_%d_%H_%M_%S}``: the run's start time (one instant per process, so every key
  that uses it agrees);
- ``${NAME}`` and ``${oc.env:NAME}`` / ``${oc.env:NAME,default}``: an environment variable
  (the reference's rule for ``\\$\\{\\w+\\}``), an error naming the key when it is not set;
- ``${section.key}``: another value of the same config.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from typing import Any

from stmclf.errors import ConfigError

_PATTERN = re.compile(r"\$\{([^${}]+)\}")
_START = _dt.datetime.now()


def run_start() -> _dt.datetime:
    return _START


def _lookup(root: dict, dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _resolve_one(expr: str, key: str, root: dict) -> str:
    expr = expr.strip()
    if expr.startswith("now:"):
        return _START.strftime(expr[4:])
    if expr.startswith("oc.env:"):
        name, _, default = expr[7:].partition(",")
        value = os.environ.get(name.strip())
        if value is None:
            if default:
                return default.strip()
            raise ConfigError(key, f"environment variable {name.strip()} is not set")
        return value
    if re.fullmatch(r"\w+", expr):
        if expr in os.environ:
            return os.environ[expr]
        if expr in root and not isinstance(root[expr], (dict, list)):
            return str(root[expr])
        raise ConfigError(key, f"environment variable {expr} is not set (used as ${{{expr}}})")
    if re.fullmatch(r"[\w.]+", expr):
        try:
            value = _lookup(root, expr)
        except KeyError:
            raise ConfigError(key, f"${{{expr}}} refers to a key that does not exist") from None
        if isinstance(value, (dict, list)):
            raise ConfigError(key, f"${{{expr}}} refers to a section, not a value")
        return str(value)
    raise ConfigError(key, f"unsupported interpolation ${{{expr}}}: use ${{now:FORMAT}}, ${{ENV_VAR}} or ${{section.key}}")


def interpolate(text: str, key: str = "", root: dict | None = None) -> str:
    """Resolve every ``${...}`` in ``text``; ``key`` names the config key in errors."""
    if "${" not in text:
        return text
    root = root or {}
    for _ in range(10):  # references may themselves contain references
        new = _PATTERN.sub(lambda m: _resolve_one(m.group(1), key, root), text)
        if new == text or "${" not in new:
            return new
        text = new
    raise ConfigError(key, "interpolation does not terminate")


def interpolate_tree(data: Any, root: dict | None = None, key: str = "") -> Any:
    """Interpolate every string of a loaded YAML document (``root`` defaults to ``data``)."""
    root = data if root is None and isinstance(data, dict) else (root or {})
    if isinstance(data, dict):
        return {k: interpolate_tree(v, root, f"{key}.{k}" if key else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_tree(v, root, key) for v in data]
    if isinstance(data, str):
        return interpolate(data, key, root)
    return data
