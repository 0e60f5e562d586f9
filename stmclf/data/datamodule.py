"""The LightningDataModule: file lists → uint8 NCHW batches at the model's input size.

Decoding and resizing happen in worker processes; conversion to float, rescaling and
augmentation happen on the training device (see ``stmclf.training.module``), so batches cross
process and device boundaries as compact uint8. What the image cache lacks (the first epoch) is
decoded a batch at a time (:meth:`ImageFileDataset.__getitems__` → the source's ``load_many``,
:func:`stmclf.data.files.load_images`: the work of the batch shared, ``load_image``'s pixels) into
a batch that a worker builds in shared memory.

Bad files never stop a run. A file that does not decode (truncated, zero bytes, not an image,
a decompression bomb, ...: :class:`~stmclf.data.decode.ImageDecodeError`) is logged once per run
with its path and reason, whichever process meets it, and remembered: in a skip list shared with
the loader workers, and in the image cache for later runs (:mod:`stmclf.data.cache`), so it is
never decoded again. Training batches stay full: a bad file's place goes to the next readable
file of the file list (cyclically), a pure function of the files, so the batches are the same
whatever the worker count, the cache's state or a resume. Evaluation loaders leave the file out
instead (no image counted twice).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import hashlib
import os
from functools import partial
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from stmclf.config.sections import Dataset as DatasetSection
from stmclf.data.cache import BAD, open_cache, stored
from stmclf.data.decode import load_image  # noqa: F401  (re-exported)
from stmclf.data.decode import DEFAULT_MAX_PIXELS, ImageFormat, max_image_pixels
from stmclf.data.files import FileList, Splits, split_fingerprint
from stmclf.data.folder import make_splits
from stmclf.cpus import available_cpus
from stmclf.errors import UserError, printable_path

log = logging.getLogger("stmclf.data")


class BadFileLog:
    """The datasets of one data module (one run), so that a file in two of them (the quantization
    set holds the training files) is logged once: before logging, a dataset looks the file up in
    the others' records (shared memory: what their worker processes logged is seen everywhere)."""

    def __init__(self) -> None:
        self.datasets: list[ImageFileDataset] = []

    def add(self, dataset: "ImageFileDataset") -> None:
        self.datasets.append(dataset)

    def logged_elsewhere(self, name: str, dataset: "ImageFileDataset") -> bool:
        return any(other.reported is not dataset.reported and other.was_reported(name) for other in self.datasets)


class ImageFileDataset(Dataset):
    """(uint8 CHW tensor, label) pairs from an image source (a :class:`FileList` or any object
    with ``labels``, ``load(index, fmt)``, ``describe(index)`` and ``cache_identity()``), through
    the image cache.

    A file that fails to load gives None (``collate_skip_bad`` drops it) or, with
    ``replace_bad`` (training), the next readable file of the list (see the module's docstring)."""

    def __init__(self, files: FileList, fmt: ImageFormat, cache: bool = True, replace_bad: bool = False,
                 bad_log: Optional[BadFileLog] = None) -> None:
        self.files = files
        self.fmt = fmt
        self.replace_bad = replace_bad
        shape = (len(files), fmt.height, fmt.width, fmt.channels)
        fields = dataclasses.asdict(fmt)
        limit = max_image_pixels()
        if limit != DEFAULT_MAX_PIXELS:  # a bomb under one limit may be an image under another
            fields["max_image_pixels"] = limit
        self.cache = open_cache(files.cache_identity(), fields, shape) if cache else None
        # The run's skip list and the files already logged, in shared memory: every loader worker
        # sees what another one found.
        self.bad = torch.zeros(max(len(files), 1), dtype=torch.uint8).share_memory_()
        self.reported = torch.zeros(max(len(files), 1), dtype=torch.uint8).share_memory_()
        if self.cache is not None:
            self.bad.numpy()[:len(files)] = self.cache.flags == BAD
        self._pid = -1
        self._positions: Optional[dict[str, int]] = None
        #: Set by :class:`ImageLoader`: its workers return the rows they stored in the cache.
        self.rows_from_cache = False
        self._buffer: Optional[np.ndarray] = None
        self._buffer_pid = -1
        self._bad_log = bad_log if bad_log is not None else BadFileLog()
        self._bad_log.add(self)

    def __len__(self) -> int:
        return len(self.files)

    def replacing(self) -> "ImageFileDataset":
        """This dataset (same cache, skip list and log) with ``replace_bad``: full training batches."""
        view = copy.copy(self)  # through __getstate__: the log is set again below
        view.replace_bad, view._bad_log = True, self._bad_log
        return view

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_pid=-1, _bad_np=None, _reported_np=None, _bad_log=None, _positions=None, _buffer=None)
        return state

    def was_reported(self, name: str) -> bool:
        """Whether this dataset logged the file ``name`` (as ``files.describe`` names it)."""
        if self._positions is None:  # only ever needed once a bad file is met
            self._positions = {self.files.describe(i): i for i in range(len(self.files))}
        index = self._positions.get(name)
        return index is not None and bool(self._flags()[1][index])

    # -- one item ---------------------------------------------------------------------------
    def _flags(self) -> tuple[np.ndarray, np.ndarray]:
        """numpy views of the shared skip list and log record (made once per process)."""
        if self._pid != os.getpid():
            self._bad_np, self._reported_np = self.bad.numpy(), self.reported.numpy()
            self._pid = os.getpid()
        return self._bad_np, self._reported_np

    def _load(self, index: int) -> np.ndarray:
        if self.cache is None:
            return self.files.load(index, self.fmt)
        return self.cache.get(index, lambda: self.files.load(index, self.fmt))

    def _pair(self, image: np.ndarray, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), self.files.labels[index]

    def _fail(self, index: int, exc: UserError) -> None:
        self._flags()[0][index] = 1
        if self.cache is not None and getattr(exc, "content", False):  # not a read error that may pass
            self.cache.mark_bad(index)

    def _report(self, index: int, exc: Optional[UserError] = None) -> None:
        """Log file ``index`` as skipped, once per run. Called only where the index is met as
        itself (once per epoch), never as a replacement candidate: no two workers log one file."""
        reported = self._flags()[1]
        if reported[index]:
            return
        name = self.files.describe(index)
        if self._bad_log is not None and self._bad_log.logged_elsewhere(name, self):
            reported[index] = 1
            return
        reported[index] = 1
        if exc is None:  # known bad (found as a replacement candidate, or by an earlier run): why?
            try:
                self.files.load(index, self.fmt)
                message = "recorded as unreadable in the image cache"
            except UserError as error:
                message = str(error)
        else:
            message = str(exc)
        log.warning("skipping an unreadable image: %s (`stmclf data check --config ...` lists every bad file)",
                    _with_path(message, name))

    def _item(self, index: int) -> Optional[tuple[torch.Tensor, int]]:
        """Item ``index``, or None for a bad file (logged once)."""
        if self._flags()[0][index]:
            self._report(index)
            return None
        try:
            image = self._load(index)
        except UserError as exc:
            self._fail(index, exc)
            self._report(index, exc)
            return None
        return self._pair(image, index)

    def _replacement(self, index: int) -> Optional[tuple[int, np.ndarray]]:
        """The first readable file after ``index`` in the list (cyclically) and its image; None if
        there is none."""
        bad = self._flags()[0]
        n = len(self.files)
        for step in range(1, n):
            other = (index + step) % n
            if bad[other]:
                continue
            try:
                image = self._load(other)
            except UserError as exc:
                self._fail(other, exc)  # logged when the sampler gives it
                continue
            return other, image
        return None

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, int]]:
        """The item; for a file that fails to decode (logged once) None, or its replacement with
        ``replace_bad``, so one bad file does not stop a run."""
        item = self._item(index)
        if item is None and self.replace_bad:
            found = self._replacement(index)
            item = None if found is None else self._pair(found[1], found[0])
        return item

    # -- a batch ----------------------------------------------------------------------------
    def __getitems__(self, indices: list[int]) -> "CollatedBatch":
        """A whole batch, (uint8 (B, C, H, W) in channels_last layout, labels): one read from the
        cache when every image (or its replacement) is there, else :meth:`_decoded_batch`."""
        if self.cache is not None:
            batch = self._cached_batch(indices)
            if batch is not None:
                return batch
        return self._decoded_batch(indices)

    def _decoded_batch(self, indices: list[int]) -> "CollatedBatch | CachedRows":
        """The batch, decoding what the cache lacks in one call of the source's ``load_many`` (the
        batch's decode and resize work shared: :func:`stmclf.data.files.load_images`; item by item
        for a source without it), storing it in the cache. Bad files as :meth:`__getitem__` treats
        them: logged once (where met as themselves), left out, or replaced with ``replace_bad``.

        In a loader worker with :attr:`rows_from_cache` set (:class:`ImageLoader`), only the rows
        go back (:class:`CachedRows`): the main process reads the pixels from the cache."""
        bad = self._flags()[0]
        flags = self.cache.flags if self.cache is not None else None
        todo = [i for i in dict.fromkeys(indices) if not bad[i] and (flags is None or not stored(flags[i]))]
        shape = (self.fmt.height, self.fmt.width, self.fmt.channels)
        rows_only = self.rows_from_cache and self.cache is not None and get_worker_info() is not None
        whole = todo == list(indices)  # the usual first-epoch batch: the decoded images are the batch
        if rows_only:
            fresh, pixels = None, self._scratch(len(todo), shape)
        else:
            fresh = _batch_buffer((len(todo), *shape)) if whole else torch.empty((len(todo), *shape), dtype=torch.uint8)
            pixels = fresh.numpy()
        grey = np.zeros(len(todo), dtype=bool)
        errors = self._load_many(todo, pixels, grey)
        loaded, failed = {}, {}
        for k, (index, exc) in enumerate(zip(todo, errors)):
            if exc is None:
                loaded[index] = k
            else:
                self._fail(index, exc)
                failed[index] = exc
        if self.cache is not None and loaded:
            kept = slice(None) if len(loaded) == len(todo) else list(loaded.values())
            self.cache.put(list(loaded), pixels[kept], grey[kept])
        if whole and not failed:
            return CachedRows(todo) if rows_only else self._collated(fresh, todo)
        chosen: list[tuple[int, np.ndarray]] = []
        for index in indices:
            if index in loaded:
                chosen.append((index, pixels[loaded[index]]))
            elif not bad[index]:  # in the cache
                chosen.append((index, self._load(index)))
            else:
                self._report(index, failed.get(index))
                found = self._replacement(index) if self.replace_bad else None
                if found is not None:
                    chosen.append(found)
        if rows_only:
            return CachedRows(index for index, _ in chosen)
        batch = _batch_buffer((len(chosen), *shape))
        for slot, (_, image) in enumerate(chosen):
            batch.numpy()[slot] = image
        return self._collated(batch, [index for index, _ in chosen])

    def _scratch(self, count: int, shape: tuple[int, ...]) -> np.ndarray:
        """A reusable (count, *shape) uint8 buffer of this process (its pixels never leave it)."""
        if self._buffer is None or len(self._buffer) < count or self._buffer_pid != os.getpid():
            self._buffer, self._buffer_pid = np.empty((count, *shape), np.uint8), os.getpid()
        return self._buffer[:count]

    def read_rows(self, rows: "CachedRows") -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of the cache's ``rows`` (stored by a loader worker), as :meth:`__getitems__` gives it."""
        index = np.asarray(rows, dtype=np.intp)
        return tuple(self._collated(torch.from_numpy(self.cache.take(index)), index))

    def _load_many(self, indices: list[int], out: np.ndarray, grey: np.ndarray) -> list[Optional[UserError]]:
        """Images ``indices`` into ``out``; each one's error (None: loaded). ``grey[k]`` set where
        the source says image ``k`` is one plane in every channel (the cache keeps the plane)."""
        load_many = getattr(self.files, "load_many", None)
        if load_many is not None:
            return load_many(indices, self.fmt, out, grey=grey)
        errors: list[Optional[UserError]] = []
        for k, index in enumerate(indices):
            try:
                out[k] = self.files.load(index, self.fmt)
            except UserError as exc:
                errors.append(exc)
                continue
            errors.append(None)
        return errors

    def _collated(self, images: torch.Tensor, indices) -> "CollatedBatch":
        """(uint8 (B, H, W, C) images as (B, C, H, W) channels_last, labels of ``indices``)."""
        labels = torch.as_tensor([self.files.labels[i] for i in indices], dtype=torch.long)
        return CollatedBatch((images.permute(0, 3, 1, 2), labels))

    def _cached_batch(self, indices: list[int]) -> Optional["CollatedBatch"]:
        flags = self.cache.flags
        rows = np.asarray(indices, dtype=np.intp)
        if not stored(flags[rows]).all():
            bad = self._flags()[0]
            resolved = []
            for i in indices:
                if stored(flags[i]):
                    resolved.append(i)
                    continue
                if not (flags[i] == BAD or bad[i]):
                    return None  # not decoded yet
                if self.replace_bad:
                    other = self._cached_replacement(i, flags, bad)
                    if other is None:
                        return None
                    resolved.extend([other] if other >= 0 else [])
                self._report(i)
            rows = np.asarray(resolved, dtype=np.intp)
        return self._collated(torch.from_numpy(self.cache.take(rows)), rows)

    def _cached_replacement(self, index: int, flags: np.ndarray, bad: np.ndarray) -> Optional[int]:
        """:meth:`_replacement`'s choice from the cache's flags: an index, -1 for none, or None when
        a file on the way is not decoded yet."""
        n = len(self.files)
        for step in range(1, n):
            other = (index + step) % n
            if stored(flags[other]):
                return other
            if not (flags[other] == BAD or bad[other]):
                return None
        return -1

    def cache_complete(self) -> bool:
        """Every image is in the cache or known bad: batches need no decoding."""
        if self.cache is None:
            return False
        flags = self.cache.flags
        return bool(flags.all()) or bool(((flags != 0) | (self._flags()[0][:len(flags)] != 0)).all())


def _with_path(message: str, name: str) -> str:
    name = printable_path(name)
    return message if name in message else f"{name}: {message}"


class CollatedBatch(tuple):
    """(images, labels) already assembled by :meth:`ImageFileDataset.__getitems__`."""


class CachedRows(tuple):
    """The rows of a batch that a loader worker decoded into the image cache: what crosses the
    process boundary instead of the pixels (no shared-memory batch to make, send and map: ~2.5 ms
    less CPU per batch of 64 at 128×128); :class:`ImageLoader` reads them from the cache."""


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor for a batch; in a loader worker, in shared memory from the start
    (as torch's ``default_collate`` makes its batches), so that sending it to the main process copies
    nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def collate_skip_bad(batch: list, empty_shape: Optional[tuple[int, ...]] = None):
    """torch's ``default_collate`` without the items that failed to load (None). A batch with no
    good item becomes an empty batch: uint8 images of shape (0, *empty_shape) and no labels,
    which the LightningModule skips."""
    if isinstance(batch, CollatedBatch):
        return tuple(batch)
    if isinstance(batch, CachedRows):
        return batch
    if any(item is None for item in batch):
        batch = [item for item in batch if item is not None]
        if not batch:
            return (torch.empty((0, *empty_shape) if empty_shape else (0,), dtype=torch.uint8),
                    torch.empty(0, dtype=torch.long))
    return default_collate(batch)


class WorkerLoader(DataLoader):
    """A DataLoader whose worker processes fork from a frozen garbage collector (``gc.freeze``).

    A forked worker shares the parent's memory until it writes to a page. Its cyclic garbage
    collections visit every object it inherited (the torch, Lightning and NumPy modules: millions
    of objects) and write to each one's header: the whole heap gets copied page by page, and the
    collections themselves take time. Frozen objects are left out of the workers' collections;
    the parent unfreezes them as soon as the workers have started. Measured on 2 cores, 10,000
    Fashion-MNIST PNGs → 128×128 RGB, a fresh cache on a VM whose host backs memory on first
    touch: epoch 1 9,800 → 17,700 img/s (30,600 after its first batch, was 16,900)."""

    def _get_iterator(self):
        if not self.num_workers:
            return super()._get_iterator()
        gc.freeze()
        try:
            return super()._get_iterator()  # the workers fork here
        finally:
            gc.unfreeze()


class ImageLoader(WorkerLoader):
    """Worker processes while images must be decoded, which send back the rows they stored in
    the image cache (:class:`CachedRows`; read here with one fancy-index per batch); once every
    image is in the cache, whole batches are read from it in the main process (no inter-process
    transfer). Same order and values either way. Used on CPU-only machines: with a GPU the
    workers' overlap with the training step pays more."""

    def __iter__(self):
        if self.num_workers and self.dataset.cache_complete():
            if self._iterator is not None:  # the idle persistent workers of the decoding epoch
                self._iterator._shutdown_workers()
                self._iterator = None
            return self._in_process()
        if self.num_workers and self.dataset.cache is not None:
            self.dataset.rows_from_cache = True  # before the workers start: they inherit it
        return self._from_workers(super().__iter__())

    def _from_workers(self, batches):
        for batch in batches:
            yield self.dataset.read_rows(batch) if isinstance(batch, CachedRows) else batch

    def _in_process(self):
        for indices in self.batch_sampler:
            yield self.collate_fn(self.dataset.__getitems__(indices))


def _init_worker(worker_id: int) -> None:
    """Loader workers: one BLAS/OpenMP thread each (the training process owns the cores), and
    Lightning's per-worker seeding."""
    from lightning.fabric.utilities.seed import pl_worker_init_function

    _thread_pools().limit(limits=1)
    pl_worker_init_function(worker_id)


_THREAD_POOLS = None


def _thread_pools():
    """threadpoolctl's controller of this process's BLAS/OpenMP libraries, made once: made before
    the loader workers fork, it spares each of them the ~20 ms of finding the libraries."""
    global _THREAD_POOLS
    if _THREAD_POOLS is None:
        from threadpoolctl import ThreadpoolController

        _THREAD_POOLS = ThreadpoolController()
    return _THREAD_POOLS


def default_num_workers() -> int:
    return min(available_cpus(), 8)


class EpochShuffleSampler(Sampler[int]):
    """A new random order every epoch, a pure function of (seed, epoch).

    Lightning calls :meth:`set_epoch` before each epoch, so a resumed run visits the training
    set in the same order as an uninterrupted one (the global RNG plays no part). In a
    distributed run each rank takes every ``world_size``-th index of the same permutation
    (padded by wrapping so that every rank gets the same number of batches).

    Given ``batch_size``, an epoch whose last batch would hold a single image (BatchNorm cannot
    normalise one value per channel: that step would fail) ends with the epoch's first index
    again, making that batch two images."""

    def __init__(self, length: int, seed: int, batch_size: Optional[int] = None) -> None:
        self.length, self.seed, self.epoch, self.batch_size = length, seed, 0, batch_size
        self._resume: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, start: int) -> None:
        """Resume inside an epoch: the next pass over epoch ``epoch`` leaves out its first ``start``
        indices (this rank's), those of the batches trained before a mid-epoch checkpoint; later
        passes are whole again. (The count comes from the trainer: with loader workers the
        sampler runs ahead of training, so it cannot tell by itself.)"""
        self._resume = (int(epoch), max(int(start), 0))

    @staticmethod
    def _world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _per_rank(self) -> int:
        return -(-self.length // self._world()[1])

    def _tail(self, count: int) -> int:
        """1 when ``count`` indices would end with a batch of one image (and there are others)."""
        return int(bool(self.batch_size) and self.batch_size > 1 and count > 1 and count % self.batch_size == 1)

    def __len__(self) -> int:
        count = self._per_rank()
        return count + self._tail(count)

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=generator).tolist()
        rank, world = self._world()
        if world > 1:
            total = self._per_rank() * world
            order = (order * (total // max(len(order), 1) + 1))[:total][rank::world]
        if self._tail(len(order)):
            order.append(order[0])
        if self._resume is not None and self._resume[0] <= self.epoch:
            resume_epoch, start = self._resume
            self._resume = None
            if resume_epoch == self.epoch:
                order = order[start:]
        return iter(order)


def derive_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


SPLIT_KEYS = ("training_path", "validation_path", "validation_split", "seed")
"""The ``dataset`` keys that decide the training/validation split (recorded in checkpoints)."""


def _plain(value: Any) -> Any:
    """A checkpoint-safe copy of a config value (str, int, float, None)."""
    return value if value is None or isinstance(value, (int, float, str)) else str(value)


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
        self._bad_files = BadFileLog()
        self._fingerprints: Optional[dict[str, dict]] = None
        max_image_pixels()  # a wrong $STMCLF_MAX_IMAGE_PIXELS: one line now, not a skipped file per image

    @property
    def class_names(self) -> list[str]:
        return self.prepare_splits().class_names

    def prepare_splits(self) -> Splits:
        if self.splits is None:
            self.splits = make_splits(self.dataset_cfg)
        return self.splits

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_splits()

    def split_fingerprints(self) -> dict[str, dict]:
        """:func:`split_fingerprint` of the training and validation sets (computed once)."""
        if self._fingerprints is None:
            splits = self.prepare_splits()
            self._fingerprints = {name: split_fingerprint(subset) for name, subset in
                                  (("train", splits.train), ("valid", splits.valid)) if subset is not None}
        return self._fingerprints

    def state_dict(self) -> dict[str, Any]:
        """In every checkpoint: what a resumed training checks (the split it trained on, the batch
        size a mid-epoch position is counted in, the dataset keys that make the split)."""
        cfg = self.dataset_cfg
        return {"splits": self.split_fingerprints(), "batch_size": int(self.batch_size),
                "dataset": {key: _plain(getattr(cfg, key, None)) for key in SPLIT_KEYS}}

    def _loader(self, files: Optional[FileList], shuffle: bool) -> DataLoader:
        if files is None or len(files) == 0:
            return []  # Lightning skips an empty loader
        workers = min(self.num_workers, max(1, len(files) // self.batch_size)) if self.num_workers else 0
        if workers:
            _thread_pools()  # found once here, inherited by the workers
        sampler = EpochShuffleSampler(len(files), self.shuffle_seed, self.batch_size) if shuffle else None
        # The loader's own generator: creating an iterator must not draw from the global RNG
        # (that would shift the augmentation draws of a resumed run).
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        loader = WorkerLoader if torch.cuda.is_available() else ImageLoader
        dataset = self._dataset_for(files)
        if shuffle:  # training: full batches, a bad file's place taken by another image
            dataset = dataset.replacing()
        return loader(dataset, batch_size=self.batch_size, sampler=sampler, generator=generator,
                          collate_fn=partial(collate_skip_bad, empty_shape=(self.fmt.channels, self.fmt.height,
                                                                            self.fmt.width)),
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available(), drop_last=False,
                          prefetch_factor=4 if workers else None, worker_init_fn=_init_worker if workers else None)

    def _dataset_for(self, files: FileList) -> ImageFileDataset:
        """One dataset per file list: its image cache and its record of bad files serve every
        loader over it (training, validation, the final evaluation); a bad file is logged once
        across all of them."""
        dataset = self._datasets.get(id(files))
        if dataset is None or dataset.files is not files:
            dataset = self._datasets[id(files)] = ImageFileDataset(files, self.fmt, bad_log=self._bad_files)
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
