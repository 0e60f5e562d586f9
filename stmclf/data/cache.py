"""A memory-mapped cache of decoded and resized uint8 images.

Decoding JPEG/PNG files and resizing them costs far more than a training step on small
models, and it is the same work every epoch. The first epoch writes each image, at the model's
input size, into ``<cache>/<key>.u8`` (an (N, H, W, C) uint8 memory map shared by the loader's
worker processes); later epochs read it back. The key hashes the file list (paths, sizes,
modification times) and the image format, so changing the dataset or the preprocessing starts
a new cache. ``$STMCLF_CACHE`` (default ``~/.cache/stmclf``) holds it under ``images/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)
DEFAULT_LIMIT_BYTES = 16 * 2**30


def cache_root() -> Path:
    return Path(os.environ.get("STMCLF_CACHE") or Path.home() / ".cache" / "stmclf")


def cache_key(identity: list[str], fmt_fields: dict) -> str:
    """Hash of the format and of each item: a file's path, size and mtime, or any other text."""
    digest = hashlib.sha1(json.dumps(fmt_fields, sort_keys=True).encode())
    for item in identity:
        try:
            stat = os.stat(item)
            digest.update(f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except (OSError, ValueError):
            digest.update(f"{item}\n".encode())
    return digest.hexdigest()[:20]


class ImageCache:
    """Per-index uint8 images with a "filled" flag, in two memory-mapped files."""

    def __init__(self, directory: Path, key: str, shape: tuple[int, int, int, int]) -> None:
        self.data_path = directory / f"{key}.u8"
        self.flags_path = directory / f"{key}.filled"
        self.shape = shape
        directory.mkdir(parents=True, exist_ok=True)
        size = int(np.prod(shape))
        if not self.data_path.exists() or self.data_path.stat().st_size != size:
            with open(self.data_path, "wb") as handle:
                handle.truncate(size)
            with open(self.flags_path, "wb") as handle:
                handle.truncate(shape[0])
        self._data: Optional[np.memmap] = None
        self._flags: Optional[np.memmap] = None
        self._pid = -1

    def _open(self) -> None:
        # Each process (loader workers are forked) maps the files itself.
        if self._pid != os.getpid():
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r+", shape=self.shape)
            self._flags = np.memmap(self.flags_path, dtype=np.uint8, mode="r+", shape=(self.shape[0],))
            self._pid = os.getpid()

    def get(self, index: int, load: Callable[[], np.ndarray]) -> np.ndarray:
        self._open()
        if self._flags[index]:
            return self._data[index]
        image = load()
        self._data[index] = image
        self._flags[index] = 1
        return image

    def complete(self) -> bool:
        self._open()
        return bool(self._flags.all())

    def read_batch(self, indices) -> Optional[np.ndarray]:
        """(B, H, W, C) copy of the images ``indices``, or None if one is not cached yet."""
        self._open()
        index = np.asarray(indices, dtype=np.intp)
        return np.take(self._data, index, axis=0) if self._flags[index].all() else None

    @property
    def filled(self) -> int:
        self._open()
        return int(np.count_nonzero(self._flags))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_data=None, _flags=None, _pid=-1)
        return state


def open_cache(identity: list[str], fmt_fields: dict, shape: tuple[int, int, int, int],
               limit_bytes: int = DEFAULT_LIMIT_BYTES) -> Optional[ImageCache]:
    """The cache for this file list and format, or None when caching is off or too large."""
    if os.environ.get("STMCLF_CACHE", "").lower() in ("0", "off", "none", "false"):
        return None
    size = int(np.prod(shape))
    if size > limit_bytes:
        log.info("Image cache skipped: %.1f GB is above the %.1f GB limit", size / 2**30, limit_bytes / 2**30)
        return None
    try:
        return ImageCache(cache_root() / "images", cache_key(identity, fmt_fields), shape)
    except OSError as exc:
        log.warning("Image cache disabled (%s)", exc)
        return None
