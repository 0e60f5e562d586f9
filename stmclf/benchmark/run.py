"""``stmclf benchmark`` and the benchmarking modes: footprint of a model on an STM32 board.

The numbers come from the first source that works, in this order (the output says which one):
1. a run on the board through the STM32Cube.AI Developer Cloud (``tools.stedgeai.on_cloud: True``),
2. a cloud analyze (the cloud client falls back to it when the board run fails),
3. a local ``stedgeai generate`` (``on_cloud: False`` and ``path_to_stedgeai``, or after a cloud
   login failure when the executable is configured),
4. the offline estimate (``--offline``, or when nothing else is available): MACC, weights flash
   and activation RAM computed from the model file.
Results go to the terminal, ``<run>/benchmark.json`` (the reference's field names plus
``source``) and MLflow; run directories and MLflow runs are :mod:`stmclf.orchestration`'s.
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


def board_name(cfg: RunConfig, board: Optional[str] = None) -> str:
    """``board`` (command line), else ``benchmarking.board``, else the default board; checked."""
    from stmclf.benchmark.boards import check_board

    name = board or (cfg.benchmarking.board if cfg.benchmarking else None) or DEFAULT_BOARD
    return check_board(name, "benchmarking.board")


def board_capacity(board: str) -> dict[str, object]:
    """The board's memories for ``benchmark.json`` (what the report compares the footprint with)."""
    from stmclf.benchmark.boards import get_board

    try:
        spec = get_board(board)
    except ConfigError:  # a cloud board stmclf's table does not know
        return {}
    return {"board_name": spec.name, "board_flash_bytes": spec.flash_bytes, "board_ram_bytes": spec.ram_bytes,
            "board_ext_flash_bytes": spec.ext_flash_bytes, "board_ext_ram_bytes": spec.ext_ram_bytes}


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

    board = board_name(cfg, board)
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
    from stmclf.models.source import resolve_model_source

    source = resolve_model_source(model_path).require("benchmark", "benchmarking")
    if not source.is_artifact:
        raise UserError(f"{source.path} is {source.text}: the benchmark measures ONNX and TFLite files (stmclf "
                        "benchmark exports other models to a float ONNX first)")
    model_path = source.path
    footprint = measure(cfg, model_path, run_root, board=board, offline=offline, client=client)
    print_footprint(footprint)
    footprint.write_json(run_root / "benchmark.json", board_capacity(footprint.board or board_name(cfg, board)))
    log.info("Benchmark of %s: source %s", model_path.name, footprint.source)
    for name, value in footprint.metrics().items():
        log.info("%s : %s", name, value)
    if mlflow_logger is not None:
        mlflow_logger.log_metrics({k: float(v) for k, v in footprint.metrics().items() if v is not None})
        tool = _tool(cfg)
        mlflow_logger.log_hyperparams({"stm32ai_version": str(tool.version if tool else None),
                                       "target": footprint.board or board_name(cfg, board),
                                       "benchmark_source": footprint.source})
    return footprint
