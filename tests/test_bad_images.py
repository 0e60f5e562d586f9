"""Bad images never kill a run (issue 12): every kind of broken file met in training is logged once
and skipped, training batches stay full and deterministic, and ``stmclf data check`` lists every
broken and every suspicious file. All files are real and written here."""
from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import config_text, write_image_folder
from stmclf.cli.main import main
from stmclf.config.sections import Dataset
from stmclf.data.check import check_dataset, inspect_image
from stmclf.data.datamodule import EpochShuffleSampler, ImageDataModule, ImageFileDataset, ImageFormat
from stmclf.data.decode import ImageDecodeError, decode_bytes, decode_image, max_image_pixels
from stmclf.data.files import FileList
from stmclf.errors import UserError

FMT = ImageFormat(32, 32)
LIMIT = "1000000"  # $STMCLF_MAX_IMAGE_PIXELS for these tests: the 1500×1500 PNG is a bomb


# ---------------------------------------------------------------------------------------------
# the files

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def crafted_png(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written chunk by chunk: any header, any (compressed) data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8).squeeze()


BROKEN = {  # name → (class folder, kind that `data check` and the decoder give, what the detail says)
    "truncated.png": ("cat", "corrupt", "truncated"),
    "zero.jpg": ("dog", "empty-file", "zero-byte"),
    "notes.png": ("owl", "not-image", "text content"),
    "bomb_header.png": ("cat", "bomb", "decompression bomb"),
    "bomb_black.png": ("dog", "bomb", "decompression bomb"),
}
DECODER_SAYS = {"notes.png": "cannot identify image file"}  # where the decoder's words differ from the check's
SUSPICIOUS = {  # name → (class folder, warning kind)
    "deep.png": ("owl", "16-bit"),
    "deep_rgb.png": ("cat", "16-bit"),
    "print.jpg": ("dog", "cmyk"),
    "palette.png": ("owl", "palette-alpha"),
    "really_png.jpg": ("cat", "format-mismatch"),
    "linked.png": ("dog", "symlink-outside"),
}


def write_bad_files(root: Path) -> dict[str, Path]:
    """One file of each broken and each suspicious kind in the class folders of ``root``."""
    paths = {name: root / folder / name for name, (folder, *_) in {**BROKEN, **SUSPICIOUS}.items()}
    good = _encoded(Image.fromarray(_noise(64)), "PNG")
    paths["truncated.png"].write_bytes(good[: len(good) * 6 // 10])  # valid header, data cut short
    paths["zero.jpg"].write_bytes(b"")
    paths["notes.png"].write_text("these are owl notes, not an owl\n")
    # The header claims 30000×30000 (900 MP); 120 bytes on disk.
    paths["bomb_header.png"].write_bytes(crafted_png(30000, 30000, 1, 0, b"\x00" * 64))
    # A complete, decodable all-black image of 2.25 MP: a bomb under this test's 1 MP limit.
    Image.new("1", (1500, 1500)).save(paths["bomb_black.png"])
    Image.fromarray(np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)).save(paths["deep.png"])
    rows = b"".join(b"\x00" + _noise(24, seed=i).tobytes()[:16 * 6] for i in range(4))  # filter 0, 16 px × 6 bytes
    paths["deep_rgb.png"].write_bytes(crafted_png(16, 4, 16, 2, rows))
    Image.fromarray(_noise(24, 4), mode="CMYK").save(paths["print.jpg"], format="JPEG")
    palette = Image.fromarray((np.arange(24 * 24) % 16).astype(np.uint8).reshape(24, 24), mode="P")
    palette.putpalette([v for i in range(16) for v in (16 * i, 255 - 16 * i, 128)])
    palette.save(paths["palette.png"], transparency=bytes([0, 128] + [255] * 14))
    Image.fromarray(_noise(24)).save(paths["really_png.jpg"], format="PNG")
    outside = root.parent / f"{root.name}_elsewhere.png"
    Image.fromarray(_noise(24, seed=5)).save(outside)
    os.symlink(outside, paths["linked.png"])
    return paths


def _set_limit(value):
    """Set $STMCLF_MAX_IMAGE_PIXELS (None: unset) and have the decoder read it (as a data module does)."""
    if value is None:
        os.environ.pop("STMCLF_MAX_IMAGE_PIXELS", None)
    else:
        os.environ["STMCLF_MAX_IMAGE_PIXELS"] = value
    return max_image_pixels()


@pytest.fixture(autouse=True)
def _pixel_limit():
    before = os.environ.get("STMCLF_MAX_IMAGE_PIXELS")
    _set_limit(LIMIT)
    yield
    _set_limit(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "train"
    write_image_folder(root, per_class=13)  # 39 good + 11 = 50 files: 37 train, 13 validation
    paths = write_bad_files(root)
    return SimpleNamespace(root=root, paths=paths, broken={name: str(paths[name]) for name in BROKEN})


def _config(tmp_path: Path, root: Path, workers: int, epochs: int = 2, name: str = "config.yaml") -> Path:
    text = config_text(root, tmp_path / "run", tmp_path / "mlruns", epochs=epochs)
    text = text.replace("num_workers: 0", f"num_workers: {workers}").replace("batch_size: 8", "batch_size: 4")
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# decoding: one error kind per broken file, no warning, no exception other than ImageDecodeError

def test_each_broken_file_is_one_decode_error(dataset):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, (_, kind, detail) in BROKEN.items():
            with pytest.raises(ImageDecodeError) as info:
                decode_image(dataset.broken[name])
            assert info.value.kind == kind, name
            assert DECODER_SAYS.get(name, detail) in str(info.value) and dataset.broken[name] in str(info.value)
            assert len(str(info.value).splitlines()) == 1
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_accepted_odd_images_decode_to_8_bit_rgb(dataset):
    for name in SUSPICIOUS:
        image = decode_image(str(dataset.paths[name]))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    deep = decode_image(str(dataset.paths["deep.png"]), "grayscale")
    assert deep[0, :4, 0].tolist() == [0, 0, 0, 0] and deep[-1, -1, 0] == 255  # v/256 of 0, 64, ..., 65472
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's palette-transparency warning would raise here
        assert decode_image(str(dataset.paths["palette.png"]), "rgb").shape == (24, 24, 3)
        assert decode_image(str(dataset.paths["palette.png"]), "rgba").shape == (24, 24, 4)


def test_bomb_warning_is_an_error_and_the_limit_is_configurable():
    band = crafted_png(12000, 12000, 1, 0, b"\x00" * 64)  # 144 MP: PIL itself would only warn
    assert _set_limit(None) == 50_000_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError, match="decompression bomb") as info:
            decode_bytes(band, name="band.png")
    assert info.value.kind == "bomb" and not caught
    black = _encoded(Image.new("1", (1500, 1500)), "PNG")
    assert decode_bytes(black).shape == (1500, 1500, 3)  # 2.25 MP < the 50 MP default
    assert _set_limit("2e6") == 2_000_000
    with pytest.raises(ImageDecodeError, match=r"1500×1500 = 2,250,000 pixels, above the limit of 2,000,000"):
        decode_bytes(black)
    assert _set_limit("none") is None
    assert decode_bytes(black).shape == (1500, 1500, 3)
    os.environ["STMCLF_MAX_IMAGE_PIXELS"] = "lots"
    for start in (lambda: ImageDataModule(Dataset(training_path="x"), FMT, batch_size=4),
                  lambda: check_dataset(Dataset(training_path="x"))):
        with pytest.raises(UserError, match="STMCLF_MAX_IMAGE_PIXELS: expecting a number of pixels .* got 'lots'"):
            start()


# ---------------------------------------------------------------------------------------------
# training: the run completes, batches are full, each broken file is logged once

@pytest.mark.parametrize("workers", [0, 2])
def test_fit_completes_with_full_batches_and_one_line_per_bad_file(dataset, tmp_path, workers, monkeypatch, caplog,
                                                                   capfd):
    from stmclf.training.module import ClassifierModule

    sizes: list[int] = []
    original = ClassifierModule.training_step

    def counting(self, batch, batch_idx):
        sizes.append(int(batch[1].shape[0]))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", counting)
    caplog.set_level(logging.WARNING, logger="stmclf.data")
    config = _config(tmp_path, dataset.root, workers)
    assert main(["fit", "--config", str(config), "--trainer.enable_progress_bar", "false"]) == 0
    assert (tmp_path / "run" / "saved_models" / "best_augmented_model.ckpt").is_file()

    module = ImageDataModule(Dataset(training_path=str(dataset.root), validation_split=0.25, seed=3), FMT, 4)
    train = module.prepare_splits().train
    in_train = [p for p in dataset.broken.values() if p in train.paths]
    assert len(train) == 37 and len(in_train) >= 3  # replacements happen in the training batches
    per_epoch = [4] * 9 + [2]  # 37 = 9·4 + 1: the last image gets a second one, never a batch of one
    assert sizes == per_epoch * 2

    run_log = (tmp_path / "run" / "stmclf.log").read_text().splitlines()  # worker processes write to it too
    for path in dataset.broken.values():
        lines = [line for line in run_log if path in line]
        assert len(lines) == 1 and "skipping an unreadable image" in lines[0], path
    for name in SUSPICIOUS:
        assert not [line for line in run_log if str(dataset.paths[name]) in line and "skipping" in line], name
    # The symbolic link is read, with a warning line each time the dataset is listed.
    links = {r.getMessage() for r in caplog.records if "symbolic links to outside the dataset root" in r.getMessage()}
    assert len(links) == 1 and str(dataset.paths["linked.png"]) in links.pop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "DecompressionBomb" not in err


# ---------------------------------------------------------------------------------------------
# the loader: full, deterministic batches whatever the workers and the cache

def _batches(root: Path, workers: int, epochs=(0, 1)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    module = ImageDataModule(Dataset(training_path=str(root), validation_split=0.25, seed=3), FMT, 4,
                             num_workers=workers, shuffle_seed=11)
    loader = module.train_dataloader()
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out += [(images.contiguous(), labels) for images, labels in loader]
    if getattr(loader, "_iterator", None) is not None:
        loader._iterator._shutdown_workers()
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("cache", ["on", "off"])
def test_loader_batches_are_full_and_deterministic(dataset, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("STMCLF_CACHE", str(tmp_path / "cache") if cache == "on" else "off")
    first = _batches(dataset.root, workers=0)  # cold cache: decodes, finds the bad files
    assert [len(labels) for _, labels in first] == ([4] * 9 + [2]) * 2
    assert _same(first, _batches(dataset.root, workers=0))  # warm cache (bad files remembered) or again
    assert _same(first, _batches(dataset.root, workers=2))
    assert not _same(first[:10], first[10:])  # each epoch has its own order


def test_a_bad_file_is_replaced_by_the_next_readable_one(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STMCLF_CACHE", "off")
    folder = write_image_folder(tmp_path / "d", per_class=3, size=(32, 32))
    paths = write_bad_files(tmp_path / "d")
    good = sorted(str(p) for p in folder.glob("*/*_00*.png"))
    order = [good[0], str(paths["truncated.png"]), str(paths["zero.jpg"]), good[1], good[2]]
    files = FileList(order, [0, 1, 2, 3, 4])
    caplog.set_level(logging.WARNING, logger="stmclf.data")
    training = ImageFileDataset(files, FMT).replacing()
    images, labels = training.__getitems__([1, 2, 4, 0])
    assert labels.tolist() == [3, 3, 4, 0]  # both bad files → index 3, the next readable one
    assert torch.equal(images[0], torch.from_numpy(decode_image(good[1]).transpose(2, 0, 1).copy()))
    assert [training[i][1] for i in (1, 2, 4, 0)] == [3, 3, 4, 0]  # item by item: the same
    evaluation = ImageFileDataset(files, FMT)
    images, labels = evaluation.__getitems__([1, 2, 3])
    assert labels.tolist() == [3] and images.shape == (1, 3, 32, 32)  # the bad files left out
    assert [evaluation[i] is None for i in (1, 2, 3)] == [True, True, False]
    for path in order[1:3]:
        assert sum(path in r.getMessage() for r in caplog.records) == 2  # once per dataset: two runs here


def test_a_file_in_two_sets_is_logged_once_across_worker_processes(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("STMCLF_CACHE", "off")
    logfile = tmp_path / "data.log"
    handler = logging.FileHandler(logfile)  # worker processes (forked) write to it too
    logger = logging.getLogger("stmclf.data")
    logger.addHandler(handler)
    try:
        module = ImageDataModule(Dataset(training_path=str(dataset.root), validation_split=0.25, seed=3), FMT, 4,
                                 num_workers=2)
        splits = module.prepare_splits()
        assert set(splits.train.paths) < set(splits.quantization.paths)
        for loader in (module.train_dataloader(), module.val_dataloader(), module.loader_for(splits.quantization)):
            assert sum(len(labels) for _, labels in loader) >= len(loader.dataset) - len(BROKEN)
            loader._iterator._shutdown_workers()
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = logfile.read_text().splitlines()
    for path in dataset.broken.values():
        assert len([line for line in lines if path in line]) == 1, path


def test_sampler_never_ends_an_epoch_with_a_single_image():
    sampler = EpochShuffleSampler(9, seed=1, batch_size=4)
    order = list(sampler)
    assert len(sampler) == len(order) == 10 and order[-1] == order[0] and sorted(order[:9]) == list(range(9))
    assert list(EpochShuffleSampler(10, seed=1, batch_size=4)) == list(EpochShuffleSampler(10, seed=1))


# ---------------------------------------------------------------------------------------------
# stmclf data check

def test_check_lists_every_broken_and_suspicious_file(dataset):
    report = check_dataset(Dataset(training_path=str(dataset.root)), workers=1)
    assert {(p.kind, Path(p.path).name) for p in report.problems} == {(k, n) for n, (_, k, _) in BROKEN.items()}
    assert {(w.kind, Path(w.path).name) for w in report.warnings} == {(k, n) for n, (_, k) in SUSPICIOUS.items()}
    details = {Path(p.path).name: p.detail for p in report.problems + report.warnings}
    for name, (_, _, detail) in BROKEN.items():
        assert detail in details[name], name
    assert "30000×30000" in details["bomb_header.png"] or "900000000" in details["bomb_header.png"]
    assert "links to " in details["linked.png"] and "outside the dataset root" in details["linked.png"]
    assert details["really_png.jpg"].startswith("PNG content in a .jpg file")
    assert report.folders[0].counts == {"cat": 13 + 2, "dog": 13 + 2, "owl": 13 + 2}


def test_check_cli_prints_every_path_with_its_reason(dataset, tmp_path, capsys):
    config = _config(tmp_path, dataset.root, workers=0)
    assert main(["data", "check", "--config", str(config), "--workers", "2", "--max_rows", "0"]) == 2
    out, err = capsys.readouterr()
    lines = [" ".join(line.split()) for line in out.splitlines()]
    labels = {"corrupt": "corrupt image", "empty-file": "zero-byte file", "not-image": "not an image",
              "bomb": "decompression bomb", "16-bit": "16-bit image", "cmyk": "CMYK image",
              "palette-alpha": "palette + alpha", "format-mismatch": "format ≠ extension",
              "symlink-outside": "link out of root"}
    for name, (_, kind, *_) in {**BROKEN, **SUSPICIOUS}.items():
        path = str(dataset.paths[name])
        assert any(path in line and labels[kind] in line for line in lines), name
    assert err.strip().startswith("stmclf: error: dataset check found 5 problems") and len(err.splitlines()) == 1


def test_formats_tensorflow_does_not_read_and_pils_bomb_threshold(tmp_path, monkeypatch):
    """TIFF (or WebP) content in a .png file: PIL reads it, TensorFlow does not; the loader and the
    single-image path refused nothing while the check called it not an image: all refuse it now.
    A bomb that PIL's own threshold (2 × its MAX_IMAGE_PIXELS) stops first is reported with
    stmclf's limit, as the others are (was "exceeds limit of 178956970 pixels")."""
    from stmclf.data.decode import ImageFormat, load_image
    from stmclf.data.files import load_images

    tiff = tmp_path / "tiff.png"
    Image.fromarray(_noise(24)).save(tiff, format="TIFF")
    message = "TIFF image: only JPEG, PNG, GIF and BMP are read"
    assert inspect_image(str(tiff))[0] == ("not-image", message)
    with pytest.raises(ImageDecodeError, match=message):
        load_image(str(tiff), ImageFormat(8, 8))
    assert message in str(load_images([str(tiff)], ImageFormat(8, 8), np.zeros((1, 8, 8, 3), np.uint8))[0])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # PIL's default (other tests raise it)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(crafted_png(60000, 60000, 1, 0, b"\x00" * 64))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(str(bomb))
    assert str(info.value).endswith("decompression bomb: 3,600,000,000 pixels, above the limit of 1,000,000 "
                                    "($STMCLF_MAX_IMAGE_PIXELS)")


def test_check_loader_and_predict_read_the_same_png(tmp_path):
    """A PNG whose zlib checksum (adler32) is wrong but whose pixels are whole: the loader's PNG
    decoder reads it, so the check and the single-image path (predict, evaluation) must too
    (they used PIL, which refused it, while training read it without a word)."""
    from stmclf.data.decode import load_image
    from stmclf.data.files import load_images

    pixels = _noise(16)
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(16))
    stream = bytearray(zlib.compress(rows))
    stream[-1] ^= 0xFF  # the adler32 at the end of the zlib stream
    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    path = tmp_path / "adler.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", bytes(stream))
                     + _png_chunk(b"IEND", b""))
    assert inspect_image(str(path)) == (None, [])
    fmt = ImageFormat(16, 16, "rgb", "nearest", "fit")
    single = load_image(str(path), fmt)
    batch = np.zeros((1, 16, 16, 3), np.uint8)
    assert load_images([str(path)], fmt, batch) == [None]
    assert np.array_equal(single, pixels) and np.array_equal(batch[0], pixels)


def test_inspect_image_on_a_clean_file_has_nothing_to_say(dataset):
    assert inspect_image(str(dataset.root / "cat" / "cat_000.png")) == (None, [])


def test_special_files_in_a_class_folder_are_unreadable_images_not_hangs(tmp_path):
    """A FIFO would block the read forever, /dev/zero never ends, two links to each other loop:
    each is listed as an image (its name says so), then refused in one line when read; data check
    reports a folder link that loops back to the root once instead of following it ~40 levels."""
    from stmclf.data.files import list_images

    root = write_image_folder(tmp_path / "data", per_class=3, size=(8, 8), classes={"a": (200, 0, 0), "b": (0, 200, 0)})
    os.mkfifo(root / "a" / "fifo.png")
    (root / "a" / "zero.png").symlink_to("/dev/zero")
    (root / "b" / "loop1.png").symlink_to(root / "b" / "loop2.png")
    (root / "b" / "loop2.png").symlink_to(root / "b" / "loop1.png")
    files = list_images(str(root), ["a", "b"], "dataset.training_path", seed=0)
    odd = sorted(p for p in files.paths if Path(p).name in ("fifo.png", "zero.png", "loop1.png", "loop2.png"))
    assert len(odd) == 4
    for path in odd:
        with pytest.raises(ImageDecodeError) as info:
            decode_image(path)
        assert info.value.kind == "unreadable"
        reason = str(info.value)
        assert ("not a regular file" in reason) if "loop" not in path else ("symbolic links" in reason)
    (root / "a" / "fifo.png").unlink()
    (root / "a" / "zero.png").unlink()
    (root / "b" / "loop1.png").unlink()
    (root / "b" / "loop2.png").unlink()
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    report = check_dataset(Dataset(training_path=str(root)), workers=1)
    linked = [p for p in report.problems if p.path == str(root / "a" / "up")]
    assert len(linked) == 1 and "not followed" in linked[0].detail
    assert all(str(root / "a" / "up" / "a") not in p.path for p in report.problems)
