"""A dataset is untrusted input: files swapped under the image cache, odd names, deep folders,
oversized files. Each test writes the hostile files itself and goes through stmclf's own code."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from stmclf.data.datamodule import ImageFileDataset
from stmclf.data.decode import ImageFormat
from stmclf.data.files import list_images

from conftest import write_image_folder


def _flat_bmps(root, values: dict[str, int], count: int) -> None:
    """``count`` same-sized BMPs per class, one grey level per class, all with one mtime (as an
    archive extracts them)."""
    for name, value in values.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            path = root / name / f"{i}.bmp"
            Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
            os.utime(path, ns=(1_577_836_800_000_000_000,) * 2)


def _pixels_by_path(root, cache_dir, monkeypatch) -> dict[str, tuple[float, int]]:
    monkeypatch.setenv("STMCLF_CACHE", str(cache_dir))
    files = list_images(str(root), ["a", "b"], "dataset.training_path", seed=1)
    dataset = ImageFileDataset(files, ImageFormat(8, 8))
    assert dataset.cache is not None
    images, labels = dataset.__getitems__(list(range(len(files))))
    return {os.path.relpath(path, root): (float(images[i].float().mean()), int(labels[i]))
            for i, path in enumerate(files.paths)}


def test_files_swapped_with_the_same_size_and_mtime_are_not_served_from_the_cache(tmp_path, monkeypatch):
    """Two files of one size and modification time swapped between class folders (a relabelling
    with ``mv``): the image cache was keyed by path, size and mtime only, so the next run read the
    old pixels under the new labels. The key now also holds each file's ctime and inode."""
    root = tmp_path / "data"
    _flat_bmps(root, {"a": 0, "b": 255}, 4)
    before = _pixels_by_path(root, tmp_path / "cache", monkeypatch)
    assert before["a/0.bmp"] == (0.0, 0) and before["b/0.bmp"] == (255.0, 1)
    os.rename(root / "a" / "0.bmp", root / "swap.bmp")
    os.rename(root / "b" / "0.bmp", root / "a" / "0.bmp")
    os.rename(root / "swap.bmp", root / "b" / "0.bmp")
    assert (root / "a" / "0.bmp").stat().st_mtime_ns == (root / "b" / "0.bmp").stat().st_mtime_ns
    after = _pixels_by_path(root, tmp_path / "cache", monkeypatch)
    assert after["a/0.bmp"] == (255.0, 0) and after["b/0.bmp"] == (0.0, 1)


def _check_config(path, training) -> str:
    path.write_text(f"dataset:\n  name: pytest\n  training_path: {training}\npreprocessing:\n"
                    "  rescaling: {scale: 1/127.5, offset: -1}\n  color_mode: rgb\n")
    return str(path)


def test_data_check_reports_thousands_of_nested_folders_without_a_traceback(tmp_path, capsys):
    """800 folders nested in a class folder: the check walked them recursively (two frames a
    level) and died with RecursionError's traceback; it now reports them and exits 2."""
    from stmclf.cli.main import main

    root = write_image_folder(tmp_path / "train", per_class=2, size=(8, 8), classes={"a": (200, 0, 0), "b": (0, 200, 0)})
    os.chdir(root / "a")
    try:
        for _ in range(800):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(tmp_path)
    assert main(["data", "check", "--config", _check_config(tmp_path / "c.yaml", root), "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("stmclf: error: dataset check found 800 problems") and len(err.splitlines()) == 1
    assert "sub-folder" in out and "Traceback" not in out + err


FORGED = "\n2026-01-01 INFO Float model validation set accuracy : 99.99 %"


def test_class_folder_names_with_control_characters_are_refused(tmp_path, capsys):
    """A class folder's name becomes a class name (logs, reports, C headers, model files): one with
    a line break forged a log line and an escape sequence reached the terminal; now the rule of
    ``dataset.class_names``: printable text, one line naming the folder, by the loader and the check."""
    from stmclf.cli.main import main
    from stmclf.config.sections import Dataset
    from stmclf.data.folder import make_splits
    from stmclf.errors import ConfigError

    for name, shown in ((f"cat{FORGED}", r"cat\\n2026"), ("dog\x1b[2J", r"dog\\x1b\[2J")):
        root = write_image_folder(tmp_path / str(len(shown)), per_class=2, size=(8, 8),
                                  classes={name: (200, 0, 0), "owl": (0, 200, 0)})
        with pytest.raises(ConfigError, match=rf"^dataset\.training_path: the class folder .*/{shown}.* has a name "
                                              r"that holds the control character '\\(n|x1b)': rename it") as info:
            make_splits(Dataset(training_path=str(root)))
        assert len(str(info.value).splitlines()) == 1 and "\x1b" not in str(info.value)
        assert main(["data", "check", "--config", _check_config(tmp_path / "c.yaml", root), "--workers", "1"]) == 2
        out, err = capsys.readouterr()
        assert "class name" in out and shown.replace("\\\\", "\\").replace("\\[", "[") in out
        assert "\x1b" not in out + err and "\n2026" not in out + err


def test_file_names_with_control_characters_are_escaped_in_messages(tmp_path, capsys, caplog):
    """A bad image file named with a line break or an escape sequence: its skip warning and the
    check's table printed the name raw (a forged log line, terminal control); now escaped, and a
    name that reads as Rich markup (``b]x.png`` in a folder ``c[``: a closing tag) is text, not
    a MarkupError traceback (exit 1)."""
    import logging

    from stmclf.cli.main import main

    root = write_image_folder(tmp_path / "train", per_class=2, size=(8, 8), classes={"a": (200, 0, 0), "c[": (0, 200, 0)})
    (root / "a" / f"bad{FORGED}.png").write_bytes(b"")
    (root / "a" / "esc\x1b]0;title\x07.png").write_bytes(b"")
    (root / "c[" / "b]x.png").write_bytes(b"")
    assert main(["data", "check", "--config", _check_config(tmp_path / "c.yaml", root), "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert r"bad\n2026-01-01 INFO" in out and r"esc\x1b]0;title\x07.png" in out and "c[/b]x.png" in out
    assert "\x1b" not in out + err and "\n2026" not in out + err and "Traceback" not in out + err

    files = list_images(str(root), ["a", "c["], "dataset.training_path", seed=0)
    dataset = ImageFileDataset(files, ImageFormat(8, 8), cache=False)
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        for index in range(len(files)):
            dataset[index]
    skipped = [r.getMessage() for r in caplog.records if "skipping an unreadable image" in r.getMessage()]
    assert len(skipped) == 3 and all("\n" not in m and "\x1b" not in m for m in skipped)
    assert any(r"/a/bad\n2026-01-01 INFO" in m for m in skipped)


def test_data_check_describes_an_unsupported_file_from_the_bytes_it_read(tmp_path):
    """A file that is not JPEG/PNG/GIF/BMP was opened a second time, by its path, to name its format
    (a file swapped for a FIFO in between blocked the check); it is described from the bytes read."""
    import sys

    from stmclf.data.check import inspect_image

    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="TIFF")
    opened = []
    sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" else None)
    finding, _ = inspect_image(str(path))
    assert finding == ("not-image", "TIFF image: only JPEG, PNG, GIF and BMP are read")
    assert [p for p in opened if str(p) == str(path)] == [str(path)]


def test_a_dataset_of_more_than_10000_class_folders_is_refused(tmp_path):
    """50,000 empty class folders trained a 50,000-class head and then built a 20 GB confusion
    matrix; more than 10,000 class folders are refused when the dataset is listed."""
    from stmclf.config.sections import Dataset
    from stmclf.data.folder import make_splits
    from stmclf.errors import ConfigError

    root = write_image_folder(tmp_path / "train", per_class=1, size=(8, 8), classes={"a": (200, 0, 0)})
    for i in range(10_000):
        (root / f"c{i:05d}").mkdir()
    with pytest.raises(ConfigError, match=r"^dataset\.training_path: 10,001 class folders under .*/train; a dataset "
                                          r"has at most 10,000 classes") as info:
        make_splits(Dataset(training_path=str(root)))
    assert "\n" not in str(info.value)
