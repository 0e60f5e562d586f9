"""Image files on disk: the per-subset file list, the subsets of a dataset, and listing a folder
dataset (``<root>/<class_name>/<image files>``).

- class names: given (sorted, a subset filter) or inferred from the first existing path among
  training, validation, test and quantization (sorted sub-directory names);
- label = index in the sorted class list;
- per class, file names sorted; then the whole (path, label) list is shuffled once with
  ``numpy.random.RandomState(dataset.seed)``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stmclf.data.decode import ImageFormat, decode_for_resize, load_image, read_file
from stmclf.data.resize import resize_into, stackable
from stmclf.config.rules import MAX_CLASSES
from stmclf.errors import ConfigError, UserError, is_text, one_line, printable_path

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

    def load(self, index: int, fmt: ImageFormat) -> np.ndarray:
        """Item ``index`` decoded and resized to ``fmt`` (uint8 HWC)."""
        return load_image(self.paths[index], fmt)

    def load_many(self, indices: Sequence[int], fmt: ImageFormat, out: np.ndarray,
                  grey: Optional[np.ndarray] = None) -> list[Optional[UserError]]:
        """Items ``indices`` into ``out`` (:func:`load_images`)."""
        return load_images([self.paths[i] for i in indices], fmt, out, grey)

    def cache_identity(self) -> list[str]:
        """What the image cache key hashes: the files (with their sizes and times)."""
        return self.paths


def load_images(paths: Sequence[str], fmt: ImageFormat, out: np.ndarray,
                grey: Optional[np.ndarray] = None) -> list[Optional[UserError]]:
    """Decode and resize ``paths[k]`` into ``out[k]`` (uint8 (N, H, W, C)) with :func:`load_image`'s
    pixels, a batch's work shared (the loader's first epoch): grey sources are resized as one channel
    (:func:`~stmclf.data.decode.decode_for_resize`), small images of one size together
    (:func:`~stmclf.data.resize.resize_into`); the others are resized as soon as decoded, while
    their pixels are in the CPU's caches. Returns each file's error (None: loaded); the row of a
    file that does not decode is left as it was. ``grey`` (bool (N,)), when given: set where the
    source was grey and ``out`` has more channels (every channel of the row is the same plane)."""
    stacked, rows, errors = [], [], []
    for k, path in enumerate(paths):
        try:
            image = decode_for_resize(read_file(path), fmt.color_mode, path)
        except UserError as exc:
            errors.append(exc)
            continue
        errors.append(None)
        if grey is not None:
            grey[k] = image.shape[2] == 1 < out.shape[3]
        if stackable(image.shape, fmt.height, fmt.width, fmt.interpolation, fmt.aspect_ratio):
            stacked.append(image)
            rows.append(k)
        else:
            resize_into([image], out[k:k + 1], fmt.interpolation, fmt.aspect_ratio)
    if stacked:
        whole = rows == list(range(rows[0], rows[0] + len(rows)))
        target = out[rows[0]:rows[0] + len(rows)] if whole else np.empty((len(rows), *out.shape[1:]), np.uint8)
        resize_into(stacked, target, fmt.interpolation, fmt.aspect_ratio)
        if not whole:
            out[rows] = target
    return errors


def split_fingerprint(subset) -> dict:
    """``{images, sha256}`` of a subset: its items in order (file names relative to the subset's
    root, so a moved dataset keeps its fingerprint) with their labels. A resumed training checks
    that it trains and validates on the split its checkpoint was trained on."""
    root = getattr(subset, "root", "") or ""
    prefix = root.rstrip(os.sep) + os.sep if root else ""
    digest = hashlib.sha256()
    for index, label in enumerate(subset.labels):
        name = subset.describe(index)
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        digest.update(f"{name}\0{int(label)}\n".encode("utf-8", "surrogateescape"))
    return {"images": len(subset.labels), "sha256": digest.hexdigest()}


@dataclass
class Splits:
    """The subsets of a dataset: file lists (:class:`FileList`) or any image source with
    ``labels``, ``load(index, fmt)``, ``describe(index)`` and ``cache_identity()``."""

    class_names: list[str]
    train: Optional[FileList] = None
    valid: Optional[FileList] = None
    test: Optional[FileList] = None
    quantization: Optional[FileList] = None

    @property
    def evaluation(self) -> Optional[FileList]:
        """The set evaluations use: test if given, else validation."""
        return self.test if self.test is not None else self.valid


CLASS_NAME_USE = "class names go into reports, C headers and model files"


def class_name_problem(name: str) -> Optional[str]:
    """Why ``name`` (a class folder's, a label name read from a dataset's file) cannot name a class,
    None when it can: class names go into logs, reports, C headers and model files, so they are
    UTF-8 and printable text, as ``dataset.class_names`` must be (a line break would forge a log
    line, an escape sequence rewrite the terminal)."""
    if not is_text(name):
        return "is not UTF-8 text"
    if not name.isprintable():
        return f"holds the control character {ascii(next(c for c in name if not c.isprintable()))}"
    return None


def class_dirs(root: Path, key: str) -> list[str]:
    if not root.is_dir():
        raise ConfigError(key, f"unable to find the dataset root directory {root}")
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:  # a root the user may not list (permissions): named with its key, as a class folder is
        raise ConfigError(key, f"unable to list the dataset root directory {printable_path(root)}: "
                               f"{exc.strerror or exc}") from None
    for name in names:
        problem = class_name_problem(name)
        if problem:
            raise ConfigError(key, f"the class folder {printable_path(root / name)} has a name that {problem}: "
                                   f"rename it ({CLASS_NAME_USE})")
    if not names:
        raise ConfigError(key, f"expecting class sub-directories under the dataset root directory {root}")
    if len(names) > MAX_CLASSES:
        raise ConfigError(key, f"{len(names):,} class folders under {printable_path(root)}; a dataset has at most "
                               f"{MAX_CLASSES:,} classes (is this the dataset's root?)")
    return names


def infer_class_names(paths: Sequence[tuple[str, Optional[str]]]) -> list[str]:
    """Sorted sub-directory names of the first given path (key, path) that exists."""
    for key, path in paths:
        if path:
            names = class_dirs(Path(path), key)
            log.info("Found %d classes in dataset %s", len(names), path)
            return names
    raise ConfigError("dataset.class_names", "no dataset path given to infer the class names from")


def is_dir_entry(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a folder (links followed); False for an entry whose links loop
    or dangle (reading it then fails as an unreadable image, skipped like the other bad files)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def outside_root(path: str, real_root: str) -> Optional[str]:
    """Where ``path`` really is (symbolic links resolved) when that is outside ``real_root`` (a
    resolved directory), else None."""
    target = os.path.realpath(path)
    return target if os.path.commonpath([target, real_root]) != real_root else None


def list_images(root: str, class_names: Sequence[str], key: str, seed: int,
                class_source: Optional[str] = None) -> FileList:
    """All image files of ``class_names`` under ``root``, shuffled once with ``seed``.

    Class folders outside ``class_names`` are ignored, as the reference does; when the class names
    were found in another path (``class_source``, e.g. ``dataset.training_path``), one warning
    names them (a validation or test class the model never learns is otherwise silently lost).

    Files that are symbolic links to outside ``root`` (or inside a class folder that is one) are
    read like the others, with one warning line per dataset path: ``stmclf data check`` lists them.
    """
    base = Path(root)
    present = set(class_dirs(base, key))
    missing = [c for c in class_names if c not in present]
    if missing:
        raise ConfigError(key, f"class folder(s) {one_line(', '.join(missing), 200)} not found in {root}")
    extra = sorted(present - set(class_names))
    if extra and class_source is not None and class_source != key:
        log.warning("%s: class folder(s) %s are not among the %d classes found in %s: ignored", key,
                    one_line(", ".join(extra), 200), len(class_names), class_source)
    paths: list[str] = []
    labels: list[int] = []
    skipped = 0
    real_root = os.path.realpath(base)
    escaping: list[tuple[str, str]] = []
    for label, name in enumerate(sorted(class_names)):
        folder = base / name
        folder_escapes = outside_root(str(folder), real_root) is not None
        try:
            with os.scandir(folder) as it:  # DirEntry: file types without a stat call per file
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            raise ConfigError(key, f"unable to list the class folder {folder}: {exc.strerror or exc}") from None
        for entry in entries:
            path = str(folder / entry.name)
            if is_dir_entry(entry):
                raise ConfigError(key, "class directories should only contain image files; found sub-directory "
                                       f"{printable_path(path)}")
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            if folder_escapes or entry.is_symlink():
                target = outside_root(path, real_root)
                if target is not None:
                    escaping.append((path, target))
            paths.append(path)
            labels.append(label)
    if skipped:
        log.warning("%s: skipped %d file(s) that are not JPEG, PNG, BMP or GIF (see `stmclf data check`)", root, skipped)
    if escaping:
        log.warning("%s: %d file(s) are symbolic links to outside the dataset root, read anyway (e.g. %s -> %s); "
                    "`stmclf data check` lists them", root, len(escaping), *map(printable_path, escaping[0]))
    if not paths:
        raise ConfigError(key, f"no image files found under {root}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [name for name, count in zip(sorted(class_names), counts) if count == 0]
    if empty:
        log.warning("%s: %d class folder(s) without image files (%s%s): the model gets classes it never sees "
                    "here; remove them or give dataset.class_names", root, len(empty), ", ".join(empty[:5]),
                    ", ..." if len(empty) > 5 else "")
    order = np.random.RandomState(seed).permutation(len(paths))
    return FileList([paths[i] for i in order], [labels[i] for i in order], str(root))


def split_training(files: FileList, validation_split: float) -> tuple[FileList, FileList]:
    """A training-only dataset's split, after the shuffle: the first ⌊N·(1 − validation_split)⌋
    files train, the rest validate."""
    n_train = int(len(files) * (1.0 - validation_split))
    return files.subset(0, n_train), files.subset(n_train)
