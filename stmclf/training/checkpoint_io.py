"""Atomic checkpoint writes: a crash while saving never leaves a truncated checkpoint.

``atomic_torch_save`` writes ``.<name>.<random>.tmp`` beside the target, fsyncs it and renames it
over the target; the temporary file is locked (``flock``) while it is written
(:func:`stmclf.files.atomic_write`, which the run's other files use too). A process killed
in the middle leaves that temporary file behind and the previous checkpoint untouched;
:func:`remove_orphan_temp_files` (called when a run directory is opened) deletes such leftovers.
A save that fails because of the environment (disk full, read-only or forbidden directory) is a
one-line :class:`~stmclf.errors.UserError` naming the file, after removing the temporary file.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from stmclf.files import TEMP_SUFFIX, atomic_write

log = logging.getLogger("stmclf.training")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    atomic_write(path, lambda handle: torch.save(obj, handle), "save the checkpoint", private=True)


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
        log.info("Removed %d unfinished file(s) left by an interrupted save in %s: %s", len(removed),
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
