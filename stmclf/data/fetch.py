"""`stmclf data fetch NAME --out DIR`: put a ready-to-train class-folder dataset on disk.

Datasets (``FETCHERS``):

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (offline) -> ``out/0/ .. out/9/``.
- ``flowers``: the tf_flowers archive (download, SHA-256 check, safe extraction) ->
  ``out/daisy/ .. out/tulips/``.
- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` package, a given folder,
  or the official download -> ``out/train/<class>/`` and ``out/test/<class>/``.

Every fetcher is idempotent: a finished fetch leaves a hidden marker file (``MARKER``) listing the
file count of every folder it wrote; a second call finds the folder complete and does nothing
unless ``force=True``. An interrupted fetch leaves no marker, so the next call rewrites it.
Errors the user can act on are :class:`UserError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import inspect
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np

from stmclf.cpus import ProcessMap, available_cpus
from stmclf.errors import UserError, one_line

__all__ = [
    "FETCHERS",
    "ChecksumError",
    "DownloadError",
    "download",
    "extract_tar_safely",
    "fetch_dataset",
    "fetch_digits",
    "fetch_fashion_mnist",
    "fetch_flowers",
    "read_idx",
]

log = logging.getLogger("stmclf.data.fetch")

#: Hidden file written last into a finished dataset folder (class discovery ignores dot files).
MARKER = ".stmclf-fetch.json"

# --- flowers ------------------------------------------------------------------------------
FLOWERS_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
)
# Size and SHA-256 as recorded by tensorflow_datasets
# (tensorflow_datasets/url_checksums/tf_flowers.txt: "flower_photos.tgz 228813984 4c54ace7...")
# and by other independent projects pinning the same archive.
FLOWERS_SIZE = 228_813_984
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWERS_TOP = "flower_photos"
FLOWERS_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
#: Where the archive's LICENSE.txt (CC-BY attributions) is kept: hidden, so it is no class.
FLOWERS_LICENSE = ".flower_photos_LICENSE.txt"

# --- fashion-mnist ------------------------------------------------------------------------
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# MD5s of the official downloads (Fashion-MNIST README). Debian's copies are re-compressed
# (same IDX content, other gzip header), so these only apply to downloads.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: Label index -> folder-safe class name.
FASHION_MNIST_CLASSES = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)

DIGITS_CLASSES = tuple(str(d) for d in range(10))

_CHUNK = 1 << 20
_POOL_MIN_IMAGES = 4000  # below this, writing in-process beats starting worker processes
_MIN_CHUNK = 500  # images per worker task, at least


class DownloadError(UserError):
    """A URL could not be fetched (network, HTTP status, truncated transfer)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"could not download {url} ({reason})")


class ChecksumError(UserError):
    """A downloaded or given file does not have the expected size or digest."""


_ALGO_NAMES = {"sha256": "SHA-256", "md5": "MD5"}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return one_line(f"HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, OSError) and reason.strerror:
            return one_line(reason.strerror)
        return one_line(reason) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror)
    return one_line(exc)


# ------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(nbytes)`` callable; a rich progress bar when stderr is a terminal."""
    if enabled and sys.stderr.isatty():
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
        except ImportError:
            pass
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task(label, total=total)
                yield lambda n: bar.advance(task, n)
            return
    yield lambda n: None


def _digests(path: Path, algorithms: Sequence[str]) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    want = {}
    if sha256:
        want["sha256"] = sha256.strip().lower()
    if md5:
        want["md5"] = md5.strip().lower()
    return want


def verify_file(path: Path, *, sha256: str | None = None, md5: str | None = None,
                size: int | None = None, label: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the given size and digests."""
    path = Path(path)
    label = label or str(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{label}: size mismatch (expected {size} bytes, got {actual_size})")
    want = _expected(sha256, md5)
    got = _digests(path, list(want))
    for algo, value in want.items():
        if got[algo] != value:
            raise ChecksumError(
                f"{label}: {_ALGO_NAMES[algo]} mismatch (expected {value}, got {got[algo]})")


def download(url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None,
             timeout: float = 30, size: int | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Streams to ``<dest>.part`` next to ``dest`` (name plus ``.part``: ``x.tgz`` -> ``x.tgz.part``),
    checks the byte count (``Content-Length`` and ``size``) and the digests, then
    ``os.replace``s it into place; on any failure the partial file is deleted. If ``dest``
    already exists and matches the given digests, nothing is downloaded. ``timeout`` applies to
    each socket operation. Raises :class:`DownloadError` (network/HTTP, one line, with URL and
    reason) or :class:`ChecksumError`; both are :class:`UserError`.
    """
    dest = Path(dest)
    want = _expected(sha256, md5)
    if want and dest.is_file():
        try:
            verify_file(dest, sha256=sha256, md5=md5, size=size)
        except ChecksumError:
            pass
        else:
            log.info("%s: already downloaded and verified", dest)
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hashers = {a: hashlib.new(a) for a in want}
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "stmclf"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            with open(part, "wb") as f, _progress(dest.name, total or size, progress) as advance:
                while chunk := response.read(_CHUNK):
                    try:
                        f.write(chunk)
                    except OSError as exc:
                        raise UserError(f"could not write {part} ({_reason(exc)})") from None
                    for h in hashers.values():
                        h.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
        if total is not None and received != total:
            raise DownloadError(url, f"connection closed after {received} of {total} bytes")
    except UserError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(url, _reason(exc)) from None
    except BaseException:  # KeyboardInterrupt: leave no .part behind
        part.unlink(missing_ok=True)
        raise
    if size is not None and received != size:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: size mismatch (expected {size} bytes, got {received}); "
                            "the download was deleted")
    for algo, value in want.items():
        got = hashers[algo].hexdigest()
        if got != value:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: {_ALGO_NAMES[algo]} mismatch (expected {value}, "
                                f"got {got}); the download was deleted")
    os.replace(part, dest)
    log.info("downloaded %s (%d bytes) to %s", url, received, dest)
    return dest


# ------------------------------------------------------------------------------------------
# output folder bookkeeping (idempotency)
# ------------------------------------------------------------------------------------------


def _resolve_out(name: str, out: Path | str) -> Path:
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    if out.exists() and not out.is_dir():
        raise UserError(f"{name}: {out} exists and is not a folder")
    return out


def _check_out(name: str, out: Path, known: Sequence[str]) -> None:
    """Refuse an output folder holding anything that a fetch of ``name`` would not write."""
    if not out.is_dir():
        return
    allowed = set(known)
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in allowed and not p.name.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(f"{name}: {out} already holds other files or folders ({shown}); "
                        "choose an empty or new folder")


def _count_files(folder: Path) -> int | None:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if e.is_file(follow_symlinks=False))
    except OSError:
        return None


def _is_complete(out: Path, name: str, options: dict) -> bool:
    try:
        meta = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("dataset") != name:
        return False
    if meta.get("options") != options:
        return False
    counts = meta.get("counts")
    if not isinstance(counts, dict) or not counts:
        return False
    return all(_count_files(out / rel) == n for rel, n in counts.items())


def _clear(out: Path, known: Sequence[str]) -> None:
    """Remove what an earlier (partial or forced) fetch wrote; nothing else."""
    (out / MARKER).unlink(missing_ok=True)
    for entry in known:
        p = out / entry
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


def _write_marker(out: Path, name: str, options: dict, counts: dict[str, int]) -> None:
    meta = {"dataset": name, "options": options, "counts": counts}
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / MARKER)


def _already_done(name: str, out: Path, options: dict, force: bool) -> bool:
    if not force and _is_complete(out, name, options):
        log.info("%s: %s is already complete (--force rewrites it)", name, out)
        return True
    return False


# ------------------------------------------------------------------------------------------
# PNG writing
# ------------------------------------------------------------------------------------------


def _write_pngs(job: tuple[np.ndarray, list[str]]) -> int:
    """Write grayscale uint8 images (N, H, W) to the given paths (worker entry point)."""
    from PIL import Image

    images, paths = job
    for image, path in zip(images, paths):
        Image.fromarray(image).save(path, format="PNG", compress_level=1)
    return len(paths)


def _default_workers() -> int:
    return min(available_cpus(), 16)


def _write_all(images: np.ndarray, paths: list[str], workers: int | None) -> int:
    """Write ``images[i]`` to ``paths[i]``; returns the number of processes used."""
    n = len(paths)
    workers = _default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, math.ceil(n / _MIN_CHUNK))
    if workers <= 1 or n < _POOL_MIN_IMAGES:
        _write_pngs((images, paths))
        return 1
    chunk = max(_MIN_CHUNK, math.ceil(n / (workers * 4)))
    jobs = [(np.ascontiguousarray(images[i:i + chunk]), paths[i:i + chunk])
            for i in range(0, n, chunk)]
    # fork where it exists (as torch's DataLoader does on Linux): the workers only run Pillow,
    # and unlike spawn it does not re-import the caller's __main__ (scripts without a
    # `if __name__ == "__main__"` guard, code piped to python)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    writing = ProcessMap(_write_pngs, [(job,) for job in jobs], workers=workers, context=context,
                         label="data fetch", instead="writing the PNGs", log=log)
    written = sum(writing)
    if written != n:  # pragma: no cover - defensive
        raise RuntimeError(f"wrote {written} of {n} images")
    return writing.processes


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------


def fetch_digits(out: Path, *, force: bool = False) -> Path:
    """scikit-learn's 1,797 8x8 digits as PNGs ``out/<digit>/digit_<index>.png`` (offline).

    Pixel values 0..16 are scaled to 0..255 (``rint(v * 255 / 16)``); ``<index>`` is the
    sample's index in ``sklearn.datasets.load_digits()``.
    """
    name = "digits"
    out = _resolve_out(name, out)
    _check_out(name, out, DIGITS_CLASSES)
    options: dict = {}
    if _already_done(name, out, options, force):
        return out
    from sklearn.datasets import load_digits

    start = time.perf_counter()
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = np.clip(images, 0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    _clear(out, DIGITS_CLASSES)
    for cls in DIGITS_CLASSES:
        (out / cls).mkdir(parents=True, exist_ok=True)
    paths = [str(out / str(int(label)) / f"digit_{i:05d}.png") for i, label in enumerate(labels)]
    _write_all(images, paths, workers=1)
    counts = {cls: int(c) for cls, c in zip(DIGITS_CLASSES, np.bincount(labels, minlength=10))}
    _write_marker(out, name, options, counts)
    log.info("digits: %d images (%dx%d, grayscale) in 10 classes written to %s in %.1f s",
             len(labels), images.shape[1], images.shape[2], out, time.perf_counter() - start)
    return out


# ------------------------------------------------------------------------------------------
# flowers
# ------------------------------------------------------------------------------------------


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not be extracted, or None. Stricter than ``filter="data"``."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (
            len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "has a '..' component"
    if member.issym() or member.islnk():
        # a photo archive needs no links at all; refusing every link also covers links that
        # point outside the target
        kind = "symbolic" if member.issym() else "hard"
        return f"is a {kind} link (to {member.linkname!r})"
    if not (member.isreg() or member.isdir()):
        return "is a device, FIFO or other special file"
    return None


def extract_tar_safely(archive: Path, dest: Path, *, label: str = "archive") -> list[str]:
    """Extract ``archive`` (tar, optionally gz/bz2/xz) into the existing folder ``dest``.

    Each member is checked before it is written: absolute paths, ``..`` components, links and
    special files raise :class:`UserError` naming the member; extraction itself also uses
    ``tarfile``'s ``"data"`` filter. On error, members extracted so far stay in ``dest``: pass a
    scratch folder and delete it. Returns the member names (``./`` prefixes removed).
    """
    archive = Path(archive)
    names: list[str] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                problem = _member_problem(member)
                if problem:
                    raise UserError(f"{label}: refusing to extract {archive.name}: "
                                    f"member {member.name!r} {problem}")
                tar.extract(member, dest, filter="data")
                names.append(member.name[2:] if member.name.startswith("./") else member.name)
    except tarfile.FilterError as exc:
        raise UserError(f"{label}: refusing to extract {archive.name}: {one_line(exc)}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(
            f"{label}: cannot extract {archive} ({_reason(exc)})") from None
    return names


def fetch_flowers(out: Path, *, force: bool = False, url: str = FLOWERS_URL,
                  sha256: str | None = FLOWERS_SHA256, size: int | None = FLOWERS_SIZE,
                  archive: Path | None = None, timeout: float = 30,
                  classes: Sequence[str] = FLOWERS_CLASSES) -> Path:
    """The tf_flowers photos as ``out/<class>/*.jpg`` (3,670 JPEGs, 5 classes).

    Downloads ``url`` to a temporary file in ``out``'s parent (or uses a local ``archive``),
    verifies ``size`` and ``sha256`` (None skips a check), extracts it safely into a scratch
    folder there, and moves the class folders of ``flower_photos/`` into ``out``. The archive's
    LICENSE.txt (photo credits, CC-BY) is kept as ``out/.flower_photos_LICENSE.txt``.
    """
    name = "flowers"
    out = _resolve_out(name, out)
    known = (*classes, FLOWERS_LICENSE)
    _check_out(name, out, known)
    options = {"sha256": sha256.lower() if sha256 else None}
    if _already_done(name, out, options, force):
        return out
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    downloaded: Path | None = None
    scratch: Path | None = None
    try:
        if archive is not None:
            archive = Path(archive).expanduser()
            if not archive.is_file():
                raise UserError(f"{name}: archive {archive} does not exist")
            verify_file(archive, sha256=sha256, size=size, label=f"{name}: {archive}")
        else:
            downloaded = out.parent / f".{out.name}.flower_photos.tgz"
            try:
                archive = download(url, downloaded, sha256=sha256, size=size, timeout=timeout)
            except DownloadError as exc:
                raise UserError(
                    f"{name}: could not download {exc.url} ({exc.reason}); download it elsewhere "
                    f"and extract it to {out} (class folders directly in it)") from None
            except ChecksumError as exc:
                raise UserError(f"{name}: {exc}") from None
        if not sha256:
            log.warning("%s: no SHA-256 given; checking the archive's structure only", name)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.extract-", dir=out.parent))
        extract_tar_safely(archive, scratch, label=name)
        top = scratch / FLOWERS_TOP
        if not top.is_dir():
            raise UserError(f"{name}: {archive.name} has no top folder {FLOWERS_TOP}/")
        found = sorted(p.name for p in top.iterdir() if p.is_dir())
        missing = [c for c in classes if c not in found]
        if missing:
            raise UserError(f"{name}: {archive.name} lacks the class folder(s) "
                            f"{', '.join(missing)} (found: {', '.join(found) or 'none'})")
        counts = {c: _count_files(top / c) or 0 for c in classes}
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            raise UserError(f"{name}: {archive.name} has empty class folder(s) {', '.join(empty)}")
        ignored = sorted(set(p.name for p in top.iterdir()) - set(classes) - {"LICENSE.txt"})
        if ignored:
            log.warning("%s: ignored archive entries %s", name, ", ".join(ignored))
        _clear(out, known)
        out.mkdir(parents=True, exist_ok=True)
        for c in classes:
            os.replace(top / c, out / c)
        if (top / "LICENSE.txt").is_file():
            os.replace(top / "LICENSE.txt", out / FLOWERS_LICENSE)
        _write_marker(out, name, options, counts)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
            downloaded.with_name(downloaded.name + ".part").unlink(missing_ok=True)
    log.info("flowers: %d photos in %d classes (%s) written to %s in %.1f s",
             sum(counts.values()), len(counts),
             ", ".join(f"{c} {n}" for c, n in counts.items()), out, time.perf_counter() - start)
    return out


# ------------------------------------------------------------------------------------------
# fashion-mnist
# ------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


MAX_IDX_BYTES = 1 << 30
"""An IDX file whose header declares more data than this is refused before its data is read
(Fashion-MNIST's training images are 47 MB; a 1 MB gzip file can inflate to 1 GB)."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into an array of its declared shape and type.

    Raises :class:`UserError` naming the file when it cannot be read, its magic number is not
    an IDX magic, its header declares more than :data:`MAX_IDX_BYTES`, or its size does not
    match the dimensions in its header. Reads the header, then at most the declared size and one
    byte: a compressed file inflating past what its header says is never inflated whole.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise UserError(f"{path}: not an IDX file (only {len(head)} bytes)")
            magic = int.from_bytes(head, "big")
            dtype = _IDX_DTYPES.get(head[2])
            ndim = head[3]
            if head[0] != 0 or head[1] != 0 or dtype is None or ndim == 0:
                raise UserError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
            shape = f.read(4 * ndim)
            if len(shape) < 4 * ndim:
                raise UserError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(shape, dtype=">u4"))
            expected = math.prod(dims) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise UserError(f"{path}: IDX header declares {'x'.join(map(str, dims))} items ({expected:,} bytes), "
                                f"more than the {MAX_IDX_BYTES >> 20:,} MiB an IDX file may hold")
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot read IDX file ({_reason(exc)})") from None
    if len(data) != expected:
        held = f"{len(data)} bytes" if len(data) <= expected else "more"
        raise UserError(f"{path}: IDX header declares {'x'.join(map(str, dims))} items "
                        f"({expected} bytes) but the file holds {held}")
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise UserError(f"{images_path}: expected an IDX image file (magic 0x00000803: uint8, "
                        f"N x rows x cols), got {images.dtype} with {images.ndim} dimension(s)")
    labels = read_idx(labels_path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise UserError(f"{labels_path}: expected an IDX label file (magic 0x00000801: uint8, N),"
                        f" got {labels.dtype} with {labels.ndim} dimension(s)")
    if len(images) != len(labels):
        raise UserError(f"{labels_path}: {len(labels)} labels for {len(images)} images "
                        f"in {images_path.name}")
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    return images, labels


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (``name.gz`` or uncompressed ``name``), else None."""
    found = {}
    for names in FASHION_MNIST_FILES.values():
        for gz_name in names:
            for candidate in (folder / gz_name, folder / gz_name.removesuffix(".gz")):
                if candidate.is_file():
                    found[gz_name] = candidate
                    break
            else:
                return None
    return found


def fetch_fashion_mnist(out: Path, *, force: bool = False, source: Path | None = None,
                        max_per_split: int | None = None, workers: int | None = None,
                        url: str = FASHION_MNIST_URL, timeout: float = 30) -> Path:
    """Fashion-MNIST as PNGs ``out/{train,test}/<class>/{split}_<index>.png``.

    IDX files come from ``source`` if given, else from Debian's package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist/``), else are downloaded from ``url`` (MD5-checked) to a
    temporary folder next to ``out``. ``max_per_split`` keeps only the first N images of each
    split (a quick subset); ``<index>`` is the image's index in its IDX file. PNGs are written
    by ``workers`` processes (default: the usable CPUs, at most 16).
    """
    name = "fashion-mnist"
    out = _resolve_out(name, out)
    known = tuple(FASHION_MNIST_FILES)
    _check_out(name, out, known)
    if max_per_split is not None:
        try:
            limit = int(max_per_split)
        except (TypeError, ValueError):
            limit = 0
        if isinstance(max_per_split, bool) or limit < 1:
            raise UserError(
                f"{name}: max_per_split must be a positive integer, got {max_per_split!r}")
        max_per_split = limit
    options = {"max_per_split": max_per_split}
    if _already_done(name, out, options, force):
        return out
    start = time.perf_counter()
    scratch: Path | None = None
    try:
        if source is not None:
            source = Path(source).expanduser()
            files = _find_idx_files(source)
            if files is None:
                wanted = ", ".join(n for pair in FASHION_MNIST_FILES.values() for n in pair)
                raise UserError(f"{name}: {source} does not hold the IDX files ({wanted})")
            origin = str(source)
        elif (files := _find_idx_files(FASHION_MNIST_DEBIAN_DIR)) is not None:
            origin = f"{FASHION_MNIST_DEBIAN_DIR} (Debian package dataset-fashion-mnist)"
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.download-", dir=out.parent))
            files = {}
            base = url if url.endswith("/") else url + "/"
            for file_name, md5 in FASHION_MNIST_MD5.items():
                try:
                    files[file_name] = download(base + file_name, scratch / file_name, md5=md5,
                                                timeout=timeout)
                except DownloadError as exc:
                    raise UserError(
                        f"{name}: no IDX files in {FASHION_MNIST_DEBIAN_DIR} (apt-get install "
                        f"dataset-fashion-mnist) and could not download {exc.url} ({exc.reason})"
                    ) from None
                except ChecksumError as exc:
                    raise UserError(f"{name}: {exc}") from None
            origin = base
        splits = {split: _load_split(files[img], files[lab])
                  for split, (img, lab) in FASHION_MNIST_FILES.items()}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    read_s = time.perf_counter() - start

    _clear(out, known)
    all_images, all_paths, counts = [], [], {}
    for split, (images, labels) in splits.items():
        if max_per_split is not None:
            images, labels = images[:max_per_split], labels[:max_per_split]
        per_class = np.bincount(labels, minlength=len(FASHION_MNIST_CLASSES))
        for cls, n in zip(FASHION_MNIST_CLASSES, per_class):
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            counts[f"{split}/{cls}"] = int(n)
        all_images.append(images)
        all_paths += [str(out / split / FASHION_MNIST_CLASSES[label] / f"{split}_{i:05d}.png")
                      for i, label in enumerate(labels.tolist())]
    write_start = time.perf_counter()
    used = _write_all(np.concatenate(all_images), all_paths, workers)
    write_s = time.perf_counter() - write_start
    _write_marker(out, name, options, counts)
    sizes = ", ".join(
        f"{split} {sum(n for k, n in counts.items() if k.startswith(split + '/'))}"
        for split in FASHION_MNIST_FILES)
    log.info("fashion-mnist: %d images (%s) in 10 classes written to %s in %.1f s "
             "(read %.1f s, PNG %.1f s with %d process%s); source: %s",
             len(all_paths), sizes, out, time.perf_counter() - start, read_s, write_s, used,
             "" if used == 1 else "es", origin)
    return out


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------

FETCHERS: dict[str, Callable[..., Path]] = {
    "digits": fetch_digits,
    "flowers": fetch_flowers,
    "fashion-mnist": fetch_fashion_mnist,
}


def fetch_dataset(name: str, out: Path, *, force: bool = False, **options) -> Path:
    """Fetch dataset ``name`` into ``out`` and return the dataset root.

    ``options`` go to the fetcher (e.g. ``source=``/``max_per_split=`` for fashion-mnist,
    ``archive=`` for flowers); an unknown name or option is a :class:`UserError`.
    """
    fetcher = FETCHERS.get(name)
    if fetcher is None:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(FETCHERS)}")
    accepted = [p for p in inspect.signature(fetcher).parameters if p not in ("out", "force")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"{name}: unknown option(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(accepted) or 'none'}")
    return fetcher(out, force=force, **options)
