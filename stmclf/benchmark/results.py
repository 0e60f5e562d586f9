"""One footprint record for every way of measuring a model: a board run or an ``analyze`` on the
STM32Cube.AI Developer Cloud (``source "cloud"``, ``cloud_mode`` "board" or "analyze"), a local
``stedgeai generate`` (``"stedgeai"``) or the offline estimate (``"estimate"``); next to it, the
arena TFLite Micro really allocates (``tflm``, source ``"tflm"``), the offline latency estimate
(``latency``, source ``"estimate"``) and the board-fit check with the RAM figure it used
(``ram_fit``).

The byte/cycle fields carry the reference client's result attribute names (``ram_size``,
``rom_size``, ``macc``, ``estimated_library_ram_size``, ... of ``stm32ai_dc``'s
``BenchmarkResult``/``AnalyzeResult``/``MpuBenchmarkResult``), always with the same meaning:

- MCU: ``ram_size`` = activation RAM, ``rom_size`` = weights flash (bytes), ``macc``,
  ``estimated_library_ram_size``/``_flash_size`` = runtime RAM / code flash (kernel + extra +
  toolchain), board runs add cycles, time and internal/external memory use.
- MPU (``target == "mpu"``): ``rom_size`` = model size, ``ram_size`` = peak RAM, plus
  ``duration_ms`` and the NPU/GPU/CPU shares.

:meth:`Footprint.metrics` turns them into the reference's printed/MLflow names and units
("RAM Activations KiB", "Flash weights KiB", "MACCs M", ...); :meth:`Footprint.to_dict` is the
flat record written to ``benchmark.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SOURCES = ("estimate", "tflm", "stedgeai", "cloud")
# The names of benchmark.json files written before the rename: source → (source, cloud_mode).
LEGACY_SOURCES = {"offline-estimate": ("estimate", None), "board": ("cloud", "board"),
                  "cloud-analyze": ("cloud", "analyze")}
CLOUD_MODES = ("board", "analyze")
log = logging.getLogger("stmclf.benchmark.results")
# Plausible ranges of the measured numbers: a value outside (negative, not finite, absurdly large)
# is dropped with a warning, never reported or written to benchmark.json.
MAX_BYTES = 2 ** 40             # 1 TiB
MAX_COUNT = 2 ** 60             # MACC, cycles
_BYTE_FIELDS = ("ram_size", "rom_size", "total_ram_io_size", "estimated_library_ram_size",
                "estimated_library_flash_size", "internal_ram_consumption", "external_ram_consumption",
                "internal_flash_consumption", "external_flash_consumption")
_COUNT_FIELDS = ("macc", "cycles")
_REAL_FIELDS = ("cycles_by_macc", "duration_ms", "npu_percent", "gpu_percent", "cpu_percent")


def _kib(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value / 1024, 2)


@dataclass
class Footprint:
    source: str                                   # one of SOURCES (the names of LEGACY_SOURCES are read too)
    board: Optional[str] = None                   # benchmark board (board runs) or None
    cloud_mode: Optional[str] = None              # source "cloud": "board" (a run on the board) or "analyze"
    target: str = "mcu"                           # "mcu" or "mpu"
    # --- sizes (bytes) and compute --------------------------------------------------------
    ram_size: Optional[int] = None                # activations (MCU) / peak RAM (MPU)
    rom_size: Optional[int] = None                # weights (MCU) / model size (MPU)
    macc: Optional[int] = None
    total_ram_io_size: Optional[int] = None       # Σ io buffers
    estimated_library_ram_size: Optional[int] = None    # runtime RAM
    estimated_library_flash_size: Optional[int] = None  # runtime code flash
    # --- board runs ---------------------------------------------------------------------
    cycles: Optional[int] = None
    cycles_by_macc: Optional[float] = None
    duration_ms: Optional[float] = None
    internal_ram_consumption: Optional[int] = None
    external_ram_consumption: Optional[int] = None
    internal_flash_consumption: Optional[int] = None
    external_flash_consumption: Optional[int] = None
    use_external_ram: Optional[bool] = None
    use_external_flash: Optional[bool] = None
    npu_percent: Optional[float] = None           # MPU: fractions in [0, 1]
    gpu_percent: Optional[float] = None
    cpu_percent: Optional[float] = None
    # --- provenance ---------------------------------------------------------------------
    device: Optional[str] = None
    date_time: Optional[str] = None
    cli_version_str: Optional[str] = None         # tool version, "X.Y.Z"
    cli_parameters: Optional[str] = None
    model: Optional[str] = None                   # model file name as sent to the tool
    notes: list[str] = field(default_factory=list)  # e.g. why a fallback was taken
    # --- companions measured or estimated next to the footprint -----------------------------
    tflm: Optional[dict[str, Any]] = None         # source "tflm": TFLite Micro's measured arena (or why none)
    latency: Optional[dict[str, Any]] = None      # source "estimate": offline latency (or why none)
    ram_fit: Optional[dict[str, Any]] = None      # the board-fit check and the RAM figure it used

    def __post_init__(self) -> None:
        if self.source in LEGACY_SOURCES:
            self.source, mode = LEGACY_SOURCES[self.source]
            self.cloud_mode = self.cloud_mode or mode
        if self.source not in SOURCES:
            raise ValueError(f"Footprint.source must be one of {SOURCES}, got {self.source!r}")
        if self.cloud_mode is not None and self.cloud_mode not in CLOUD_MODES:
            raise ValueError(f"Footprint.cloud_mode must be one of {CLOUD_MODES}, got {self.cloud_mode!r}")
        self._drop_implausible()

    def _drop_implausible(self) -> None:
        """Sizes, counts and times that are not finite numbers in range become None (a warning)."""
        for name in _BYTE_FIELDS + _COUNT_FIELDS + _REAL_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            bound = MAX_BYTES if name in _BYTE_FIELDS else MAX_COUNT if name in _COUNT_FIELDS else math.inf
            ok = (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bound
                  or name in _REAL_FIELDS and isinstance(value, float) and math.isfinite(value) and value >= 0)
            if not ok:
                shown = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 30 else "a number over 1e30"
                log.warning("%s result: %s = %s is not a plausible value (a number from 0 to %s); dropped",
                            self.source, name, shown[:40], "any" if bound == math.inf else f"{bound:,}")
                setattr(self, name, None)

    @property
    def label(self) -> str:
        """``cloud (board run)``, ``estimate``, ...: the source as the output names it."""
        return f"{self.source} ({self.cloud_mode} run)" if self.source == "cloud" and self.cloud_mode else self.source

    # --- derived values in the reference's units ----------------------------------------
    @property
    def total_ram(self) -> Optional[int]:
        if self.ram_size is None or self.estimated_library_ram_size is None:
            return None
        return self.ram_size + self.estimated_library_ram_size

    @property
    def total_flash(self) -> Optional[int]:
        if self.rom_size is None or self.estimated_library_flash_size is None:
            return None
        return self.rom_size + self.estimated_library_flash_size

    def metrics(self) -> dict[str, float]:
        """The reference's metric names (``analyze_footprints``) with their values; only the
        ones this record can give."""
        out: dict[str, Optional[float]] = {}
        if self.target == "mpu":
            out["Model Size KiB"] = _kib(self.rom_size)
            out["Peak Ram KiB"] = _kib(self.ram_size)
            out["inference_time ms"] = None if self.duration_ms is None else round(self.duration_ms, 2)
            for name, value in (("NPU usage", self.npu_percent), ("GPU usage", self.gpu_percent),
                                ("CPU usage", self.cpu_percent)):
                out[name] = None if value is None else round(100 * value, 2)
            return {k: v for k, v in out.items() if v is not None}
        activations, weights = _kib(self.ram_size), _kib(self.rom_size)
        out["RAM Activations KiB"] = activations
        out["Flash weights KiB"] = weights
        out["MACCs M"] = None if self.macc is None else round(self.macc / 1e6, 3)
        runtime_ram, code = _kib(self.estimated_library_ram_size), _kib(self.estimated_library_flash_size)
        out["RAM Runtime KiB"] = runtime_ram
        out["Total RAM KiB"] = None if None in (activations, runtime_ram) else round(activations + runtime_ram, 2)
        out["Estimated Flash Code KiB"] = code
        out["Total Flash KiB"] = None if None in (weights, code) else round(weights + code, 2)
        out["Internal RAM usage"] = _kib(self.internal_ram_consumption)
        out["External RAM usage"] = _kib(self.external_ram_consumption)
        if self.external_flash_consumption:  # the reference reports flash use only when external is used
            out["Internal Flash usage"] = _kib(self.internal_flash_consumption)
            out["External Flash usage"] = _kib(self.external_flash_consumption)
        out["cycles"] = None if self.cycles is None or self.cycles < 0 else round(self.cycles / 1e6, 3)
        out["inference_time ms"] = (None if self.duration_ms is None or self.duration_ms < 0
                                    else round(self.duration_ms, 2))
        out.update(self.companion_metrics())
        return {k: v for k, v in out.items() if v is not None}

    def companion_metrics(self) -> dict[str, float]:
        """stmclf's figures next to the reference's: the TFLM arena and the latency estimate."""
        out: dict[str, float] = {}
        tflm = self.tflm or {}
        if tflm.get("arena_bytes") is not None:
            out["TFLM arena KiB"] = _kib(tflm["arena_bytes"])
            out["TFLM persistent KiB"] = _kib(tflm["persistent_bytes"])
        latency = self.latency or {}
        if latency.get("ms") is not None:
            out["Latency estimate ms"] = round(latency["ms"], 2)
            out["Inferences/s estimate"] = round(latency["inferences_per_s"], 2)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able record for ``benchmark.json``: provenance, the reference's metric
        names (``cycles`` in millions as ``cycles M``), then the raw fields (bytes, cycles)."""
        head = {"source": self.source, "cloud_mode": self.cloud_mode, "board": self.board, "target": self.target,
                "device": self.device, "tool_version": self.cli_version_str, "model": self.model}
        out: dict[str, Any] = {k: v for k, v in head.items() if v is not None}
        # metric "cycles" (millions) would collide with the raw field: it is "cycles M" here
        out.update({("cycles M" if k == "cycles" else k): v for k, v in self.metrics().items()})
        skip = {"source", "cloud_mode", "board", "target", "device", "cli_version_str", "model", "notes"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in skip and value is not None:
                out[f.name] = value
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Footprint":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "tool_version" in data and "cli_version_str" not in kwargs:
            kwargs["cli_version_str"] = data["tool_version"]
        return cls(**kwargs)

    def write_json(self, path: str | Path, extra: Optional[dict[str, Any]] = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # strict JSON: a NaN or Infinity left anywhere would make the file unreadable for others
            text = json.dumps({**self.to_dict(), **(extra or {})}, indent=2, allow_nan=False)
        except ValueError as exc:
            from stmclf.errors import UserError

            raise UserError(f"{path}: not written, a benchmark figure is not a finite number ({exc})") from None
        from stmclf.files import atomic_write_text

        atomic_write_text(path, text + "\n")
        return path
