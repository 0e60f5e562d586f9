"""The loader's batch path (issue 15): epoch 1 decodes and resizes a whole batch at a time
(``ImageFileDataset.__getitems__`` → ``FileList.load_many`` → ``load_images``: grey sources kept
one channel, same-size exact resizes as two GEMMs, a plain-PNG fast path, ``pwrite`` into the
cache). Every pixel must be ``load_image``'s, bad files must keep their per-file semantics, and the
cache must hold what epoch 2 reads. All files are real and written here."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stmclf.data.cache import BAD, FILLED, GREY
from stmclf.data.datamodule import ImageFileDataset, ImageFormat, collate_skip_bad
from stmclf.data.decode import ImageDecodeError, _png_plain, decode_bytes, decode_for_resize, load_image
from stmclf.data.files import FileList, load_images
from stmclf.data.resize import exact_resize, resize_image, resize_into


def _noise(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _smooth(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    """Noise blurred by an upscale: JPEG-friendly content with real structure."""
    small = _noise((max(h // 4, 2), max(w // 4, 2), channels), seed).squeeze()
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def _png(pixels: np.ndarray, *, extra: bytes = b"", bad_crc: bool = False, split: bool = False) -> bytes:
    """An 8-bit PNG written chunk by chunk (filter 0 rows), with optional odd chunks."""
    h, w = pixels.shape[:2]
    colour = {1: 0, 3: 2, 4: 6}[pixels.shape[2] if pixels.ndim == 3 else 1]
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))
    data = zlib.compress(rows)
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
    idat = (_chunk(b"IDAT", data[:len(data) // 2]) + extra + _chunk(b"IDAT", data[len(data) // 2:]) if split
            else extra + _chunk(b"IDAT", data, crc=1 if bad_crc else None))
    return b"\x89PNG\r\n\x1a\n" + header + idat + _chunk(b"IEND", b"")


def _saved(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[str]:
    """Files of every kind the batch path treats differently, sizes mixed (several of one size)."""
    root = tmp_path_factory.mktemp("mixed")
    files = {
        "grey_a.png": _saved(_noise((28, 28), 1), "PNG"),
        "grey_b.png": _saved(_noise((28, 28), 2), "PNG"),
        "grey_c.png": _saved(_noise((28, 28), 3), "PNG", compress_level=1),
        "rgb_a.png": _saved(_noise((28, 28, 3), 4), "PNG"),
        "rgb_wide.png": _saved(_noise((24, 40, 3), 5), "PNG"),
        "rgba.png": _saved(_noise((32, 32, 4), 6), "PNG"),
        "grey_4bit.png": _saved(_noise((20, 20), 7) // 16, "PNG", bits=4),
        "palette.png": b"",  # below
        "deep.png": b"",  # 16-bit grey, below
        "interlaced.png": b"",  # below
        "photo_a.jpg": _saved(_smooth(224, 224, 3, 8), "JPEG", quality=90),
        "photo_b.jpg": _saved(_smooth(224, 224, 3, 9), "JPEG", quality=80),
        "grey_photo.jpg": _saved(_smooth(64, 48, 1, 10), "JPEG"),
        "odd_size.jpg": _saved(_smooth(37, 53, 3, 11), "JPEG"),
        "same_size.png": _saved(_noise((32, 32, 3), 12), "PNG"),
        "picture.bmp": _saved(_noise((30, 20, 3), 13), "BMP"),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    Image.fromarray(np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)).save(root / "deep.png")
    Image.fromarray(_noise((28, 28, 3), 14)).save(root / "interlaced.png", interlace=1)
    palette = Image.fromarray(_noise((20, 20), 15) % 16, mode="P")
    palette.putpalette([v for i in range(16) for v in (16 * i, 255 - 16 * i, 99)])
    palette.save(root / "palette.png")
    return [str(root / name) for name in files]


GREY_SOURCES = ("grey_a.png", "grey_b.png", "grey_c.png", "grey_4bit.png", "grey_photo.jpg", "deep.png")
FORMATS = [ImageFormat(32, 32), ImageFormat(128, 128), ImageFormat(16, 24, "grayscale"),
           ImageFormat(32, 32, "rgba"), ImageFormat(56, 56, interpolation="area"),
           ImageFormat(40, 40, interpolation="nearest"), ImageFormat(36, 36, interpolation="bicubic"),
           ImageFormat(32, 32, aspect_ratio="crop"), ImageFormat(24, 24, aspect_ratio="padding")]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.height}x{f.width}-{f.color_mode}-{f.interpolation}-"
                                                       f"{f.aspect_ratio}")
def test_batch_path_pixels_are_load_images(mixed, fmt):
    out = np.full((len(mixed), fmt.height, fmt.width, fmt.channels), 7, np.uint8)
    grey = np.zeros(len(mixed), dtype=bool)
    assert load_images(mixed, fmt, out, grey) == [None] * len(mixed)
    for path, pixels in zip(mixed, out):
        np.testing.assert_array_equal(pixels, load_image(path, fmt), err_msg=path)
    # grey: a grey source for an RGB model, every channel of its row the same plane
    expected = [fmt.color_mode == "rgb" and Path(p).name in GREY_SOURCES for p in mixed]  # rgba: converted
    assert grey.tolist() == expected
    for pixels in out[grey]:
        assert (pixels == pixels[..., :1]).all()


def test_grey_sources_stay_one_channel_and_replicate_to_the_same_pixels(mixed):
    for path in mixed:
        data = Path(path).read_bytes()
        kept = decode_for_resize(data, "rgb", path)
        rgb = decode_bytes(data, "rgb", path)
        grey_source = Path(path).name in GREY_SOURCES
        assert kept.shape[2] == (1 if grey_source else 3), path
        np.testing.assert_array_equal(np.broadcast_to(kept, rgb.shape), rgb, err_msg=path)
        for mode in ("grayscale", "rgba"):  # only rgb keeps a grey source grey
            np.testing.assert_array_equal(decode_for_resize(data, mode, path), decode_bytes(data, mode, path))


def _outcome(decode, data: bytes, mode: str):
    try:
        return decode(data, mode, "file.png")
    except ImageDecodeError as exc:
        return exc.kind, str(exc)


def _bad_deflate(pixels: np.ndarray) -> bytes:
    """A PNG whose chunks and checksums are right but whose IDAT is not zlib data."""
    good = _png(pixels)
    start = good.index(b"IDAT") - 4
    length = struct.unpack_from(">I", good, start)[0]
    return good[:start] + _chunk(b"IDAT", b"\x78\x9c" + b"\xff" * (length - 2)) + good[start + 12 + length:]


@pytest.mark.parametrize("spng", [True, False], ids=["libspng", "pil"])
def test_plain_png_path_and_every_oddity_decode_like_pil(spng, monkeypatch):
    from stmclf.data import decode

    if spng:
        pytest.importorskip("pyspng")
    else:
        monkeypatch.setattr(decode, "_PYSPNG", False)
    grey, rgb = _noise((9, 11), 20)[..., None], _noise((9, 11, 3), 21)
    smooth = np.clip(np.add.outer(np.arange(40), np.arange(30))[..., None] * [3, 2, 1], 0, 255).astype(np.uint8)
    text = _chunk(b"tEXt", b"Comment\x00hello")
    cases = {"grey": _png(grey), "rgb": _png(rgb), "rgba": _png(_noise((5, 6, 4), 22)),
             "gamma chunk": _png(rgb, extra=_chunk(b"gAMA", struct.pack(">I", 45455))),
             "short gamma chunk": _png(rgb, extra=_chunk(b"gAMA", b"\x01")),
             "text chunk": _png(rgb, extra=text), "IDAT in two chunks": _png(rgb, split=True),
             "IDAT split by another chunk": _png(rgb, extra=text, split=True),
             "bad IDAT checksum": _png(rgb, bad_crc=True), "truncated": _png(rgb)[:-30],
             "bad header checksum": _png(rgb)[:29] + b"\0\0\0\0" + _png(rgb)[33:],
             "no image data": _png(rgb)[:33] + _chunk(b"IEND", b""),
             "PIL-written (filtered rows)": _saved(smooth, "PNG"), "PIL-written grey": _saved(smooth[..., 0], "PNG"),
             "not zlib data": _bad_deflate(rgb)}
    errors = 0
    for name, data in cases.items():
        for mode in ("rgb", "grayscale", "rgba"):
            want, got = _outcome(decode_bytes, data, mode), _outcome(decode_for_resize, data, mode)
            if isinstance(want, tuple):
                errors += 1
                assert got == want, (name, mode)
            else:
                np.testing.assert_array_equal(np.broadcast_to(got, want.shape), want, err_msg=f"{name} {mode}")
    assert errors >= 10  # the oddities PIL refuses are refused with the same words
    plain = [name for name, data in cases.items() if decode._png_plain_chunks(data) is not None]
    assert plain == ["grey", "rgb", "rgba", "gamma chunk", "IDAT in two chunks", "PIL-written (filtered rows)",
                     "PIL-written grey", "not zlib data"]  # the others: PIL's usual path
    assert _png_plain(cases["not zlib data"]) is None and decode._png_plain_pixels(cases["not zlib data"]) is None


def test_exact_resizes_are_batched_and_equal_one_by_one():
    assert exact_resize(28, 28, 128, 128, "bilinear") and exact_resize(224, 224, 128, 128, "bilinear")
    assert exact_resize(30, 20, 15, 40, "nearest") and exact_resize(64, 64, 32, 32, "area")
    assert not exact_resize(100, 100, 30, 30, "bilinear") and not exact_resize(28, 28, 128, 128, "bicubic")
    images = [_noise((28, 28, 1), 30), _noise((28, 28, 3), 31), _noise((28, 28, 1), 32), _noise((28, 28, 3), 33),
              _noise((20, 20, 3), 34), _noise((100, 100, 3), 35)]
    for method in ("bilinear", "nearest", "area", "bicubic", "lanczos3"):
        out = np.zeros((len(images), 56, 56, 3), np.uint8)
        resize_into(images, out, method)
        for image, pixels in zip(images, out):
            expected = resize_image(image, 56, 56, method)
            np.testing.assert_array_equal(pixels, np.broadcast_to(expected, pixels.shape), err_msg=method)


def test_rounding_is_rint_ties_to_even():
    from stmclf.data.resize import _rounded

    values = np.array([0.0, 0.49, 0.5, 1.5, 2.5, 3.5, 127.5, 128.5, 254.5, 254.51, 255.0], np.float32)
    out = np.zeros(len(values), np.uint8)
    out[:] = _rounded(values.copy(), "bilinear")
    assert out.tolist() == np.rint(values).astype(np.uint8).tolist() == [0, 0, 0, 2, 2, 4, 128, 128, 254, 255, 255]
    out[:3] = _rounded(np.array([-3.0, 300.0, 12.5], np.float32), "bicubic")  # clipped first
    assert out[:3].tolist() == [0, 255, 12]


# ---------------------------------------------------------------------------------------------
# the dataset: bad files in a batch, the cache, item by item vs the batch

def _truncated_jpeg(seed: int) -> bytes:
    data = _saved(_smooth(40, 40, 3, seed), "JPEG")
    return data[: len(data) // 2]


@pytest.fixture()
def dataset_files(tmp_path, mixed) -> FileList:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cut.jpg").write_bytes(_truncated_jpeg(40))
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("not an image")
    paths = mixed[:5] + [str(bad / "cut.jpg")] + mixed[5:9] + [str(bad / "empty.png"), str(bad / "notes.png")] + mixed[9:]
    return FileList(paths, [i % 3 for i in range(len(paths))])


def _item_batch(dataset: ImageFileDataset, indices: list[int]):
    """What the per-file path (``__getitem__`` + collate) gives for these indices."""
    return collate_skip_bad([dataset[i] for i in indices], empty_shape=(3, 32, 32))


@pytest.mark.parametrize("cache", ["on", "off"])
def test_bad_file_in_a_batch_keeps_per_file_semantics(dataset_files, tmp_path, monkeypatch, caplog, cache):
    monkeypatch.setenv("STMCLF_CACHE", str(tmp_path / "cache") if cache == "on" else "off")
    caplog.set_level(logging.WARNING, logger="stmclf.data")
    fmt = ImageFormat(32, 32)
    indices = [3, 5, 0, 10, 11, 12, 4]  # the three bad files (5, 10, 11) amid good ones
    train = ImageFileDataset(dataset_files, fmt).replacing()
    images, labels = collate_skip_bad(train.__getitems__(indices))
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    assert images.permute(0, 2, 3, 1).is_contiguous()  # channels_last, as the cached batches
    # each bad file's place goes to the next readable file: 5 → 6, 10 and 11 → 12
    chosen = [3, 6, 0, 12, 12, 12, 4]
    assert labels.tolist() == [dataset_files.labels[i] for i in chosen]
    for image, index in zip(images, chosen):
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), load_image(dataset_files.paths[index], fmt))
    logged = [r.getMessage() for r in caplog.records]
    for index in (5, 10, 11):
        assert sum(dataset_files.paths[index] in m for m in logged) == 1

    evaluation = ImageFileDataset(dataset_files, fmt)  # its own log: a second dataset logs again
    images, labels = collate_skip_bad(evaluation.__getitems__(indices))
    assert labels.tolist() == [dataset_files.labels[i] for i in (3, 0, 12, 4)]  # bad files left out
    fresh = ImageFileDataset(dataset_files, fmt)
    item_images, item_labels = _item_batch(fresh, indices)
    assert torch.equal(images.contiguous(), item_images) and torch.equal(labels, item_labels)
    images, labels = collate_skip_bad(ImageFileDataset(dataset_files, fmt).__getitems__([5, 10]), (3, 32, 32))
    assert images.shape == (0, 3, 32, 32) and labels.shape == (0,)


def test_cache_filled_by_the_batch_path_gives_epoch_2_the_same_pixels(dataset_files, tmp_path, monkeypatch):
    monkeypatch.setenv("STMCLF_CACHE", str(tmp_path / "cache"))
    fmt = ImageFormat(32, 32)
    dataset = ImageFileDataset(dataset_files, fmt).replacing()
    order = list(np.random.default_rng(0).permutation(len(dataset_files)))
    batches = [order[:6], order[6:12], order[12:], [0, 1, 2, 3, 0]]  # a duplicate, as an epoch's padded tail
    first = [collate_skip_bad(dataset.__getitems__(b)) for b in batches]
    flags = dataset.cache.flags
    bad = {5, 10, 11}
    # a grey source's record holds its one plane (GREY), a colour one all three channels (FILLED)
    kinds = [BAD if i in bad else GREY if decode_for_resize(Path(path).read_bytes()).shape[2] == 1 else FILLED
             for i, path in enumerate(dataset_files.paths)]
    assert {GREY, FILLED, BAD} <= set(kinds)
    assert [flags[i] for i in range(len(dataset_files))] == kinds
    assert dataset.cache_complete()
    again = ImageFileDataset(dataset_files, fmt).replacing()  # a later run: the cache alone serves it
    for batch, (images, labels) in zip(batches, first):
        cached_images, cached_labels = collate_skip_bad(again._cached_batch(batch))
        assert torch.equal(cached_images, images) and torch.equal(cached_labels, labels)
    for i in set(range(len(dataset_files))) - bad:
        np.testing.assert_array_equal(again.cache.take(np.array([i]))[0], load_image(dataset_files.paths[i], fmt))


def test_grey_images_are_cached_as_one_plane(dataset_files, tmp_path, monkeypatch):
    """A grey source in an RGB cache: only its plane is written (the rest of its record is the
    untouched, zero-filled file), and every reader gets RGB rows: whole batches, mixed grey and
    colour batches, one item, the numpy fallback without OpenCV."""
    from stmclf.data import resize

    monkeypatch.setenv("STMCLF_CACHE", str(tmp_path / "cache"))
    fmt = ImageFormat(32, 32)
    dataset = ImageFileDataset(dataset_files, fmt).replacing()
    dataset.__getitems__(list(range(len(dataset_files))))
    flags = dataset.cache.flags
    grey_rows = np.flatnonzero(flags == GREY)
    assert len(grey_rows) >= 5 and np.count_nonzero(flags == FILLED) >= 5
    raw = np.fromfile(dataset.cache.data_path, np.uint8).reshape(len(dataset_files), -1)
    for i in grey_rows:
        expected = load_image(dataset_files.paths[i], fmt)
        np.testing.assert_array_equal(raw[i, :32 * 32], expected[..., 0].ravel())
        assert not raw[i, 32 * 32:].any()  # two thirds of the record never written
    for i in np.flatnonzero(flags == FILLED):
        np.testing.assert_array_equal(raw[i], load_image(dataset_files.paths[i], fmt).ravel())
    again = ImageFileDataset(dataset_files, fmt)  # a later run, served by the cache
    order = [int(i) for i in np.random.default_rng(1).permutation(np.flatnonzero(flags != BAD))]
    for opencv in (resize._opencv(), False):
        monkeypatch.setattr(resize, "_OPENCV", opencv)
        for rows in (order, [int(i) for i in grey_rows], order[:1]):
            images, labels = again._cached_batch(rows)
            for image, index in zip(images, rows):
                np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), load_image(dataset_files.paths[index], fmt))
        image, _ = again[int(grey_rows[0])]  # one item
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), load_image(dataset_files.paths[grey_rows[0]], fmt))


def test_worker_batches_equal_the_in_process_ones(dataset_files, tmp_path, monkeypatch):
    from torch.utils.data import DataLoader

    monkeypatch.setenv("STMCLF_CACHE", "off")
    fmt = ImageFormat(32, 32)

    def batches(workers: int):
        dataset = ImageFileDataset(dataset_files, fmt).replacing()
        loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=workers, collate_fn=collate_skip_bad)
        return list(loader)

    in_process, in_workers = batches(0), batches(2)  # workers: batches built in shared memory
    assert len(in_process) == len(in_workers) == 5
    for (a, la), (b, lb) in zip(in_process, in_workers):
        assert torch.equal(a, b) and torch.equal(la, lb)


class _FreezeCounts(torch.utils.data.Dataset):
    """Each item: how many objects the process that loads it has frozen out of its collections."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        import gc

        return gc.get_freeze_count()


@pytest.mark.parametrize("persistent", [False, True])
def test_loader_workers_fork_with_the_parents_objects_frozen(persistent):
    """Workers inherit the parent's objects frozen (their collections neither visit nor copy
    them); the parent's own collector is back to normal once they have started, every epoch."""
    import gc

    from stmclf.data.datamodule import WorkerLoader

    loader = WorkerLoader(_FreezeCounts(), batch_size=2, num_workers=1, persistent_workers=persistent)
    for _ in range(2):
        counts = [int(c) for batch in loader for c in batch]
        assert gc.get_freeze_count() == 0
        assert len(counts) == 4 and min(counts) > 10_000  # torch alone brings ~10^5 objects
    assert [int(c) for batch in WorkerLoader(_FreezeCounts(), batch_size=2) for c in batch] == [0] * 4


def test_image_loader_workers_send_cache_rows_and_batches_match(tmp_path, monkeypatch):
    """CPU loader workers filling a fresh cache send back rows (``CachedRows``), read here from the
    cache: the batches equal those decoded in process without a cache, bad files included."""
    from conftest import write_image_folder

    from stmclf.config.sections import Dataset
    from stmclf.data.datamodule import ImageDataModule

    root = write_image_folder(tmp_path / "data", per_class=10, size=(24, 28))
    (root / "cat" / "cut.jpg").write_bytes(_truncated_jpeg(50))
    (root / "dog" / "grey.png").write_bytes(_saved(_noise((28, 28), 51), "PNG"))
    (root / "dog" / "photo.jpg").write_bytes(_saved(_smooth(60, 40, 3, 52), "JPEG"))

    def epochs(workers: int, cache: str):
        monkeypatch.setenv("STMCLF_CACHE", cache)
        module = ImageDataModule(Dataset(training_path=str(root), validation_split=0.25, seed=3), ImageFormat(32, 32),
                                 4, num_workers=workers, shuffle_seed=5)
        loader = module.train_dataloader()
        out = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            out += [(images.contiguous(), labels) for images, labels in loader]
            if epoch == 0:
                sent_rows = loader.dataset.rows_from_cache
        if getattr(loader, "_iterator", None) is not None:
            loader._iterator._shutdown_workers()
        return out, sent_rows

    reference, _ = epochs(0, "off")
    batches, sent_rows = epochs(2, str(tmp_path / "cache"))
    assert sent_rows and len(batches) == len(reference) == 2 * 6  # 33 files: 24 train, 6 batches of 4
    for (a, la), (b, lb) in zip(reference, batches):
        assert torch.equal(a, b) and torch.equal(la, lb)


BLOCK_CASES = [((224, 224, 3), (128, 128), "bilinear"), ((224, 160, 1), (128, 80), "bilinear"),
               ((64, 48, 3), (32, 24), "area"), ((256, 256, 4), (128, 64), "bilinear"),
               ((224, 224, 3), (128, 224), "bilinear")]


@pytest.mark.parametrize("size, target, method", BLOCK_CASES)
def test_block_resizes_equal_the_general_path(size, target, method):
    """Resizes whose matrices are one small block repeated (224 → 128 bilinear: 4 × 7) take two
    small-K GEMMs on views of the pixels; the general path (float resize, then rint) agrees."""
    from stmclf.data.resize import _blocks, resize_float, resize_uint8

    assert _blocks(size[0], target[0], method) is not None and _blocks(size[1], target[1], method) is not None
    image = _noise(size, 60)
    expected = np.clip(np.rint(resize_float(image, *target, method)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(resize_uint8(image, *target, method), expected)


OPENCV_CASES = [((224, 224, 3), (128, 128)), ((28, 28, 1), (128, 128)), ((28, 28, 3), (128, 128)),
                ((256, 256, 4), (128, 64)), ((224, 160, 1), (128, 80)), ((64, 48, 3), (128, 96))]


@pytest.mark.parametrize("size, target", OPENCV_CASES)
def test_opencv_bilinear_gives_the_numpy_paths_pixels(size, target, monkeypatch):
    """Exact bilinear resizes go through OpenCV when it is installed (the loader's 224 → 128 and
    28 → 128): the same pixels as the numpy paths, ties (exact .5 values) rounded to even,
    whatever the layout of the input or of the rows written."""
    cv2 = pytest.importorskip("cv2")
    from stmclf.data import resize

    monkeypatch.setattr(resize, "_OPENCV", cv2)
    assert resize.opencv_exact(size, *target, "bilinear")
    assert not resize.opencv_exact(size, *target, "bicubic") and not resize.opencv_exact((100, 100, 3), 30, 30, "bilinear")
    image = _noise(size, 70)
    exact = resize.resize_float(image, *target, "bilinear")
    assert np.count_nonzero(exact - np.floor(exact) == 0.5) > 10  # ties to round
    strided = np.ascontiguousarray(image[::-1, ::-1])[::-1, ::-1]  # negative strides
    channels = 3 if size[2] == 1 else size[2]
    images = [image, _noise(size, 71)]
    out = np.zeros((2, *target, channels), np.uint8)
    resize_into(images, out, "bilinear")
    columns = np.zeros((2, target[0], target[1] + 5, channels), np.uint8)[:, :, 5:]  # rows not C-contiguous
    resize_into(images, columns, "bilinear")
    with_opencv = [resize.resize_uint8(image, *target, "bilinear"), resize.resize_uint8(strided, *target, "bilinear")]

    monkeypatch.setattr(resize, "_OPENCV", False)  # the numpy/torch paths
    assert not resize.opencv_exact(size, *target, "bilinear")
    expected = resize.resize_uint8(image, *target, "bilinear")
    np.testing.assert_array_equal(expected, np.clip(np.rint(exact), 0, 255).astype(np.uint8))
    for got in with_opencv:
        np.testing.assert_array_equal(got, expected)
    reference = np.zeros_like(out)
    resize_into(images, reference, "bilinear")
    np.testing.assert_array_equal(out, reference)
    np.testing.assert_array_equal(columns, reference)


def test_a_cache_left_half_made_is_made_afresh(tmp_path):
    """A crash between the cache's two files (or a removed flags file) left the pixels without
    their flags: every later run disabled the cache ("No such file or directory") for good. The
    pair is made afresh, empty."""
    from stmclf.data.cache import FILLED, ImageCache

    shape = (3, 4, 4, 3)
    cache = ImageCache(tmp_path, "key", shape)
    cache.get(1, lambda: np.full(shape[1:], 7, np.uint8))
    assert cache.flags_path.read_bytes()[1] == FILLED
    for broken in (lambda: cache.flags_path.unlink(), lambda: cache.flags_path.write_bytes(b"")):
        broken()
        again = ImageCache(tmp_path, "key", shape)
        assert again.flags_path.stat().st_size == 3 and again.flags_path.read_bytes() == b"\0\0\0"
        assert again.get(1, lambda: np.full(shape[1:], 9, np.uint8))[0, 0, 0] == 9  # loaded again, not stale
