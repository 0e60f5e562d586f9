"""``model_file``: a user's model file (Keras .h5, ONNX, TorchScript, torch.export, pickled module)
as a registry entry, so that checkpoints of runs started from ``general.model_path`` rebuild it
(the file is read again, then the checkpoint's weights are loaded on top).

A trained run does not depend on the source file: every checkpoint of a model built from a model
file (``*.ckpt``, ``best_model.pt``) also stores a copy of the file's bytes under
:data:`SOURCE_KEY` (a uint8 tensor, read with the weights-only unpickler like the rest) and its
SHA-256 in the spec (``sha256``). When the spec's path is missing, or its content is no longer the
one the run trained from, the architecture is rebuilt from that copy (:func:`remember_source`
makes a checkpoint's copy known when the checkpoint is read). The copy is loaded by the same
importers as the file, under the same rule: a pickled module still loads only with
``--trust-model-file``; its errors name it as ``the copy of NAME stored in CHECKPOINT``, and a copy
whose bytes no longer have the SHA-256 it was stored for is reported as damaged. Checkpoints
written before this (no ``sha256``, no copy) read the path as before.

Errors about the model file name the option or config key the user gave it under: whoever builds
a model inside :func:`model_file_given` (``--model``, ``--ckpt``, ``--run``, ``general.model_path``,
``training.resume_training_from``, …, and the checkpoint the model comes from); a ``training.model``
spec of a config (``name: model_file``) is ``training.model.path``.

A pickled model file loads only with ``--trust-model-file`` on the command line
(:func:`stmclf.trust.model_files_trusted`). The spec never grants it: a ``trust_model_file`` value
in a config's ``training.model`` or in an older checkpoint's stored spec is ignored."""
from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stmclf.errors import ConfigError, UserError
from stmclf.models.graph import KerasGraph
from stmclf.models.heads import head_units
from stmclf.models.importers.base import file_error, named_allocation_failure
from stmclf.models.registry import WEIGHT_KEYS, build_model, check_model_spec, register_model

log = logging.getLogger("stmclf.models")

NAME = "model_file"
SOURCE_KEY = "model_file_source"
"""The checkpoint key of the model file's copy: ``{"sha256", "name", "content"}``."""

_contents: dict[str, bytes] = {}
"""Model files' bytes by SHA-256: files read in this process and copies stored in checkpoints read
(content-addressed, so a copy is only ever used for the hash it has)."""
_origins: dict[str, str] = {}
"""Where a checkpoint's copy in :data:`_contents` comes from, by SHA-256, for messages: ``the copy
of NAME stored in CHECKPOINT``."""
_damaged: dict[str, str] = {}
"""Copies whose bytes do not have the SHA-256 they were stored for, by that SHA-256: their origin."""


CONFIG_KEY = "training.model.path"
"""The key of a config's ``training.model`` spec (``name: model_file``): errors' key outside
:func:`model_file_given`."""


@dataclass(frozen=True)
class _Given:
    key: str
    checkpoint: str | None
    imported: Any = None


_given: ContextVar[_Given | None] = ContextVar("stmclf_model_file_given", default=None)


@contextmanager
def model_file_given(key: str, checkpoint: str | Path | None = None, imported: Any = None) -> Iterator[None]:
    """While the model of a file the user gave under ``key`` (an option or config key) is built —
    from ``checkpoint`` (a stmclf checkpoint whose spec names a model file), or from the model file
    itself — errors about its model file name ``key`` and that checkpoint, not ``training.model.path``.
    ``imported``: the file's :class:`~stmclf.models.importers.ImportedModel` the caller has just
    read (and checked); the model built from that file (same path and input shape) is it, not a
    second import of the file. Build one model inside: it takes that ImportedModel's graph.
    The allocator's failure inside (a stored spec or a file describing a model too big for the
    memory) is a one-line ConfigError under ``key`` naming the checkpoint (else the imported file)."""
    token = _given.set(_Given(key, str(checkpoint) if checkpoint is not None else None, imported))
    source = checkpoint if checkpoint is not None else getattr(imported, "path", None)
    try:
        with named_allocation_failure(key, source):
            yield
    finally:
        _given.reset(token)


def _reworded(exc: UserError, key: str, old: str, new: str, prefix: str | None) -> UserError:
    """``exc`` under ``key``, ``old`` replaced by ``new`` in its message, ``prefix: `` in front
    unless the message names ``prefix`` already."""
    message = str(exc)[len(exc.key) + 2:] if isinstance(exc, ConfigError) and exc.key else str(exc)
    message = message.replace(old, new) if old else message
    if prefix and prefix not in message:
        message = f"{prefix}: {message}"
    return ConfigError(key, message) if isinstance(exc, ConfigError) else UserError(message)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@register_model(NAME, required=("name", "input_shape", "path"), optional=("trust_model_file", "sha256"))
def model_file(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None, path: str,
               trust_model_file: bool = False, sha256: str | None = None) -> KerasGraph:
    from stmclf.models.importers import load_model_file
    from stmclf.trust import model_files_trusted

    del trust_model_file  # accepted for older checkpoints' specs, never obeyed: only the command line grants it
    given = _given.get() or _Given(CONFIG_KEY, None)
    data, digest, stored = _source_bytes(path, sha256, given.key)
    load = dict(trust_model_file=model_files_trusted(), input_shape=tuple(input_shape), key=given.key)
    if stored:
        with tempfile.TemporaryDirectory(prefix="stmclf-model-file-") as folder:
            copy = Path(folder) / (Path(path).name or "model")
            copy.write_bytes(data)
            try:
                imported = load_model_file(copy, **load)
            except UserError as exc:  # named after the checkpoint holding the copy, not the temporary file
                origin = _origins.get(digest, f"the copy of {path} read earlier in this process")
                raise _reworded(exc, given.key, str(copy), origin, given.checkpoint) from None
        imported.path = Path(path)
    elif _is_imported(given.imported, path, input_shape):
        imported = given.imported  # read once: the caller's
    else:
        try:
            imported = load_model_file(path, **load)
        except UserError as exc:  # a checkpoint's model file: named as such
            raise _reworded(exc, given.key, "", "", given.checkpoint) from None
    if imported.num_outputs != head_units(num_classes):
        raise ConfigError(given.key, f"the model in {path} has {imported.num_outputs} outputs, the "
                                     f"dataset {num_classes} classes")
    if dropout:
        imported.set_dropout_rate(float(dropout))
    graph = imported.graph
    graph.layer_index_offset = imported.layer_index_offset
    if digest is not None:
        graph.model_file_source = (digest, Path(path).name)
    return graph


def _is_imported(imported: Any, path: str, input_shape: Any) -> bool:
    """Whether ``imported`` (an ImportedModel, or None) is the model of the file ``path`` at ``input_shape``."""
    return imported is not None and Path(imported.path).expanduser().resolve() == Path(path).expanduser().resolve() \
        and tuple(imported.input_shape) == tuple(input_shape)


def _source_bytes(path: str, sha256: str | None, key: str) -> tuple[bytes | None, str | None, bool]:
    """(the bytes to rebuild the model from, their SHA-256, whether they are a checkpoint's copy
    rather than the file at ``path``). The file is read when it has the content ``sha256`` names (or no hash is
    given: an older checkpoint, a config's spec); else the stored copy with that hash when there
    is one; else the file as it is (the loader then reports a missing file)."""
    file = Path(path).expanduser()
    data = digest = None
    if file.is_file():
        try:
            data = file.read_bytes()
        except OSError:
            data = None  # the loader names the problem
    if data is not None:
        digest = _sha256(data)
        _contents.setdefault(digest, data)
    if sha256 is None or digest == sha256:
        return data, digest, False
    if sha256 in _contents:
        log.info("%s %s: the model is rebuilt from the copy stored in its checkpoint", path,
                 "has changed since training" if data is not None else "is missing")
        return _contents[sha256], sha256, True
    damaged = _damaged.get(sha256)
    if damaged is not None and data is None:
        raise ConfigError(key, f"{path} is missing and {damaged} is damaged (its bytes do not have the SHA-256 "
                               "stored with them): the model cannot be rebuilt")
    if data is not None:
        log.warning("%s has changed since the checkpoint was written (and %s)", path,
                    f"{damaged} is damaged: its bytes do not have the SHA-256 stored with them" if damaged
                    else "the checkpoint holds no copy of it")
    return data, digest, False


def model_file_spec(path: str, input_shape: Any) -> dict[str, Any]:
    return {"name": NAME, "path": str(path), "input_shape": [int(v) for v in input_shape]}


def remember_source(checkpoint: Any, path: str | Path) -> None:
    """Make the model file copy that ``checkpoint`` (read from ``path``) stores (:data:`SOURCE_KEY`)
    available to the rebuild of its model, and known by its origin in messages. A copy whose bytes
    do not have the SHA-256 its model spec names is remembered as damaged (the rebuild says so when
    it would need it); anything else under that key is ignored."""
    entry = checkpoint.get(SOURCE_KEY) if isinstance(checkpoint, Mapping) else None
    content = entry.get("content") if isinstance(entry, Mapping) else None
    if not (isinstance(content, torch.Tensor) and content.dtype == torch.uint8 and content.dim() == 1):
        return
    name = entry.get("name")
    name = Path(name).name if isinstance(name, str) and Path(name).name else "the model file"
    origin = f"the copy of {name} stored in {path}"
    data = content.contiguous().numpy().tobytes()
    digest = _sha256(data)
    hparams = checkpoint.get("hyper_parameters")
    spec = hparams.get("model_spec") if isinstance(hparams, Mapping) else None
    expected = spec.get("sha256") if isinstance(spec, Mapping) else None
    if isinstance(expected, str) and expected != digest:
        _damaged.setdefault(expected, origin)
        return
    _contents.setdefault(digest, data)
    _origins.setdefault(digest, origin)


def store_source(model: torch.nn.Module, checkpoint: MutableMapping[str, Any]) -> None:
    """Add to ``checkpoint`` (Lightning's dict, with ``hyper_parameters``) the copy of the model
    file ``model`` was built from and its hash in the stored spec, so the checkpoint rebuilds the
    model without the file. Nothing for a model not built from a model file."""
    source = getattr(model, "model_file_source", None)
    data = _contents.get(source[0]) if source else None
    hparams = checkpoint.get("hyper_parameters")
    spec = hparams.get("model_spec") if isinstance(hparams, Mapping) else None
    if data is None or not isinstance(spec, Mapping) or spec.get("name") != NAME:
        return
    sha256, name = source
    checkpoint["hyper_parameters"] = {**hparams, "model_spec": {**spec, "sha256": sha256}}  # a copy: not the module's
    checkpoint[SOURCE_KEY] = {"sha256": sha256, "name": name,
                              "content": torch.frombuffer(bytearray(data), dtype=torch.uint8)}


STORED_SPEC_KEYS = ("hyper_parameters.input_shape", "hyper_parameters.model_spec.input_shape")
"""The sizes of a checkpoint's stored spec checked with a config's rules before its model is rebuilt."""


def check_stored_spec(hparams: Mapping[str, Any], path: Any, key: str, batch: int = 1) -> None:
    """A checkpoint's stored spec (``hparams``: its ``hyper_parameters``, read from ``path`` given
    under ``key``) obeys the rules of a config before its model is rebuilt: the input shapes'
    bounds (:func:`stmclf.config.rules.check_input_shape`), the memory estimate of a batch of
    ``batch`` images at that size, and the model's parameters (counted on the meta device, without
    allocating them: this bounds ``alpha``, ``depth``, units and the class count) fitting in the
    memory available. A file edited to claim a 100000x100000 input is a one-line ConfigError
    naming ``key``, ``path`` and the stored key, not an allocation that gets the process killed."""
    from stmclf.config.rules import check_batch_memory, check_input_shape

    spec = hparams.get("model_spec")
    values = (hparams.get("input_shape"), spec.get("input_shape") if isinstance(spec, Mapping) else None)
    shapes = []
    for stored, value in zip(STORED_SPEC_KEYS, values):
        if value is None:  # not stored (a pretrained_model_path source needs only the spec): not checked here
            continue
        try:
            shapes.append(check_input_shape(stored, value))
            check_batch_memory(stored, batch, shapes[-1], "not a model this machine can run")
        except ConfigError as exc:
            raise file_error(key, path, f"stored {exc}") from None
    names = hparams.get("class_names")
    if isinstance(spec, Mapping) and isinstance(names, (list, tuple)):
        needed = _parameter_bytes(spec, len(names), hparams.get("dropout"))
        from stmclf.config.rules import available_memory

        available = available_memory()
        if needed is not None and needed > available:
            raise file_error(key, path, f"stored hyper_parameters.model_spec: its model ({_described(spec)}, "
                                        f"{len(names):,} classes) holds {needed / 2**30:,.1f} GiB of parameters, "
                                        f"more than the {available / 2**30:,.1f} GiB of memory available")


def _described(spec: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}: {v!r}"[:60] for k, v in spec.items() if k not in WEIGHT_KEYS)[:300]


def _parameter_bytes(spec: Mapping[str, Any], num_classes: int, dropout: Any) -> int | None:
    """Bytes of the parameters and buffers of the model ``spec`` describes, built on the meta device
    (nothing allocated); None for a model that is not a zoo model (a model file, custom or timm
    code) or that cannot be built there (its real build then reports why)."""

    try:
        entry = check_model_spec(spec)
        if entry.open_keys or entry.name == NAME:
            return None
        with torch.device("meta"):
            model = build_model(spec, num_classes, dropout)
    except Exception:  # noqa: BLE001 - an estimate only: the real build names the problem
        return None
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
