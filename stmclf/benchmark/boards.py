"""STM32 boards: the names the reference accepts for ``benchmarking.board``, the memory each
board offers a model (for the offline fit check of :mod:`stmclf.benchmark.estimate`), and the core
and clock a model runs at (for the offline latency model of :mod:`stmclf.benchmark.latency`).

Sizes are in KiB (internal) and MiB (external). Where the reference ships a board table (its
``boards.json``, §8.6 of the reference inventory) its values are used as is, clock included
(the frequency ST benchmarks at, which may be below the MCU's maximum); the other boards use the
MCU datasheet / board user-manual figures. ``ram_kib`` is all the MCU's SRAM (TCM included) and
``largest_ram_kib`` the biggest contiguous block: a larger activation buffer must be split over
several RAM regions (ST's memory pools), which the tools do but which costs performance.
STM32MP boards run Linux: they are valid benchmark boards but have no MCU memory budget here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from stmclf.errors import ConfigError


@dataclass(frozen=True)
class Board:
    name: str
    mcu: str
    core: str
    clock_mhz: int
    flash_kib: int                 # internal flash (0: none, the model lives in external flash)
    ram_kib: int                   # internal SRAM, all regions
    largest_ram_kib: Optional[int] = None  # largest contiguous internal SRAM block
    ext_flash_mib: float = 0.0     # external (Q/O/Hexa-SPI) flash on the board
    ext_ram_mib: float = 0.0       # external SDRAM / PSRAM / HyperRAM on the board
    npu: Optional[str] = None
    mpu: bool = False              # Linux MPU board (no MCU memory budget)
    source: str = "datasheet"      # "reference" (the reference's boards.json) or "datasheet"
    note: str = ""

    @property
    def cpu(self) -> str:
        """The core a model runs on: the first of ``core`` (``"Cortex-M7"`` for the H747's M7 + M4)."""
        return self.core.split(" + ")[0].split(" (")[0].strip()

    @property
    def flash_bytes(self) -> int:
        return self.flash_kib * 1024

    @property
    def ram_bytes(self) -> int:
        return self.ram_kib * 1024

    @property
    def largest_ram_bytes(self) -> int:
        return (self.largest_ram_kib or self.ram_kib) * 1024

    @property
    def ext_flash_bytes(self) -> int:
        return int(self.ext_flash_mib * 1024 * 1024)

    @property
    def ext_ram_bytes(self) -> int:
        return int(self.ext_ram_mib * 1024 * 1024)


_BOARDS = (
    # the reference's boards.json (values as published there)
    Board("STM32H747I-DISCO", "STM32H747XIH6", "Cortex-M7 + Cortex-M4", 400, 2048, 1024, 512, 16, 8,
          source="reference", note="M7 at 400 MHz as ST benchmarks it (480 MHz max); AXI SRAM 512 KiB"),
    Board("B-U585I-IOT02A", "STM32U585AII6Q", "Cortex-M33", 160, 2048, 786, 768, 64, 0, source="reference"),
    Board("STM32H735G-DK", "STM32H735IGK6", "Cortex-M7", 550, 1024, 564, 320, 64, 16, source="reference"),
    Board("STM32F769I-DISCO", "STM32F769NIH6", "Cortex-M7", 216, 2048, 512, 512, 64, 1, source="reference",
          note="DTCM 128 KiB + SRAM1/2 384 KiB are contiguous"),
    Board("STM32L4R9I-DISCO", "STM32L4R9AII6", "Cortex-M4", 120, 2048, 640, 640, 16, 0, source="reference"),
    Board("STM32H7B3I-DK", "STM32H7B3LIH6Q", "Cortex-M7", 280, 2048, 1184, 1024, 64, 16, source="reference",
          note="AXI SRAM 1 MiB"),
    Board("NUCLEO-G474RE", "STM32G474RET6", "Cortex-M4", 170, 512, 128, 128, 0, 0, source="reference"),
    Board("STM32F469I-DISCO", "STM32F469NIH6", "Cortex-M4", 180, 2048, 384, 320, 16, 16, source="reference"),
    # the other boards of the reference's lists (datasheet / user-manual figures)
    Board("NUCLEO-H743ZI2", "STM32H743ZIT6", "Cortex-M7", 480, 2048, 1024, 512, 0, 0,
          note="no external memory; AXI SRAM 512 KiB"),
    Board("STM32N6570-DK", "STM32N657X0H3Q", "Cortex-M55", 800, 0, 4200, 4200, 128, 32,
          npu="Neural-ART (1 GHz)", note="no internal flash: weights in the external octo-SPI flash"),
    Board("NUCLEO-F401RE", "STM32F401RET6", "Cortex-M4", 84, 512, 96, 96, 0, 0),
    Board("STM32F746G-DISCO", "STM32F746NGH6", "Cortex-M7", 216, 1024, 320, 320, 16, 8),
    Board("STM32H573I-DK", "STM32H573IIK3Q", "Cortex-M33", 250, 2048, 640, None, 0, 0,
          note="external memories of the kit not counted"),
    Board("STM32H7S78-DK", "STM32H7S7L8H6H", "Cortex-M7", 600, 64, 620, None, 128, 32,
          note="boot flash only: weights in the external flash"),
    Board("STM32MP257F-EV1", "STM32MP257FAI3", "Cortex-A35 (2) + Cortex-M33", 1500, 0, 0, npu="Neural processing unit",
          mpu=True),
    Board("STM32MP157F-DK2", "STM32MP157FAC1", "Cortex-A7 (2) + Cortex-M4", 800, 0, 0, mpu=True),
    Board("STM32MP135F-DK", "STM32MP135FAF7", "Cortex-A7", 1000, 0, 0, mpu=True),
)

BOARDS: dict[str, Board] = {b.name: b for b in _BOARDS}

# The reference's lists of supported benchmark boards (its benchmark README, then its tutorial's
# additions); the live list comes from the Developer Cloud.
BENCHMARK_BOARDS = ("STM32N6570-DK", "STM32H747I-DISCO", "STM32H7B3I-DK", "STM32F469I-DISCO", "B-U585I-IOT02A",
                    "STM32L4R9I-DISCO", "NUCLEO-H743ZI2", "STM32H735G-DK", "STM32F769I-DISCO", "NUCLEO-G474RE",
                    "NUCLEO-F401RE", "STM32F746G-DISCO")
TUTORIAL_BOARDS = ("STM32H573I-DK", "STM32H7S78-DK", "STM32MP257F-EV1", "STM32MP135F-DK", "STM32MP157F-DK2")
SUPPORTED_BOARDS = BENCHMARK_BOARDS + TUTORIAL_BOARDS
# Boards the reference deploys the image-classification application to (§1.12, §10).
DEPLOYMENT_BOARDS = ("STM32H747I-DISCO", "NUCLEO-H743ZI2", "STM32N6570-DK")
MPU_DEPLOYMENT_BOARDS = ("STM32MP257F-EV1", "STM32MP157F-DK2", "STM32MP135F-DK")


def board_names() -> list[str]:
    """Every board name this module knows, in the reference's order."""
    return list(SUPPORTED_BOARDS)


def get_board(name: str, key: str = "benchmarking.board") -> Board:
    """The board called ``name`` (exact name, case-insensitive); ConfigError naming the valid
    boards otherwise."""
    text = str(name).strip() if name is not None else ""
    for board in _BOARDS:
        if board.name.lower() == text.lower():
            return board
    raise ConfigError(key, f"unknown board {name!r}; valid boards are {', '.join(board_names())}")


def check_board(name: str, key: str = "benchmarking.board") -> str:
    """The canonical spelling of a supported board name (ConfigError otherwise)."""
    return get_board(name, key).name
