"""`stmclf augment-preview` writes a before/after grid PNG from the config's augmentation."""
from __future__ import annotations

import numpy as np
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


def test_preview_without_augmentation_is_an_error(write_config, tmp_path, capsys):
    assert main(["augment-preview", "--config", str(write_config()), "--out", str(tmp_path / "x.png")]) == 2
    assert "data_augmentation: no data_augmentation" in capsys.readouterr().err
