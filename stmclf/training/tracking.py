"""Run records: the per-epoch metrics CSV, training curves, and MLflow."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlparse

import lightning as L
from lightning.pytorch.callbacks import Callback

from stmclf.figures import save_figure

log = logging.getLogger(__name__)
CSV_COLUMNS = ("epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss")


class EpochCSVLogger(Callback):
    """Keras ``CSVLogger``: one row per epoch (epoch, accuracy, loss, lr, val_accuracy, val_loss).

    Appends, so a resumed run continues the same file; flushed every epoch."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.epochs_written = 0

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for column in CSV_COLUMNS[1:]:
            value = metrics.get(column)
            row[column] = "" if value is None else f"{float(value):.6g}"
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
    """Accuracy and loss per epoch, training vs validation, as a PNG."""
    if not Path(csv_path).exists():
        return None
    rows = read_metrics_csv(csv_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            points = [(e, r[key]) for e, r in zip(epochs, rows) if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
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
    if parsed.scheme and len(parsed.scheme) > 1:
        return uri, None
    root = Path(uri).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


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


def make_mlflow_logger(uri: str, experiment: str, run_name: str, run_id: Optional[str] = None):
    """Lightning's MLFlowLogger for a new run, or for the existing run ``run_id`` (chains)."""
    from lightning.pytorch.loggers import MLFlowLogger

    tracking_uri, artifact_location = resolve_tracking_uri(uri)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=tracking_uri,
                        artifact_location=artifact_location, log_model=False, run_id=run_id)


def log_artifacts(mlflow_logger, paths: Iterable[Path]) -> None:
    client, run_id = mlflow_logger.experiment, mlflow_logger.run_id
    for path in paths:
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path))
        elif path.exists():
            client.log_artifact(run_id, str(path))


def is_global_zero() -> bool:
    """Rank 0 of a (possibly distributed) run, known before the Trainer exists (torchrun, SLURM)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def start_mlflow_run(cfg, run, operation_mode: str, extra_params: Optional[dict] = None):
    """An MLflow run for ``operation_mode`` in the experiment ``general.project_name``, named after the
    run directory, with the flattened config as params (rank 0 only: Lightning's logger)."""
    mlflow_logger = make_mlflow_logger(cfg.mlflow.uri, cfg.general.project_name, run.root.name)
    mlflow_logger.log_hyperparams({"operation_mode": operation_mode, **(extra_params or {}),
                                   **loggable_params(cfg.to_dict())})
    return mlflow_logger


def finish_mlflow_run(mlflow_logger, run) -> None:
    """Write the HTML report, log the whole run directory as artifacts and close the run."""
    from stmclf.evaluate.report import write_report

    write_report(run.root)
    log_artifacts(mlflow_logger, [run.root])
    mlflow_logger.finalize("FINISHED")
