"""The run directory (``hydra.run.dir``): layout, resolved config, log file."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from stmclf.config import RunConfig

LOG_NAME = "stmclf.log"


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


def create_run_dir(cfg: RunConfig, *, write_files: bool | None = None) -> RunDir:
    """Create the run directory, save the resolved config and attach the log file (rank 0 only in
    a distributed run)."""
    from stmclf.training.tracking import is_global_zero

    if write_files is None:
        write_files = is_global_zero()
    root = cfg.run_dir.resolve()
    run = RunDir(root, root / cfg.general.saved_models_dir, root / cfg.general.logs_dir)
    if write_files:
        for path in (run.root, run.saved_models, run.logs):
            path.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(cfg.resolved_yaml)
        attach_log_file(run.log_file)
    return run


def attach_log_file(path: Path) -> None:
    logger = logging.getLogger("stmclf")
    resolved = str(path.resolve())
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == resolved:
            return
    handler = logging.FileHandler(resolved, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
