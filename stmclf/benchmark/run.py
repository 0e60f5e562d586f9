"""``stmclf benchmark`` and the benchmarking modes: footprint of a model on an STM32 board.

The numbers come from the first source that works, in this order (the output says which one):
1. a run on the board through the STM32Cube.AI Developer Cloud (``tools.stedgeai.on_cloud: True``),
2. a cloud analyze (the cloud client falls back to it when the board run fails),
3. a local ``stedgeai generate`` (``on_cloud: False`` and ``path_to_stedgeai``, or after a cloud
   login failure when the executable is configured),
4. the offline estimate (``--offline``, or when nothing else is available): MACC, weights flash
   and activation RAM computed from the model file.
Results go to the terminal, ``<run>/benchmark.json`` (the reference's field names plus
``source``), MLflow and the HTML report.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from stmclf.config import RunConfig
from stmclf.errors import ConfigError, UserError

log = logging.getLogger("stmclf.benchmark")
DEFAULT_BOARD = "STM32H747I-DISCO"


def _tool(cfg: RunConfig):
    tools = cfg.tools
    return (tools.stedgeai or tools.stm32ai) if tools else None


def _board(cfg: RunConfig, board: Optional[str]) -> str:
    from stmclf.benchmark.boards import check_board

    name = board or (cfg.benchmarking.board if cfg.benchmarking else None) or DEFAULT_BOARD
    return check_board(name, "benchmarking.board")


def cloud_login_first(cfg: RunConfig, offline: bool):
    """Chains that end in a benchmark log in before the long steps (the reference's order):
    returns a connected client, or None (offline, local tool, or login failure → later fallback)."""
    tool = _tool(cfg)
    if offline or tool is None or not tool.on_cloud:
        return None
    from stmclf.benchmark.cloud import CloudClient, CloudError

    try:
        return CloudClient().connect(tool.version)
    except CloudError as exc:
        log.warning("Developer Cloud unavailable (%s): the benchmark will fall back", exc)
        return None


def measure(cfg: RunConfig, model_path: Path, run_root: Path, *, board: Optional[str] = None,
            offline: bool = False, client=None):
    """The footprint of ``model_path`` from the first source that works (see the module doc)."""
    from stmclf.benchmark.estimate import estimate_footprint

    board = _board(cfg, board)
    tool = _tool(cfg)
    if not offline and tool is not None and tool.on_cloud:
        from stmclf.benchmark.cloud import CloudError, LoginError, ServiceUnreachable, cloud_footprint

        try:
            return cloud_footprint(model_path, board, version=tool.version, optimization=tool.optimization,
                                   client=client, work_dir=run_root / "stm32ai_files")
        except (LoginError, ServiceUnreachable) as exc:
            log.warning("Developer Cloud: %s; falling back", exc)
        except CloudError:
            raise
    if not offline and tool is not None and (tool.path_to_stedgeai or tool.path_to_stm32ai):
        from stmclf.benchmark.stedgeai import StEdgeAiError, stedgeai_footprint

        try:
            return stedgeai_footprint(model_path, run_root / "stm32ai_files",
                                      path_to_stedgeai=tool.path_to_stedgeai or tool.path_to_stm32ai,
                                      optimization=tool.optimization, version=tool.version)
        except StEdgeAiError as exc:
            if not tool.on_cloud:  # the configured local tool itself is broken: say so
                raise
            log.warning("local stedgeai: %s; falling back to the offline estimate", exc)
    estimate = estimate_footprint(model_path, board=board)
    for line in estimate.summary_lines():
        log.info("%s", line)
    return estimate.footprint(board)


def print_footprint(footprint) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Footprint ({footprint.source}{', ' + footprint.board if footprint.board else ''})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in footprint.metrics().items():
        table.add_row(name, f"{value:,.2f}" if isinstance(value, float) else str(value))
    Console().print(table)


def benchmark_artifact(cfg: RunConfig, model_path: Path, run_root: Path, *, board: Optional[str] = None,
                       offline: bool = False, client=None, mlflow_logger=None):
    """Measure, then report: table, ``benchmark.json``, log lines, MLflow metrics and params."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ConfigError("general.model_path", f"unable to find the model to benchmark: {model_path}")
    if model_path.suffix.lower() not in (".tflite", ".onnx"):
        raise UserError(f"benchmark: {model_path} is not a .tflite or .onnx model; export it first "
                        "(stmclf export --int8)")
    footprint = measure(cfg, model_path, run_root, board=board, offline=offline, client=client)
    print_footprint(footprint)
    footprint.write_json(run_root / "benchmark.json")
    log.info("Benchmark of %s: source %s", model_path.name, footprint.source)
    for name, value in footprint.metrics().items():
        log.info("%s : %s", name, value)
    if mlflow_logger is not None:
        mlflow_logger.log_metrics({k: float(v) for k, v in footprint.metrics().items() if v is not None})
        tool = _tool(cfg)
        mlflow_logger.log_hyperparams({"stm32ai_version": str(tool.version if tool else None),
                                       "target": footprint.board or _board(cfg, board),
                                       "benchmark_source": footprint.source})
    return footprint


def benchmark_mode(cfg: RunConfig, model_path: Optional[str] = None, *, board: Optional[str] = None,
                   offline: bool = False, operation_mode: str = "benchmarking"):
    """``stmclf benchmark`` / ``operation_mode: benchmarking``: one run directory and MLflow run."""
    from stmclf.training.run_dir import create_run_dir
    from stmclf.training.tracking import finish_mlflow_run, start_mlflow_run

    model_path = model_path or cfg.general.model_path
    if not model_path:
        raise ConfigError("general.model_path", "benchmarking needs a .tflite or .onnx model (--model or "
                                                "general.model_path)")
    _board(cfg, board)  # a bad board name fails before anything is written
    client = cloud_login_first(cfg, offline)
    run = create_run_dir(cfg)
    log.info("operation_mode: %s", operation_mode)
    mlflow_logger = start_mlflow_run(cfg, run, operation_mode, extra_params={"model_path": str(model_path)})
    footprint = benchmark_artifact(cfg, Path(model_path), run.root, board=board, offline=offline, client=client,
                                   mlflow_logger=mlflow_logger)
    log.info("operation finished: %s", operation_mode)
    finish_mlflow_run(mlflow_logger, run)
    return footprint
