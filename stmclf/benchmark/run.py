"""``stmclf benchmark`` and the benchmarking modes: footprint of a model on an STM32 board.

The numbers come from the first source that works, in this order (the output says which one):
1. a run on the board through the STM32Cube.AI Developer Cloud (``tools.stedgeai.on_cloud: True``),
2. a cloud analyze (the cloud client falls back to it when the board run fails),
3. a local ``stedgeai generate`` (``on_cloud: False`` and ``path_to_stedgeai``, or after a cloud
   login failure when the executable is configured),
4. the offline estimate (``--offline``, or when nothing else is available): MACC, weights flash
   and activation RAM computed from the model file.
Whatever the source, three companions are added (:func:`add_companions`): the tensor arena TFLite
Micro really allocates for a ``.tflite`` model (source ``tflm``: head = planned tensors, tail =
persistent buffers; none for ONNX), the offline latency on the board (source ``estimate``,
:mod:`stmclf.benchmark.latency`; none after a board run, which measured it, and none for boards the
calibration does not cover), and the board-fit check, on the TFLM arena when there is one (a real
runtime's allocation) and on the source's activations otherwise, naming the figure it used.
Results go to the terminal, ``<run>/benchmark.json`` (the reference's field names plus
``source``, and ``tflm``, ``latency``, ``ram_fit``) and MLflow; run directories and MLflow runs are
:mod:`stmclf.orchestration`'s.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from stmclf.config import RunConfig
from stmclf.errors import ConfigError, UserError, one_line

log = logging.getLogger("stmclf.benchmark")
DEFAULT_BOARD = "STM32H747I-DISCO"


def _tool(cfg: RunConfig):
    tools = cfg.tools
    return (tools.stedgeai or tools.stm32ai) if tools else None


def board_name(cfg: RunConfig, board: Optional[str] = None, *, quiet: bool = False) -> str:
    """``board`` (command line), else ``benchmarking.board``, else the default board; checked.
    ``quiet``: no warning about the default board (the commands warned when they checked it first)."""
    from stmclf.benchmark.boards import check_board

    name = board or (cfg.benchmarking.board if cfg.benchmarking else None)
    if not name and not quiet:
        log.warning("benchmarking.board not given: benchmarking for %s (ST's service requires the benchmarking "
                    "section)", DEFAULT_BOARD)
    name = name or DEFAULT_BOARD
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


class CloudUnavailable:
    """The login before the long steps failed: the benchmark falls back at once instead of trying
    the Developer Cloud (and its retries) a second time."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def cloud_login_first(cfg: RunConfig, offline: bool):
    """Chains that end in a benchmark log in before the long steps (the reference's order):
    returns a connected client, None (offline or a local tool) or, when the login fails, a
    :class:`CloudUnavailable` that sends the benchmark to the next source. A configured local tool's
    time limits (``$STMCLF_STEDGEAI_TIMEOUT``, ``$STMCLF_STEDGEAI_VERSION_TIMEOUT``) are checked here
    too, and so is its executable when it is the source (``on_cloud: False``): a wrong one fails
    before the run folder and the long steps, not after them."""
    tool = _tool(cfg)
    if not offline and tool is not None and (tool.path_to_stedgeai or tool.path_to_stm32ai):
        from stmclf.benchmark.stedgeai import resolve_executable, tool_timeouts

        tool_timeouts()
        if not tool.on_cloud:  # the local tool is the source, not a fallback: a wrong one stops here, not after
            section = "tools.stedgeai" if cfg.tools.stedgeai else "tools.stm32ai"
            key = f"{section}.path_to_stedgeai" if tool.path_to_stedgeai else f"{section}.path_to_stm32ai"
            resolve_executable(tool.path_to_stedgeai or tool.path_to_stm32ai, key)
    if offline or tool is None or not tool.on_cloud:
        return None
    from stmclf.benchmark.cloud import CloudClient, CloudError, UnsafeLogin

    try:
        return CloudClient().connect(tool.version)
    except UnsafeLogin:  # the password would have gone elsewhere: say so, never fall back silently
        raise
    except CloudError as exc:
        log.warning("Developer Cloud unavailable (%s): the benchmark will fall back", exc)
        return CloudUnavailable(one_line(exc))


def measure(cfg: RunConfig, model_path: Path, run_root: Path, *, board: Optional[str] = None,
            offline: bool = False, client=None):
    """The footprint of ``model_path`` from the first source that works (see the module doc), with
    its companions (TFLM arena, latency estimate, board fit)."""
    board = board_name(cfg, board, quiet=True)
    footprint, estimate = _measure(cfg, model_path, run_root, board, offline, client)
    add_companions(footprint, model_path, board, estimate)
    return footprint


def _measure(cfg: RunConfig, model_path: Path, run_root: Path, board: str, offline: bool, client):
    """(footprint, the offline Estimate when that is the source, else None)."""
    from stmclf.benchmark.estimate import estimate_footprint

    tool = _tool(cfg)
    if not offline and tool is not None and tool.on_cloud and not isinstance(client, CloudUnavailable):
        from stmclf.benchmark.cloud import CloudError, LoginError, ServiceUnreachable, cloud_footprint

        try:
            return cloud_footprint(model_path, board, version=tool.version, optimization=tool.optimization,
                                   client=client, work_dir=run_root / "stm32ai_files"), None
        except (LoginError, ServiceUnreachable) as exc:
            log.warning("Developer Cloud: %s; falling back", exc)
        except CloudError:
            raise
    if not offline and tool is not None and (tool.path_to_stedgeai or tool.path_to_stm32ai):
        from stmclf.benchmark.stedgeai import StEdgeAiError, stedgeai_footprint

        try:
            return stedgeai_footprint(model_path, run_root / "stm32ai_files",
                                      path_to_stedgeai=tool.path_to_stedgeai or tool.path_to_stm32ai,
                                      optimization=tool.optimization, version=tool.version), None
        except StEdgeAiError as exc:
            if not tool.on_cloud:  # the configured local tool itself is broken: say so
                raise
            log.warning("local stedgeai: %s; falling back to the offline estimate", exc)
    estimate = estimate_footprint(model_path)  # the board-fit check comes with the companions
    for line in estimate.summary_lines():
        log.info("%s", line)
    return estimate.footprint(board), estimate


def tflm_record(model_path: Path) -> dict:
    """TFLite Micro's measured arena of a ``.tflite`` model (source ``tflm``), or why there is none."""
    if model_path.suffix.lower() != ".tflite":
        return {"source": "tflm", "available": False, "reason": "n/a (ONNX model: TFLite Micro runs .tflite files)"}
    from stmclf.export.tflm import TflmError, measure_arena

    try:
        arena = measure_arena(model_path)
    except TflmError as exc:
        log.warning("%s", exc)
        return {"source": "tflm", "available": False, "reason": one_line(exc)}
    return {"source": "tflm", "available": True, "arena_bytes": arena.total_bytes, "head_bytes": arena.head_bytes,
            "tail_bytes": arena.tail_bytes, "persistent_bytes": arena.persistent_bytes,
            "nonpersistent_bytes": arena.nonpersistent_bytes}


def latency_record(model_path: Path, board: str, estimate=None) -> dict:
    """The offline latency on ``board`` (source ``estimate``), or why there is none."""
    from stmclf.benchmark.estimate import estimate_footprint
    from stmclf.benchmark.latency import NoLatency, estimate_latency

    try:
        return estimate_latency(estimate or estimate_footprint(model_path), board).to_dict()
    except (NoLatency, UserError) as exc:
        return {"source": "estimate", "available": False, "board": board, "reason": one_line(exc)}


def board_fit(footprint, board: str):
    """The board-fit check of ``footprint``: RAM from ST's own tools when they measured it (a
    ``cloud`` or ``stedgeai`` result: STM32Cube.AI's runtime is what gets deployed), else from the
    TFLM arena when measured (a real MCU runtime, more conservative than the estimate), else from
    the estimate's activations (+ its runtime RAM, or the allowance); None for MPU results and
    boards stmclf's table does not know."""
    from stmclf.benchmark.estimate import CODE_FLASH_ALLOWANCE, RUNTIME_RAM_ALLOWANCE, fit_check

    if footprint.target == "mpu" or footprint.rom_size is None or footprint.ram_size is None:
        return None
    code = footprint.estimated_library_flash_size
    code = CODE_FLASH_ALLOWANCE if code is None else code
    arena = (footprint.tflm or {}).get("arena_bytes")
    try:
        if arena is not None and footprint.source not in ("cloud", "stedgeai"):
            return fit_check(footprint.rom_size, arena, board, code_flash=code, runtime_ram=0, ram_source="tflm")
        runtime = footprint.estimated_library_ram_size
        return fit_check(footprint.rom_size, footprint.ram_size, board, code_flash=code,
                         runtime_ram=RUNTIME_RAM_ALLOWANCE if runtime is None else runtime,
                         ram_source=footprint.source)
    except ConfigError:  # a cloud board stmclf's table does not know
        return None


def add_companions(footprint, model_path: Path, board: str, estimate=None) -> None:
    """Fill ``footprint.tflm``, ``.latency`` and ``.ram_fit`` (module doc) and log them."""
    if footprint.target != "mpu":
        footprint.tflm = tflm_record(model_path)
    if footprint.duration_ms is None:  # a board run measured the time itself
        footprint.latency = latency_record(model_path, board, estimate)
    fit = board_fit(footprint, board)
    footprint.ram_fit = fit.to_dict() if fit is not None else None
    for level, line in companion_lines(footprint):
        log.log(level, "%s", line)


def companion_lines(footprint) -> list[tuple[int, str]]:
    """(logging level, line) for the RAM figures, the board fit and the latency."""
    lines: list[tuple[int, str]] = []
    tflm = footprint.tflm
    if tflm is not None:
        kib = {k: tflm.get(k, 0) / 1024 for k in ("arena_bytes", "head_bytes", "tail_bytes")}
        ram = (f"RAM: activations {footprint.ram_size / 1024:.2f} KiB ({footprint.label})"
               if footprint.ram_size is not None else f"RAM: {footprint.label}")
        arena = (f"TFLM measured arena {kib['arena_bytes']:.2f} KiB (head {kib['head_bytes']:.2f} KiB of planned "
                 f"tensors + tail {kib['tail_bytes']:.2f} KiB of persistent buffers)" if tflm.get("available")
                 else f"TFLM: {tflm.get('reason')}")
        lines.append((logging.INFO, f"{ram}; {arena}"))
    fit = footprint.ram_fit
    if fit is not None:
        lines.append((logging.INFO, f"Board fit (RAM from the {_ram_words(fit['ram_source'])}): {fit['summary']}"))
        if fit.get("problem"):
            lines.append((logging.WARNING, fit["problem"]))
    latency = footprint.latency
    if latency is not None:
        lines.append((logging.INFO, latency["summary"]) if latency.get("ms") is not None
                     else (logging.WARNING, latency["reason"]))
    return lines


def _ram_words(ram_source: str) -> str:
    return {"tflm": "TFLM measured arena, a real runtime's allocation",
            "estimate": "offline estimate: no TFLM arena"}.get(ram_source, f"{ram_source} activations")


def print_footprint(footprint) -> None:
    from rich.table import Table

    from stmclf.console import data_console

    table = Table(title=f"Footprint ({footprint.label}{', ' + footprint.board if footprint.board else ''})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in footprint.metrics().items():
        table.add_row(name, f"{value:,.2f}" if isinstance(value, float) else str(value))
    data_console().print(table)


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
    footprint.write_json(run_root / "benchmark.json", board_capacity(footprint.board or board_name(cfg, board, quiet=True)))
    log.info("Benchmark of %s: source %s", model_path.name, footprint.label)
    for name, value in footprint.metrics().items():
        log.info("%s : %s", name, value)
    if mlflow_logger is not None:
        mlflow_logger.log_metrics({k: float(v) for k, v in footprint.metrics().items() if v is not None})
        tool = _tool(cfg)
        mlflow_logger.log_hyperparams({"stm32ai_version": str(tool.version if tool else None),
                                       "target": footprint.board or board_name(cfg, board, quiet=True),
                                       "benchmark_source": footprint.label,
                                       "ram_fit_source": str((footprint.ram_fit or {}).get("ram_source"))})
    return footprint
