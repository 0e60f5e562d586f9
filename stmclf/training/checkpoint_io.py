"""Atomic checkpoint writes: a crash while saving never leaves a truncated checkpoint.

``atomic_torch_save`` writes ``.<name>.<random>.tmp`` beside the target, fsyncs it and renames it
over the target; the temporary file is locked (``flock``) while it is written
(:func:`stmclf.files.atomic_write`, which the run's other files use too). A process killed
in the middle leaves that temporary file behind and the previous checkpoint untouched;
:func:`stmclf.files.remove_orphan_temp_files` (called when a run directory is opened) deletes
such leftovers.
A save that fails because of the environment (disk full, read-only or forbidden directory) is a
one-line :class:`~stmclf.errors.UserError` naming the file, after removing the temporary file.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from stmclf.files import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    atomic_write(path, lambda handle: torch.save(obj, handle), "save the checkpoint", private=True)


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
