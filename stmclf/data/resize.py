"""Resizing with TensorFlow's ``tf.image.resize`` semantics (antialias off, half-pixel centres).

Every interpolation is a separable linear map: ``out = Wh · image · Wwᵀ`` with weight
matrices built once per (input size, output size, method) and cached. Each matrix is what
TensorFlow's kernel computes, with its float32 arithmetic where that decides a pixel or a tap:

- ``bilinear`` (``ResizeBilinear``), ``bicubic`` (``ResizeBicubic``: Keys, a = −0.5, TF's
  1024-entry weight table) and ``nearest`` (pixel ``min(⌊(i + 0.5)·scale⌋, in − 1)``) sample
  at ``(i + 0.5f)·scale − 0.5f`` with ``scale = float(in)/out``, all in float32;
- ``lanczos3/5``, ``gaussian`` and ``mitchellcubic`` (``ScaleAndTranslate``): sample point
  ``(i + 0.5f)·(1/scale)``, the taps whose centres lie within the kernel's radius (float32
  distances), dropped outside the image and renormalised;
- ``area`` (``ResizeArea``): the overlap of each output cell with each input pixel.

The weights match TensorFlow's to ~1e-6 at every size (a one-hot input through
``tf.image.resize`` gives a row); results are rounded back to uint8 (the loader caches uint8).

Speed (the loader's first epoch decodes and resizes every file): the matrices are banded (2
taps per row for bilinear, 4 for bicubic, ...). A small image (e.g. 28×28) goes through two dense
float32 GEMMs, a large one through sparse (CSR) products, with whole-pixel transposes in between
(never an element-wise transpose of interleaved channels); bilinear where TF's sample positions
are exact in float32 (224 → 128, 28 → 128, any power-of-two ratio...) is torch's
``interpolate``, which then gives the same weights; ``nearest`` is a gather of the uint8 pixels.
All paths compute the same sums up to float32 rounding order.

uint8 images whose bilinear resize is exact in float32 (:func:`exact_resize`: 224 → 128, 28 →
128, 2:1, ...) go through OpenCV (``opencv-python-headless``, optional: the paths above
otherwise) when it is installed: its ``INTER_LINEAR`` on uint16 samples at TF's half-pixel
positions with TF's edge clamping, computes in float32 (every product and sum exact) and rounds
half to even: the same pixels, 2–3× faster (the loader's first epoch).
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from stmclf.errors import ConfigError


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


# ScaleAndTranslate kernels: name -> (kernel, support radius)
KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "mitchellcubic": (_mitchell, 2.0),
    "lanczos3": (_lanczos(3), 3.0),
    "lanczos5": (_lanczos(5), 5.0),
    "gaussian": (_gaussian, 1.5),
}


def _kernel_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """``ScaleAndTranslate`` (antialias off): sample point ``(i + 0.5f)·(1/scale)`` with
    ``scale = float(out)/in``, taps ``⌈p − r − 0.5⌉ .. ⌊p + r − 0.5⌋`` inside the image, kernel at
    ``|tap + 0.5f − p|``, weights normalised; positions and distances in float32 as TF computes
    them, so the same taps fall inside the kernel's support at every size."""
    kernel, radius = KERNELS[method]
    scale = np.float32(n_out) / np.float32(n_in)
    inv_scale = np.float32(1.0 / np.float64(scale))
    sample = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * inv_scale
    r = np.float32(radius)
    first = np.clip(np.ceil(sample - r - np.float32(0.5)), 0, n_in - 1)
    last = np.clip(np.floor(sample + r - np.float32(0.5)), 0, n_in - 1)
    taps = np.arange(n_in, dtype=np.float32)
    distance = np.abs((taps[None, :] + np.float32(0.5)) - sample[:, None]).astype(np.float64)
    inside = (taps[None, :] >= first[:, None]) & (taps[None, :] <= last[:, None])
    weights = np.where(inside, kernel(distance), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    safe = np.where(np.abs(total) >= 1000 * np.finfo(np.float32).tiny, total, 1.0)
    return weights / safe


def _tf_positions(n_in: int, n_out: int, offset: float = 0.5) -> np.ndarray:
    """TensorFlow's half-pixel sample positions in float32: ``(i + 0.5f)·scale − offset``, with
    ``scale = float(n_in) / n_out`` (``offset`` 0.5 for the kernels, 0 for nearest)."""
    scale = np.float32(n_in) / np.float32(n_out)
    return (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(offset)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``ResizeBilinear`` (half-pixel centres): rows ``lower = max(⌊p⌋, 0)``, ``upper =
    min(⌈p⌉, n_in − 1)``, weights ``1 − (p − ⌊p⌋)`` and ``p − ⌊p⌋``, all in float32 as TF."""
    position = _tf_positions(n_in, n_out)
    floor = np.floor(position)
    lerp = position - floor
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(position), n_in - 1).astype(np.int64)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, lower), np.float32(1) - lerp)
    np.add.at(matrix, (rows, upper), lerp)
    return matrix


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``ResizeBicubic``: Keys (a = −0.5) weights from TensorFlow's 1024-entry table, i.e. the
    sub-pixel offset is quantised to 1/1024 before the weights are computed."""
    position = _tf_positions(n_in, n_out).astype(np.float64)
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


@lru_cache(maxsize=256)
def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """The input pixel of each output pixel for ``nearest``: ``min(⌊(i + 0.5f)·scale⌋, n_in − 1)``."""
    index = np.minimum(np.floor(_tf_positions(n_in, n_out, offset=0.0)).astype(np.intp), n_in - 1)
    index.setflags(write=False)
    return index


def _nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), nearest_index(n_in, n_out)] = 1.0
    return matrix


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``ResizeArea``: the overlap of output cell ``[i·scale, (i + 1)·scale)`` with each input
    pixel, divided by ``scale`` (cell bounds in float32, as TF; a bound that rounds past the last
    pixel counts on the last pixel)."""
    scale = np.float32(n_in) / np.float32(n_out)
    start = (np.arange(n_out, dtype=np.float32) * scale)[:, None].astype(np.float64)
    stop = (np.arange(1, n_out + 1, dtype=np.float32) * scale)[:, None].astype(np.float64)
    left = np.arange(int(np.ceil(stop.max())) + 1)[None, :]
    overlap = np.clip(np.minimum(stop, left + 1) - np.maximum(start, left), 0.0, None)
    matrix = overlap[:, :n_in].copy()
    matrix[:, -1] += overlap[:, n_in:].sum(axis=1)
    return matrix / np.float64(scale)


@lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """The (n_out, n_in) float32 weight matrix of ``method`` along one axis."""
    if method == "nearest":
        matrix = _nearest_matrix(n_in, n_out)
    elif method == "area":
        matrix = _area_matrix(n_in, n_out)
    elif method == "bicubic":
        matrix = _bicubic_matrix(n_in, n_out)
    elif method == "bilinear":
        matrix = _bilinear_matrix(n_in, n_out)
    elif method in KERNELS:
        matrix = _kernel_matrix(n_in, n_out, method)
    else:
        raise ConfigError("preprocessing.resizing.interpolation",
                          f"unknown interpolation {method!r}; allowed: {', '.join(METHODS)}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    matrix.setflags(write=False)
    return matrix


METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian", "mitchellcubic")
#: Methods whose weights are all ≥ 0: their output stays in the input's range (no clipping).
CONVEX = frozenset({"bilinear", "nearest", "area", "gaussian"})
#: Above this many multiply-adds for the two dense products, the sparse (CSR) path is faster.
DENSE_LIMIT = 2_500_000


@lru_cache(maxsize=256)
def _sparse_matrix(n_in: int, n_out: int, method: str):
    import torch

    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.from_numpy(resize_matrix(n_in, n_out, method).copy()).to_sparse_csr()


def _passes(h: int, w: int, height: int, width: int, method: str) -> tuple[bool, bool]:
    """Which axes are resampled: all of them, except an ``area`` axis already at its size."""
    return (h != height or method != "area"), (w != width or method != "area")


def _pixels(x: np.ndarray) -> np.ndarray:
    """A C-contiguous (H, W, C) array viewed as (H, W) elements of one whole pixel each."""
    x = np.ascontiguousarray(x)
    return x.view(np.dtype((np.void, x.shape[2] * x.itemsize))).reshape(x.shape[:2])


def _unpixels(pixels: np.ndarray, dtype: np.dtype, c: int) -> np.ndarray:
    return np.ascontiguousarray(pixels).view(dtype).reshape(*pixels.shape, c)


def _swap_hw(x: np.ndarray) -> np.ndarray:
    """(A, B, C) → C-contiguous (B, A, C), moving whole pixels (much faster than an
    element-wise transpose with C = 3 interleaved)."""
    return _unpixels(_pixels(x).T, x.dtype, x.shape[2])


def _nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``nearest``: a gather of whole pixels."""
    h, w, c = image.shape
    pixels = _pixels(image)
    return _unpixels(pixels[nearest_index(h, height)].take(nearest_index(w, width), axis=1), image.dtype, c)


@lru_cache(maxsize=256)
def _exact_positions(n_in: int, n_out: int) -> bool:
    """Whether TF's float32 sample positions ``(i + 0.5)·scale − 0.5`` are exact (no rounding in
    the product or the difference), so that any evaluation order gives TF's weights — true
    for many common sizes (224 → 128, 28 → 128, ...)."""
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    exact = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    return bool(np.array_equal(exact, _tf_positions(n_in, n_out).astype(np.float64)))


def _interpolate_bilinear(image: np.ndarray, height: int, width: int):
    """torch's bilinear (half-pixel, no antialias): TF's weights where the sample positions are
    exact (:func:`_exact_positions`); it computes them itself, possibly with fused multiply-adds."""
    import torch
    import torch.nn.functional as F

    h, w, c = image.shape
    x = torch.empty((1, h, w, c), dtype=torch.float32)
    x.numpy()[0] = image  # the float32 conversion (numpy: no copy of a read-only array first)
    out = F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).contiguous().numpy()


def _resample(image: np.ndarray, height: int, width: int, method: str) -> tuple[np.ndarray, bool]:
    """The float32 resampled image and whether it is transposed: (height, width, C) if not,
    else (width, height, C); C-contiguous either way. ``image``: any real dtype and layout."""
    h, w, c = image.shape
    if method == "nearest":
        return _nearest(image, height, width).astype(np.float32), False
    do_rows, do_cols = _passes(h, w, height, width, method)
    out_h, out_w = (height if do_rows else h), (width if do_cols else w)
    dense = (out_h * h * w + out_w * w * out_h) * c <= DENSE_LIMIT
    if (not dense and method == "bilinear" and do_rows and do_cols and _exact_positions(h, height)
            and _exact_positions(w, width)):
        return _interpolate_bilinear(image, height, width), False
    product = _dense_product if dense else _sparse_product
    # Two 2-D products, each along the leading axis of a (N, M·C) view; between them whole
    # pixels are transposed. Rows first leaves the result transposed (the caller swaps it back
    # at the end, in uint8 if it can); width first transposes the input instead.
    if out_h * w + 0.7 * out_h * out_w <= 0.7 * h * w + h * out_w:
        x = image.astype(np.float32).reshape(h, w * c)
        x = product(h, height, method, x) if do_rows else x
        x = _swap_hw(x.reshape(out_h, w, c)).reshape(w, out_h * c)
        x = product(w, width, method, x) if do_cols else x
        return x.reshape(out_w, out_h, c), True
    x = _swap_hw(image).astype(np.float32).reshape(w, h * c)
    x = product(w, width, method, x) if do_cols else x
    x = _swap_hw(x.reshape(out_w, h, c)).reshape(h, out_w * c)
    x = product(h, height, method, x) if do_rows else x
    return x.reshape(out_h, out_w, c), False


def _dense_product(n_in: int, n_out: int, method: str, x: np.ndarray) -> np.ndarray:
    return resize_matrix(n_in, n_out, method) @ x


def _sparse_product(n_in: int, n_out: int, method: str, x: np.ndarray) -> np.ndarray:
    import torch

    return torch.sparse.mm(_sparse_matrix(n_in, n_out, method), torch.from_numpy(x)).numpy()


def resize_float(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """Resize an (H, W, C) array to float32 (height, width, C), as ``tf.image.resize`` does."""
    if method not in METHODS:
        resize_matrix(1, 1, method)  # raises the ConfigError
    out, transposed = _resample(image, height, width, method)
    return _swap_hw(out) if transposed else out


def resize_uint8(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """``resize_float`` rounded to the nearest integer (ties to even) and clipped to 0..255."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    if method == "nearest" and image.dtype == np.uint8:  # a pure gather: no float round trip
        return _nearest(image, height, width)
    if image.dtype == np.uint8 and opencv_exact(image.shape, height, width, method):
        out = np.empty((height, width, image.shape[2]), np.uint8)
        _resize_opencv(image, out)
        return out
    if method not in METHODS:
        resize_matrix(1, 1, method)
    h, w = image.shape[:2]
    if (image.dtype == np.uint8 and _blocks(h, height, method) is not None and _blocks(w, width, method) is not None
            and exact_resize(h, w, height, width, method)):
        return _resize_blocks(image, height, width, method)
    out, transposed = _resample(image, height, width, method)
    if np.may_share_memory(out, image) or not out.flags.writeable:
        out = out.copy()
    np.rint(out, out=out)
    if method not in CONVEX:
        np.clip(out, 0, 255, out=out)
    out = out.astype(np.uint8)
    return _swap_hw(out) if transposed else out


@lru_cache(maxsize=256)
def _weight_bits(n_in: int, n_out: int, method: str) -> int:
    """Binary digits after the point in the weights of ``method`` along one axis (99: more than 16)."""
    matrix = resize_matrix(n_in, n_out, method).astype(np.float64)
    for bits in range(17):
        scaled = matrix * 2.0 ** bits
        if np.array_equal(scaled, np.round(scaled)):
            return bits
    return 99


def exact_resize(h: int, w: int, height: int, width: int, method: str) -> bool:
    """Whether resizing uint8 pixels from (h, w) to (height, width) is exact in float32 whatever the
    order of the sums: weights of few binary digits (bilinear 28 → 128 or 224 → 128, nearest, area
    2:1, ...), so that every product and partial sum (≤ 2⁹ in magnitude) is a float32 exactly. Then
    every path (dense or sparse products, torch's interpolate, one image or a stack) gives the same
    pixels: TensorFlow's, its own arithmetic being exact too."""
    return _weight_bits(h, height, method) + _weight_bits(w, width, method) <= 14


_OPENCV = None


def _opencv():
    """The ``cv2`` module, with one thread (loader workers own a core each), or False."""
    global _OPENCV
    if _OPENCV is None:
        try:
            import cv2
        except ImportError:  # optional: the numpy/torch paths give the same pixels, slower
            cv2 = False
        else:
            cv2.setNumThreads(1)
        _OPENCV = cv2
    return _OPENCV


def opencv_exact(shape: tuple[int, ...], height: int, width: int, method: str) -> bool:
    """Whether :func:`_resize_opencv` resizes a uint8 image of ``shape`` (H, W, C): bilinear, exact
    in float32 (:func:`exact_resize`), 1–4 channels, OpenCV installed."""
    h, w, c = shape
    return (method == "bilinear" and 1 <= c <= 4 and (h, w) != (height, width)
            and exact_resize(h, w, height, width, method) and bool(_opencv()))


def _resize_opencv(image: np.ndarray, out: np.ndarray) -> None:
    """uint8 (h, w, c) → ``out`` (uint8 C-contiguous (height, width, C), C = c, or c = 1 replicated
    into C channels) for :func:`opencv_exact` cases. OpenCV's ``INTER_LINEAR`` on a uint16 image
    samples at ``(i + 0.5)·scale − 0.5`` and clamps at the edges as TF's ``ResizeBilinear`` does,
    computes in float32 and rounds half to even, as :func:`resize_uint8` does: with few-bit weights
    every product and partial sum is a float32 exactly (any order, FMA or not), and a bilinear mix
    of uint8 values stays within 0..255. (uint16 rather than float32 in and out: 224 → 128 RGB
    21 vs 32 µs, the same pixels.)"""
    if not out.flags.c_contiguous:  # OpenCV writes into C-contiguous arrays only
        target = np.empty(out.shape, np.uint8)
        _resize_opencv(image, target)
        out[...] = target
        return
    cv2 = _opencv()
    height, width, channels = out.shape
    source = image.astype(np.uint16, order="C")
    resized = cv2.resize(source if image.shape[2] > 1 else source[:, :, 0], (width, height),
                         interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2 and channels == 3:  # a grey source for an RGB model: resized once
        cv2.cvtColor(resized.astype(np.uint8), cv2.COLOR_GRAY2RGB, dst=out)
    elif resized.ndim == 2:
        np.copyto(out, resized[:, :, None], casting="unsafe")
    else:
        np.copyto(out, resized, casting="unsafe")


def replicate_planes(planes: np.ndarray, out: np.ndarray) -> None:
    """Copy uint8 planes (N, H, W) into every channel of ``out`` (N, H, W, C): grey images as RGB
    rows. OpenCV's ``cvtColor`` when it is there (0.7 µs per 128×128 image), else a channel at a
    time (a broadcast assignment over the interleaved channels is ~50 µs)."""
    cv2 = _opencv()
    n, height, width, channels = out.shape
    if cv2 and channels == 3 and n and out.flags.c_contiguous and planes.flags.c_contiguous:
        cv2.cvtColor(planes.reshape(n * height, width), cv2.COLOR_GRAY2RGB, dst=out.reshape(n * height, width, 3))
        return
    for channel in range(channels):
        out[..., channel] = planes


@lru_cache(maxsize=256)
def _blocks(n_in: int, n_out: int, method: str) -> "np.ndarray | None":
    """The (p_out, p_in) block when ``method``'s matrix along this axis is that block repeated down
    the diagonal (every p_out outputs read only their own p_in inputs: 224 → 128 bilinear is 32
    blocks of 4 × 7, any 2:1 bilinear or area reduction blocks of 1 × 2), with p_in ≤ 16; else None."""
    groups = np.gcd(n_in, n_out)
    if n_in // groups > 16:
        return None
    matrix = resize_matrix(n_in, n_out, method)
    block = np.ascontiguousarray(matrix[:n_out // groups, :n_in // groups])
    if not np.array_equal(matrix, np.kron(np.eye(groups, dtype=np.float32), block)):
        return None
    block.setflags(write=False)
    return block


@lru_cache(maxsize=64)
def _channel_blocks(n_in: int, n_out: int, method: str, channels: int) -> np.ndarray:
    """:func:`_blocks` for interleaved pixels of ``channels`` values, transposed: (p_in·C, p_out·C)."""
    matrix = np.ascontiguousarray(np.kron(_blocks(n_in, n_out, method), np.eye(channels, dtype=np.float32)).T)
    matrix.setflags(write=False)
    return matrix


def _resize_blocks(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """An exact resize (:func:`exact_resize`) whose matrices are repeated blocks (:func:`_blocks`),
    as two small-K GEMMs on views of the pixels, no transpose: ~⅔ of torch's interpolate time at
    224 → 128. uint8 (h, w, C) → uint8 (height, width, C)."""
    h, w, c = image.shape
    rows, cols = _blocks(h, height, method), _blocks(w, width, method)
    x = image.astype(np.float32).reshape(h // rows.shape[1], rows.shape[1], w * c)
    y = np.matmul(rows, x).reshape(height * (w // cols.shape[1]), cols.shape[1] * c)  # (height, w·C)
    z = y @ _channel_blocks(w, width, method, c)  # (height, width·C)
    return _rounded(z, method).astype(np.uint8).reshape(height, width, c)


_ROUNDER = np.float32(1.5 * 2 ** 23)


def _rounded(x: np.ndarray, method: str) -> np.ndarray:
    """float32 pixels (C-contiguous, overwritten) rounded as :func:`resize_uint8` rounds them, as
    int32 whose low byte is the uint8 pixel: clipped (methods with negative weights), then
    x + 1.5·2²³ is rounded by the addition itself to an integer (ties to even) held in the low bits
    — one add, where ``rint``, ``clip`` and ``astype`` take three passes; assigning the result to a
    uint8 array keeps the low byte."""
    if method not in CONVEX:
        np.clip(x, 0, 255, out=x)
    x += _ROUNDER
    return x.view(np.int32)


def _resize_stack(stack: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """uint8 (N, h, w, c) → rounded pixels (:func:`_rounded`) laid out (N, height, c, width): the
    width pass of every row of every image in one GEMM, then the height pass as one batched product."""
    n, h, w, c = stack.shape
    x = stack.transpose(0, 1, 3, 2).astype(np.float32).reshape(n * h * c, w)
    y = x @ resize_matrix(w, width, method).T
    z = np.matmul(resize_matrix(h, height, method), y.reshape(n, h, c * width))
    return _rounded(z, method).reshape(n, height, c, width)


def stackable(shape: tuple[int, ...], height: int, width: int, method: str, aspect_ratio: str = "fit") -> bool:
    """Whether :func:`resize_into` resizes an image of ``shape`` (H, W, C) together with the others
    of its size: its resize is exact (:func:`exact_resize`: any summation order gives the same
    pixels) and small enough for dense products (:data:`DENSE_LIMIT`, e.g. 28 → 128)."""
    h, w, c = shape
    return (aspect_ratio == "fit" and (h, w) != (height, width) and method in METHODS
            and (height * h * w + width * w * height) * c <= DENSE_LIMIT and exact_resize(h, w, height, width, method)
            and not opencv_exact(shape, height, width, method))


def resize_into(images: Sequence[np.ndarray], out: np.ndarray, method: str, aspect_ratio: str = "fit") -> None:
    """Resize each uint8 (H, W, C) image ``images[k]`` into ``out[k]`` (uint8 (N, height, width,
    channels)) as :func:`resize_image` does, pixel for pixel; a one-channel image fills every channel
    of its row (a grey source resized once, then replicated: resizing works per channel).

    Images OpenCV resizes exactly (:func:`opencv_exact`) go straight into their row. A batch's
    other images of one size that are :func:`stackable` are resized together
    (:func:`_resize_stack`: two GEMMs instead of two per image); the rest one by one with
    :func:`resize_image`."""
    height, width, channels = out.shape[1:]
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, image in enumerate(images):
        if (aspect_ratio == "fit" and image.dtype == np.uint8 and image.shape[2] in (1, channels)
                and opencv_exact(image.shape, height, width, method)):
            _resize_opencv(image, out[k])
            continue
        if stackable(image.shape, height, width, method, aspect_ratio):
            groups.setdefault(image.shape, []).append(k)
            continue
        c = image.shape[2]
        pixels = resize_image(image, height, width, method, aspect_ratio)
        if c == channels:
            out[k] = pixels
        else:
            for channel in range(channels):
                out[k, :, :, channel] = pixels[:, :, 0]
    for members in groups.values():
        planes = _resize_stack(np.stack([images[k] for k in members]), height, width, method)
        rows = slice(members[0], members[-1] + 1) if members[-1] - members[0] == len(members) - 1 else members
        for channel in range(channels):  # a plane at a time (much faster than interleaved pixels), to uint8
            out[rows, :, :, channel] = planes[:, :, channel if planes.shape[2] > 1 else 0, :]


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
