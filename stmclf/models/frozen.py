"""``training.frozen_layers``: Python index/slice syntax over the Keras layer indices.

``(0:-1)`` all layers but the last, ``(10:120)``, ``(150:)``, ``(8, 110:121, -1)``, ``2``,
``[0, 1]``; ``None`` (or absent) = everything trainable. Parsed by hand, never ``eval``-ed.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Union

from stmclf.errors import ConfigError

KEY = "training.frozen_layers"
_INT = r"-?\d+"
_ITEM = re.compile(rf"^(?:({_INT})|({_INT})?:({_INT})?(?::({_INT}))?)$")


def frozen_indices(spec: Union[None, int, str, list, tuple], num_layers: int) -> list[int]:
    """The sorted layer indices that ``spec`` selects among ``num_layers`` layers."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "None", "none")):
        return []
    if isinstance(spec, bool):
        raise ConfigError(KEY, f"invalid syntax {spec!r}: expecting e.g. (0:-1) or (8, 110:121, -1)")
    items: list[Any]
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        text = str(spec).replace(" ", "")
        if text.startswith("(") and text.endswith(")") or text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = [part for part in text.split(",") if part != ""]
        if not items:
            raise ConfigError(KEY, f"invalid syntax {spec!r}: expecting e.g. (0:-1) or (8, 110:121, -1)")
    selected: set[int] = set()
    layers = range(num_layers)
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            _add_index(selected, item, num_layers)
            continue
        match = _ITEM.match(str(item))
        if not match:
            raise ConfigError(KEY, f"invalid syntax {item!r} in {spec!r}: use indices and start:stop slices, "
                                   f"e.g. (0:-1) or (8, 110:121, -1)")
        single, start, stop, step = match.groups()
        if single is not None:
            _add_index(selected, int(single), num_layers)
        else:
            if step is not None and int(step) == 0:
                raise ConfigError(KEY, f"slice step cannot be zero in {spec!r}")
            selected.update(layers[slice(_opt(start), _opt(stop), _opt(step))])
    return sorted(selected)


def _opt(text: Optional[str]) -> Optional[int]:
    return None if text is None else int(text)


def _add_index(selected: set[int], index: int, num_layers: int) -> None:
    if not -num_layers <= index < num_layers:
        raise ConfigError(KEY, f"layer index {index} is out of range: the model has {num_layers} layers "
                               f"(0..{num_layers - 1})")
    selected.add(index % num_layers)
