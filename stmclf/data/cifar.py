"""CIFAR-10 / CIFAR-100 from the official archives (``dataset.name: cifar10`` / ``cifar100``).

``dataset.training_path`` is the extracted archive directory (or its parent). Either format of
the official distribution is read; the python pickles win when both are present:

============  =========================================  ===========================================
dataset       python version                             binary version
============  =========================================  ===========================================
cifar10       ``data_batch_1..5``, ``test_batch``,       ``data_batch_1..5.bin``, ``test_batch.bin``
              ``batches.meta`` (label names)             (1 label byte + 3072 pixel bytes per
                                                         image), ``batches.meta.txt``
cifar100      ``train``, ``test``, ``meta``              ``train.bin``, ``test.bin`` (coarse byte,
                                                         fine byte, 3072 bytes),
                                                         ``fine_label_names.txt``,
                                                         ``coarse_label_names.txt``
============  =========================================  ===========================================

Pixels are stored planar (N, 3, 32, 32) and become NHWC uint8 images in an :class:`ArraySource`.

Splits, as the reference reads these datasets: train = the training batches shuffled once with
``numpy.random.RandomState(dataset.seed)``; validation = the test batch, in file order (so
``dataset.validation_path`` and ``validation_split`` are ignored); ``dataset.test_path`` and
``dataset.quantization_path`` are still folder datasets; quantization defaults to the training set
(the reference would try, and fail, to read training_path as a folder there).

Class count and names:

- cifar10: 10 classes; ``dataset.class_names``, if given, must have 10 entries.
- cifar100: the number of classes picks the labels, as in the reference: 100 → fine labels,
  20 → coarse labels. The count is ``len(dataset.class_names)`` when class names are given
  (anything but 100 or 20 is an error), else 100 (fine labels).
- Without ``dataset.class_names`` the names are the official label names in official label order
  (from the archive's meta file; built-in copies of the official lists when it is absent), so
  that name ``i`` is the name of label ``i``; names that are not unique printable text (a line
  break, an escape sequence) are refused, as in ``dataset.class_names``. The reference instead uses its own alphabetically
  sorted plain-English CIFAR-100 list, whose order does not match the label indices (a quirk we do
  not reproduce).
- Given class names label CIFAR labels 0, 1, … in the given order, except that a permutation of
  the official names is put back in official order (a name always means its own class).

The batch files are Python pickles. They are read with a restricted unpickler that can only build
dicts, lists, strings, bytes, numbers and numpy arrays: any other global a pickle names
(``os.system``, ``builtins.eval``, …) is refused before anything runs.
"""
from __future__ import annotations

import hashlib
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stmclf.data.cache import file_stamp
from stmclf.data.decode import read_bounded
from stmclf.data.files import CLASS_NAME_USE, FileList, Splits, class_name_problem, list_images
from stmclf.data.resize import resize_image
from stmclf.errors import ConfigError, UserError, one_line

log = logging.getLogger(__name__)

CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_FINE_LABEL_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

CIFAR100_COARSE_LABEL_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32


# --------------------------------------------------------------------------------------------
# ArraySource: an image source over an in-memory uint8 NHWC array
# --------------------------------------------------------------------------------------------

def _luma(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, rounded, with PIL's integer weights (what ``Image.convert("L")`` gives, so
    folder and array datasets agree): (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16."""
    rgb = image[..., :3].astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def convert_color(image: np.ndarray, color_mode: str) -> np.ndarray:
    """An (H, W, 1|3|4) uint8 image in ``color_mode`` (grayscale 1, rgb 3, rgba 4 channels)."""
    channels = image.shape[-1]
    if color_mode == "grayscale":
        return image if channels == 1 else _luma(image)
    rgb = np.repeat(image, 3, axis=-1) if channels == 1 else image[..., :3]
    if color_mode == "rgb":
        return rgb
    if color_mode == "rgba":
        if channels == 4:
            return image
        alpha = np.full(rgb.shape[:-1] + (1,), 255, dtype=np.uint8)
        return np.concatenate([rgb, alpha], axis=-1)
    raise ConfigError("preprocessing.color_mode", f"unknown color mode {color_mode!r}; allowed: grayscale, rgb, rgba")


class ArraySource:
    """Images held in memory (a uint8 (N, H, W, C) array shared by every subset) with integer labels.

    ``origins`` names where the array's rows came from: ``(file, rows)`` pairs in row order, used
    for messages (``describe``) and for the cache identity (each file's
    :func:`~stmclf.data.cache.file_stamp`, taken when the source is made). ``indices`` selects and orders rows.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], name: str,
                 origins: Sequence[tuple[str, int]] = (), indices: Optional[np.ndarray] = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"ArraySource needs a uint8 (N, H, W, C) array, got {images.dtype} {images.shape}")
        self.images = images.view()
        self.images.setflags(write=False)  # load() may return views of it: keep them read-only
        self.name = name
        self.indices = np.arange(len(images), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        self.labels = [int(v) for v in labels]
        if len(self.labels) != len(self.indices):
            raise ValueError(f"{name}: {len(self.labels)} labels for {len(self.indices)} images")
        self.origins = tuple((str(path), int(rows)) for path, rows in origins)
        self._starts = np.cumsum([0] + [rows for _, rows in self.origins])
        self._stamps = tuple(file_stamp(path) for path, _ in self.origins)
        self.root = str(Path(self.origins[0][0]).parent) if self.origins else name

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, start: int, stop: Optional[int] = None) -> "ArraySource":
        out = ArraySource.__new__(ArraySource)
        out.__dict__.update(self.__dict__)
        out.indices = self.indices[start:stop]
        out.labels = self.labels[start:stop]
        return out

    def describe(self, index: int) -> str:
        """``<name>:<file>#<row in that file>`` (``<name>#<row>`` without origins)."""
        row = int(self.indices[index])
        if not self.origins:
            return f"{self.name}#{row}"
        k = int(np.searchsorted(self._starts, row, side="right")) - 1
        return f"{self.name}:{self.origins[k][0]}#{row - int(self._starts[k])}"

    def load(self, index: int, fmt) -> np.ndarray:
        """Item ``index`` in ``fmt``'s colour mode and size (uint8 HWC).

        Resizing follows the reference's in-memory datasets (a Keras ``Resizing`` layer with
        ``crop_to_aspect_ratio = aspect_ratio != "fit"``): ``fit`` stretches, any other
        aspect_ratio scales to cover the target and centre-crops (``crop``) — never the
        crop-or-pad without scaling that folder datasets get for ``padding``/``full_screen``.
        """
        image = convert_color(self.images[self.indices[index]], fmt.color_mode)
        if image.shape[0] == fmt.height and image.shape[1] == fmt.width:
            return image
        aspect = "fit" if fmt.aspect_ratio == "fit" else "crop"
        return resize_image(image, fmt.height, fmt.width, fmt.interpolation, aspect)

    def cache_identity(self) -> list[str]:
        """A few strings: the array's source files (:func:`~stmclf.data.cache.file_stamp`), its shape, and a digest of
        the selected rows — O(1) entries however many images."""
        digest = hashlib.sha1(np.ascontiguousarray(self.indices).tobytes()).hexdigest()
        return [f"array-source\0{self.name}\0{self.images.shape}", *self._stamps,
                f"rows\0{len(self.indices)}\0{digest}"]


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as Python 3 writes bytes into protocol ≤ 2 pickles, and nothing else."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed to turn latin1 text into bytes")
    return text.encode("latin1")


def _empty_bytes(*args):
    """``bytes()`` as Python 3 writes an empty bytes object into protocol ≤ 2 pickles."""
    if args:
        raise pickle.UnpicklingError("bytes() is only allowed without arguments")
    return b""


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct, frombuffer = _numpy_reconstruct(), _numpy_frombuffer()
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):  # numpy 2 renamed numpy.core to numpy._core
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct  # ndarray, protocols 0-4
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer      # ndarray, protocol 5
    allowed[("_codecs", "encode")] = _latin1_encode                    # bytes written by Python 3, protocol <= 2
    for builtins in ("builtins", "__builtin__"):
        allowed[(builtins, "bytes")] = _empty_bytes
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        # name it as Python 3 would resolve it (protocol <= 2 pickles may carry Python 2 names,
        # e.g. ``__builtin__.eval`` or ``commands.Popen`` for ``subprocess.Popen``)
        import _compat_pickle

        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        self.qualname = f"{module}.{name}"
        super().__init__(self.qualname)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, bytes, numbers and numpy arrays; refuses every
    other global (so no callable outside the allow-list can run)."""

    def __init__(self, file) -> None:
        super().__init__(file, encoding="bytes")
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise _RefusedGlobal(module, name)
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


MAX_BATCH_BYTES = 512 << 20
"""A CIFAR file larger than this is refused before it is read (the largest official one, CIFAR-100's
``train``, is 158 MB)."""


def read_batch_bytes(path: Path) -> bytes:
    """The bytes of one CIFAR file, at most :data:`MAX_BATCH_BYTES` of them, a larger one refused
    from its size before it is read (:func:`~stmclf.data.decode.read_bounded`); one-line
    :class:`UserError`s."""
    return read_bounded(str(path), MAX_BATCH_BYTES, "a CIFAR file",
                        lambda reason: UserError(f"unable to read {path}: {reason}"))


def load_pickle(path: Path):
    """Read a CIFAR python batch with :class:`RestrictedUnpickler`; one-line :class:`UserError`s."""
    data = read_batch_bytes(path)
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as exc:
        raise UserError(f"{path}: refusing to unpickle global {one_line(exc.qualname, 200)}: a CIFAR batch holds only "
                        "dicts, lists, bytes, numbers and numpy arrays (is this the official file?)") from None
    except Exception as exc:  # noqa: BLE001 - corrupt or hostile pickles raise anything
        raise UserError(f"{path}: not a readable CIFAR python batch ({one_line(exc, 200, typed=True)})") from None


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The files of one CIFAR dataset in one format."""

    title: str
    binary: bool
    train: tuple[str, ...]
    test: str
    meta: tuple[str, ...]
    archive_dir: str

    @property
    def required(self) -> tuple[str, ...]:
        return (*self.train, self.test)


LAYOUTS = {
    "cifar10": (
        Layout("CIFAR-10", False, tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
               ("batches.meta",), "cifar-10-batches-py"),
        Layout("CIFAR-10", True, tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin",
               ("batches.meta.txt",), "cifar-10-batches-bin"),
    ),
    "cifar100": (
        Layout("CIFAR-100", False, ("train",), "test", ("meta",), "cifar-100-python"),
        Layout("CIFAR-100", True, ("train.bin",), "test.bin",
               ("fine_label_names.txt", "coarse_label_names.txt"), "cifar-100-binary"),
    ),
}


def _missing_message(kind: str, root: Path) -> str:
    if kind == "cifar10":
        return (f"expecting the CIFAR-10 python batches data_batch_1..5 and test_batch (or the binary version "
                f"data_batch_1..5.bin and test_batch.bin) in {root}")
    return (f"expecting the CIFAR-100 python files train and test (or the binary version train.bin and "
            f"test.bin) in {root}")


def find_layout(kind: str, root: Path) -> tuple[Layout, Path]:
    """The format present under ``root`` (or under the archive's own directory name inside it)."""
    key = "dataset.training_path"
    if not root.is_dir():
        raise ConfigError(key, f"unable to find the {LAYOUTS[kind][0].title} directory {root}")
    best: tuple[int, Layout, Path] | None = None
    for layout in LAYOUTS[kind]:
        for base in (root, root / layout.archive_dir):
            present = sum((base / name).is_file() for name in layout.required)
            if present == len(layout.required):
                if base != root:
                    log.info("%s: reading the %s files in %s", key, layout.title, base)
                return layout, base
            if present and (best is None or present > best[0]):
                best = (present, layout, base)
    message = _missing_message(kind, root)
    if best is not None:
        _, layout, base = best
        missing = [name for name in layout.required if not (base / name).is_file()]
        message += f" (missing in {base}: {', '.join(missing)})"
    raise ConfigError(key, message)


def _field(batch: dict, name: str, path: Path):
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise UserError(f"{path}: not a CIFAR batch (no {name!r} entry)")


def _check_labels(labels, count: int, n_classes: int, path: Path, what: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != count or (count and array.dtype.kind not in "iu"):
        raise UserError(f"{path}: expecting {count} integer {what}, got {array.dtype} {array.shape}")
    if count and (array.min() < 0 or array.max() >= n_classes):
        raise UserError(f"{path}: {what} outside 0..{n_classes - 1} (found {array.min()}..{array.max()})")
    return array.astype(np.int64)


def _planar_to_nhwc(planar: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(planar.reshape(-1, *IMAGE_SHAPE).transpose(0, 2, 3, 1))


def read_python_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, int64 labels) of one python batch."""
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR batch (expected a dict, got {type(batch).__name__})")
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % IMAGE_BYTES or \
            data.shape[1:] not in ((IMAGE_BYTES,), IMAGE_SHAPE):
        shape = getattr(data, "shape", None)
        raise UserError(f"{path}: expecting 'data' as a uint8 (N, 3072) array, got {type(data).__name__} "
                        f"{getattr(data, 'dtype', '')} {shape}")
    labels = _field(batch, label_key, path)
    for name, array in (("data", data), (label_key, labels)):
        _check_backed(array, name, path)
    labels = _check_labels(labels, data.shape[0], n_classes, path, label_key)
    return _planar_to_nhwc(data), labels


def _check_backed(array, name: str, path: Path) -> None:
    """A pickle may build an array as a view whose zero strides repeat a few bytes as often as it
    likes (285 bytes on disk became 400,000 images and 3 GB): every element must have bytes of its own."""
    if isinstance(array, np.ndarray) and any(stride <= 0 for stride, n in zip(array.strides, array.shape) if n > 1):
        raise UserError(f"{path}: {name!r} repeats its bytes (strides {array.strides}): not a CIFAR array")


def read_binary_batch(path: Path, label_offset: int, label_bytes: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, int64 labels) of one binary batch: records of ``label_bytes`` label
    bytes then 3072 planar pixel bytes; the label used is byte ``label_offset``."""
    record = label_bytes + IMAGE_BYTES
    raw = np.frombuffer(read_batch_bytes(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise UserError(f"{path}: size {raw.size} is not a multiple of the {record}-byte CIFAR record")
    raw = raw.reshape(-1, record)
    labels = _check_labels(raw[:, label_offset], raw.shape[0], n_classes, path, "labels")
    return _planar_to_nhwc(raw[:, label_bytes:]), labels


def _decode_names(values, path: Path, what: str) -> list[str]:
    if not isinstance(values, (list, tuple)):
        raise UserError(f"{path}: expecting a list of {what}")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def read_label_names(layout: Layout, base: Path, label_key: str) -> Optional[list[str]]:
    """The official label names from the archive's meta file, or None when it is absent."""
    coarse = label_key == "coarse_labels"
    if layout.binary:
        path = base / (layout.meta[1] if coarse else layout.meta[0])
        if not path.is_file():
            return None
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise UserError(f"unable to read {path}: {exc.strerror or exc}") from None
        return [line.strip() for line in lines if line.strip()]
    path = base / layout.meta[0]
    if not path.is_file():
        return None
    meta = load_pickle(path)
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not a CIFAR meta file (expected a dict, got {type(meta).__name__})")
    field = "label_names" if layout.title == "CIFAR-10" else ("coarse_label_names" if coarse else "fine_label_names")
    return _decode_names(_field(meta, field, path), path, field)


@dataclass
class CifarData:
    """One CIFAR dataset read into memory."""

    kind: str
    layout: Layout
    directory: Path
    label_key: str            # "labels", "fine_labels" or "coarse_labels"
    official_names: list[str]
    train_images: np.ndarray  # uint8 (N, 32, 32, 3)
    train_labels: np.ndarray
    train_origins: list[tuple[str, int]]
    test_images: np.ndarray
    test_labels: np.ndarray
    test_origins: list[tuple[str, int]]


def _builtin_names(kind: str, label_key: str) -> tuple[str, ...]:
    if kind == "cifar10":
        return CIFAR10_LABEL_NAMES
    return CIFAR100_COARSE_LABEL_NAMES if label_key == "coarse_labels" else CIFAR100_FINE_LABEL_NAMES


def read_cifar(kind: str, root: str | Path, n_classes: int) -> CifarData:
    """Read the training and test batches of ``kind`` ("cifar10"/"cifar100") under ``root``;
    for cifar100 ``n_classes`` (100 or 20) picks fine or coarse labels."""
    if kind == "cifar10":
        label_key = "labels"
    else:
        label_key = {100: "fine_labels", 20: "coarse_labels"}[n_classes]
    layout, base = find_layout(kind, Path(root))

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = base / name
        if not layout.binary:
            return read_python_batch(path, label_key, n_classes)
        if kind == "cifar10":
            return read_binary_batch(path, 0, 1, n_classes)
        return read_binary_batch(path, 1 if label_key == "fine_labels" else 0, 2, n_classes)

    train = [read(name) for name in layout.train]
    test_images, test_labels = read(layout.test)
    names = read_label_names(layout, base, label_key)
    meta_path = base / layout.meta[-1 if label_key == "coarse_labels" else 0]
    if names is None:
        names = list(_builtin_names(kind, label_key))
    elif len(names) != n_classes:
        raise UserError(f"{meta_path}: expecting {n_classes} label names, found {len(names)}")
    else:
        for index, name in enumerate(names):
            problem = class_name_problem(name) or ("is not unique" if names.index(name) < index else None)
            if problem:
                raise UserError(f"{meta_path}: label name {index} {one_line(repr(name), 80)} {problem} "
                                f"({CLASS_NAME_USE}; is this the official file?)")
    return CifarData(
        kind, layout, base, label_key, names,
        np.concatenate([images for images, _ in train]) if len(train) > 1 else train[0][0],
        np.concatenate([labels for _, labels in train]),
        [(str(base / name), len(labels)) for name, (_, labels) in zip(layout.train, train)],
        test_images, test_labels, [(str(base / layout.test), len(test_labels))])


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

def class_count(kind: str, class_names: Optional[Sequence[str]]) -> int:
    """Number of classes: cifar10 → 10; cifar100 → len(class_names) (100 fine, 20 coarse) or 100."""
    if kind == "cifar10":
        if class_names and len(class_names) != 10:
            raise ConfigError("dataset.class_names", f"CIFAR-10 has 10 classes (got {len(class_names)} names)")
        return 10
    if not class_names:
        return 100
    if len(class_names) not in (100, 20):
        raise ConfigError("dataset.class_names",
                          f"CIFAR-100 has 100 fine or 20 coarse classes (got {len(class_names)} names)")
    return len(class_names)


def resolve_class_names(given: Optional[Sequence[str]], official: Sequence[str]) -> list[str]:
    """Names of labels 0..N-1: ``official`` unless ``given``; a permutation of the official names
    is put back in official order."""
    if not given:
        return list(official)
    given = [str(name) for name in given]
    if set(given) == set(official) and given != list(official):
        log.info("dataset.class_names: using the official CIFAR label order %s", ", ".join(official))
        return list(official)
    return given


def _folder_in_label_order(path: str, class_names: list[str], key: str, seed: int):
    """A folder dataset whose labels follow ``class_names`` order (``list_images`` numbers the
    sorted names)."""
    files = list_images(path, class_names, key, seed)
    remap = [class_names.index(name) for name in sorted(class_names)]
    return FileList(files.paths, [remap[label] for label in files.labels], files.root)


def cifar_splits(dataset):
    """:class:`~stmclf.data.files.Splits` for ``dataset.name`` cifar10 / cifar100."""
    kind = dataset.name.lower()
    seed = 123 if dataset.seed is None else dataset.seed
    n_classes = class_count(kind, dataset.class_names)
    if dataset.validation_path:
        log.warning("dataset.validation_path is ignored for %s: the validation set is the official test batch",
                    dataset.name)
    out = Splits(class_names=[])
    if dataset.training_path:
        data = read_cifar(kind, dataset.training_path, n_classes)
        out.class_names = resolve_class_names(dataset.class_names, data.official_names)
        order = np.random.RandomState(seed).permutation(len(data.train_labels))
        out.train = ArraySource(data.train_images, data.train_labels[order], kind, data.train_origins, order)
        out.valid = ArraySource(data.test_images, data.test_labels, kind, data.test_origins)
        out.quantization = out.train
        log.info("%s (%s) in %s: %d training, %d validation images, %d classes (%s)", data.layout.title,
                 "binary" if data.layout.binary else "python", data.directory, len(out.train), len(out.valid),
                 n_classes, data.label_key)
    elif dataset.test_path or dataset.quantization_path:
        label_key = "labels" if kind == "cifar10" else ("coarse_labels" if n_classes == 20 else "fine_labels")
        out.class_names = resolve_class_names(dataset.class_names, _builtin_names(kind, label_key))
    else:
        title = LAYOUTS[kind][0].title
        raise ConfigError("dataset.training_path",
                          f"missing: {dataset.name} reads the official {title} batches from this directory")
    if dataset.test_path:
        out.test = _folder_in_label_order(dataset.test_path, out.class_names, "dataset.test_path", seed)
    if dataset.quantization_path:
        out.quantization = _folder_in_label_order(dataset.quantization_path, out.class_names,
                                                  "dataset.quantization_path", seed)
    return out
