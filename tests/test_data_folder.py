"""Folder datasets: class discovery, labels, the seeded shuffle and the split state machine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stmclf.config.sections import Dataset
from stmclf.data.folder import list_images, make_splits
from stmclf.errors import ConfigError

from conftest import write_image_folder

CLASSES = {"b_dog": (0, 200, 0), "a_cat": (200, 0, 0), "c_owl": (0, 0, 200)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    return {name: write_image_folder(root / name, per_class=n, classes=CLASSES, size=(8, 8), seed=i)
            for i, (name, n) in enumerate((("train", 10), ("valid", 4), ("test", 3), ("quant", 2)))}


def test_class_names_are_sorted_and_labels_follow(folders):
    splits = make_splits(Dataset(training_path=str(folders["train"])))
    assert splits.class_names == ["a_cat", "b_dog", "c_owl"]
    files = splits.train.paths + splits.valid.paths
    labels = splits.train.labels + splits.valid.labels
    for path, label in zip(files, labels):
        assert Path(path).parent.name == splits.class_names[label]


def test_training_only_split_is_seeded_and_sized(folders):
    a = make_splits(Dataset(training_path=str(folders["train"]), validation_split=0.2, seed=5))
    b = make_splits(Dataset(training_path=str(folders["train"]), validation_split=0.2, seed=5))
    c = make_splits(Dataset(training_path=str(folders["train"]), validation_split=0.2, seed=6))
    assert len(a.train) == int(30 * 0.8) == 24 and len(a.valid) == 6
    assert a.train.paths == b.train.paths and a.valid.paths == b.valid.paths
    assert a.train.paths != c.train.paths
    assert not set(a.train.paths) & set(a.valid.paths)
    # the whole list is shuffled once with numpy's RandomState(seed), then split
    everything = sorted(a.train.paths + a.valid.paths, key=lambda p: (Path(p).parent.name, Path(p).name))
    order = np.random.RandomState(5).permutation(30)
    assert a.train.paths + a.valid.paths == [everything[i] for i in order]
    assert a.quantization.paths == a.train.paths + a.valid.paths  # full training_path
    assert a.test is None and a.evaluation is a.valid


def test_default_split_is_20_percent(folders):
    splits = make_splits(Dataset(training_path=str(folders["train"]), validation_split=None))
    assert len(splits.valid) == 30 - int(30 * 0.8)


def test_validation_path_overrides_split(folders):
    splits = make_splits(Dataset(training_path=str(folders["train"]), validation_path=str(folders["valid"]),
                                 validation_split=0.5, test_path=str(folders["test"])))
    assert len(splits.train) == 30 and len(splits.valid) == 12 and len(splits.test) == 9
    assert splits.evaluation is splits.test


def test_validation_only_and_quantization_path(folders):
    splits = make_splits(Dataset(validation_path=str(folders["valid"]), quantization_path=str(folders["quant"])))
    assert splits.train is None and len(splits.valid) == 12 and len(splits.quantization) == 6
    splits = make_splits(Dataset(training_path=str(folders["train"]), quantization_path=str(folders["quant"])))
    assert len(splits.quantization) == 6


def test_class_names_select_a_subset(folders):
    splits = make_splits(Dataset(training_path=str(folders["train"]), class_names=["c_owl", "a_cat"]))
    assert splits.class_names == ["a_cat", "c_owl"]
    assert len(splits.train) + len(splits.valid) == 20
    assert {Path(p).parent.name for p in splits.train.paths} <= {"a_cat", "c_owl"}


def test_missing_class_folder_is_an_error(folders):
    with pytest.raises(ConfigError, match=r"dataset.training_path: class folder\(s\) zebra not found"):
        make_splits(Dataset(training_path=str(folders["train"]), class_names=["a_cat", "zebra"]))


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.test_path: unable to find the dataset root directory"):
        list_images(str(tmp_path / "nope"), ["a"], "dataset.test_path", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="expecting class sub-directories"):
        make_splits(Dataset(training_path=str(tmp_path / "empty")))


def test_subdirectory_inside_class_folder_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2, classes={"a": (1, 2, 3)}, size=(4, 4))
    (root / "a" / "nested").mkdir()
    with pytest.raises(ConfigError, match="class directories should only contain image files"):
        make_splits(Dataset(training_path=str(root)))


def test_non_image_files_are_skipped(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=3, classes={"a": (1, 2, 3), "b": (3, 2, 1)}, size=(4, 4))
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    splits = make_splits(Dataset(training_path=str(root)))
    assert len(splits.train) + len(splits.valid) == 6


def test_class_folder_name_that_is_not_utf8_is_refused(tmp_path):
    """Class names go into reports, C headers and model files: a folder named in another encoding
    (latin-1 here) is a one-line error showing its bytes, not a UnicodeEncodeError later."""
    import os

    root = write_image_folder(tmp_path / "train", per_class=2, classes={"cat": (200, 0, 0)}, size=(8, 8))
    os.rename(os.fsencode(root / "cat"), os.fsencode(root) + b"/caf\xe9")
    with pytest.raises(ConfigError, match=r"^dataset\.training_path: the class folder .*/train/caf\\xe9 has a name "
                                          r"that is not UTF-8 text: rename it"):
        make_splits(Dataset(training_path=str(root)))


def test_image_file_name_that_is_not_utf8_is_listed_and_cached(tmp_path):
    """An image file named in latin-1 is an ordinary image: listed, decoded, and its path hashed as
    its bytes on disk for the image cache (it raised UnicodeEncodeError there)."""
    import os

    from stmclf.data.cache import cache_key
    from stmclf.data.datamodule import ImageFormat, load_image

    root = write_image_folder(tmp_path / "train", per_class=3, classes=CLASSES, size=(8, 8))
    renamed = os.fsencode(root / "a_cat") + b"/caf\xe9.png"
    os.rename(os.fsencode(root / "a_cat" / "a_cat_000.png"), renamed)
    files = list_images(str(root), sorted(CLASSES), "dataset.training_path", seed=1)
    assert os.fsdecode(renamed) in files.paths and len(files) == 9
    assert load_image(os.fsdecode(renamed), ImageFormat(8, 8)).shape == (8, 8, 3)
    key = cache_key(files.cache_identity(), {"size": 8})
    os.rename(renamed, os.fsencode(root / "a_cat") + b"/caf\xe8.png")
    assert cache_key(list_images(str(root), sorted(CLASSES), "k", seed=1).cache_identity(), {"size": 8}) != key


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path, caplog):
    """An empty class folder still makes a class (the reference's rule), one the model never sees:
    the listing says so, naming it."""
    import logging

    from conftest import write_image_folder
    from stmclf.data.files import list_images

    root = write_image_folder(tmp_path / "data", per_class=2, size=(8, 8), classes={"a": (200, 0, 0), "b": (0, 200, 0)})
    (root / "c_empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        files = list_images(str(root), ["a", "b", "c_empty"], "dataset.training_path", seed=0)
    assert len(files.paths) == 4
    assert "1 class folder(s) without image files (c_empty)" in caplog.text
