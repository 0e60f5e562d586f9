"""Cross-checks of stmclf.augment's deterministic building blocks against the TensorFlow ops
(and PIL functions) the reference uses. Skipped when TensorFlow is not installed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.io  # noqa: F401  before TensorFlow: importing triton (via torchvision) after TF segfaults

tf = pytest.importorskip("tensorflow")

from stmclf.augment.affine import (affine_sample, crop_matrices, rotation_matrices, shear_matrices,  # noqa: E402
                                   translation_matrices, zoom_matrices)
from stmclf.augment.color import hsv_to_rgb, rgb_to_hsv, sharpen_255  # noqa: E402
from stmclf.augment.misc import box_blur  # noqa: E402

B, C, H, W = 5, 3, 17, 23
RNG = np.random.default_rng(0)
X = RNG.random((B, C, H, W)).astype(np.float32)


def nhwc(a: np.ndarray):
    return tf.constant(a.transpose(0, 2, 3, 1))


def nchw(t) -> np.ndarray:
    return t.numpy().transpose(0, 3, 1, 2)


def _t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


MATRICES = {
    "rotation": rotation_matrices(_t(RNG.uniform(-1.5, 1.5, B)), H, W),
    "zoom": zoom_matrices(_t(RNG.uniform(0.3, 2.5, B)), _t(RNG.uniform(0.3, 2.5, B)), H, W),
    "translation": translation_matrices(_t(RNG.uniform(-30, 30, B)), _t(RNG.uniform(-30, 30, B))),
    "shear": shear_matrices(_t(RNG.uniform(-1, 1, B)), "xy"),
    "general": _t(RNG.uniform(-3, 3, (B, 2, 3))) * _t([[1, 1, 10], [1, 1, 10]]),
}


@pytest.mark.parametrize("name", sorted(MATRICES))
@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "constant", "nearest"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_affine_sampler_matches_image_projective_transform_v3(name, fill_mode, interpolation):
    m = MATRICES[name]
    fill_value = 0.7 if fill_mode == "constant" else 0.0
    flat = np.concatenate([m.reshape(B, 6).numpy(), np.zeros((B, 2), np.float32)], 1)
    ref = nchw(tf.raw_ops.ImageProjectiveTransformV3(
        images=nhwc(X), transforms=flat, output_shape=[H, W], fill_value=fill_value,
        fill_mode=fill_mode.upper(), interpolation=interpolation.upper()))
    separable = name in ("zoom", "translation")
    for sep in {False, separable}:
        ours = affine_sample(torch.from_numpy(X), m, fill_mode, interpolation, fill_value, separable=sep).numpy()
        np.testing.assert_allclose(ours, ref, atol=2e-5)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_crop_matches_crop_and_resize(interpolation):
    x1, y1 = RNG.uniform(0, 0.4, B), RNG.uniform(0, 0.4, B)
    x2, y2 = x1 + RNG.uniform(0.3, 0.6, B), y1 + RNG.uniform(0.3, 0.6, B)
    boxes = np.stack([y1, x1, y2, x2], 1).astype(np.float32)
    ref = nchw(tf.image.crop_and_resize(nhwc(X), boxes, np.arange(B), (H, W), method=interpolation))
    m = crop_matrices(_t(x1), _t(y1), _t(x2), _t(y2), H, W)
    ours = affine_sample(torch.from_numpy(X), m, "nearest", interpolation, separable=True).numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_hsv_conversions_match_tf():
    u = X.copy()
    u[0, :, :4, :4] = 0.5  # gray pixels (zero saturation)
    u[1, :, :4, :4] = 0.0  # black
    ref_hsv = nchw(tf.image.rgb_to_hsv(nhwc(u)))
    np.testing.assert_allclose(rgb_to_hsv(torch.from_numpy(u)).numpy(), ref_hsv, atol=1e-5)
    ref_rgb = nchw(tf.image.hsv_to_rgb(tf.constant(ref_hsv.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(hsv_to_rgb(torch.from_numpy(ref_hsv)).numpy(), ref_rgb, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("padding", ["reflect", "symmetric", "constant"])
def test_blur_matches_tf_pad_and_mean_filter(k, padding):
    top, left = (k - 1) // 2, (k - 1) // 2
    padded = tf.pad(nhwc(X), [[0, 0], [top, k - 1 - top], [left, k - 1 - left], [0, 0]],
                    mode=padding.upper(), constant_values=0.3)
    kernel = tf.ones([k, k, C, 1]) / float(k * k)
    ref = nchw(tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID"))
    ours = box_blur(torch.from_numpy(X), k, padding, 0.3).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_sharpness_matches_the_reference_formula():
    v = np.round(X * 255.0).astype(np.float32)
    f = RNG.uniform(0, 4, B).astype(np.float32)
    img = nhwc(v)
    kernel = tf.tile(tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32, shape=[3, 3, 1, 1]) / 13.0,
                     [1, 1, C, 1])
    degenerate = tf.nn.depthwise_conv2d(img, kernel, [1, 1, 1, 1], "VALID")
    mask = tf.pad(tf.ones_like(degenerate), [[0, 0], [1, 1], [1, 1], [0, 0]])
    padded = tf.where(tf.equal(mask, 1), tf.pad(degenerate, [[0, 0], [1, 1], [1, 1], [0, 0]]), img)
    ref = nchw(tf.round(tf.clip_by_value(img + f[:, None, None, None] * (img - padded), 0.0, 255.0)))
    ours = sharpen_255(torch.from_numpy(v), torch.from_numpy(f)).numpy()
    assert np.abs(ours - ref).max() <= 1.0  # rounding ties may differ by one level
    assert (ours != ref).mean() < 1e-3


def test_equalize_matches_pil():
    from PIL import Image, ImageOps

    from stmclf.augment.color import equalize_255

    v = np.clip(RNG.normal(100, 20, (2, 3, 32, 32)), 0, 255).round().astype(np.uint8)
    ours = equalize_255(torch.from_numpy(v.astype(np.float32))).numpy()
    for i in range(2):
        ref = np.asarray(ImageOps.equalize(Image.fromarray(v[i].transpose(1, 2, 0)))).transpose(2, 0, 1)
        np.testing.assert_array_equal(ours[i], ref)


@pytest.mark.parametrize("method, size", [("bilinear", (31, 29)), ("nearest", (31, 29)), ("bilinear", (11, 8)),
                                          ("nearest", (11, 8)), ("area", (11, 8))])
def test_periodic_resizing_matches_tf_resize(method, size):
    """``size`` is (width, height). ``area`` matches TF for integer down-scaling only (torch's
    adaptive average pooling differs from TF's fractional-area weights otherwise)."""
    from stmclf.augment import build_augmentation

    x = X[:, :, :16, :22]
    aug = build_augmentation({"random_periodic_resizing": {"period": 1, "image_sizes": [size],
                                                           "interpolation": method}}, (0.0, 1.0))
    ours = aug(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    ref = nchw(tf.image.resize(nhwc(x), (size[1], size[0]), method=method))
    assert ours.shape == ref.shape == (B, C, size[1], size[0])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
