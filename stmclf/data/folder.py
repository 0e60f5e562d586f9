"""Folder datasets (``<root>/<class_name>/<image files>``) and the reference's split rules.

- class names: given (sorted, a subset filter) or inferred from the first existing path among
  training, validation, test and quantization (sorted sub-directory names);
- label = index in the sorted class list;
- per class, file names sorted; then the whole (path, label) list is shuffled once with
  ``numpy.random.RandomState(dataset.seed)``; a training-only dataset is split after that shuffle:
  the first ⌊N·(1 − validation_split)⌋ files train, the rest validate.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stmclf.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})


@dataclass
class FileList:
    """Image files and integer labels of one subset, in loading order."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    root: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, start: int, stop: Optional[int] = None) -> "FileList":
        return FileList(self.paths[start:stop], self.labels[start:stop], self.root)

    def describe(self, index: int) -> str:
        """How to name item ``index`` in messages."""
        return self.paths[index]

    def load(self, index: int, fmt) -> np.ndarray:
        """Item ``index`` decoded and resized to ``fmt`` (uint8 HWC)."""
        from stmclf.data.datamodule import load_image

        return load_image(self.paths[index], fmt)

    def cache_identity(self) -> list[str]:
        """What the image cache key hashes: the files (with their sizes and times)."""
        return self.paths


def class_dirs(root: Path, key: str) -> list[str]:
    if not root.is_dir():
        raise ConfigError(key, f"unable to find the dataset root directory {root}")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ConfigError(key, f"expecting class sub-directories under the dataset root directory {root}")
    return names


def infer_class_names(paths: Sequence[tuple[str, Optional[str]]]) -> list[str]:
    """Sorted sub-directory names of the first given path (key, path) that exists."""
    for key, path in paths:
        if path:
            names = class_dirs(Path(path), key)
            log.info("Found %d classes in dataset %s", len(names), path)
            return names
    raise ConfigError("dataset.class_names", "no dataset path given to infer the class names from")


def list_images(root: str, class_names: Sequence[str], key: str, seed: int) -> FileList:
    """All image files of ``class_names`` under ``root``, shuffled once with ``seed``."""
    base = Path(root)
    present = set(class_dirs(base, key))
    missing = [c for c in class_names if c not in present]
    if missing:
        raise ConfigError(key, f"class folder(s) {', '.join(missing)} not found in {root}")
    paths: list[str] = []
    labels: list[int] = []
    skipped = 0
    for label, name in enumerate(sorted(class_names)):
        for entry in sorted((base / name).iterdir(), key=lambda p: p.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                raise ConfigError(key, f"class directories should only contain image files; found sub-directory {entry}")
            if entry.suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            paths.append(str(entry))
            labels.append(label)
    if skipped:
        log.warning("%s: skipped %d file(s) that are not JPEG, PNG, BMP or GIF (see `stmclf data check`)", root, skipped)
    if not paths:
        raise ConfigError(key, f"no image files found under {root}")
    order = np.random.RandomState(seed).permutation(len(paths))
    return FileList([paths[i] for i in order], [labels[i] for i in order], str(root))


def split_training(files: FileList, validation_split: float) -> tuple[FileList, FileList]:
    n_train = int(len(files) * (1.0 - validation_split))
    return files.subset(0, n_train), files.subset(n_train)


@dataclass
class Splits:
    class_names: list[str]
    train: Optional[FileList] = None
    valid: Optional[FileList] = None
    test: Optional[FileList] = None
    quantization: Optional[FileList] = None

    @property
    def evaluation(self) -> Optional[FileList]:
        """The set evaluations use: test if given, else validation."""
        return self.test if self.test is not None else self.valid


def make_splits(dataset) -> Splits:
    """Apply the reference's path/split state machine to a ``dataset`` config section."""
    builtin = (dataset.name or "").lower()
    if builtin in ("cifar10", "cifar100"):
        from stmclf.data.cifar import cifar_splits

        return cifar_splits(dataset)
    if builtin == "emnist":
        raise ConfigError("dataset.name", "emnist is not supported yet")
    seed = 123 if dataset.seed is None else dataset.seed
    split = 0.2 if dataset.validation_split is None else dataset.validation_split
    given = [("dataset.training_path", dataset.training_path),
             ("dataset.validation_path", dataset.validation_path),
             ("dataset.test_path", dataset.test_path),
             ("dataset.quantization_path", dataset.quantization_path)]
    class_names = sorted(dataset.class_names) if dataset.class_names else infer_class_names(given)
    out = Splits(class_names=list(class_names))
    lists = {key: list_images(path, class_names, key, seed) for key, path in given if path}
    training = lists.get("dataset.training_path")
    if training is not None:
        if dataset.validation_path:
            out.train, out.valid = training, lists["dataset.validation_path"]
        else:
            out.train, out.valid = split_training(training, split)
        out.quantization = training
    elif dataset.validation_path:
        out.valid = lists["dataset.validation_path"]
    out.test = lists.get("dataset.test_path")
    if dataset.quantization_path:
        out.quantization = lists["dataset.quantization_path"]
    return out
