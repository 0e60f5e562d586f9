"""A run's config files: ``config.yaml`` holds ST's schema only (it goes back to ST's service
unchanged); ``stmclf_extras.yaml`` beside it holds the rest (the ``trainer:`` section and stmclf's
keys inside ST's sections), in the same nested layout (stmclf/config/st_schema.py splits them).

:func:`read_run_config` (the one merge of a run folder's files, for every reader) gives the
resolved config back. A run folder written before the split (everything in ``config.yaml``) reads
the same way. The command line reads a run by giving both files as ``--config``
(:func:`run_config_args`): later files override earlier ones.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Optional

import yaml

from stmclf.config.st_schema import merge_config
from stmclf.errors import UserError, closest, one_line, printable_path

CONFIG_NAME = "config.yaml"
EXTRAS_NAME = "stmclf_extras.yaml"


def run_config_files(run_dir: str | Path, label: Optional[str] = None) -> list[Path]:
    """``RUN/config.yaml``, then ``RUN/stmclf_extras.yaml`` when there is one (not in runs written
    before the split); a folder without ``config.yaml`` is a one-line error."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG_NAME
    if not config.is_file():
        raise UserError(f"{label or printable_path(run_dir)}: {_not_a_run(run_dir)}")
    extras = run_dir / EXTRAS_NAME
    return [config, extras] if extras.is_file() else [config]


LISTED_RUNS = 1000
"""Entries of a folder looked at for the run folders it holds (a message's hint, not a search)."""


def _runs_in(folder: Path) -> list[str]:
    """The names of the run folders (those with a ``config.yaml``) among the first entries of ``folder``."""
    try:
        entries = list(itertools.islice(os.scandir(folder), LISTED_RUNS))
    except OSError:
        return []
    return sorted(e.name for e in entries if e.is_dir() and (Path(e.path) / CONFIG_NAME).is_file())


def _not_a_run(run_dir: Path) -> str:
    """Why ``run_dir`` is no run folder, with the run folder meant: a misspelled one beside it (as
    git's "did you mean"), or the runs inside a folder of runs (``experiments_outputs``)."""
    if not os.path.lexists(run_dir):
        match = closest(run_dir.name, _runs_in(run_dir.parent))
        hint = f" (did you mean {printable_path(run_dir.parent / match)}?)" if match else ""
        return f"no such folder{hint}"
    if not run_dir.is_dir():
        return f"not a folder; a run folder holds the run's {CONFIG_NAME}"
    inner = _runs_in(run_dir)
    if inner:
        shown = ", ".join(printable_path(name) for name in inner[-3:])
        return f"no {CONFIG_NAME}: a folder of {len(inner)} run folder(s), give one of them (the newest: {shown})"
    return f"no {CONFIG_NAME}; is this a stmclf run directory?"


def run_config_args(run_dir: str | Path, label: Optional[str] = None) -> list[str]:
    """``--config RUN/config.yaml [--config RUN/stmclf_extras.yaml]``: the run's config for the parser."""
    return [arg for path in run_config_files(run_dir, label) for arg in ("--config", str(path))]


def read_run_config(run_dir: str | Path, label: Optional[str] = None) -> dict[str, Any]:
    """A run folder's resolved config: ``stmclf_extras.yaml`` merged over ``config.yaml``. The
    files are read as untrusted (bounded YAML); a problem is one line naming the file."""
    return read_config_files(run_config_files(run_dir, label))


def read_config_files(paths: list[Path]) -> dict[str, Any]:
    """The config of ``paths`` (an ST-schema file, then stmclf's extras) merged in order, each read
    as untrusted (bounded YAML); a problem is one line naming the file."""
    data: dict[str, Any] = {}
    for path in paths:
        data = merge_config(data, _read_mapping(path))
    return data


def _read_mapping(path: Path) -> dict[str, Any]:
    from stmclf.config.parser import BoundedLoader, check_config_file

    check_config_file(str(path))
    loader = BoundedLoader(path.read_text(encoding="utf-8"))
    try:
        data = loader.get_single_data()
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"{path}: not valid YAML ({one_line(exc, 200)})") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config sections")
    return data
