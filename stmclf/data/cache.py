"""A memory-mapped cache of decoded and resized uint8 images.

Decoding JPEG/PNG files and resizing them costs far more than a training step on small
models, and it is the same work every epoch. The first epoch writes each image, at the model's
input size, into ``<cache>/<key>.u8`` (an (N, H, W, C) uint8 file, written with ``pwrite`` and
read through a memory map by every process); later epochs read it back. The key hashes the file list (each
file's path, size, modification and status-change times and inode: :func:`file_stamp`) and the image
format, so changing the dataset or the preprocessing starts a new cache, also when a file is replaced by
one of the same size and modification time (two files swapped with ``mv``, a copy made with ``cp -p``
or extracted from an archive). ``$STMCLF_CACHE`` (default ``~/.cache/stmclf``) holds it under ``images/``; a cache
folder that cannot be written (read-only, no permission, disk full) turns the cache off with one
warning naming it, and training goes on decoding the images every epoch.

Each index has a flag: 0 not decoded yet, 1 image stored, 2 the file's content does not decode
(:meth:`ImageCache.mark_bad`): the run's skip list, kept for later runs over the same files (the key
changes when a file changes), so that a dataset with bad files is still read from the cache alone;
3 a grey image stored as its one plane (an RGB cache of a grey source, e.g. Fashion-MNIST for an
RGB model: every channel is that plane). A grey image's record keeps its full size, but only its
first H·W bytes are written and read: a third of the pages, which is what the first epoch pays for
(a fresh page of the cache costs 8–11 µs on a VM whose host backs memory on first touch, 12 per
128×128 RGB image), and a third of the page cache; readers get RGB rows (:meth:`ImageCache.take`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from stmclf.data.resize import replicate_planes

log = logging.getLogger(__name__)
DEFAULT_LIMIT_BYTES = 16 * 2**30


def cache_root() -> Path:
    return Path(os.environ.get("STMCLF_CACHE") or Path.home() / ".cache" / "stmclf")


def file_stamp(path: str) -> str:
    """``path`` with what tells one content of it from another without reading it: size,
    modification time, status-change time and inode (``mv``, ``cp -p`` and archive extraction keep
    a size and modification time, not a ctime and inode); ``path`` alone when it cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return path
    return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0{stat.st_dev}:{stat.st_ino}"


def cache_key(identity: list[str], fmt_fields: dict) -> str:
    """Hash of the format and of each item: a file's :func:`file_stamp`, or any other text (a file
    name's bytes that are not UTF-8 hashed as they are on disk)."""
    digest = hashlib.sha1(json.dumps(fmt_fields, sort_keys=True).encode())
    for item in identity:
        digest.update(f"{file_stamp(item)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:20]


FILLED, BAD, GREY = 1, 2, 3


def stored(flags: np.ndarray) -> np.ndarray:
    """Which of ``flags`` are images in the cache (:data:`FILLED` or :data:`GREY`)."""
    return (flags == FILLED) | (flags == GREY)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


class ImageCache:
    """Per-index uint8 images with a flag (0 unknown, :data:`FILLED`, :data:`BAD`, :data:`GREY`),
    in two memory-mapped files."""

    def __init__(self, directory: Path, key: str, shape: tuple[int, int, int, int]) -> None:
        self.data_path = directory / f"{key}.u8"
        self.flags_path = directory / f"{key}.filled"
        self.shape = shape
        directory.mkdir(parents=True, exist_ok=True)
        size = int(np.prod(shape))
        if not (_has_size(self.data_path, size) and _has_size(self.flags_path, shape[0])):
            # new, or left half made (a crash between the two files, a file removed): made afresh
            try:  # disk blocks reserved now: a full disk is an OSError here, not a SIGBUS in a loader worker
                for path, length in ((self.data_path, size), (self.flags_path, shape[0])):
                    with open(path, "wb") as handle:
                        handle.truncate(length)
                        if length:
                            _reserve(handle.fileno(), length)
            except OSError:
                self.data_path.unlink(missing_ok=True)
                self.flags_path.unlink(missing_ok=True)
                raise
        with open(self.data_path, "r+b"), open(self.flags_path, "r+b"):
            pass  # writable (the memory maps are opened read-write in each process)
        self._data: Optional[np.memmap] = None
        self._flags: Optional[np.memmap] = None
        self._fd = -1
        self._pid = -1

    def _open(self) -> None:
        # Each process (loader workers are forked) maps the files itself.
        if self._pid != os.getpid():
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r+", shape=self.shape)
            self._flags = np.memmap(self.flags_path, dtype=np.uint8, mode="r+", shape=(self.shape[0],))
            self._fd = os.open(self.data_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            self._pid = os.getpid()

    def get(self, index: int, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The stored image ``index``, else ``load()`` stored (what ``load`` raises propagates)."""
        self._open()
        if self._flags[index] == FILLED:
            return self._data[index]
        if self._flags[index] == GREY:
            return self.take(np.array([index], dtype=np.intp))[0]
        image = load()
        self.put([index], image[None])
        return image

    def put(self, indices: Sequence[int], images: np.ndarray, grey: Optional[np.ndarray] = None) -> None:
        """Store ``images[k]`` (uint8 (B, H, W, C)) as image ``indices[k]`` and flag them stored
        (after the pixels: a reader that sees the flag finds the image); ``grey[k]`` true: every
        channel of ``images[k]`` is the same plane, stored alone (:data:`GREY`). Written with
        ``pwrite``, a run of consecutive indices at once: ~3× less CPU than writing through the
        memory map, where the first touch of each page of a new cache faults."""
        self._open()
        if grey is not None and self.shape[3] > 1 and np.any(grey):
            grey = np.asarray(grey, dtype=bool)
            rows = np.asarray(indices, dtype=np.intp)
            planes = np.ascontiguousarray(images[grey, :, :, 0], dtype=np.uint8)
            record = int(np.prod(self.shape[1:]))
            for index, plane in zip(rows[grey], planes):
                self._pwrite(plane, int(index) * record)
            self._flags[rows[grey]] = GREY
            if grey.all():
                return
            indices, images = [int(i) for i in rows[~grey]], images[~grey]
        images = np.ascontiguousarray(images, dtype=np.uint8)
        size = images[0].nbytes if len(images) else 0
        start = 0
        for k in range(1, len(indices) + 1):
            if k == len(indices) or indices[k] != indices[k - 1] + 1:
                self._pwrite(images[start:k], int(indices[start]) * size)
                start = k
        self._flags[np.asarray(indices, dtype=np.intp)] = FILLED

    def _pwrite(self, pixels: np.ndarray, offset: int) -> None:
        """Write the contiguous ``pixels`` at byte ``offset`` of the data file (all of them)."""
        view = memoryview(pixels).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def mark_bad(self, index: int) -> None:
        """Record that file ``index`` does not decode (later epochs and runs skip it)."""
        self._open()
        self._flags[index] = BAD

    @property
    def flags(self) -> np.ndarray:
        """The per-index flags (a live memory map of this process)."""
        self._open()
        return self._flags

    def complete(self) -> bool:
        """Every index is stored or known bad."""
        self._open()
        return bool(self._flags.all())

    def read_batch(self, indices) -> Optional[np.ndarray]:
        """(B, H, W, C) copy of the images ``indices``, or None if one is not stored."""
        self._open()
        index = np.asarray(indices, dtype=np.intp)
        return self.take(index) if stored(self._flags[index]).all() else None

    def take(self, indices: np.ndarray) -> np.ndarray:
        """(B, H, W, C) copy of the images ``indices``, which the caller knows are stored (a grey
        one's plane in every channel)."""
        self._open()
        indices = np.asarray(indices, dtype=np.intp)
        grey = self._flags[indices] == GREY
        if not grey.any():
            return np.take(self._data, indices, axis=0)
        n, height, width, channels = self.shape
        out = np.empty((len(indices), height, width, channels), np.uint8)
        if not grey.all():
            out[~grey] = np.take(self._data, indices[~grey], axis=0)
        planes = self._data.reshape(n, -1)[:, :height * width][indices[grey]]  # only the planes' pages
        rows = out if grey.all() else np.empty((len(planes), height, width, channels), np.uint8)
        replicate_planes(planes.reshape(-1, height, width), rows)
        if rows is not out:
            out[grey] = rows
        return out

    @property
    def filled(self) -> int:
        self._open()
        return int(np.count_nonzero(stored(self._flags)))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_data=None, _flags=None, _fd=-1, _pid=-1)
        return state


def _reserve(fd: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a filesystem without it: sparse
            raise


def open_cache(identity: list[str], fmt_fields: dict, shape: tuple[int, int, int, int],
               limit_bytes: int = DEFAULT_LIMIT_BYTES) -> Optional[ImageCache]:
    """The cache for this file list and format, or None when caching is off or too large."""
    if os.environ.get("STMCLF_CACHE", "").lower() in ("0", "off", "none", "false"):
        return None
    size = int(np.prod(shape))
    if size > limit_bytes:
        log.info("Image cache skipped: %.1f GB is above the %.1f GB limit", size / 2**30, limit_bytes / 2**30)
        return None
    directory = cache_root() / "images"
    try:
        return ImageCache(directory, cache_key(identity, fmt_fields), shape)
    except OSError as exc:
        # An unwritable cache (read-only or forbidden folder, full disk) is not an error: the
        # images are decoded every epoch instead. One warning per folder and process.
        if str(directory) not in _UNWRITABLE:
            _UNWRITABLE.add(str(directory))
            where = exc.filename or directory
            log.warning("Image cache disabled: %s: %s (set STMCLF_CACHE to a writable folder; images are decoded "
                        "every epoch meanwhile)", where, exc.strerror or exc)
        return None


_UNWRITABLE: set[str] = set()
