"""Decoding and resizing real files (PNG, JPEG, BMP, GIF) as TensorFlow's loader does."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stmclf.data.datamodule import ImageFormat, load_image
from stmclf.data.decode import decode_image
from stmclf.data.resize import METHODS, center_crop_or_pad, resize_float, resize_image
from stmclf.errors import UserError


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["png", "bmp", "gif", "jpeg"])
def test_decode_formats_and_color_modes(tmp_path, picture, fmt):
    path = tmp_path / f"img.{fmt}"
    Image.fromarray(picture).save(path)
    rgb = decode_image(str(path), "rgb")
    gray = decode_image(str(path), "grayscale")
    rgba = decode_image(str(path), "rgba")
    assert rgb.shape == (21, 34, 3) and gray.shape == (21, 34, 1) and rgba.shape == (21, 34, 4)
    assert rgb.dtype == np.uint8
    assert (rgba[..., 3] == 255).all()
    if fmt in ("png", "bmp"):  # lossless
        assert np.array_equal(rgb, picture)
        luma = np.rint(picture @ np.array([0.299, 0.587, 0.114]))
        assert np.abs(gray[..., 0].astype(float) - luma).max() <= 1


def test_rgba_png_keeps_alpha_and_rgb_drops_it(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 77
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    assert (decode_image(str(tmp_path / "a.png"), "rgba")[..., 3] == 77).all()
    assert (decode_image(str(tmp_path / "a.png"), "rgb")[..., 0] == 200).all()


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image = decode_image(str(tmp_path / "anim.gif"), "rgb")
    assert image[0, 0, 0] > 200 and image[0, 0, 2] < 50


def test_unreadable_file_is_one_line_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="unable to read image file .*broken.png"):
        decode_image(str(bad), "rgb")


@pytest.mark.parametrize("method", METHODS)
def test_resize_matches_tensorflow(picture, method):
    tf = pytest.importorskip("tensorflow")
    image = picture.astype(np.float32)
    for size in ((13, 20), (40, 64), (21, 34)):
        expected = tf.image.resize(image, size, method=method).numpy()
        ours = resize_float(image, *size, method)
        assert np.abs(expected - ours).max() < 5e-3, (method, size)


def test_fit_crop_and_pad(picture):
    assert resize_image(picture, 16, 16, "bilinear", "fit").shape == (16, 16, 3)
    crop = resize_image(picture, 20, 20, "nearest", "crop")  # keep aspect ratio, centre crop
    assert crop.shape == (20, 20, 3)
    scaled = resize_image(picture, 20, 32, "nearest", "fit")  # 21x34 → 20x32 keeps ~aspect
    assert crop.mean() == pytest.approx(scaled[:, 6:26].mean(), rel=0.05)
    padded = center_crop_or_pad(picture, 25, 30)  # reference: crop/pad without scaling
    assert padded.shape == (25, 30, 3)
    assert (padded[:2] == 0).all() and np.array_equal(padded[2:23], picture[:, 2:32])


def test_load_image_end_to_end(tmp_path, picture):
    Image.fromarray(picture).save(tmp_path / "x.jpg", quality=95)
    fmt = ImageFormat(32, 32, "grayscale", "area", "fit")
    image = load_image(str(tmp_path / "x.jpg"), fmt)
    assert image.shape == (32, 32, 1) and image.dtype == np.uint8
