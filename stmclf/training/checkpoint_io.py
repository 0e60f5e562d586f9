"""Atomic checkpoint writes: a crash while saving never leaves a truncated checkpoint.

``atomic_torch_save`` writes ``.<name>.<random>.tmp`` beside the target, fsyncs it and renames it
over the target; the temporary file is locked (``flock``) while it is written. A process killed
in the middle leaves that temporary file behind and the previous checkpoint untouched;
:func:`remove_orphan_temp_files` (called when a run directory is opened) deletes such leftovers.
A save that fails because of the environment (disk full, read-only or forbidden directory) is a
one-line :class:`~stmclf.errors.UserError` naming the file, after removing the temporary file.
"""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from stmclf.errors import UserError

log = logging.getLogger("stmclf.training")
TEMP_SUFFIX = ".tmp"


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind ``exc`` (torch reports a failed write as a RuntimeError whose context
    is the OSError), or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _write_error(target: Path, error: OSError, existed: bool) -> UserError:
    reason = error.strerror or str(error)
    kept = f"; the previous {target.name} is unchanged" if existed else ""
    return UserError(f"{target}: cannot save the checkpoint: {reason}{kept}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    target = Path(path)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise _write_error(target, exc, existed) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # "being written": not an orphan
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = _os_error(exc) if isinstance(exc, Exception) else None
        if error is not None:
            raise _write_error(target, error, existed) from None
        raise


def remove_orphan_temp_files(directory: Path, min_age_s: float = 1.0) -> list[Path]:
    """Delete the temporary files that interrupted atomic saves left in ``directory``
    (``.<name>.<random>.tmp``); a file that another process is still writing (locked, or younger
    than ``min_age_s``) is left alone. Returns the removed files."""
    removed: list[Path] = []
    try:
        candidates = sorted(Path(directory).glob(f".*{TEMP_SUFFIX}"))
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        try:
            if not path.is_file() or now - path.stat().st_mtime < min_age_s:
                continue
            with open(path, "rb") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a save in progress
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("Removed %d unfinished checkpoint file(s) left by an interrupted save in %s: %s", len(removed),
                 directory, ", ".join(p.name for p in removed))
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written with :func:`atomic_torch_save`; a checkpoint Lightning resumes from
    (``trainer.fit(ckpt_path=...)``: ``training.resume_training_from``) has its ``${NAME}``
    references resolved from the environment (:mod:`stmclf.models.checkpoint_env`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from stmclf.models.checkpoint_env import resolve_env_references

        return resolve_env_references(super().load_checkpoint(path, *args, **kwargs), path,
                                      "training.resume_training_from")
