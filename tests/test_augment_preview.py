"""`stmclf augment-preview` writes a before/after grid PNG from the config's augmentation."""
from __future__ import annotations

from conftest import error_of

import logging

import numpy as np
import pytest
from PIL import Image

from stmclf.cli.main import main


def test_preview_png(write_config, tmp_path):
    extra = "data_augmentation:\n  random_flip: {mode: horizontal, change_rate: 1.0}\n  random_brightness: {factor: 0.3}\n"
    config = write_config(extra=extra)
    out = tmp_path / "aug.png"
    assert main(["augment-preview", "--config", str(config), "--num-images", "4", "--seed", "1", "--out", str(out)]) == 0
    image = np.asarray(Image.open(out))
    assert image.shape[0] > 100 and image.shape[1] > 300
    again = tmp_path / "again.png"
    assert main(["augment-preview", "--config", str(config), "--num-images", "4", "--seed", "1", "--out", str(again)]) == 0
    assert np.array_equal(image, np.asarray(Image.open(again)))  # seeded: same picture


def test_preview_without_augmentation_shows_the_preprocessing(write_config, tmp_path, caplog):
    """No data_augmentation: one notice and the grid of each file as stored above the model
    input, instead of an error."""
    out = tmp_path / "x.png"
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        assert main(["augment-preview", "--config", str(write_config()), "--num-images", "3", "--out", str(out)]) == 0
    notices = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notices) == 1 and "no data_augmentation" in notices[0] and "preprocessing alone" in notices[0]
    image = np.asarray(Image.open(out))
    assert image.shape[0] > 100 and image.shape[1] > 200


@pytest.mark.parametrize("command, flag, value, expected", [
    ("augment-preview", "--num-images", "0", "--num-images: expected an integer from 1 to 256, got 0"),
    ("summary", "--num_classes", "100000000000", "--num_classes: expected an integer from 1 to 10,000"),
])
def test_out_of_range_counts_are_one_line(write_config, tmp_path, capsys, command, flag, value, expected):
    code = main([command, "--config", str(write_config()), flag, value])
    assert code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("augmentation, key, expected", [
    ("random_periodic_resizing: {period: 2, image_sizes: [9000]}", "random_periodic_resizing.image_sizes",
     "integers from 1 to 8192"),
    ("random_periodic_resizing: {period: 2, image_sizes: [[8000, 8000]]}", "random_periodic_resizing.image_sizes",
     "of memory available"),
    ("random_blur: {filter_size: 100}", "random_blur.filter_size", "must be at most the image side, 32"),
], ids=["side", "memory", "blur"])
def test_an_augmentation_size_beyond_its_bound_is_refused_before_the_dataset_is_read(
        write_config, tmp_path, capsys, augmentation, key, expected):
    """The size bounds of data_augmentation are checked before the dataset is listed or read: the
    dataset here cannot be read (every file is garbage named .png), and the error is still the size's,
    in one line, exit 2."""
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        for i in range(3):
            (data / name / f"{i}.png").write_bytes(b"not an image " * 10)
    config = write_config(train_dir=data, extra=f"data_augmentation:\n  {augmentation}\n")
    out = tmp_path / "aug.png"
    assert main(["augment-preview", "--config", str(config), "--num-images", "256", "--out", str(out)]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and err.startswith(f"stmclf: error: data_augmentation.{key}: "), err
    assert expected in err and "Traceback" not in err, err
    assert not out.exists()
