"""Data augmentation: ST model-zoo functions as vectorised PyTorch kernels over whole batches.

Usage::

    from stmclf.augment import build_augmentation, AUGMENTATIONS
    aug = build_augmentation(cfg["data_augmentation"], pixels_range=(-1.0, 1.0), channels=3)
    images = aug(images)              # float NCHW in pixels_range, on the training device
    images = aug(images, epoch=3)     # custom pipelines use the epoch; built-in ones ignore it

Modules, lowest first (each imports only those before it): ``registry`` (the one registry dict
and argument checks), ``_common`` (kernel helpers, the ``pixels_range`` check), the kernels
``affine`` (shared batched affine sampler), ``color``, ``erasing``, ``misc``, then ``kernels``
(imports every kernel module: the registry complete), ``custom`` (``custom_data_augmentation``),
``pipeline`` (``build_augmentation``, ``change_rate`` mixing).
"""
from __future__ import annotations

from stmclf.augment.custom import CustomAugmentation, build_custom_augmentation
from stmclf.augment.kernels import AUGMENTATIONS, kernel_names
from stmclf.augment.pipeline import AugmentationPipeline, ImageSize, apply_augmentation, build_augmentation
from stmclf.augment.registry import REQUIRED, AugmentationSpec, register_augmentation

__all__ = [
    "AUGMENTATIONS", "REQUIRED", "AugmentationSpec", "AugmentationPipeline", "CustomAugmentation", "ImageSize",
    "apply_augmentation", "build_augmentation", "build_custom_augmentation", "kernel_names",
    "register_augmentation", "example_section",
]


def example_section(name: str) -> dict:
    """A valid argument set for function ``name`` (the reference demo's values), for
    benchmarks and demos: ``build_augmentation({name: example_section(name)}, pr)``."""
    return dict(AUGMENTATIONS[name].example)
