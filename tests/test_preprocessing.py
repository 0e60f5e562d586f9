"""Decoding and resizing real files (PNG, JPEG, BMP, GIF) as TensorFlow's loader does."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from stmclf.data.datamodule import ImageFormat, load_image
from stmclf.data.decode import CHANNELS, decode_image
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


# --- fast paths (issue "data never the bottleneck") -----------------------------------------------
from stmclf.data.resize import DENSE_LIMIT, resize_matrix, resize_uint8  # noqa: E402


def _dense_reference(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """The definition: ``Wh · image · Wwᵀ`` with the cached weight matrices (an ``area`` axis at
    its size is left alone), through einsum in float64."""
    out = image.astype(np.float64)
    if image.shape[0] != height or method != "area":
        out = np.einsum("oh,hwc->owc", resize_matrix(image.shape[0], height, method).astype(np.float64), out)
    if image.shape[1] != width or method != "area":
        out = np.einsum("ow,hwc->hoc", resize_matrix(image.shape[1], width, method).astype(np.float64), out)
    return out


# (input H, W, C) → (output H, W): small inputs take the dense GEMMs, large ones the sparse
# products; 224 → 128 bilinear is torch's interpolate (exact sample positions); one axis kept.
FAST_CASES = [((28, 28, 3), (128, 128)), ((224, 224, 3), (128, 128)), ((301, 199, 3), (96, 128)),
              ((37, 53, 1), (160, 96)), ((128, 200, 4), (128, 128)), ((200, 128, 3), (96, 128)),
              ((160, 240, 3), (224, 224))]


@pytest.mark.parametrize("method", METHODS)
def test_fast_resize_paths_equal_the_dense_definition(method):
    rng = np.random.default_rng(7)
    for shape, size in FAST_CASES:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = _dense_reference(image, *size, method)
        ours = resize_float(image, *size, method)
        assert ours.dtype == np.float32 and ours.shape == (*size, shape[2]) and ours.flags.c_contiguous
        assert np.abs(ours - expected).max() < 2e-3, (method, shape, size)
        pixels = resize_uint8(image, *size, method)
        assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
        assert np.array_equal(pixels, np.clip(np.rint(ours), 0, 255).astype(np.uint8)), (method, shape, size)
        # rounding may only differ where the exact value is within float32 noise of a .5 tie
        differ = pixels != np.clip(np.rint(expected), 0, 255).astype(np.uint8)
        assert np.all(np.abs(np.abs(expected[differ] - np.floor(expected[differ])) - 0.5) < 2e-3)


def test_dense_and_sparse_paths_are_both_exercised():
    assert (28 * 128 * 28 + 128 * 28 * 128) * 3 <= DENSE_LIMIT < (224 * 128 * 224 + 128 * 224 * 128) * 3


def test_resize_accepts_any_layout_and_dtype():
    rng = np.random.default_rng(3)
    chw = rng.integers(0, 256, (3, 60, 90), dtype=np.uint8)
    before = chw.copy()
    hwc_view = chw.transpose(1, 2, 0)  # not contiguous, as a CHW decoder's output would be
    flipped = np.ascontiguousarray(hwc_view)[::-1]  # negative strides
    for method in ("bilinear", "nearest", "area", "bicubic"):
        expected = resize_uint8(np.ascontiguousarray(hwc_view), 128, 128, method)
        assert np.array_equal(resize_uint8(hwc_view, 128, 128, method), expected)
        assert np.array_equal(resize_uint8(flipped, 128, 128, method),
                              resize_uint8(np.ascontiguousarray(flipped), 128, 128, method))
        assert np.allclose(resize_float(hwc_view.astype(np.float64), 128, 128, method),
                           resize_float(hwc_view, 128, 128, method))
    assert np.array_equal(chw, before)  # the input is never written


@pytest.mark.parametrize("method", METHODS)
def test_resize_matches_tensorflow_at_loader_sizes(method):
    """224 → 128 and 28 → 128 (the benchmark's), odd ratios, up and down, one axis kept."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(11)
    for shape, size in FAST_CASES:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = tf.image.resize(image.astype(np.float32), size, method=method).numpy()
        tolerance = 5e-3 if method == "area" else 1e-3  # TF's float32 rounding of area weights
        assert np.abs(resize_float(image, *size, method) - expected).max() < tolerance, (method, shape, size)
        if method in ("bilinear", "nearest", "area", "gaussian"):  # no clipping: within rounding
            assert np.abs(resize_uint8(image, *size, method) - expected).max() <= 0.5 + tolerance


@pytest.mark.parametrize("method", ["bilinear", "nearest", "bicubic", "gaussian", "lanczos3", "mitchellcubic"])
def test_weight_matrices_are_tensorflows(method):
    """Each matrix row is what TF computes for a one-hot input: the same taps at every size,
    including sizes where float32 rounding decides a tap (6 → 13 gaussian, 2 → 41 nearest)."""
    tf = pytest.importorskip("tensorflow")
    for n_in in (1, 2, 5, 6, 8, 13, 28, 100, 224):
        basis = np.eye(n_in, dtype=np.float32)[:, None, :]  # (n_in, 1, n_in): channel j = pixel j
        for n_out in (1, 3, 13, 41, 47, 96, 128, 250):
            expected = tf.image.resize(basis, (n_out, 1), method=method).numpy()[:, 0, :]
            assert np.abs(resize_matrix(n_in, n_out, method) - expected).max() < 1e-5, (n_in, n_out)


def test_nearest_is_a_pixel_gather():
    rng = np.random.default_rng(5)
    for shape in ((28, 28, 1), (28, 28, 3), (224, 150, 4)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        out = resize_uint8(image, 128, 96, "nearest")
        assert np.array_equal(out, np.rint(_dense_reference(image, 128, 96, "nearest")).astype(np.uint8))


def test_decode_reads_from_memory_with_the_same_pixels_and_errors(tmp_path, picture):
    from stmclf.data.decode import decode_bytes

    for fmt in ("png", "jpeg", "gif", "bmp"):
        path = tmp_path / f"img.{fmt}"
        Image.fromarray(picture).save(path)
        for mode, pil_mode in (("rgb", "RGB"), ("grayscale", "L"), ("rgba", "RGBA")):
            with Image.open(path) as image:
                expected = np.asarray(image.convert(pil_mode))
            if fmt == "jpeg" and mode != "rgba":  # TF's IFAST pixels (test_jpeg_pixels_are_tensorflows)
                expected = _tf_jpeg(path.read_bytes(), CHANNELS[mode]).reshape(expected.shape)
            got = decode_image(str(path), mode)
            assert np.array_equal(got.reshape(expected.shape), expected), (fmt, mode)
            assert np.array_equal(decode_bytes(path.read_bytes(), mode), got)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError) as error:
        decode_image(str(tmp_path / "text.png"))
    assert str(error.value) == (f"unable to read image file {tmp_path / 'text.png'}: cannot identify image file "
                                f"{str(tmp_path / 'text.png')!r}")
    with pytest.raises(UserError, match=r"unable to read image file .*missing.png: \[Errno 2\]"):
        decode_image(str(tmp_path / "missing.png"))
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes((tmp_path / "img.jpeg").read_bytes()[:300])
    with pytest.raises(UserError, match="unable to read image file .*cut.jpg"):
        decode_image(str(truncated))


def test_load_image_224_jpeg_to_128_equals_tensorflows_decode_and_the_dense_definition(tmp_path):
    rng = np.random.default_rng(2)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).resize((224, 224)))
    Image.fromarray(smooth).save(tmp_path / "x.jpg", quality=90)
    for method in ("bilinear", "nearest", "area"):
        image = load_image(str(tmp_path / "x.jpg"), ImageFormat(128, 128, "rgb", method, "fit"))
        decoded = _tf_jpeg((tmp_path / "x.jpg").read_bytes(), 3)
        expected = np.clip(np.rint(_dense_reference(decoded, 128, 128, method)), 0, 255).astype(np.uint8)
        assert np.array_equal(image, expected), method


def _tf_jpeg(data: bytes, channels: int) -> np.ndarray:
    tf = pytest.importorskip("tensorflow")
    return tf.io.decode_jpeg(data, channels=channels).numpy()


@pytest.mark.parametrize("options", [dict(quality=90), dict(quality=75, subsampling="4:4:4"),
                                     dict(quality=95, subsampling="4:2:2"), dict(quality=85, progressive=True),
                                     dict(quality=90, grey=True)])
def test_jpeg_pixels_are_tensorflows(picture, options):
    """ST's loader decodes with TF's ``decode_jpeg`` (fast integer IDCT): the loader's JPEG pixels
    are the same, in rgb and grayscale, for every chroma subsampling, progressive and grey files;
    PIL's (accurate IDCT) differ by a few levels."""
    from stmclf.data.decode import decode_bytes

    options = dict(options)
    image = Image.fromarray(picture).convert("L") if options.pop("grey", False) else Image.fromarray(picture)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    data = buffer.getvalue()
    for mode in ("rgb", "grayscale"):
        expected = _tf_jpeg(data, CHANNELS[mode])
        assert np.array_equal(decode_bytes(data, mode), expected), mode
    if image.mode == "RGB":
        assert not np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), _tf_jpeg(data, 3))


def test_jpeg_without_simplejpeg_is_pil_and_errors_match(monkeypatch, picture, tmp_path):
    """The fast path is optional: without ``simplejpeg`` PIL decodes (accurate IDCT, within a few
    levels of TF); a truncated JPEG and a bomb give the same one-line errors on both paths."""
    from stmclf.data import decode

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    fast = decode.decode_bytes(data, "rgb")
    errors = {}
    for available in (True, False):
        with monkeypatch.context() as patch:
            if not available:
                patch.setattr(decode, "_SIMPLEJPEG", False)
            pixels = decode.decode_bytes(data, "rgb")
            assert np.abs(pixels.astype(int) - fast.astype(int)).max() <= (0 if available else 8)
            with pytest.raises(UserError) as cut:
                decode.decode_bytes(data[:300], "rgb", "cut.jpg")
            patch.setattr(decode, "_limit", 100)
            with pytest.raises(UserError) as bomb:
                decode.decode_bytes(data, "rgb", "big.jpg")
        errors[available] = (cut.value.kind, bomb.value.kind, str(bomb.value))
    assert errors[True] == errors[False]
    assert errors[True][:2] == ("corrupt", "bomb")
