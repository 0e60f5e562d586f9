"""Run records: the per-epoch metrics CSV, training curves, and MLflow."""
from __future__ import annotations

import csv
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import urlparse

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger

from stmclf.errors import UserError, one_line
from stmclf.figures import save_figure
from stmclf.files import atomic_write_text
from stmclf.training import mlflow_runs
from stmclf.training.progress import ACCURACY_METRICS, shown_epoch

log = logging.getLogger(__name__)
CSV_COLUMNS = ("epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss")


class EpochCSVLogger(Callback):
    """Keras ``CSVLogger``'s columns: one row per epoch (epoch, accuracy, loss, lr, val_accuracy,
    val_loss), in the units stmclf shows everywhere: epochs from 1, accuracies in %.

    Appends, so a resumed run continues the same file; flushed every epoch."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.epochs_written = 0

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": shown_epoch(trainer)}
        for column in CSV_COLUMNS[1:]:
            value = metrics.get(column)
            scale = 100.0 if column in ACCURACY_METRICS else 1.0
            row[column] = "" if value is None else f"{scale * float(value):.6g}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.epochs_written += 1


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    with Path(path).open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def plot_training_curves(csv_path: Path, out: Path) -> Optional[Path]:
    """Accuracy (%) and loss per epoch (from 1, as in the CSV), training vs validation, as a PNG."""
    if not Path(csv_path).exists():
        return None
    rows = read_metrics_csv(csv_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            points = [(e, r[key]) for e, r in zip(epochs, rows) if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("accuracy (%)" if metric == "accuracy" else metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, out)


def make_tensorboard_logger(run_root: Path, logs_dir: str):
    """Lightning's TensorBoardLogger writing into ``<run>/<logs_dir>``.

    TensorBoard imports TensorFlow when it is installed (+5 s and a screen of TF start-up
    messages per process) only to write event files; registering its documented
    ``tensorboard.compat.notf`` marker makes it use its own small stub instead."""
    import sys
    import types

    from lightning.pytorch.loggers import TensorBoardLogger

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    return TensorBoardLogger(save_dir=str(run_root), name=logs_dir, version="", default_hp_metric=False)


# ---------------------------------------------------------------------------------------------
# MLflow

def resolve_tracking_uri(uri: str) -> tuple[str, Optional[str]]:
    """``mlflow.uri`` → (tracking URI, artifact location for new experiments).

    ST configs give a directory (``./experiments_outputs/mlruns``). MLflow 3 refuses plain
    directory stores, so a directory becomes a SQLite store inside it
    (``<dir>/mlflow.db``, artifacts in ``<dir>/artifacts``); view it with
    ``mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db``. URIs with a scheme
    (``http(s)://``, ``sqlite:///``, ``databricks``, ...) are used as given; an explicit
    ``file:`` URI keeps MLflow's file store.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri, None
    if parsed.scheme in ("http", "https"):
        # MLflow's defaults retry an unreachable server for minutes (7 retries, backoff 2, 120 s
        # timeout): a wrong address would look like a hang. The environment still overrides these.
        for name, value in _REMOTE_DEFAULTS.items():
            os.environ.setdefault(name, value)
    if parsed.scheme and len(parsed.scheme) > 1:
        return uri, None
    root = store_directory(uri)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _store_error(root, exc) from None
    artifacts = (root / "artifacts").as_uri()
    with store_lock(root):
        relocate_store(root / "mlflow.db", artifacts)
    return f"sqlite:///{root / 'mlflow.db'}", artifacts


_REMOTE_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def store_directory(uri: str) -> Optional[Path]:
    """The folder of a directory store (``mlflow.uri: ./experiments_outputs/mlruns``), or None for
    a URI with a scheme."""
    parsed = urlparse(uri)
    if parsed.scheme and (parsed.scheme == "file" or len(parsed.scheme) > 1):
        return None
    return Path(uri).expanduser().resolve()


def _store_error(root: Path, exc: BaseException) -> UserError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
    if isinstance(exc, OSError) and exc.filename and Path(exc.filename) != root:
        reason = f"{exc.filename}: {reason}"
    return UserError(f"mlflow.uri: cannot write the MLflow store {root}: {reason}")


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on ``<store>/.lock`` (``flock``, released if the process dies): creating the
    SQLite store and its experiments is serialized between processes that start together."""
    try:
        handle = open(root / ".lock", "a")
    except OSError as exc:
        raise _store_error(root, exc) from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_STORE_WRITE_ERRORS = ("readonly database", "read-only", "unable to open database", "disk is full",
                       "disk i/o error", "permission denied", "no space left")
_STORE_RETRY_ERRORS = ("database is locked", "already exists", "database table is locked")


def _store_call(root: Optional[Path], action: Callable[[], Any], attempts: int = 5) -> Any:
    """``action()`` on the store of ``root`` (under its lock when it is a directory store): a
    store that cannot be written is a one-line error naming it; a store busy with another process
    (locked, schema created meanwhile) is retried."""
    for attempt in range(attempts):
        try:
            if root is None:
                return action()
            with store_lock(root):
                return action()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/MLflow errors, told apart by their text
            text = " ".join(str(e).lower() for e in _chain(exc))
            if any(word in text for word in _STORE_RETRY_ERRORS) and attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            if root is not None and any(word in text for word in _STORE_WRITE_ERRORS + _STORE_RETRY_ERRORS):
                raise _store_error(root, exc) from None
            raise


def _chain(exc: Optional[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def relocate_store(db: Path, artifacts_uri: str) -> int:
    """A directory store that was moved (``experiments_outputs/`` copied elsewhere) still records
    its old artifact location: point the experiments and runs whose artifact folder no longer
    exists at the store's own ``artifacts`` folder. Returns the number of experiments moved."""
    import sqlite3

    if not db.is_file():
        return 0
    moved = 0
    with sqlite3.connect(db, timeout=60) as con:
        if not con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='experiments'").fetchone():
            return 0
        for (location,) in con.execute("SELECT DISTINCT artifact_location FROM experiments").fetchall():
            if not location or location == artifacts_uri or not location.startswith("file:") \
                    or not location.rstrip("/").endswith("/artifacts") or Path(urlparse(location).path).exists():
                continue
            old = location.rstrip("/")
            con.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                        "WHERE artifact_location LIKE ?", (artifacts_uri, len(old) + 1, old + "%"))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE artifact_uri LIKE ?",
                        (artifacts_uri, len(old) + 1, old + "%"))
            moved += 1
    if moved:
        log.info("MLflow store %s was moved: artifact locations now under %s", db.parent, artifacts_uri)
    return moved


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = data
    return out


SECRET_WORDS = ("password", "token", "secret", "username")


def loggable_params(config: dict[str, Any]) -> dict[str, str]:
    """The flattened config as MLflow params, with credentials left out."""
    params = {}
    for key, value in flatten(config).items():
        if any(word in key.lower() for word in SECRET_WORDS) or value is None:
            continue
        params[key] = str(value)[:6000]
    return params


class StageLogger(MLFlowLogger):
    """Lightning's MLFlowLogger for a stage's run, which its stage ends (:func:`end_stage_run`,
    :func:`finish_mlflow_run`): the trainer's own end of the run when the fit ends (``success``,
    ``failed``) is left out, so that the run stays RUNNING while the stage goes on after the fit
    (the evaluation of the trained model)."""

    def finalize(self, status: str = "success") -> None:
        if status not in ("success", "failed"):
            super().finalize(status)


def make_mlflow_logger(uri: str, experiment: str, run_name: str, run_id: Optional[str] = None,
                       tags: Optional[dict[str, str]] = None):
    """A :class:`StageLogger` for a new run, or for the existing run ``run_id``."""
    tracking_uri, artifact_location = resolve_tracking_uri(uri)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return StageLogger(experiment_name=experiment, run_name=run_name, tracking_uri=tracking_uri,
                        artifact_location=artifact_location, log_model=False, run_id=run_id, tags=tags)


def log_artifacts(mlflow_logger, paths: Iterable[Path]) -> None:
    client, run_id = mlflow_logger.experiment, mlflow_logger.run_id
    for path in paths:
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.exists():
            client.log_artifact(run_id, str(path))


def is_global_zero() -> bool:
    """Rank 0 of a (possibly distributed) run, known before the Trainer exists (torchrun, SLURM)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# ---------------------------------------------------------------------------------------------
# One MLflow parent run per run directory, one child run per stage.

RUN_RECORD = "mlflow_run.json"
"""In the run directory: the tracking URI, experiment and parent run id of the run's journey."""


def _experiment_id(client, name: str, artifact_location: Optional[str]) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # noqa: BLE001 - created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


_reconciled: set[str] = set()
"""The tracking URIs :func:`_reconcile` went through in this process (once each: at its first stage)."""


def _reconcile(client, tracking_uri: str) -> None:
    """Runs left RUNNING by a process of this host that is gone become KILLED
    (:func:`mlflow_runs.reconcile`); a store that refuses is no reason to stop the command."""
    if tracking_uri in _reconciled:
        return
    _reconciled.add(tracking_uri)
    try:
        mlflow_runs.reconcile(client)
    except Exception:  # noqa: BLE001 - the next command tries again
        log.debug("could not reconcile the MLflow runs left RUNNING", exc_info=True)


def _reopen(client, run_id: str) -> None:
    """The parent run ``run_id`` of a run folder used again: owned by this process, RUNNING (the
    note of a reconciliation that ended it before is dropped)."""
    from mlflow.entities import RunTag

    tags = client.get_run(run_id).data.tags  # a run deleted meanwhile raises: a new parent is made
    mlflow_runs.opened(client, run_id)
    # The owner first: another process that reconciles must not see it RUNNING with a dead owner.
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in mlflow_runs.owner_tags().items()])
    client.update_run(run_id, "RUNNING")
    if mlflow_runs.ENDED_TAG in tags:
        client.delete_tag(run_id, mlflow_runs.ENDED_TAG)


def parent_run_id(cfg, run, model_name: str = "") -> str:
    """The MLflow parent run of the run directory ``run`` (created at its first stage, named after
    the directory and the model); its id is kept in ``<run>/mlflow_run.json``.

    The parent is RUNNING from here until the command ends (:func:`mlflow_runs.end_open_runs`):
    FINISHED when its stages all finished, FAILED or KILLED otherwise. Runs that a process of this
    host which is gone left RUNNING in the store are first marked KILLED (:func:`_reconcile`)."""
    import json

    from mlflow.tracking import MlflowClient

    tracking_uri, artifact_location = resolve_tracking_uri(cfg.mlflow.uri)
    store = store_directory(cfg.mlflow.uri)
    # Opening a new store creates its tables: one process at a time.
    client = _store_call(store, lambda: MlflowClient(tracking_uri=tracking_uri))
    _reconcile(client, tracking_uri)
    record_path = Path(run.root) / RUN_RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("tracking_uri") == tracking_uri and record.get("parent_run_id"):
        if mlflow_runs.is_open(record["parent_run_id"]):  # a later stage of this command
            return record["parent_run_id"]
        try:
            _store_call(store, lambda: _reopen(client, record["parent_run_id"]))
            return record["parent_run_id"]
        except Exception:  # noqa: BLE001 - deleted, or another store: make a new one
            mlflow_runs.forget(record["parent_run_id"])
    experiment_id = _store_call(store, lambda: _experiment_id(client, cfg.general.project_name, artifact_location))
    name = f"{Path(run.root).name} {model_name}".strip()
    parent = _store_call(store, lambda: client.create_run(
        experiment_id, run_name=name,
        tags={"stmclf.run_dir": str(run.root), "stmclf.model": model_name, **mlflow_runs.owner_tags()}))
    mlflow_runs.opened(client, parent.info.run_id)
    atomic_write_text(record_path, json.dumps({"tracking_uri": tracking_uri, "experiment": cfg.general.project_name,
                                               "parent_run_id": parent.info.run_id}, indent=1))
    return parent.info.run_id


def start_mlflow_run(cfg, run, stage: str, extra_params: Optional[dict] = None, model_name: str = ""):
    """A child MLflow run for ``stage`` (train, export, evaluate, benchmark, predict, …) under the
    parent run of the run directory, with the flattened config as params (rank 0 only)."""
    try:
        parent = parent_run_id(cfg, run, model_name)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a server that does not answer, a scheme MLflow does not know
        if store_directory(cfg.mlflow.uri) is not None:
            raise
        tail = _chain(exc)[-1]  # "[Errno 111] Connection refused" rather than MLflow's retry wrapper
        reason = one_line(tail if isinstance(tail, OSError) else exc, 200)
        raise UserError(f"mlflow.uri: cannot use the MLflow tracking URI {cfg.mlflow.uri}: {reason}") from None
    mlflow_logger = make_mlflow_logger(cfg.mlflow.uri, cfg.general.project_name, stage,
                                       tags={"mlflow.parentRunId": parent, "stmclf.stage": stage,
                                             **mlflow_runs.owner_tags()})
    params = {"operation_mode": cfg.operation_mode or stage, "stage": stage, **(extra_params or {}),
              **loggable_params(cfg.redacted_dict())}
    store = store_directory(cfg.mlflow.uri)
    try:
        client = _store_call(store, lambda: mlflow_logger.experiment)  # creates the run
        mlflow_runs.opened(client, mlflow_logger.run_id)
        _store_call(store, lambda: mlflow_logger.log_hyperparams(params))
    except BaseException as exc:  # the run exists once the logger made it: end it, do not leave it RUNNING
        end_stage_run(mlflow_logger, exc)
        raise
    return mlflow_logger


def ended_status(exc: BaseException) -> str:
    """The MLflow status of a stage that ended with ``exc``: KILLED for a signal (Ctrl+C, SIGTERM:
    :class:`~stmclf.errors.Interrupted` is a KeyboardInterrupt), else FAILED."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _end_quietly(action: Callable[[], Any]) -> None:
    """``action`` (ending a run) without letting its own failure, or a second Ctrl+C, replace the
    exception being handled."""
    try:
        action()
    except BaseException:  # noqa: BLE001 - the original exception is the one to report
        log.debug("could not end the MLflow run", exc_info=True)


def _end_stage(mlflow_logger, status: str) -> None:
    mlflow_logger.finalize(status)
    # (Lightning's ``run_id`` property would create a run that was never made.)
    mlflow_runs.forget(getattr(mlflow_logger, "_run_id", None))


def end_stage_run(mlflow_logger, exc: BaseException) -> None:
    """End a stage's run after ``exc``: KILLED (interrupted) or FAILED (an error), never left RUNNING."""
    if mlflow_logger is not None:
        status = ended_status(exc)
        _end_quietly(lambda: _end_stage(mlflow_logger, status))


def finish_mlflow_run(mlflow_logger, run, artifacts: Iterable[Path] = (), summary: Iterable[Path] = ()) -> None:
    """Close a stage's run: its ``artifacts`` logged to it; its metrics and the run's ``summary``
    files (report, results) copied to the parent run, so the parent shows the whole journey."""
    if mlflow_logger is None:
        return
    log_artifacts(mlflow_logger, artifacts)
    _end_stage(mlflow_logger, "FINISHED")
    client = mlflow_logger.experiment
    child = client.get_run(mlflow_logger.run_id)
    parent = child.data.tags.get("mlflow.parentRunId")
    if not parent:
        return
    from mlflow.entities import Metric

    metrics = [Metric(key, value, int(child.info.end_time or 0), 0) for key, value in child.data.metrics.items()]
    for start in range(0, len(metrics), 500):
        client.log_batch(parent, metrics=metrics[start:start + 500])
    for path in summary:
        if Path(path).is_file():
            client.log_artifact(parent, str(path))
