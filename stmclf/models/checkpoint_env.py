"""Environment variables in checkpoints: no secret lands on disk.

A config's value that came from an environment variable (``${NAME}``, docs/config.md) may reach a
checkpoint (``*.ckpt``, ``best_model.pt``) in what the run rebuilds its model from: the model spec,
the optimizer, the augmentation, the dataset keys of the data module's state and the paths of the
callbacks' states (under ``hydra.run.dir``). Such a checkpoint stores the variable's ``${NAME}``
reference in place of its value and lists the variables it did that for under
:data:`ENV_NAMES_KEY`, and the key paths of the strings that hold them under
:data:`ENV_POSITIONS_KEY` (:func:`store_env_references`).

The references are placed by provenance, not by value: only the checkpoint positions that hold a
config value whose text used ``${NAME}`` (:func:`config_env_refs`: ``training.model`` is the
stored ``model_spec``, and so on), the paths under a ``hydra.run.dir`` that used one, and the
positions a checkpoint the run was rebuilt from stored as ``${NAME}`` (:func:`stored_env_refs`).
Another string that happens to hold the same text (a class named like ``${FLIP_MODE}``'s value
``horizontal``) is stored as it is, and a checkpoint read with another value of the variable
changes only the positions that came from it.

Whoever reads a checkpoint resolves the references from the environment first
(:func:`resolve_env_references`), at the listed positions only, before the stored spec is checked
or anything is built from it; a variable that is not set is a one-line error naming the checkpoint
and the variable. A checkpoint without :data:`ENV_POSITIONS_KEY` (written before it) has its
``${NAME}`` resolved wherever they are; one without :data:`ENV_NAMES_KEY` holds its values as they are.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from stmclf.config.interpolate import (DESCEND, env_names, keep_env_values_out, map_nested, resolve_env_names,
                                      same_value)
from stmclf.errors import ConfigError
from stmclf.models.importers.base import file_error

ENV_NAMES_KEY = "stmclf_env_references"
"""The checkpoint key listing the environment variables whose ``${NAME}`` its values hold."""
ENV_POSITIONS_KEY = "stmclf_env_positions"
"""The checkpoint key listing the key paths (lists of keys) of the strings that hold ``${NAME}``."""
_RESOLVED_KEY = "stmclf_env_resolved"
"""In a checkpoint as :func:`resolve_env_references` returns it (never on disk): ``{key path:
(stored text with ${NAME}, resolved value)}``, for :func:`stored_env_refs`."""

EnvRefs = dict[tuple, tuple[str, Any]]
"""``{key path in a checkpoint: (text with ${NAME} kept, the value resolved from the environment)}``."""

CONFIG_POSITIONS: tuple[tuple[tuple, tuple], ...] = (
    (("training", "model"), ("hyper_parameters", "model_spec")),
    (("training", "optimizer"), ("hyper_parameters", "optimizer")),
    (("training", "frozen_layers"), ("hyper_parameters", "frozen_layers")),
    (("data_augmentation",), ("hyper_parameters", "data_augmentation")),
    (("custom_data_augmentation",), ("hyper_parameters", "custom_data_augmentation")),
    (("dataset", "class_names"), ("hyper_parameters", "class_names")),
    (("dataset",), ("ImageDataModule", "dataset")),
)
"""Where a config key's value lands in a training checkpoint (``stmclf.training.fit``:
``_model_settings``, ``ImageDataModule.state_dict``)."""
RUN_DIR_KEY = ("hydra", "run", "dir")
_UNDER_RUN_DIR = ("callbacks",)
"""The part of a checkpoint whose strings are paths under the run's folder (the checkpoint callbacks)."""


def config_env_refs(refs: EnvRefs) -> EnvRefs:
    """The config's values that came from environment variables (``RunConfig.env_references``:
    config key paths) at their positions in a training checkpoint (:data:`CONFIG_POSITIONS`);
    ``hydra.run.dir`` stays under its config path (the prefix of the callbacks' paths)."""
    out: EnvRefs = {}
    for path, ref in refs.items():
        if tuple(path) == RUN_DIR_KEY:
            out[RUN_DIR_KEY] = ref
        for source, target in CONFIG_POSITIONS:
            if tuple(path[:len(source)]) == source:
                out[(*target, *path[len(source):])] = ref
    return out


def _run_dir_prefix(ref: tuple[str, Any]) -> tuple[str, str] | None:
    """(the run folder's resolved path, the same with ``${NAME}`` kept) of a ``hydra.run.dir``
    that used a variable; a relative one is under the current directory."""
    kept, value = ref
    if not isinstance(value, str) or not value:
        return None
    if Path(value).is_absolute():
        return str(Path(value).resolve()), kept.rstrip("/") if Path(value).resolve() == Path(value) else None
    cwd = str(Path.cwd().resolve())
    return str((Path(cwd) / value).resolve()), f"{cwd}/{kept}".rstrip("/")


def store_env_references(checkpoint: MutableMapping[str, Any], refs: EnvRefs, names: Iterable[str] = (),
                         plain: Iterable[str] = ()) -> None:
    """In ``checkpoint`` (Lightning's dict, about to be saved), each position of ``refs``
    (:func:`config_env_refs`, :func:`stored_env_refs`) whose value is still the one resolved from
    the environment shows its ``${NAME}`` text instead, and each path of the callbacks' states
    under a ``hydra.run.dir`` that used a variable shows it in place of that folder; the variables
    and the positions are listed under :data:`ENV_NAMES_KEY` and :data:`ENV_POSITIONS_KEY`. Any
    other string is stored as it is, unless it holds the value of one of these variables or of
    ``names`` (the config's other variables: :func:`~stmclf.config.interpolate.keep_env_values_out`,
    with the texts ``plain`` written as they are): it is ``${NAME}`` too where it is the value,
    whole, and listed; else nothing is written. The containers changed are new ones: the module's
    own hyper-parameters are not touched."""
    placed: list[tuple] = []
    used: set[str] = set()
    prefix = _run_dir_prefix(refs[RUN_DIR_KEY]) if RUN_DIR_KEY in refs else None
    if prefix is not None and prefix[1] is None:
        prefix = None

    def visit(node: Any, path: tuple) -> Any:
        ref = refs.get(path)
        if ref is not None and path != RUN_DIR_KEY and same_value(node, ref[1]):
            if isinstance(node, str) and isinstance(ref[0], str):
                placed.append(path)
                used.update(env_names({path: ref}))
                return ref[0]
        if isinstance(node, str) and prefix is not None and path[:len(_UNDER_RUN_DIR)] == _UNDER_RUN_DIR:
            resolved, kept = prefix
            if node == resolved or node.startswith((resolved + "/", resolved + "_")):
                placed.append(path)
                used.update(env_names({path: (kept, None)}))
                return kept + node[len(resolved):]
        return DESCEND

    redacted = map_nested({k: v for k, v in checkpoint.items() if k not in (ENV_NAMES_KEY, ENV_POSITIONS_KEY)},
                          visit)
    # the safety net: a variable's value that a code path carried elsewhere, maybe changed
    redacted, carried = keep_env_values_out(redacted, env_names(refs) | set(names), plain=plain, skip=set(placed),
                                            where="a checkpoint of the run")
    placed += [path for path, _ in carried]
    used.update(name for _, name in carried)
    checkpoint.pop(ENV_NAMES_KEY, None)
    checkpoint.pop(ENV_POSITIONS_KEY, None)
    if placed:
        checkpoint.update(redacted)
        checkpoint[ENV_NAMES_KEY] = sorted(used)
        checkpoint[ENV_POSITIONS_KEY] = [list(p) for p in placed]


def stored_env_refs(checkpoint: Any, under: tuple = ()) -> EnvRefs:
    """The positions (under ``under``) a checkpoint read with :func:`resolve_env_references`
    stored as ``${NAME}``, with their texts and resolved values: a run rebuilt from it stores
    them as ``${NAME}`` too."""
    refs = checkpoint.get(_RESOLVED_KEY) if isinstance(checkpoint, Mapping) else None
    if not isinstance(refs, dict):
        return {}
    return {p: ref for p, ref in refs.items() if p[:len(under)] == under}


def value_at(node: Any, path: tuple) -> tuple[bool, Any]:
    for part in path:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return False, None
    return True, node


def _text_positions(node: Any, names: set[str], path: tuple = ()) -> list[tuple]:
    """The key paths of the strings holding a ``${NAME}`` of ``names`` (a checkpoint written
    before :data:`ENV_POSITIONS_KEY`)."""
    if isinstance(node, str):
        return [path] if env_names({path: (node, None)}) & names else []
    if isinstance(node, Mapping):
        return [p for k, v in node.items() for p in _text_positions(v, names, (*path, k))]
    if isinstance(node, (list, tuple)):
        return [p for i, v in enumerate(node) for p in _text_positions(v, names, (*path, i))]
    return []


def _set_at(node: Any, path: tuple, value: Any) -> Any:
    """A copy of ``node`` along ``path`` with ``value`` there (the containers off the path are shared)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, Mapping):
        return {**node, head: _set_at(node[head], rest, value)}
    items = list(node)
    items[head] = _set_at(items[head], rest, value)
    return tuple(items) if isinstance(node, tuple) else items


def resolve_env_references(checkpoint: Any, path: Path | str, key: str) -> Any:
    """``checkpoint`` (as read from ``path``, given under ``key``) with the ``${NAME}`` references it
    stores (:data:`ENV_NAMES_KEY`, at :data:`ENV_POSITIONS_KEY`) resolved from the environment; a
    variable that is not set is a one-line :class:`ConfigError` naming ``key``, ``path`` and the variable."""
    if not isinstance(checkpoint, dict) or ENV_NAMES_KEY not in checkpoint:
        return checkpoint
    names = checkpoint[ENV_NAMES_KEY]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise file_error(key, path, f"is not a stmclf checkpoint (its {ENV_NAMES_KEY} is not a list of "
                                    f"environment variable names: {names!r:.100})")
    if ENV_POSITIONS_KEY in checkpoint:
        stored = checkpoint[ENV_POSITIONS_KEY]
        if not isinstance(stored, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and p and all(isinstance(k, (str, int)) for k in p) for p in stored):
            raise file_error(key, path, f"is not a stmclf checkpoint (its {ENV_POSITIONS_KEY} is not a list of "
                                        f"key paths: {stored!r:.100})")
        positions = [tuple(p) for p in stored]
    else:
        positions = _text_positions({k: v for k, v in checkpoint.items() if k != ENV_NAMES_KEY}, set(names))
    resolved = dict(checkpoint)
    refs: EnvRefs = {}
    for position in positions:
        found, text = value_at(checkpoint, position)
        if not found or not isinstance(text, str) or position[0] in (ENV_NAMES_KEY, ENV_POSITIONS_KEY):
            continue
        try:
            value = resolve_env_names(text, names, "")
        except ConfigError as exc:  # "environment variable NAME is not set (used as ${NAME})"
            raise file_error(key, path, f"{exc}: the checkpoint stores this reference in place of the variable's "
                                        "value; set the variable to load it") from None
        refs[position] = (text, value)
        resolved = _set_at(resolved, position, value)
    resolved[_RESOLVED_KEY] = refs
    return resolved
