"""``stmclf augment-preview``: a before/after grid of the configured augmentation on real images.

The reference's ``test_data_augment.py`` shows blocking windows; this writes one PNG. Images
are taken from the training set (seeded), loaded exactly as training loads them, rescaled,
augmented with the config's ``data_augmentation`` (or ``custom_data_augmentation``), and mapped
back to pixels for display (with the training module's batch augmentation, hence here and not
in :mod:`stmclf.augment`, which sits below training). A config without augmentation gets the
preprocessing alone: each image as stored, then as the model sees it (resized, colour mode).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from stmclf.augment import ImageSize
from stmclf.config import RunConfig
from stmclf.data.cifar import convert_color
from stmclf.data.decode import ImageFormat, decode_image
from stmclf.data.folder import FileList, make_splits
from stmclf.errors import ConfigError, UserError
from stmclf.figures import save_figure
from stmclf.training.module import build_batch_augmentation

log = logging.getLogger(__name__)


def _input_shape(cfg: RunConfig) -> list[int]:
    model = (cfg.training.model if cfg.training else None) or {}
    shape = model.get("input_shape")
    if not shape:
        raise ConfigError("training.model.input_shape", "the preview needs the model input shape")
    return [int(v) for v in shape]


def augment_preview(cfg: RunConfig, num_images: int, seed: int, out: Path) -> Path:
    if cfg.dataset is None or cfg.preprocessing is None:
        raise ConfigError("dataset", "the preview needs the dataset and preprocessing sections")
    fmt = ImageFormat.from_config(cfg.preprocessing, _input_shape(cfg))
    scale, offset = cfg.preprocessing.scale_offset()
    custom = cfg.custom_data_augmentation
    # built (its arguments and their size bounds checked) before the dataset is listed or read: a
    # size beyond its bound is one line at once, even for a dataset of millions of files
    augment = build_batch_augmentation(
        dict(cfg.data_augmentation) if cfg.data_augmentation else None,
        {"function_name": custom.function_name, "config": custom.config} if custom else None,
        (offset, 255.0 * scale + offset), fmt.channels, ImageSize(fmt.height, fmt.width, fmt.channels, num_images))
    splits = make_splits(cfg.dataset)
    source = splits.train if splits.train is not None else splits.valid
    if source is None or len(source) == 0:
        raise UserError("augment-preview: no training images found")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(source), size=min(num_images, len(source)), replace=False)
    batch = torch.from_numpy(np.stack([source.load(int(i), fmt) for i in picks])).permute(0, 3, 1, 2)
    images = batch.float() * scale + offset
    to_pixels = lambda x: ((x - offset) / scale).clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
    labels = [splits.class_names[source.labels[int(i)]] for i in picks]
    if augment is None:
        log.warning("augment-preview: no data_augmentation in the config; the grid shows the preprocessing alone "
                    "(image file → model input)")
        _save_grid([_stored(source, int(i)) for i in picks], list(to_pixels(images)), labels,
                   ("file", f"model input {fmt.width}×{fmt.height}"), out)
        return out
    generator = torch.Generator().manual_seed(seed)
    augmented = augment(images.clone(), generator=generator, epoch=0)
    _save_grid(list(to_pixels(images)), list(to_pixels(augmented)), labels, ("original", "augmented"), out)
    return out


def _stored(source, index: int) -> np.ndarray:
    """Item ``index`` as stored: its own size, in RGB for display."""
    if isinstance(source, FileList):
        return decode_image(source.paths[index], "rgb")
    return convert_color(source.images[source.indices[index]], "rgb")


def _save_grid(before: list[np.ndarray], after: list[np.ndarray], labels: list[str], rows: tuple[str, str],
               out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 4.0), squeeze=False)
    for col in range(n):
        for row, (images, title) in enumerate(zip((before, after), rows)):
            ax = axes[row][col]
            gray = images[col].shape[-1] == 1
            image = images[col][..., 0] if gray else images[col][..., :3]
            ax.imshow(image, cmap="gray" if gray else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(title)
        axes[0][col].set_title(labels[col], fontsize=8)
    save_figure(fig, out)
