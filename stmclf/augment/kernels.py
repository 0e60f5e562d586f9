"""Every built-in augmentation kernel, registered.

The kernel modules (``affine``, ``color``, ``erasing``, ``misc``) register their functions in
:data:`stmclf.augment.registry.AUGMENTATIONS` when imported; importing this module imports them
all, so its :data:`AUGMENTATIONS` is complete. Only modules above the kernels import this one
(the registry itself stays below them: no import cycle).
"""
from __future__ import annotations

from stmclf.augment import affine, color, erasing, misc  # noqa: F401  (importing registers the kernels)
from stmclf.augment.registry import AUGMENTATIONS

__all__ = ["AUGMENTATIONS", "kernel_names"]


def kernel_names() -> list[str]:
    """Names of every registered augmentation function (for benchmarks and docs), sorted."""
    return sorted(AUGMENTATIONS)
