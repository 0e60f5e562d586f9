"""Keras kernel regularizers as loss terms: the reference's ``kernel_regularizer=l2(1e-4)``.

Keras adds ``l1·Σ|w| + l2·Σw²`` of every regularized kernel to the loss it minimises and reports
(training, validation and ``evaluate`` alike); with Adam this is coupled L2, not decoupled weight
decay. A layer says it is regularized by carrying ``kernel_l1`` / ``kernel_l2`` (floats, 0 = none);
the zoo builders set them where the reference's model does (ResNet v1: L2 1e-4 on every
convolution) and the ``.h5`` importer copies a file's ``L1``/``L2``/``L1L2`` kernel regularizers.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

Terms = list[tuple[float, float, nn.Parameter]]


def _coefficients(l1: float, l2: float) -> tuple[float, float]:
    """(l1, l2) as floats; ValueError unless both are finite and >= 0 (NaN included)."""
    l1, l2 = float(l1), float(l2)
    if not (0.0 <= l1 < float("inf") and 0.0 <= l2 < float("inf")):
        raise ValueError(f"regularizer values must be finite and >= 0, got l1={l1}, l2={l2}")
    return l1, l2


def set_kernel_regularizer(layer: nn.Module, l1: float = 0.0, l2: float = 0.0) -> nn.Module:
    """Mark ``layer.weight`` as regularized (Keras ``kernel_regularizer``); returns the layer."""
    layer.kernel_l1, layer.kernel_l2 = _coefficients(l1, l2)
    return layer


def keras_regularizer(config: Any) -> tuple[float, float]:
    """(l1, l2) of a serialized Keras regularizer (``{"class_name": "L2", "config": {"l2": …}}``;
    None → (0, 0)). ValueError for anything else (a custom regularizer cannot run here)."""
    if config is None:
        return 0.0, 0.0
    if not isinstance(config, Mapping):
        raise ValueError(f"unsupported regularizer {config!r}")
    name = str(config.get("class_name", "")).lower()
    values = config.get("config") or {}
    defaults = {"l1": (0.01, 0.0), "l2": (0.0, 0.01), "l1l2": (0.0, 0.0)}.get(name)
    if defaults is None or not isinstance(values, Mapping):
        raise ValueError(f"unsupported regularizer {config.get('class_name')!r} (L1, L2 and L1L2 are used)")
    try:
        return _coefficients(values.get("l1", defaults[0]) or 0.0, values.get("l2", defaults[1]) or 0.0)
    except TypeError:
        raise ValueError(f"regularizer values must be numbers, got {dict(values)!r}") from None


def kernel_regularization_terms(model: nn.Module) -> Terms:
    """(l1, l2, weight) of every regularized layer of ``model``."""
    terms = []
    for module in model.modules():
        l1, l2 = float(getattr(module, "kernel_l1", 0.0)), float(getattr(module, "kernel_l2", 0.0))
        weight = getattr(module, "weight", None)
        if (l1 or l2) and isinstance(weight, nn.Parameter):
            terms.append((l1, l2, weight))
    return terms


def regularization_loss(terms: Terms) -> Optional[torch.Tensor]:
    """``Σ l1·Σ|w| + l2·Σw²`` in float32 (None when nothing is regularized).

    The kernels sharing one (l1, l2) are concatenated and reduced together: a handful of autograd
    nodes instead of four per kernel (ResNet-8's nine kernels: 270 → 150 µs forward and backward
    per step on 2 cores). Each weight's gradient is the same ``2·l2·w + l1·sign(w)``."""
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for l1, l2, weight in terms:
        groups.setdefault((l1, l2), []).append(weight.float().reshape(-1))
    total = None
    for (l1, l2), flats in groups.items():
        w = flats[0] if len(flats) == 1 else torch.cat(flats)
        term = (l2 * w.square().sum() if l2 else 0.0) + (l1 * w.abs().sum() if l1 else 0.0)
        total = term if total is None else total + term
    return total
