"""Resizing with TensorFlow's ``tf.image.resize`` semantics (antialias off, half-pixel centres).

Every interpolation is a separable linear map: ``out = Wh · image · Wwᵀ`` with weight
matrices built once per (input size, output size, method) and cached. For the kernel methods
the weights follow TensorFlow's sampling rule — output pixel ``i`` samples input coordinate
``(i + 0.5)·in/out``, kernel taps outside the image are dropped and the remaining weights
renormalised — which is exactly what ``ResizeBilinear``/``ResizeBicubic`` (Keys, a = −0.5)
and ``ScaleAndTranslate`` (lanczos3/5, gaussian, mitchellcubic) compute; bicubic also reproduces TensorFlow's
1024-entry weight table. ``nearest`` takes
pixel ``min(⌊(i + 0.5)·in/out⌋, in − 1)``; ``area`` averages the exact pixel overlaps
(``ResizeArea``). Results are rounded back to uint8 (the loader caches uint8 images).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np

from stmclf.errors import ConfigError


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def _mitchell(x: np.ndarray, b: float = 1 / 3, c: float = 1 / 3) -> np.ndarray:
    x = np.abs(x)
    near = ((12 - 9 * b - 6 * c) * x ** 3 + (-18 + 12 * b + 6 * c) * x ** 2 + (6 - 2 * b)) / 6
    far = ((-b - 6 * c) * x ** 3 + (6 * b + 30 * c) * x ** 2 + (-12 * b - 48 * c) * x + (8 * b + 24 * c)) / 6
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _lanczos(radius: int) -> Callable[[np.ndarray], np.ndarray]:
    def kernel(x: np.ndarray) -> np.ndarray:
        return np.where(np.abs(x) < radius, np.sinc(x) * np.sinc(x / radius), 0.0)
    return kernel


def _gaussian(x: np.ndarray, sigma: float = 0.5, radius: float = 1.5) -> np.ndarray:
    return np.where(np.abs(x) < radius, np.exp(-(x * x) / (2 * sigma * sigma)), 0.0)


# name -> (kernel, support radius)
KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bilinear": (_triangle, 1.0),
    "mitchellcubic": (_mitchell, 2.0),
    "lanczos3": (_lanczos(3), 3.0),
    "lanczos5": (_lanczos(5), 5.0),
    "gaussian": (_gaussian, 1.5),
}


def _kernel_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    kernel, radius = KERNELS[method]
    centers = (np.arange(n_out) + 0.5) * n_in / n_out  # sample point in input pixel units
    taps = np.arange(n_in) + 0.5
    weights = kernel(taps[None, :] - centers[:, None])
    weights[np.abs(taps[None, :] - centers[:, None]) >= radius + 1e-9] = 0.0
    total = weights.sum(axis=1, keepdims=True)
    safe = np.where(np.abs(total) > 1e-12, total, 1.0)
    return weights / safe


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``ResizeBicubic``: Keys (a = −0.5) weights from TensorFlow's 1024-entry table, i.e. the
    sub-pixel offset is quantised to 1/1024 before the weights are computed."""
    position = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(position)
    frac = np.rint((position - base) * 1024.0) / 1024.0
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for offset in (-1, 0, 1, 2):
        index = base.astype(np.int64) + offset
        weight = _keys_cubic(frac - offset)
        valid = (index >= 0) & (index < n_in)
        np.add.at(matrix, (rows[valid], index[valid]), weight[valid])
    return matrix / matrix.sum(axis=1, keepdims=True)


def _nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    index = np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), index] = 1.0
    return matrix


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    scale = n_in / n_out
    start = np.arange(n_out)[:, None] * scale
    stop = start + scale
    left = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(stop, left + 1) - np.maximum(start, left), 0.0, None)
    return overlap / scale


@lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """The (n_out, n_in) float32 weight matrix of ``method`` along one axis."""
    if method == "nearest":
        matrix = _nearest_matrix(n_in, n_out)
    elif method == "area":
        matrix = _area_matrix(n_in, n_out)
    elif method == "bicubic":
        matrix = _bicubic_matrix(n_in, n_out)
    elif method in KERNELS:
        matrix = _kernel_matrix(n_in, n_out, method)
    else:
        raise ConfigError("preprocessing.resizing.interpolation",
                          f"unknown interpolation {method!r}; allowed: {', '.join(METHODS)}")
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian", "mitchellcubic")


def resize_float(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """Resize an (H, W, C) array to float32 (height, width, C), as ``tf.image.resize`` does."""
    h, w, _ = image.shape
    src = image.astype(np.float32, copy=False)
    if method == "nearest":
        rows = np.minimum(np.floor((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
        cols = np.minimum(np.floor((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
        return src[rows][:, cols]
    out = src
    if h != height or method != "area":
        out = np.einsum("oh,hwc->owc", resize_matrix(h, height, method), out, optimize=True)
    if w != width or method != "area":
        out = np.einsum("ow,hwc->hoc", resize_matrix(w, width, method), out, optimize=True)
    return out


def resize_uint8(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    if image.shape[0] == height and image.shape[1] == width:
        return image
    out = resize_float(image, height, width, method)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def center_crop_or_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resize_with_crop_or_pad``: centre crop and/or zero-pad, no scaling."""
    h, w, c = image.shape
    out = np.zeros((height, width, c), dtype=image.dtype)
    src_y, dst_y = max((h - height) // 2, 0), max((height - h) // 2, 0)
    src_x, dst_x = max((w - width) // 2, 0), max((width - w) // 2, 0)
    ch, cw = min(h, height), min(w, width)
    out[dst_y:dst_y + ch, dst_x:dst_x + cw] = image[src_y:src_y + ch, src_x:src_x + cw]
    return out


def resize_image(image: np.ndarray, height: int, width: int, method: str, aspect_ratio: str = "fit") -> np.ndarray:
    """Bring a decoded uint8 image to the model input size as ``preprocessing.resizing`` says.

    ``fit`` stretches; ``crop`` keeps the aspect ratio (scale so the image covers the target,
    then centre crop — what ST's README promises); ``padding``/``full_screen`` follow the
    reference's code: centre crop and/or zero-pad without scaling.
    """
    if aspect_ratio == "fit":
        return resize_uint8(image, height, width, method)
    if aspect_ratio == "crop":
        h, w = image.shape[:2]
        scale = max(height / h, width / w)
        new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
        return center_crop_or_pad(resize_uint8(image, new_h, new_w, method), height, width)
    return center_crop_or_pad(image, height, width)
