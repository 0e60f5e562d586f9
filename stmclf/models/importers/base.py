"""What every importer returns (:class:`ImportedModel`), file sniffing and one-line errors."""
from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stmclf.errors import ConfigError, UserError, is_allocation_failure, one_line
from stmclf.models.graph import KerasGraph

KINDS = ("keras_h5", "onnx", "torchscript", "torch_export", "pickled_module")
"""The model file kinds :func:`~stmclf.models.importers.load_model_file` reads."""
SUPPORTED_TEXT = ("a Keras .h5 model (tf_keras / Keras 2 model.save), a float ONNX model, a TorchScript file "
                  "(torch.jit.save), a torch.export program (torch.export.save, .pt2) or a pickled torch "
                  "nn.Module (torch.save(model), with --trust-model-file)")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
MAX_RECORD_BYTES = 64 * 2**20
"""A zip record may inflate past this only at a compression ratio of at most :data:`MAX_RATIO`."""
MAX_RATIO = 100


def resave_hint(path: Path | str) -> str:
    """What to do with a Keras 3 ``.keras`` archive (stmclf reads Keras ``.h5`` files), else ''."""
    if Path(path).suffix.lower() != ".keras":
        return ""
    return (' (a Keras .keras archive: stmclf reads Keras .h5 files; re-save the model as .h5 with '
            'model.save("model.h5"))')


def first_line(exc: BaseException) -> str:
    """``ValueError: first line of the message`` (:func:`stmclf.errors.one_line`, typed)."""
    return one_line(exc, typed=True)


def file_error(key: str, path: Path | str, message: str) -> UserError:
    """A one-line :class:`ConfigError` ``key: path: message``."""
    return ConfigError(key, f"{path}: {one_line(message, whole=True)}")


@contextmanager
def named_allocation_failure(key: str, path: Path | str | None) -> Iterator[None]:
    """The allocator's failure inside (a file describing a model too big for the memory) is the
    file's: a one-line :func:`file_error` under ``key`` naming ``path`` (None: left as it is), as
    the .h5 importer reports a malformed file."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if path is None or not is_allocation_failure(exc):
            raise
        raise file_error(key, path, f"not enough memory to build its model ({first_line(exc)})") from None


@dataclass
class ImportedModel:
    """A model read from a file, ready to train on logits.

    ``graph`` is a :class:`KerasGraph` (Keras files: one layer per Keras layer, the same names and
    order) or a :class:`~stmclf.models.custom.ModuleGraph` (ONNX: one layer per ONNX node that
    computes something; torch files: the module's top-level children). Its ``forward`` maps NCHW
    float images (already rescaled as the model expects) to ``(batch, num_outputs)`` logits.

    Layer indices: ``graph`` always has an InputLayer at index 0. Keras ``Sequential`` models have
    none in their ``model.layers``, so the reference's index ``i`` (``frozen_layers``) is graph index
    ``i + layer_index_offset`` (offset 1 for Sequential files, 0 otherwise); use
    :meth:`frozen_graph_indices` / :meth:`apply_frozen_layers`, which apply it.
    """

    graph: KerasGraph
    input_shape: tuple[int, int, int]
    num_outputs: int
    has_dropout: bool
    dropout_rate: float | None
    kind: str
    output_is_softmax: bool
    path: Path
    name: str = ""
    layer_index_offset: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    """Free-form metadata of the file (ONNX ``metadata_props``, e.g. stmclf's ``stmclf.*`` keys)."""
    notes: list[str] = field(default_factory=list)
    """One-line remarks for the log (what was changed while importing: final softmax removed, ...)."""
    _set_dropout: Callable[[float], None] | None = field(default=None, repr=False)

    @property
    def num_layers(self) -> int:
        """``len(model.layers)`` in the reference's sense (Sequential: without the InputLayer)."""
        return self.graph.num_layers - self.layer_index_offset

    def frozen_graph_indices(self, spec: Any) -> list[int]:
        """Graph layer indices selected by a ``training.frozen_layers`` value, read as the reference
        reads it for this model (``model.layers`` indices)."""
        from stmclf.models.frozen import frozen_indices

        return [i + self.layer_index_offset for i in frozen_indices(spec, self.num_layers)]

    def apply_frozen_layers(self, spec: Any) -> list[int]:
        """Make every layer trainable, then freeze the layers ``spec`` selects; returns the graph
        indices frozen."""
        indices = self.frozen_graph_indices(spec)
        self.graph.set_frozen(indices)
        return indices

    def set_dropout_rate(self, rate: float) -> None:
        """Set the rate of every dropout layer (the reference's dropout rule; see
        :func:`check_dropout`)."""
        if not self.has_dropout:
            raise UserError(f"{self.path}: the model has no dropout layer")
        if self._set_dropout is None:
            raise UserError(f"{self.path}: the dropout rate of a {self.kind} model cannot be changed")
        self._set_dropout(float(rate))
        self.dropout_rate = float(rate)

    def check_dropout(self, rate: float | None, key: str = "training.dropout") -> None:
        """The reference's dropout rule for a model file: a model with dropout needs
        ``training.dropout`` (which then sets every dropout rate), a model without refuses it."""
        if self.has_dropout and not rate:
            raise ConfigError(key, f"the model {self.path} includes a dropout layer: set training.dropout "
                                   "(its rate for every dropout layer)")
        if rate and not self.has_dropout:
            raise ConfigError(key, f"unable to set the dropout rate: the model {self.path} does not include "
                                   "a dropout layer")
        if rate:
            if not 0.0 < float(rate) < 1.0:
                raise ConfigError(key, f"expected a rate between 0 and 1, got {rate!r}")
            self.set_dropout_rate(float(rate))

    def describe(self) -> str:
        """One line for the log."""
        h, w, c = self.input_shape
        text = (f"{self.kind} model {self.name or self.graph.name} from {self.path}: input ({h}, {w}, {c}), "
                f"{self.num_outputs} outputs, {self.num_layers} layers")
        return text + "".join(f"; {note}" for note in self.notes)


# ---------------------------------------------------------------------------------------------
# Sniffing.

def detect_kind(path: Path) -> str:
    """The kind of a model file from its content: one of :data:`KINDS`, ``"stmclf_checkpoint"``
    (a stmclf ``.ckpt`` / ``best_model.pt``), ``"state_dict"`` (tensors only, no model),
    or ``"unknown"``. Never unpickles code."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(HDF5_SIGNATURE):
        return "keras_h5"
    if head.startswith(ZIP_SIGNATURE):
        return _zip_kind(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # a pickle (protocol 2-5)
        return _pickle_kind(path)
    if head[:1] == b"\x08" or path.suffix.lower() == ".onnx":  # ModelProto field 1 (ir_version), a varint
        return "onnx" if _is_onnx(path) else "unknown"
    return "unknown"


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    inner = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "constants.pkl" in inner and any(name.startswith("code/") for name in inner):
        return "torchscript"
    if "archive_format" in inner or any(name.startswith("models/") and name.endswith(".json") for name in inner):
        return "torch_export"
    if "data.pkl" in inner:
        return _pickle_kind(path)
    return "unknown"


PICKLED_CODE = "a pickled torch model: loading it runs code from the file"


class PickledCode(ValueError):
    """A file the weights-only unpickler refuses: its pickle names classes or functions (code)."""


def zip_problem(path: Path | str) -> str | None:
    """What is wrong with the zip archive ``path`` (a torch file), in one line, or None.

    First the sizes its directory declares, before anything is inflated: a record that inflates past
    :data:`MAX_RECORD_BYTES` at more than :data:`MAX_RATIO`:1, or records that inflate past the
    memory available (a zip bomb). PyTorch's reader allocates exactly the declared sizes (and reads
    no more), so they bound it. Then every record is read once against its CRC-32: PyTorch's reader
    checks none, so a damaged download would otherwise load as wrong weights, or fail deep inside
    torch."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            total = 0
            for info in infos:
                total += info.file_size
                if info.file_size > MAX_RECORD_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                    return (f"its record {info.filename!r} inflates from {info.compress_size:,} to "
                            f"{info.file_size:,} bytes (a zip bomb?); records over {MAX_RECORD_BYTES // 2**20} MiB "
                            f"may be compressed at most {MAX_RATIO}:1")
            from stmclf.config.rules import available_memory

            if total > max(available_memory(), 100 * os.path.getsize(path)):
                return (f"its records inflate to {total:,} bytes, more than the "
                        f"{available_memory() / 2**30:,.1f} GiB of memory available")
            for info in infos:
                try:
                    with archive.open(info) as record:  # bounded by the declared size, checked above
                        while record.read(2**20):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    return f"its record {info.filename!r} is damaged ({one_line(exc)}); save or download it again"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"not a readable zip archive ({one_line(exc)})"
    return None


def load_weights_only(path: Path | str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warnings (an unexpected
    pickle protocol, ...). A failure is a ValueError with a one-line reason: :class:`PickledCode`
    (:data:`PICKLED_CODE`) for a pickle that names code, without torch's advice to load it with
    ``weights_only=False`` (the wrong advice in front of a hostile file); a zip archive (torch's
    default format) is checked first (:func:`zip_problem`)."""
    if is_zip(path):
        problem = zip_problem(path)
        if problem:
            raise ValueError(problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure: the file is not what the caller reads
        if "weights only load failed" in str(exc).lower():
            raise PickledCode(PICKLED_CODE) from None
        raise ValueError(one_line(exc)) from None


def is_zip(path: Path | str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZIP_SIGNATURE
    except OSError:
        return False


def _pickle_kind(path: Path) -> str:
    """Tell a torch.save'd model (needs code) from plain weights, with the weights-only unpickler."""
    try:
        obj = load_weights_only(path)
    except PickledCode:
        return "pickled_module"
    except ValueError:
        return "unknown"
    if isinstance(obj, dict) and "hyper_parameters" in obj and "state_dict" in obj:
        return "stmclf_checkpoint"
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return "state_dict"
    return "unknown"


def _is_onnx(path: Path) -> bool:
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a protobuf ModelProto
        return False
    return bool(model.graph.node) and bool(model.opset_import)


# ---------------------------------------------------------------------------------------------
# Shared checks of torch modules.

def _mapped_bytes() -> int:
    """The process's address space now (Linux ``VmSize``)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


@contextmanager
def within_available_memory() -> Iterator[None]:
    """Inside, an allocation beyond the memory available fails (``MemoryError``, torch's "can't
    allocate memory") instead of the kernel's OOM killer ending the process without a word: the
    address space is capped at what the process maps now plus the available memory, and restored
    after. For running a model file's own code, whose memory no estimate can know (a torch file
    at an input size the config gives). Linux only; an existing lower cap is kept."""
    limit = None
    try:
        import resource

        from stmclf.config.rules import available_memory

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _mapped_bytes() + available_memory()
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft != resource.RLIM_INFINITY and soft <= limit:
            limit = None
    except (ImportError, OSError, ValueError):
        limit = None
    if limit is None:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def probe_outputs(module: nn.Module, input_shape: tuple[int, int, int], batch: int = 4) -> Tensor:
    """Outputs of ``module`` (eval mode, no grad) for a seeded batch of normal images, run
    :func:`within_available_memory`."""
    h, w, c = input_shape
    was_training = module.training
    module.eval()
    try:
        with within_available_memory(), torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(batch, c, h, w, generator=generator)
            param = next(module.parameters(), None)
            if param is not None:
                x = x.to(device=param.device, dtype=param.dtype if param.is_floating_point() else torch.float32)
            out = module(x)
    finally:
        module.train(was_training)
    return out


def looks_like_probabilities(out: Tensor) -> bool:
    """Rows of non-negative values summing to 1 (a softmax output), for 2+ outputs."""
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 2 or not out.is_floating_point():
        return False
    out = out.detach().float()
    return bool((out >= 0).all() and (out <= 1).all() and torch.allclose(out.sum(1), torch.ones(len(out)),
                                                                         atol=1e-4))


def require_model_file(path: "str | Path", key: str) -> Path:
    """``path`` (``~`` expanded) when it names a regular file, else a one-line error under ``key``:
    missing, or something that is no file to read (a folder, a FIFO, a device)."""
    from stmclf.errors import ConfigError

    file = Path(path).expanduser()
    if file.is_file():
        return file
    if file.exists():
        raise ConfigError(key, f"{path} is not a regular file (a folder, FIFO or device): expecting a model file")
    raise ConfigError(key, f"unable to find the model file {path}")

