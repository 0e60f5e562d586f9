"""One run folder, one MLflow parent run: the journey train → quantize → evaluate → benchmark → deploy.

A :class:`Journey` owns the run directory of a mode or command (a new one from
``hydra.run.dir``, or an existing run given by ``--run`` or found around a model file), its log
file, and its MLflow parent run (named after the folder and the model). Each stage runs inside
:meth:`Journey.stage`, which opens a child MLflow run for it (``train``, ``export``,
``evaluate``, ``benchmark``, ``predict``, ``deploy``), and on leaving logs the stage's files to
it, copies its metrics and the run's summary files to the parent, and rewrites the HTML report.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from stmclf.config import RunConfig
from stmclf.config.run_files import CONFIG_NAME, EXTRAS_NAME
from stmclf.training.mlflow_runs import end_open_runs
from stmclf.training.run_dir import RunDir, create_run_dir, find_run_dir
from stmclf.training.tracking import end_stage_run, finish_mlflow_run, is_global_zero, start_mlflow_run

log = logging.getLogger("stmclf")

STAGE_ARTIFACTS = {
    "train": (CONFIG_NAME, EXTRAS_NAME, "stmclf.log", "training_curves.png", "{saved_models}", "{logs}/metrics"),
    "export": ("{export_dir}",),
    "evaluate": ("results.json",),
    "benchmark": ("benchmark.json",),
    "predict": ("predictions",),
    "deploy": ("generated",),
}
SUMMARY_FILES = ("report.html", "results.json", "benchmark.json", CONFIG_NAME, EXTRAS_NAME)


def _time_stamped(cfg: Optional[RunConfig]) -> bool:
    """``hydra.run.dir`` names a new folder per invocation (``${now:...}``, the default), not a fixed one."""
    from stmclf.config.sections import DEFAULT_RUN_DIR

    if cfg is None or "hydra.run.dir" in cfg.time_stamped_keys:
        return True
    return "${now:" in str(((cfg.hydra or {}).get("run") or {}).get("dir") or DEFAULT_RUN_DIR)


def resolve_run_dir(run: Optional[str | Path] = None, model: Optional[str | Path] = None,
                    cfg: Optional[RunConfig] = None) -> Optional[Path]:
    """The run folder a command writes into: ``--run``; else, unless ``hydra.run.dir`` names a
    fixed folder, the run folder that holds ``model`` (``<run>/saved_models/best_model.pt``);
    else None (a new folder from ``hydra.run.dir``)."""
    if run is not None:
        return Path(run).expanduser()
    if model is not None and Path(model).exists() and _time_stamped(cfg):
        found = find_run_dir(model)
        if found is not None:
            log.info("Run folder: %s (it holds %s)", found, model)
        return found
    return None


def resume_run_dir(cfg: RunConfig) -> Optional[Path]:
    """A resumed training continues in the run folder of its checkpoint, unless ``hydra.run.dir``
    names another fixed folder (one without a ``${now:...}`` time stamp). A fixed ``hydra.run.dir``
    that is the checkpoint's own folder (a job that resumes where it left off: the same command
    run again) is that folder, not a new ``<dir>_1`` beside it."""
    checkpoint = cfg.training.resume_training_from if cfg.training else None
    if not checkpoint:
        return None
    found = find_run_dir(checkpoint)
    if _time_stamped(cfg) or found is None:
        return found
    return found if cfg.run_dir.resolve() == found else None


class Journey:
    """The run folder and MLflow parent run of one mode or command (see the module doc)."""

    def __init__(self, cfg: RunConfig, root: Optional[Path] = None, *, model_name: str = "",
                 write_files: Optional[bool] = None) -> None:
        self.cfg = cfg
        self.model_name = model_name
        self.writes = is_global_zero() if write_files is None else write_files
        self.run: RunDir = create_run_dir(cfg, root=root, write_files=self.writes)

    @property
    def root(self) -> Path:
        return self.run.root

    def _artifacts(self, stage: str, extra: Iterable[Path]) -> list[Path]:
        export_dir = (self.cfg.quantization.export_dir if self.cfg.quantization else None) or "quantized_models"
        names = [p.format(saved_models=self.cfg.general.saved_models_dir, logs=self.cfg.general.logs_dir,
                          export_dir=export_dir) for p in STAGE_ARTIFACTS.get(stage, ())]
        return [self.root / n for n in names] + list(extra)

    def start_stage(self, stage: str, extra_params: Optional[dict] = None):
        """The child MLflow run of ``stage`` (None on ranks other than 0)."""
        if not self.writes:
            return None
        log.info("stage: %s", stage)
        return start_mlflow_run(self.cfg, self.run, stage, extra_params=extra_params, model_name=self.model_name)

    def end_stage(self, stage: str, mlflow_logger, artifacts: Iterable[Path] = ()) -> None:
        """Log the stage's files to its run, copy its metrics to the parent, rewrite the report."""
        if not self.writes or mlflow_logger is None:
            return
        self.write_report()
        finish_mlflow_run(mlflow_logger, self.run, artifacts=self._artifacts(stage, artifacts),
                          summary=[self.root / name for name in SUMMARY_FILES])

    @contextmanager
    def stage(self, stage: str, *, extra_params: Optional[dict] = None,
              artifacts: Iterable[Path] = ()) -> Iterator[Optional[object]]:
        """:meth:`start_stage` … :meth:`end_stage` around the block (the run is marked FAILED when
        the block raises)."""
        mlflow_logger = self.start_stage(stage, extra_params)
        try:
            yield mlflow_logger
        except BaseException as exc:
            end_stage_run(mlflow_logger, exc)
            raise
        self.end_stage(stage, mlflow_logger, artifacts)

    def write_report(self) -> Optional[Path]:
        if not self.writes:
            return None
        from stmclf.evaluate.report import write_report

        return write_report(self.root)

    def finish(self, operation: str) -> None:
        """Every stage finished: so does the MLflow parent run (until now RUNNING; a command that
        stops before this ends it FAILED or KILLED: ``stmclf.cli.main``)."""
        if self.writes:
            log.info("operation finished: %s", operation)
            end_open_runs("FINISHED")
