"""Environment variables in checkpoints: no secret lands on disk.

A config's value that came from an environment variable (``${NAME}``, docs/config.md) may reach a
checkpoint (``*.ckpt``, ``best_model.pt``) in what the run rebuilds its model from: the model spec,
the optimizer, the augmentation, and in the states of the data and the callbacks (paths). Such a
checkpoint stores the variable's ``${NAME}`` reference in place of its value
(:func:`store_env_references`, by value as ``RunConfig.without_env_values`` writes the run's log and
``hparams.yaml``) and lists the variables it did that for under :data:`ENV_NAMES_KEY`. Whoever reads
it resolves them from the environment first (:func:`resolve_env_references`), before the stored spec
is checked or anything is built from it; a variable that is not set is a one-line error naming the
checkpoint and the variable. A checkpoint without that key (written before this, or by a run that
used no variable) holds its values as they are.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from stmclf.config.interpolate import redact_env_names, resolve_env_names
from stmclf.errors import ConfigError
from stmclf.models.importers.base import file_error

ENV_NAMES_KEY = "stmclf_env_references"
"""The checkpoint key listing the environment variables whose ``${NAME}`` its values hold."""


def store_env_references(checkpoint: MutableMapping[str, Any], names: Iterable[str]) -> None:
    """In ``checkpoint`` (Lightning's dict, about to be saved), every string value holding the value
    of one of the environment variables ``names`` shows ``${NAME}`` instead; the variables replaced
    are listed under :data:`ENV_NAMES_KEY`. The containers changed are new ones: the module's own
    hyper-parameters are not touched."""
    found: set[str] = set()
    redacted = redact_env_names({k: v for k, v in checkpoint.items() if k != ENV_NAMES_KEY}, names, found)
    if found:
        checkpoint.update(redacted)
        checkpoint[ENV_NAMES_KEY] = sorted(found)


def stored_env_names(checkpoint: Any) -> frozenset[str]:
    """The environment variables a checkpoint (read with :func:`resolve_env_references`) stores as
    ``${NAME}``: a run rebuilt from it writes their values as ``${NAME}`` too."""
    names = checkpoint.get(ENV_NAMES_KEY) if isinstance(checkpoint, Mapping) else None
    return frozenset(names) if isinstance(names, (list, tuple)) else frozenset()


def resolve_env_references(checkpoint: Any, path: Path | str, key: str) -> Any:
    """``checkpoint`` (as read from ``path``, given under ``key``) with the ``${NAME}`` references it
    stores (:data:`ENV_NAMES_KEY`) resolved from the environment; a variable that is not set is a
    one-line :class:`ConfigError` naming ``key``, ``path`` and the variable."""
    if not isinstance(checkpoint, dict) or ENV_NAMES_KEY not in checkpoint:
        return checkpoint
    names = checkpoint[ENV_NAMES_KEY]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise file_error(key, path, f"is not a stmclf checkpoint (its {ENV_NAMES_KEY} is not a list of "
                                    f"environment variable names: {names!r:.100})")
    try:
        return resolve_env_names(checkpoint, names, "")
    except ConfigError as exc:  # "environment variable NAME is not set (used as ${NAME})"
        raise file_error(key, path, f"{exc}: the checkpoint stores this reference in place of the variable's "
                                    "value; set the variable to load it") from None
