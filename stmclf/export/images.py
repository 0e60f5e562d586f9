"""Images for export: the calibration set of int8 quantization and the check images that every
exported file is compared on.

Calibration set (the reference's rule, §7.1 of the reference inventory): ``dataset.quantization_path``,
else the whole ``dataset.training_path`` (before its train/validation split), in the seeded file
order; ``dataset.quantization_split`` keeps the first ⌊N·split⌋ images. stmclf additions:

- without ``quantization_split``, at most :data:`DEFAULT_MAX_CALIBRATION` (500) images are used (the
  reference takes all of them): the seeded order is a class-mixed random order, and MinMax
  calibration gains nothing measurable from thousands of images while it costs minutes; set
  ``quantization_split`` to choose the fraction yourself (then there is no cap);
- with no quantization or training set but a validation set, the validation images calibrate;
- only when the config gives no image at all (no ``dataset`` section or no path but the test
  set's — the test set is never used for calibration), 10 random images calibrate, with a loud
  warning: the int8 model is then useless except as a footprint estimate. The random images are
  uniform raw pixels rescaled like real ones (the reference draws uniform [0, 1) whatever the
  rescaling).

The calibration images are kept as uint8 and rescaled when fed. One pixel of the first image is
set to 0 and one to 255 when the set holds no such value, so that the calibrated input range is
exactly the rescaled pixel range: an int8/uint8 TFLite input then has scale = rescaling scale and
raw pixels go in unchanged (see ``stmclf.export.tflite``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from stmclf.errors import ConfigError

log = logging.getLogger("stmclf.export")

DEFAULT_MAX_CALIBRATION = 500
RANDOM_CALIBRATION_IMAGES = 10
DEFAULT_CHECK_IMAGES = 64


@dataclass
class ExportImages:
    """uint8 NCHW calibration and check images (with the check images' labels)."""

    calibration: np.ndarray
    calibration_source: str
    random_calibration: bool
    check: np.ndarray
    check_labels: np.ndarray
    check_source: str
    notes: list[str] = field(default_factory=list)


def pin_input_range(images: np.ndarray) -> np.ndarray:
    """A copy of uint8 NCHW ``images`` whose values span 0..255 (two pixels of image 0 changed if
    needed), so that calibration sees the whole input range."""
    images = np.array(images, dtype=np.uint8, copy=True)
    if len(images) and images.min() > 0:
        images[0, :, 0, 0] = 0
    if len(images) and images.max() < 255:
        images[0, :, -1, -1] = 255
    return images


def rescale(images: np.ndarray, rescaling) -> np.ndarray:
    """uint8 images → float32 ``scale·x + offset`` (same arithmetic as the torch module)."""
    return images.astype(np.float32) * np.float32(rescaling[0]) + np.float32(rescaling[1])


def random_images(count: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``count`` uniform random uint8 NCHW images of (C, H, W) ``shape``."""
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def load_images(datamodule, files, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a FileList as (uint8 NCHW, labels), through the data loader."""
    if limit is not None:
        files = files.subset(0, limit)
    images, labels = [], []
    for batch, batch_labels in datamodule.loader_for(files):
        if batch_labels.numel():
            images.append(batch.numpy())
            labels.append(batch_labels.numpy())
    fmt = datamodule.fmt
    if not images:
        return np.zeros((0, fmt.channels, fmt.height, fmt.width), np.uint8), np.zeros(0, np.int64)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def calibration_files(splits, dataset, max_images: Optional[int] = DEFAULT_MAX_CALIBRATION):
    """(FileList or None, description) of the calibration images for a ``dataset`` section."""
    files, source = None, ""
    if splits is not None and splits.quantization is not None and len(splits.quantization):
        files = splits.quantization
        source = "dataset.quantization_path" if dataset.quantization_path else "dataset.training_path"
    elif splits is not None and splits.valid is not None and len(splits.valid):
        files, source = splits.valid, "the validation set (no quantization or training set given)"
    if files is None:
        return None, "random images (no quantization, training or validation set)"
    total = len(files)
    split = getattr(dataset, "quantization_split", None)
    if split is not None:
        count = int(total * float(split))
        if count < 1:
            raise ConfigError("dataset.quantization_split",
                              f"{split} of {total} images selects no calibration image; raise it")
        return files.subset(0, count), f"{source}: first {count} of {total} images (quantization_split {split})"
    if max_images is not None and total > max_images:
        return files.subset(0, max_images), (f"{source}: first {max_images} of {total} images (set "
                                             f"dataset.quantization_split to choose the fraction)")
    return files, f"{source}: {total} images"


def gather_images(cfg, module, *, int8: bool, max_calibration: Optional[int] = DEFAULT_MAX_CALIBRATION,
                  check_images: int = DEFAULT_CHECK_IMAGES, seed: int = 0):
    """(ExportImages, datamodule or None, (eval set name, FileList) or None) for an export run."""
    from stmclf.data.datamodule import ImageDataModule, ImageFormat

    height, width, channels = (int(v) for v in module.hparams.input_shape)
    datamodule = splits = evaluation = None
    if cfg is not None and cfg.dataset is not None and cfg.preprocessing is None:
        raise ConfigError("preprocessing", "missing 'preprocessing' section: export reads the dataset's images "
                                           "(calibration, checks) with it")
    if cfg is not None and cfg.dataset is not None:
        fmt = ImageFormat.from_config(cfg.preprocessing, module.hparams.input_shape)
        batch = (cfg.training.batch_size if cfg.training else None) or 32
        datamodule = ImageDataModule(cfg.dataset, fmt, batch_size=batch, num_workers=cfg.dataset.num_workers)
        splits = datamodule.prepare_splits()
        if list(module.class_names) != list(splits.class_names):
            raise ConfigError("dataset.class_names", f"the model was trained on classes {module.class_names}, "
                                                     f"the dataset has {splits.class_names}")
        cfg.preprocessing.model_rescaling(module.hparams.rescaling)
        if splits.test is not None:
            evaluation = ("test_set", splits.test)
        elif splits.valid is not None:
            evaluation = ("validation_set", splits.valid)
    notes = []
    with torch.random.fork_rng():  # loaders must not move the caller's RNG
        if evaluation is not None:
            check, check_labels = load_images(datamodule, evaluation[1], check_images)
            check_source = f"{evaluation[0].replace('_', ' ')}: first {len(check)} images"
        elif splits is not None and splits.quantization is not None and len(splits.quantization):
            check, check_labels = load_images(datamodule, splits.quantization, check_images)
            check_source = f"calibration set (no evaluation set): first {len(check)} images"
        else:
            check = random_images(check_images, (channels, height, width), seed + 1)
            check_labels = np.zeros(len(check), np.int64)
            check_source = f"{len(check)} random images (no evaluation set)"
            notes.append("exported models were checked on random images only (no dataset given)")
        calibration = np.zeros((0, channels, height, width), np.uint8)
        calibration_source, random_calibration = "", False
        if int8:
            files, calibration_source = calibration_files(splits, cfg.dataset if cfg is not None else None,
                                                          max_calibration)
            if files is not None:
                calibration, _ = load_images(datamodule, files)
            if len(calibration) == 0:
                random_calibration = True
                calibration = random_images(RANDOM_CALIBRATION_IMAGES, (channels, height, width), seed)
                calibration_source = f"{RANDOM_CALIBRATION_IMAGES} random images"
                log.warning("!" * 88)
                log.warning("NO CALIBRATION IMAGES: the int8 models are calibrated on %d RANDOM images. Their "
                            "accuracy is meaningless; use them only to estimate footprints. Set "
                            "dataset.quantization_path or dataset.training_path.", RANDOM_CALIBRATION_IMAGES)
                log.warning("!" * 88)
                notes.append("int8 models calibrated on random images: accuracy meaningless")
            calibration = pin_input_range(calibration)
    return (ExportImages(calibration, calibration_source, random_calibration, check, check_labels, check_source,
                         notes), datamodule, evaluation)
