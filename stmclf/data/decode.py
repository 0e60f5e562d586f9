"""Decode image files to uint8 HWC arrays in the configured colour mode.

JPEG, PNG, BMP and GIF (first frame), as TensorFlow's ``decode_image`` reads them: grayscale
gives 1 channel (ITU-R 601 luma), rgb 3 (alpha dropped, grey replicated), rgba 4.

Speed (the loader's first epoch decodes every file): the file is read in one call and PIL
decodes from memory (PIL reading a JPEG from the path in small chunks is slower), and an image
already in the wanted mode is not converted again (no extra copy): ~13% less time per file than
opening the path (224-px JPEG ~250 → ~225 µs, 28-px PNG ~44 → ~38 µs on one core here), same
pixels. torchvision's ``decode_jpeg``/``decode_png`` were measured too: identical pixels on the
files tried (JPEG 4:2:0/4:2:2/4:4:4, progressive, grey, CMYK; 8-bit PNG to RGB) and 1.3× (JPEG) to
1.7× (small PNG) faster than this path, but they are deprecated since torchvision 0.29 (superseded by
TorchCodec) and importing them costs a process about a second, so PIL stays the decoder.
JPEG (baseline or progressive, YCbCr or grey) goes through libjpeg-turbo directly
(:func:`decode_jpeg_fast`, ``simplejpeg``) with TensorFlow's defaults — the fast integer IDCT and
fancy upsampling — so its pixels are TensorFlow's ``decode_jpeg`` pixels exactly (grey included:
the JPEG's own luma), where PIL (ISLOW, = TF's ``dct_method="INTEGER_ACCURATE"``) differs by a
few levels on most pixels; and it is ~2× faster than PIL (224-px JPEG ~440 → ~200 µs on a busy
core). CMYK JPEGs, rgba, and files libjpeg refuses go through PIL. PNG is exact either way; the
loader's plain PNGs (8-bit, no palette) go through libspng (``pyspng``) when it is installed: the
same pixels, ~2.5× faster than PIL on a 28-px file.

Bad files: every failure is one :class:`ImageDecodeError` (a one-line :class:`UserError` whose
``kind`` is the ``stmclf data check`` problem: ``unreadable``, ``empty-file``, ``not-image``,
``bomb``, ``corrupt``), whatever PIL raised (``OSError``, ``SyntaxError``, ``zlib.error``,
``EOFError``, ...), so a loader worker never dies on a file. Decompression bombs are errors, never
PIL's ``DecompressionBombWarning``: an image of more than :func:`max_image_pixels` pixels
(``$STMCLF_MAX_IMAGE_PIXELS``, default 50 MP; ``none`` for no limit) is refused from its header,
before any pixel is decoded.
"""
from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from stmclf.data.resize import resize_image
from stmclf.errors import ConfigError, UserError, one_line, printable_path

if TYPE_CHECKING:
    from stmclf.config.sections import Preprocessing

PIL_MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}


MAX_PIXELS_ENV = "STMCLF_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000
"""Images with more pixels are refused as decompression bombs (an 8-bit RGB image of 50 MP takes
150 MB decoded; PIL's own limit, 89 MP, only warns below 179 MP)."""
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I"})
_BOMB_FILTER = ("error", None, Image.DecompressionBombWarning, None, 0)


class ImageDecodeError(UserError):
    """One file that is not a usable image. ``kind``: ``unreadable`` (the file cannot be read),
    ``empty-file``, ``not-image`` (not an image format PIL knows), ``bomb`` (more pixels than
    :func:`max_image_pixels`), ``corrupt`` (anything failing while decoding); ``reason`` is the
    message without the path."""

    def __init__(self, kind: str, path: str, reason: str) -> None:
        self.kind, self.path, self.reason = kind, path, reason
        super().__init__(f"unable to read image file {printable_path(path)}: {reason}")

    def __reduce__(self):  # crosses process boundaries whole (pool and loader workers)
        return type(self), (self.kind, self.path, self.reason)

    @property
    def content(self) -> bool:
        """True when the file's content is the problem (the same bytes fail again), False when
        reading it failed (permissions, I/O: may pass later)."""
        return self.kind != "unreadable"


_limit: Optional[int] = DEFAULT_MAX_PIXELS


def max_image_pixels() -> Optional[int]:
    """Read the pixel limit now: ``$STMCLF_MAX_IMAGE_PIXELS`` (a positive integer such as
    ``120000000`` or ``1.2e8``; ``none``, ``off`` or ``0`` for no limit), else
    :data:`DEFAULT_MAX_PIXELS`; a wrong value is a one-line :class:`UserError`.

    Decoding uses the value read last: at import (loader workers inherit it), and whenever a data
    module, an image dataset or ``stmclf data check`` starts, which call this (reading the
    environment for every image would cost ~1 µs each)."""
    global _limit
    text = os.environ.get(MAX_PIXELS_ENV)
    cleaned = (text or "").strip().lower().replace("_", "")
    value: Optional[int]
    if not cleaned:
        value = DEFAULT_MAX_PIXELS
    elif cleaned in ("none", "off", "0", "no", "false"):
        value = None
    else:
        try:
            number = float(cleaned)
        except ValueError:
            number = -1.0
        if not number >= 1 or number != int(number) or number > 2**62:
            raise UserError(f"{MAX_PIXELS_ENV}: expecting a number of pixels such as 50000000 (or 'none' for no "
                            f"limit), got {one_line(text, 60)!r}")
        value = int(number)
    _limit = value
    return value


try:
    max_image_pixels()
except UserError:  # reported in one line when a data module or a check starts
    pass


def _pil_allows(limit: Optional[int]) -> None:
    """PIL's own limit (``Image.MAX_IMAGE_PIXELS``, process-wide, 89 MP by default) raised to ours
    when ours is higher, so that the images ours allows open."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and (limit is None or limit > current):
        Image.MAX_IMAGE_PIXELS = limit


def _bomb_warnings_raise() -> None:
    """Make PIL's ``DecompressionBombWarning`` an exception (a process-wide warnings filter, put
    back in front when something reset the filters: a check of ~0.1 µs, where a
    ``catch_warnings`` block per image would cost 5 µs)."""
    if not warnings.filters or warnings.filters[0] != _BOMB_FILTER:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


MAX_IMAGE_FILE_BYTES = 1 << 30
"""An image file larger than this is refused before it is read (a 50 MP 32-bit BMP is 200 MB)."""
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def read_bounded(path: str, limit: int, what: str, error: Callable[[str], Exception]) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; ``error(reason)`` is raised
    for what cannot be read, is not a regular file (a FIFO would block the read forever,
    ``/dev/zero`` never ends) or is larger (``"larger than the N MiB <what> may hold"``). One
    ``fstat`` and, for a file that does not grow, one ``read`` of its size (a buffered
    ``read(limit)`` would allocate the whole limit per file)."""
    too_large = f"larger than the {limit >> 20:,} MiB {what} may hold"
    try:
        fd = os.open(path, _OPEN_FLAGS)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except OSError as exc:
        raise error(one_line(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error("not a regular file (a FIFO, device or socket)")
        if info.st_size > limit:
            raise error(too_large)
        chunks, total, want = [], 0, info.st_size + 1  # + 1: the end of the file is seen in the same read
        while total <= limit:
            chunk = os.read(fd, min(want, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = 1 << 20
    except OSError as exc:
        raise error(one_line(exc)) from None
    finally:
        os.close(fd)
    if total > limit:  # it grew while being read
        raise error(too_large)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_file(path: str) -> bytes:
    """The bytes of the image file ``path`` (:func:`read_bounded`, at most
    :data:`MAX_IMAGE_FILE_BYTES`), or a one-line :class:`ImageDecodeError` (``unreadable``)."""
    return read_bounded(path, MAX_IMAGE_FILE_BYTES, "an image file",
                        lambda reason: ImageDecodeError("unreadable", path, reason))


def decode_image(path: str, color_mode: str = "rgb") -> np.ndarray:
    """Read ``path`` into a uint8 array of shape (H, W, C)."""
    return decode_bytes(read_file(path), color_mode, path)


_READ = object()
PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
"""What is read, as TensorFlow's ``decode_image`` does (PIL's JPEG plugin also opens a camera's
multi-picture MPO JPEG)."""


def _bomb_message(exc: Exception, limit: Optional[int]) -> str:
    """PIL's refusal in our words: its own threshold (2 × ``Image.MAX_IMAGE_PIXELS``) is not ours."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found is None or limit is None:
        return f"decompression bomb: {one_line(exc)}"
    return (f"decompression bomb: {int(found.group(1)):,} pixels, above the limit of {limit:,} "
            f"(${MAX_PIXELS_ENV})")


def other_format(data: bytes) -> Optional[str]:
    """``"<FORMAT> image: only JPEG, PNG, GIF and BMP are read"`` when Pillow knows ``data`` as an
    image format stmclf does not read (header only), else None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"{image.format} image: only JPEG, PNG, GIF and BMP are read"
    except Exception:  # noqa: BLE001 - anything unidentifiable
        return None


def _unsupported(data: bytes, name: str) -> str:
    """Why ``data`` is not read: the format Pillow knows it by, else that it is not an image."""
    return other_format(data) or f"cannot identify image file {name!r}"


def open_image(data: bytes, name: str = "<bytes>", max_pixels=_READ) -> Image.Image:
    """The image in ``data``, opened (header read, pixels not decoded yet), more than
    ``max_pixels`` pixels refused (default: :func:`max_image_pixels`' value; None: no limit); an
    :class:`ImageDecodeError` for anything else."""
    if not data:
        raise ImageDecodeError("empty-file", name, "zero-byte file")
    limit = _limit if max_pixels is _READ else max_pixels
    _pil_allows(limit)
    _bomb_warnings_raise()
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("bomb", name, _bomb_message(exc, limit)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not-image", name, _unsupported(data, name)) from None
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise anything on hostile headers
        raise ImageDecodeError("corrupt", name, one_line(exc, typed=not isinstance(exc, OSError))) from None
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise ImageDecodeError("bomb", name, f"decompression bomb: {width}×{height} = {width * height:,} pixels, "
                                             f"above the limit of {limit:,} (${MAX_PIXELS_ENV})")
    return image


def image_to_array(image: Image.Image, color_mode: str = "rgb", name: str = "<bytes>") -> np.ndarray:
    """Decode an opened image (:func:`open_image`) to uint8 (H, W, C) in ``color_mode``."""
    mode = PIL_MODES[color_mode]
    try:
        image.seek(0)
        if image.mode in _SIXTEEN_BIT:
            image = image.point(lambda v: v / 256).convert("L")
        elif image.mode == "P" and isinstance(image.info.get("transparency"), bytes):
            image = image.convert("RGBA")  # same pixels as P → RGB/L, without PIL's warning about it
        array = np.asarray(image if image.mode == mode else image.convert(mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("bomb", name, f"decompression bomb: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - truncated data: OSError, SyntaxError, zlib.error, EOFError, ...
        raise ImageDecodeError("corrupt", name, one_line(exc, typed=not isinstance(exc, OSError))) from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def _simplejpeg():
    global _SIMPLEJPEG
    if _SIMPLEJPEG is None:
        try:
            import simplejpeg
        except ImportError:  # optional: PIL decodes every JPEG then (slower, TF's ISLOW pixels)
            simplejpeg = False
        _SIMPLEJPEG = simplejpeg
    return _SIMPLEJPEG


_SIMPLEJPEG = None
_JPEG_MAGIC = b"\xff\xd8\xff"
_TURBO_SPACES = {"grayscale": "GRAY", "rgb": "RGB"}
_TURBO_SOURCES = frozenset({"YCbCr", "Gray"})


def decode_jpeg_fast(data: bytes, color_mode: str, name: str = "<bytes>") -> Optional[np.ndarray]:
    """A JPEG decoded as TensorFlow's ``decode_jpeg`` does it, pixel for pixel: libjpeg-turbo
    (``simplejpeg``) with the fast integer IDCT and fancy upsampling, grey taken from the JPEG's
    own luma. ~2× faster than PIL on a 224-px file. None when this path does not apply (not a
    baseline/progressive YCbCr or grey JPEG, rgba wanted, ``simplejpeg`` missing, or libjpeg
    refuses the data): the caller then decodes with PIL, which also names the error."""
    turbo = _simplejpeg()
    space = _TURBO_SPACES.get(color_mode)
    if not turbo or space is None or not data.startswith(_JPEG_MAGIC):
        return None
    try:
        height, width, colorspace, _ = turbo.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in _TURBO_SOURCES:
        return None  # CMYK/YCCK: PIL's conversion, as before
    if _limit is not None and width * height > _limit:
        raise ImageDecodeError("bomb", name, f"decompression bomb: {width}×{height} = {width * height:,} pixels, "
                                             f"above the limit of {_limit:,} (${MAX_PIXELS_ENV})")
    try:
        return turbo.decode_jpeg(data, space, fastdct=True, fastupsample=False)
    except ValueError:  # truncated or corrupt: PIL decodes it again and says what is wrong
        return None


def decode_bytes(data: bytes, color_mode: str = "rgb", name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image held in memory (``name`` is used in error messages)."""
    array = decode_jpeg_fast(data, color_mode, name)
    if array is not None:
        return array
    with open_image(data, name) as image:
        return image_to_array(image, color_mode, name)


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {0: "L", 2: "RGB", 6: "RGBA"}  # 8-bit colour types: no palette, no conversion in PIL
_PNG_PLAIN_CHUNKS = {b"gAMA": 4, b"sRGB": 1, b"pHYs": 9, b"cHRM": 32, b"tIME": 7}  # with their lengths
_GREY_MODES = frozenset({"1", "L", "LA"}) | _SIXTEEN_BIT


def _png_plain_chunks(data: bytes) -> Optional[tuple[str, int, int, list[bytes]]]:
    """``(mode, width, height, IDAT data)`` of a plain PNG (8-bit grey, RGB or RGBA, not interlaced,
    no palette or transparency chunk, only chunks PIL never refuses, every checksum right); None for
    any other file and at the first oddity (truncated data, more pixels than the limit, ...)."""
    if not data.startswith(_PNG_MAGIC):
        return None
    try:
        header = struct.unpack_from(">I4sIIBBBBB", data, 8)
        if header[:2] != (13, b"IHDR"):
            return None
        width, height, depth, colour, compression, filtering, interlace = header[2:]
        mode = _PNG_MODES.get(colour)
        if (mode is None or depth != 8 or compression or filtering or interlace or not width or not height
                or (_limit is not None and width * height > _limit)):
            return None
        idat, pos, previous = [], 8, b""
        while True:
            length, kind = struct.unpack_from(">I4s", data, pos)
            end = pos + 8 + length
            if end + 4 > len(data) or zlib.crc32(data[pos + 4:end]) != struct.unpack_from(">I", data, end)[0]:
                return None
            if kind == b"IEND":
                break
            if kind == b"IDAT":
                if idat and previous != b"IDAT":
                    return None  # IDAT chunks apart: PIL reads the first run only
                idat.append(data[pos + 8:end])
            elif kind != b"IHDR" and _PNG_PLAIN_CHUNKS.get(kind) != length:
                return None
            previous, pos = kind, end + 4
        return (mode, width, height, idat) if idat else None
    except Exception:  # noqa: BLE001 - anything odd: the usual path decides
        return None


def _png_plain(data: bytes) -> Optional[Image.Image]:
    """A plain PNG (:func:`_png_plain_chunks`) decoded by PIL's own PNG decoder (zlib + filters)
    straight from its IDAT data: the same pixels as ``Image.open`` in ~40 % of the time on a 28-px
    file (PIL's chunk handling in Python dominates small files). None for any other file: the
    caller then decodes it the usual way, which also names the error."""
    chunks = _png_plain_chunks(data)
    if chunks is None:
        return None
    mode, width, height, idat = chunks
    try:
        return Image.frombytes(mode, (width, height), b"".join(idat), "zip", mode)
    except Exception:  # noqa: BLE001 - bad zlib data, short rows: the usual path names it
        return None


def _pyspng():
    global _PYSPNG
    if _PYSPNG is None:
        try:
            import pyspng
        except ImportError:  # optional: PIL's decoder then (same pixels, ~2.5× slower on 28-px files)
            pyspng = False
        _PYSPNG = pyspng
    return _PYSPNG


_PYSPNG = None


def _png_plain_pixels(data: bytes) -> Optional[np.ndarray]:
    """A plain PNG's pixels, uint8 (H, W, C) in its own mode (grey, RGB or RGBA): libspng
    (``pyspng``) when installed — the same pixels as PIL (PNG is lossless), ~2.5× faster on a 28-px
    file — else :func:`_png_plain`. None for any other file."""
    spng = _pyspng()
    if not spng:
        image = _png_plain(data)
        if image is None:
            return None
        return np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width, len(image.mode))
    chunks = _png_plain_chunks(data)
    if chunks is None:
        return None
    mode, width, height, _ = chunks
    try:
        array = spng.load(data)
    except Exception:  # noqa: BLE001 - bad zlib data, short rows: the usual path names it
        return None
    if array.dtype != np.uint8 or array.shape[:2] != (height, width):
        return None
    return array.reshape(height, width, len(mode))


def decode_for_resize(data: bytes, color_mode: str = "rgb", name: str = "<bytes>") -> np.ndarray:
    """:func:`decode_bytes` for images that are resized next (the loader): a grey source wanted in
    ``rgb`` comes back with its one channel, the caller resizing it and then replicating it (resizing
    works per channel: the same pixels as decoding to RGB first, with a third of the work); plain
    PNGs take :func:`_png_plain_pixels`. The same pixels and errors as :func:`decode_bytes` otherwise."""
    if data.startswith(_JPEG_MAGIC):
        if color_mode == "rgb" and _simplejpeg():
            try:
                grey = _simplejpeg().decode_jpeg_header(data)[2] == "Gray"
            except ValueError:
                grey = False
            array = decode_jpeg_fast(data, "grayscale", name) if grey else None
            if array is not None:
                return array
        return decode_bytes(data, color_mode, name)
    array = _png_plain_pixels(data)
    if array is not None:
        channels = array.shape[2]
        if channels == CHANNELS[color_mode] or (color_mode == "rgb" and channels == 1):
            return array
        image = Image.fromarray(array[:, :, 0] if channels == 1 else array).convert(PIL_MODES[color_mode])
        return np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width, CHANNELS[color_mode])
    with open_image(data, name) as image:
        grey = color_mode == "rgb" and image.mode in _GREY_MODES
        return image_to_array(image, "grayscale" if grey else color_mode, name)


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
    """Decode and resize one file to a uint8 (H, W, C) array: the loader's decoders
    (:func:`decode_for_resize`), so every command reads and refuses the same files."""
    image = decode_for_resize(read_file(path), fmt.color_mode, path)
    resized = resize_image(image, fmt.height, fmt.width, fmt.interpolation, fmt.aspect_ratio)
    channels = CHANNELS[fmt.color_mode]
    return np.repeat(resized, channels, axis=2) if resized.shape[2] == 1 < channels else resized
