"""The run directory (``hydra.run.dir``): layout, resolved config (``config.yaml`` with ST's
schema, ``stmclf_extras.yaml`` with the rest: stmclf/config/run_files.py), log file."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Optional

import yaml

from stmclf.config import RunConfig
from stmclf.config.run_files import CONFIG_NAME, EXTRAS_NAME, read_config_files, read_run_config
from stmclf.errors import ConfigError, UserError

LOG_NAME = "stmclf.log"
log = logging.getLogger("stmclf")


@dataclass(frozen=True)
class RunDir:
    root: Path
    saved_models: Path
    logs: Path

    @property
    def metrics_csv(self) -> Path:
        return self.logs / "metrics" / "train_metrics.csv"

    @property
    def log_file(self) -> Path:
        return self.root / LOG_NAME

    @property
    def curves_png(self) -> Path:
        return self.root / "training_curves.png"

    def make_training_dirs(self) -> None:
        """``saved_models/`` and ``logs/``, made when a training starts (rank 0): a run that never
        trains (export, evaluation, prediction of a model file) has neither. A folder that cannot be
        made is a one-line :class:`UserError` naming it."""
        try:
            for path in (self.saved_models, self.logs):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable("hydra.run.dir", self.root, exc) from None


def create_run_dir(cfg: RunConfig, *, write_files: bool | None = None, root: Path | None = None) -> RunDir:
    """The run directory: ``root`` when given (an existing run, reused on purpose: its
    ``config.yaml`` and ``stmclf_extras.yaml`` are kept; a different config is saved beside them as
    ``config_<time>.yaml`` and ``stmclf_extras_<time>.yaml``), else a new one from
    ``hydra.run.dir`` (the resolved config is saved in it: ST's schema in ``config.yaml``, the rest
    in ``stmclf_extras.yaml``). A new run never writes into another run's folder: when
    ``hydra.run.dir`` already holds one (its ``config.yaml``), the new run takes ``<dir>_1``,
    ``<dir>_2``, … (claimed atomically, so two processes started in the same second get different
    folders). The log file is attached and unfinished files of an interrupted save (checkpoints,
    results.json, the report) are removed (rank 0 only in a distributed run). A folder that cannot be written is a one-line
    :class:`UserError` naming it."""
    from stmclf.training.tracking import is_global_zero

    if write_files is None:
        write_files = is_global_zero()
    key = "hydra.run.dir" if root is None else "run directory"
    wanted = None
    st_text, extras_text = cfg.written_files()
    if root is not None:
        root = Path(root).resolve()
    elif write_files:
        wanted = cfg.run_dir.resolve()
        root = _claim_new_run_dir(wanted, st_text)
    else:  # other ranks of a distributed run: rank 0 owns the folder and writes every file
        root = cfg.run_dir.resolve()
    run = RunDir(root, root / cfg.general.saved_models_dir, root / cfg.general.logs_dir)
    if write_files:
        _hold_run(root)  # before anything is written into an existing run's folder
        try:
            run.root.mkdir(parents=True, exist_ok=True)  # saved_models/, logs/: when a training starts
            config = root / CONFIG_NAME
            if wanted is not None or not config.exists():  # a new run (its config.yaml claimed above)
                if wanted is None:
                    config.write_text(st_text)
                if extras_text:
                    (root / EXTRAS_NAME).write_text(extras_text)
            elif cfg.resolved_yaml and not _same_config(root, cfg.resolved_yaml):
                stamp = _stamp()
                (root / f"config_{stamp}.yaml").write_text(st_text)
                if extras_text:
                    (root / f"{Path(EXTRAS_NAME).stem}_{stamp}.yaml").write_text(extras_text)
            attach_log_file(run.log_file, redact=cfg.without_env_values)
        except OSError as exc:
            raise _unwritable(key, root, exc) from None
        if wanted is not None and root != wanted:
            log.warning("hydra.run.dir %s holds another run: this run writes into %s", wanted, root)
        from stmclf.files import remove_orphan_temp_files

        for folder in (run.saved_models, run.root):  # checkpoints; results.json, the report
            remove_orphan_temp_files(folder)
    return run


_held: dict[str, int] = {}
"""The run folder this process writes into: its ``config.yaml``'s path → the descriptor locked."""


def _hold_run(root: Path) -> None:
    """One process writes into a run folder at a time: an exclusive ``flock`` on its
    ``config.yaml``, held until this process works on another run or exits (the kernel drops it
    even when the process is killed: no stale lock to clean). A second process (the same
    checkpoint resumed twice, an export while the run trains) stops in one line: two trainings
    would interleave their metrics and race for the checkpoints, and either one's start removes
    the other's unfinished checkpoint file."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return
    config = str(root / CONFIG_NAME)
    if config in _held:
        return
    try:
        fd = os.open(config, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"{root}: another stmclf process is writing into this run folder (training, resuming or "
                        f"exporting it); wait for it to finish, or give this one another hydra.run.dir") from None
    release_runs()  # one run per process at a time
    _held[config] = fd


def release_runs() -> None:
    """Let other processes write into the run folder this process held (the end of a command)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()


def _same_config(root: Path, resolved_yaml: str) -> bool:
    """The run folder's latest config (its two files merged, or an older run's single
    ``config.yaml``; the newest ``config_<time>.yaml`` with its extras once a command saved one) is
    ``resolved_yaml``: the same command run again on the folder (a requeued resume) saves no copy."""
    try:
        return _without_run_dir(_latest_config(root)) == _without_run_dir(yaml.safe_load(resolved_yaml))
    except UserError:  # a run config edited into something unreadable: keep the new one beside it
        return False


STAMPED_CONFIG = re.compile(r"config_(\d{4}(?:_\d\d){5})\.yaml")
"""``config_<time>.yaml`` (:func:`_stamp`): their names sort by time."""


def _latest_config(root: Path) -> dict:
    stamps = sorted(m.group(1) for p in root.glob("config_*.yaml") if (m := STAMPED_CONFIG.fullmatch(p.name)))
    if not stamps:
        return read_run_config(root)
    extras = root / f"{Path(EXTRAS_NAME).stem}_{stamps[-1]}.yaml"
    return read_config_files([root / f"config_{stamps[-1]}.yaml", *([extras] if extras.is_file() else [])])


def _without_run_dir(config: Any) -> Any:
    """``config`` without ``hydra.run.dir``: a run reused on purpose (a resume, ``--run``) is that
    folder whatever the config's ``${now:...}`` stamp names, so the stamp alone is no new config."""
    if not isinstance(config, dict) or not isinstance(config.get("hydra"), dict):
        return config
    hydra = dict(config["hydra"])
    if isinstance(hydra.get("run"), dict):
        hydra["run"] = {k: v for k, v in hydra["run"].items() if k != "dir"}
    return {**config, "hydra": hydra}


def _unwritable(key: str, root: Path, exc: OSError) -> UserError:
    reason = exc.strerror or str(exc)
    if exc.filename and Path(exc.filename) != root:
        reason = f"{exc.filename}: {reason}"
    return UserError(f"{key}: cannot write the run directory {root}: {reason}")


def _claim_new_run_dir(base: Path, config_text: str, limit: int = 10_000) -> Path:
    """``base``, or the first free ``base_1``, ``base_2``, …: a folder is taken once it holds a
    ``config.yaml``, and this process takes one by creating that file (with ``config_text``)
    exclusively (``O_EXCL``)."""
    if base.exists() and not base.is_dir():
        raise ConfigError("hydra.run.dir", f"{base} is a {'file' if base.is_file() else 'device or special file'}, "
                                           "not a folder: name the folder the run should write into")
    for n in range(limit):
        candidate = base if n == 0 else base.with_name(f"{base.name}_{n}")
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            fd = os.open(candidate / CONFIG_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # another run's folder (or a file of that name)
        except OSError as exc:
            raise _unwritable("hydra.run.dir", candidate, exc) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(config_text)
        except OSError as exc:
            raise _unwritable("hydra.run.dir", candidate, exc) from None
        return candidate
    raise UserError(f"hydra.run.dir: {base} and {limit - 1} numbered folders beside it hold other runs")


def _stamp() -> str:
    import time

    return time.strftime("%Y_%m_%d_%H_%M_%S")


def is_run_dir(path: Path) -> bool:
    """A stmclf run directory: it holds the run's ``config.yaml`` and its log."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / LOG_NAME).is_file()


def find_run_dir(path: str | Path, levels: int = 3) -> Path | None:
    """The run directory that holds ``path`` (a model file inside ``<run>/saved_models/`` or
    ``<run>/quantized_models/``), or None."""
    current = Path(path).resolve()
    for parent in list(current.parents)[:levels]:
        if is_run_dir(parent):
            return parent
    return None


class _RedactingFormatter(logging.Formatter):
    """A log line as written to the run's log, through ``redact`` (the values of the environment
    variables the config used shown as ``${NAME}``: a path built on a private directory)."""

    def __init__(self, fmt: str, redact: Callable[[str], str]) -> None:
        super().__init__(fmt)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def attach_log_file(path: Path, redact: Optional[Callable[[str], str]] = None) -> None:
    logger = logging.getLogger("stmclf")
    resolved = str(path.resolve())
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == resolved:
            return
    handler = logging.FileHandler(resolved, encoding="utf-8", errors="backslashreplace")  # non-UTF-8 file names
    fmt = "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt) if redact is None else _RedactingFormatter(fmt, redact))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
