"""``--trust-code`` and ``--trust-model-file``: code named by a config, or pickled in a model file,
runs only when the command line says so.

A config can name Python code: ``training.model.custom_model`` (``FILE.py:FUNCTION`` or
``MODULE:FUNCTION``), ``custom_data_augmentation.function_name`` (the same forms) and callback
class paths in ``training.callbacks`` outside ``lightning.``, ``torch.`` and ``stmclf.``.
Importing them runs that code, so a config downloaded from somewhere could run anything. Each
loader calls :func:`require_trusted_code` *before* importing: without ``--trust-code`` it stops
with one line naming the key, the file or module and the flag.

The permission is process-wide and comes only from the command line: :func:`stmclf.config.from_namespace`
sets it from ``--trust-code`` every time a command's config is parsed (there is no config-file key
for it), so it also covers the models a checkpoint rebuilds from its stored spec (resume,
evaluation, export, ``pretrained_model_path``). Scripts and tests use :func:`trusting_code`.

``--trust-model-file`` is the same kind of grant for pickled torch model files (loading one runs
code from the file). It too is process-wide and set only from the command line: a model spec
stored in a config or a checkpoint (the ``model_file`` entry that rebuilds a run started from a
model file) never carries it, so neither a config nor a crafted checkpoint can grant it.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from stmclf.errors import ConfigError

FLAG = "--trust-code"
TRUSTED_PACKAGES = ("lightning", "torch", "stmclf")
"""Top-level packages whose classes ``training.callbacks`` may name without ``--trust-code``."""
UNTRUSTED_IMPORTS = ("torch.utils.model_dump", "torch.testing")
"""Modules of those packages that a config may not name all the same: importing them runs a program
(``torch.utils.model_dump.__main__`` runs its command line on import) or a test harness."""

_grants = {"code": False, "model_files": False}
"""The command line's grants, process-wide: ``--trust-code`` and ``--trust-model-file``."""


@contextmanager
def _granting(kind: str, enabled: bool) -> Iterator[None]:
    before = _grants[kind]
    _grants[kind] = bool(enabled)
    try:
        yield
    finally:
        _grants[kind] = before


def code_trusted() -> bool:
    """Whether Python code named by the config may be imported (``--trust-code`` was given)."""
    return _grants["code"]


def set_code_trust(enabled: bool) -> None:
    """Allow (or refuse) code named by the config, for the rest of the process."""
    _grants["code"] = bool(enabled)


def trusting_code(enabled: bool = True):
    """Allow (or refuse) code named by the config inside the ``with`` block."""
    return _granting("code", enabled)


def model_files_trusted() -> bool:
    """Whether pickled model files may be loaded (``--trust-model-file`` was given)."""
    return _grants["model_files"]


def set_model_file_trust(enabled: bool) -> None:
    """Allow (or refuse) pickled model files, for the rest of the process."""
    _grants["model_files"] = bool(enabled)


def trusting_model_files(enabled: bool = True):
    """Allow (or refuse) pickled model files inside the ``with`` block."""
    return _granting("model_files", enabled)


def require_trusted_code(key: str, target: str, kind: str) -> None:
    """Raise the one-line ConfigError unless ``--trust-code`` was given. ``target`` is the text of
    the config (``my_model.py:build``), ``kind`` ``"file"`` or ``"module"``."""
    if not code_trusted():
        raise ConfigError(key, f"{target} runs Python code from a {kind} named by the config; "
                               f"pass {FLAG} if you trust it")


def is_trusted_class_path(path: str) -> bool:
    """A class path under ``lightning.``, ``torch.`` or ``stmclf.`` (needs no flag), naming no
    private or ``__main__`` module (``torch.utils.model_dump.__main__.X`` would run that tool)
    and nothing of :data:`UNTRUSTED_IMPORTS`."""
    parts = path.split(".")
    return parts[0] in TRUSTED_PACKAGES and not any(part.startswith("_") for part in parts) and \
        not any(path == name or path.startswith(name + ".") for name in UNTRUSTED_IMPORTS)


def check_config_code(cfg, *, model: bool = True) -> None:
    """Refuse, before anything is imported or any data is read, the code the config names without
    ``--trust-code``: ``training.model.custom_model`` (when ``model``: a fresh model is built from
    ``training.model``) and ``custom_data_augmentation.function_name`` (callback class paths are
    checked by :func:`stmclf.training.callbacks.build_callbacks`)."""
    if code_trusted():
        return
    training = getattr(cfg, "training", None)
    spec = getattr(training, "model", None) if model else None
    target = spec.get("custom_model") if isinstance(spec, Mapping) and spec.get("name") == "custom" else None
    if isinstance(target, str):
        require_trusted_code("training.model.custom_model", target, _kind(target.rpartition(":")[0]))
    custom = getattr(cfg, "custom_data_augmentation", None)
    target = getattr(custom, "function_name", None)
    if isinstance(target, str) and not getattr(cfg, "data_augmentation", None):
        require_trusted_code("custom_data_augmentation.function_name", target,
                             _kind(target.strip().rpartition(":")[0]))


def _kind(where: str) -> str:
    return "file" if where.endswith(".py") or "/" in where or "\\" in where else "module"
