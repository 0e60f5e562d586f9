"""The LightningDataModule: file lists → uint8 NCHW batches at the model's input size.

Decoding and resizing happen in worker processes; conversion to float, rescaling and
augmentation happen on the training device (see ``stmclf.training.module``), so batches cross
process and device boundaries as compact uint8.
"""
from __future__ import annotations

import dataclasses
import logging
import hashlib
import os
from dataclasses import dataclass
from functools import partial
from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from stmclf.config.sections import Dataset as DatasetSection, Preprocessing
from stmclf.data.cache import open_cache
from stmclf.data.decode import CHANNELS, decode_image
from stmclf.data.folder import FileList, Splits, make_splits
from stmclf.data.resize import resize_image
from stmclf.errors import ConfigError, UserError

log = logging.getLogger("stmclf.data")


@dataclass(frozen=True)
class ImageFormat:
    """What the loader produces: size, channels and how to get there."""

    height: int
    width: int
    color_mode: str = "rgb"
    interpolation: str = "bilinear"
    aspect_ratio: str = "fit"

    @property
    def channels(self) -> int:
        return CHANNELS[self.color_mode]

    @classmethod
    def from_config(cls, preprocessing: Preprocessing, input_shape) -> "ImageFormat":
        height, width, channels = (int(v) for v in input_shape)
        fmt = cls(height, width, preprocessing.color_mode, preprocessing.resizing.interpolation,
                  preprocessing.resizing.aspect_ratio)
        if channels != fmt.channels:
            raise ConfigError("preprocessing.color_mode",
                              f"{fmt.color_mode!r} gives {fmt.channels} channel(s) but the model input "
                              f"shape {tuple(input_shape)} has {channels}")
        return fmt


def load_image(path: str, fmt: ImageFormat) -> np.ndarray:
    """Decode and resize one file to a uint8 (H, W, C) array."""
    image = decode_image(path, fmt.color_mode)
    return resize_image(image, fmt.height, fmt.width, fmt.interpolation, fmt.aspect_ratio)


class ImageFileDataset(Dataset):
    """(uint8 CHW tensor, label) pairs from an image source (a :class:`FileList` or any object
    with ``labels``, ``load(index, fmt)`` and ``cache_identity()``), through the image cache."""

    def __init__(self, files: FileList, fmt: ImageFormat, cache: bool = True) -> None:
        self.files = files
        self.fmt = fmt
        shape = (len(files), fmt.height, fmt.width, fmt.channels)
        self.cache = open_cache(files.cache_identity(), dataclasses.asdict(fmt), shape) if cache else None
        # Files already reported as unreadable, shared with the loader's worker processes so that
        # each bad file is logged once, whichever worker meets it.
        self.reported = torch.zeros(max(len(files), 1), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, int]]:
        """The item, or None for a file that fails to decode (logged once; ``collate_skip_bad``
        drops it), so one bad file does not stop a run."""
        try:
            if self.cache is None:
                image = self.files.load(index, self.fmt)
            else:
                image = self.cache.get(index, lambda: self.files.load(index, self.fmt))
        except UserError as exc:
            if not self.reported[index]:
                self.reported[index] = 1
                log.warning("skipping an unreadable image: %s (`stmclf data check --config ...` lists every "
                            "bad file)", _with_path(str(exc), self.files.describe(index)))
            return None
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), self.files.labels[index]

    def __getitems__(self, indices: list[int]):
        """A whole batch: one read from the cache when every image is there (uint8 (B, C, H, W) in
        channels_last layout), else item by item."""
        pixels = self.cache.read_batch(indices) if self.cache is not None else None
        if pixels is None:
            return [self[i] for i in indices]
        labels = torch.as_tensor([self.files.labels[i] for i in indices], dtype=torch.long)
        return CollatedBatch((torch.from_numpy(pixels).permute(0, 3, 1, 2), labels))

    def cache_complete(self) -> bool:
        return self.cache is not None and self.cache.complete()


def _with_path(message: str, name: str) -> str:
    return message if name in message else f"{name}: {message}"


class CollatedBatch(tuple):
    """(images, labels) already assembled by :meth:`ImageFileDataset.__getitems__`."""


def collate_skip_bad(batch: list, empty_shape: Optional[tuple[int, ...]] = None):
    """torch's ``default_collate`` without the items that failed to load (None). A batch with no
    good item becomes an empty batch: uint8 images of shape (0, *empty_shape) and no labels,
    which the LightningModule skips."""
    if isinstance(batch, CollatedBatch):
        return tuple(batch)
    if any(item is None for item in batch):
        batch = [item for item in batch if item is not None]
        if not batch:
            return (torch.empty((0, *empty_shape) if empty_shape else (0,), dtype=torch.uint8),
                    torch.empty(0, dtype=torch.long))
    return default_collate(batch)


class ImageLoader(DataLoader):
    """Worker processes while images must be decoded; once every image is in the cache, whole
    batches are read from it in the main process (one fancy-index per batch, no inter-process
    transfer). Same order and values either way. Used on CPU-only machines: with a GPU the
    workers' overlap with the training step pays more."""

    def __iter__(self):
        if self.num_workers and self.dataset.cache_complete():
            if self._iterator is not None:  # the idle persistent workers of the decoding epoch
                self._iterator._shutdown_workers()
                self._iterator = None
            return self._in_process()
        return super().__iter__()

    def _in_process(self):
        for indices in self.batch_sampler:
            yield self.collate_fn(self.dataset.__getitems__(indices))


def _init_worker(worker_id: int) -> None:
    """Loader workers: one BLAS/OpenMP thread each (the training process owns the cores), and
    Lightning's per-worker seeding."""
    from lightning.fabric.utilities.seed import pl_worker_init_function
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    pl_worker_init_function(worker_id)


def default_num_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class EpochShuffleSampler(Sampler[int]):
    """A new random order every epoch, a pure function of (seed, epoch).

    Lightning calls :meth:`set_epoch` before each epoch, so a resumed run visits the training
    set in the same order as an uninterrupted one (the global RNG plays no part). In a
    distributed run each rank takes every ``world_size``-th index of the same permutation
    (padded by wrapping so that every rank gets the same number of batches)."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return -(-self.length // self._world()[1])

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=generator).tolist()
        rank, world = self._world()
        if world == 1:
            return iter(order)
        total = len(self) * world
        order = (order * (total // max(len(order), 1) + 1))[:total]
        return iter(order[rank::world])


def derive_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class ImageDataModule(L.LightningDataModule):
    """Train/validation/test loaders for a ``dataset`` section (folder datasets)."""

    def __init__(self, dataset: DatasetSection, fmt: ImageFormat, batch_size: int,
                 num_workers: Optional[int] = None, shuffle_seed: int = 123) -> None:
        super().__init__()
        self.dataset_cfg = dataset
        self.fmt = fmt
        self.shuffle_seed = shuffle_seed
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.splits: Optional[Splits] = None
        self._datasets: dict[int, ImageFileDataset] = {}

    @property
    def class_names(self) -> list[str]:
        return self.prepare_splits().class_names

    def prepare_splits(self) -> Splits:
        if self.splits is None:
            self.splits = make_splits(self.dataset_cfg)
        return self.splits

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_splits()

    def _loader(self, files: Optional[FileList], shuffle: bool) -> DataLoader:
        if files is None or len(files) == 0:
            return []  # Lightning skips an empty loader
        workers = min(self.num_workers, max(1, len(files) // self.batch_size)) if self.num_workers else 0
        sampler = EpochShuffleSampler(len(files), self.shuffle_seed) if shuffle else None
        # The loader's own generator: creating an iterator must not draw from the global RNG
        # (that would shift the augmentation draws of a resumed run).
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        loader = DataLoader if torch.cuda.is_available() else ImageLoader
        return loader(self._dataset_for(files), batch_size=self.batch_size, sampler=sampler, generator=generator,
                          collate_fn=partial(collate_skip_bad, empty_shape=(self.fmt.channels, self.fmt.height,
                                                                            self.fmt.width)),
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available(), drop_last=False,
                          prefetch_factor=4 if workers else None, worker_init_fn=_init_worker if workers else None)

    def _dataset_for(self, files: FileList) -> ImageFileDataset:
        """One dataset per file list: its image cache and its record of bad files serve every
        loader over it (training, validation, the final evaluation)."""
        dataset = self._datasets.get(id(files))
        if dataset is None or dataset.files is not files:
            dataset = self._datasets[id(files)] = ImageFileDataset(files, self.fmt)
        return dataset

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.prepare_splits().train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.prepare_splits().valid, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.prepare_splits().test, shuffle=False)

    def loader_for(self, files: Optional[FileList]) -> DataLoader:
        """A non-shuffled loader over any file list (evaluation, calibration)."""
        return self._loader(files, shuffle=False)
