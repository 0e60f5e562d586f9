"""Parsers for the reports STM32Cube.AI / ST Edge AI Core write (locally or on the Developer
Cloud): the ``<name>_c_info.json`` document (``info`` in the cloud's replies), the
``network_report.json`` summary and the ``<name>_generate_report.txt`` text report.

Each returns plain numbers (bytes, MACC); :mod:`stmclf.benchmark.cloud` and
:mod:`stmclf.benchmark.stedgeai` turn them into :class:`~stmclf.benchmark.results.Footprint`.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional


def to_int(value: Any, default: Optional[int] = 0) -> Optional[int]:
    """An int from an int, finite float or numeric string ("1,234" included); ``default``
    otherwise (NaN, infinities and overflowing strings included)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = to_float(value)
    return default if number is None else int(number)


def to_float(value: Any, default: Optional[float] = None) -> Optional[float]:
    """A finite float from a number or numeric string; ``default`` otherwise."""
    if isinstance(value, bool):
        return default
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.replace(",", "").strip())
        else:
            return default
    except (ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default


def version_string(version: Any) -> Optional[str]:
    """"X.Y.Z" from the forms the tools use: a dict ``{major, minor, micro, ...}``, a list, or a
    string such as ``"10.0.0"``, ``"2.0.0-20049"`` or ``"ST Edge AI Core v2.0.0-20049"``."""
    if version is None:
        return None
    if isinstance(version, dict):
        parts = [version.get(k) for k in ("major", "minor", "micro")]
        if parts[0] is None:
            return None
        return ".".join(str(p if p is not None else 0) for p in parts)
    if isinstance(version, (list, tuple)):
        return ".".join(str(p) for p in version[:3]) if version else None
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not match:
        return str(version) or None
    return f"{match.group(1)}.{match.group(2)}.{match.group(3) or 0}"


def footprint_sums(memory_footprint: dict) -> dict[str, int]:
    """Activations, weights, Σio and the runtime (kernel + extra + toolchain) RAM/flash of a
    ``memory_footprint`` object, as the reference's benchmark parser adds them up."""
    mf = memory_footprint or {}
    io = mf.get("io") or []
    if not isinstance(io, (list, tuple)):
        io = [io]
    return {
        "activations": to_int(mf.get("activations"), 0),
        "weights": to_int(mf.get("weights"), 0),
        "io": sum(to_int(v, 0) for v in io),
        "runtime_ram": sum(to_int(mf.get(k), 0) or 0 for k in ("kernel_ram", "extra_ram", "toolchain_ram")),
        "runtime_flash": sum(to_int(mf.get(k), 0) or 0 for k in ("kernel_flash", "extra_flash", "toolchain_flash")),
        "has_runtime": any(k in mf for k in ("kernel_ram", "kernel_flash", "toolchain_ram", "toolchain_flash")),
    }


def c_info_macc(info: dict) -> int:
    """Σ node MACC over the first graph of a c_info document."""
    graphs = info.get("graphs") or []
    if not graphs:
        return 0
    return sum(to_int(node.get("macc"), 0) for node in graphs[0].get("nodes") or [])


def c_info_tool(info: dict) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(tool version "X.Y.Z", its arguments, generated time) from a c_info ``environment``."""
    env = info.get("environment") or {}
    tools = env.get("tools") or [{}]
    tool = tools[0] if isinstance(tools, list) and tools else {}
    arguments = tool.get("arguments")
    if isinstance(arguments, list):
        arguments = " ".join(str(a) for a in arguments)
    generated = (env.get("generated_model") or {}).get("generated_time")
    return version_string(tool.get("version")), arguments, generated


def c_info_device(info: dict) -> Optional[str]:
    device = (info.get("environment") or {}).get("device")
    if isinstance(device, dict):
        return device.get("desc") or device.get("name") or device.get("dev_id") or None
    return str(device) if device else None


def _address(pool: dict) -> int:
    value = pool.get("address", 0)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return int(text, 16) if text.startswith("0x") else int(text or 0)
        except ValueError:
            return 0
    return to_int(value, 0)


EXTERNAL_ADDRESS = 0x60000000  # pools at or above this address are external memories (FMC/OCTOSPI)


def memory_pool_usage(pools: list, used_key: str = "used_size_bytes") -> tuple[int, int]:
    """(internal, external) RAM use from c_info ``memory_pools``: pools with a size, not virtual,
    without sub-pools and writable; external when named ``*EXTERNAL*`` or mapped at
    0x60000000 and above."""
    internal = external = 0
    for pool in pools or []:
        if to_int(pool.get("size_bytes", pool.get("size", -1)), -1) < 0:
            continue
        if pool.get("virtual", False) or (pool.get("subpools") or []) or pool.get("rights") == "ACC_READ":
            continue
        used = to_int(pool.get(used_key, pool.get("used_size", 0)), 0)
        if "EXTERNAL" in str(pool.get("name", "")) or _address(pool) >= EXTERNAL_ADDRESS:
            external += used
        else:
            internal += used
    return internal, external


# ---------------------------------------------------------------------------------------------
# network_report.json (stedgeai generate --output D → D/network_report.json)


MAX_COUNT = 2 ** 63  # a byte/MACC count at or above this is no real model's


def count_value(value: Any, field: str) -> Optional[int]:
    """A byte or MACC count a report gives (``None`` stays ``None``) as an int: a finite
    non-negative number below :data:`MAX_COUNT`, not a string or a bool; ``ValueError`` naming
    ``field`` otherwise (NaN, ±Infinity, −5, "1e999", a list...)."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if not ok or not 0 <= value < MAX_COUNT:
        if isinstance(value, str):
            shown = f"the string {value[:40]!r}"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            shown = str(value) if len(str(value)) <= 40 else str(value)[:40] + "…"
        else:
            shown = type(value).__name__
        raise ValueError(f"{field} is {shown}: expected a finite non-negative number")
    return int(value)


def parse_network_report(data: dict) -> dict[str, Any]:
    """``ram_size`` (a list up to 8.1 — first element —, an int from 9.0), ``rom_size``,
    ``rom_n_macc``, version/date fields of a ``network_report.json``. The counts must be finite
    non-negative numbers (``ValueError`` naming the field otherwise); ``date_time`` and
    ``cli_parameters`` are kept when they are strings."""
    ram = data.get("ram_size")
    ram_field = "ram_size"
    if isinstance(ram, (list, tuple)):
        ram, ram_field = (ram[0] if ram else None), "ram_size[0]"
    io = data.get("ram_io_size")
    if isinstance(io, (list, tuple)):
        io = sum(count_value(v, f"ram_io_size[{i}]") or 0 for i, v in enumerate(io))
    version = data.get("cli_version_str") or data.get("cli_version") or data.get("tools_version")
    texts = {k: data.get(k) if isinstance(data.get(k), str) else None for k in ("date_time", "cli_parameters")}
    return {
        "activations": count_value(ram, ram_field),
        "weights": count_value(data.get("rom_size"), "rom_size"),
        "macc": count_value(data.get("rom_n_macc"), "rom_n_macc"),
        "io": count_value(io, "ram_io_size"),
        "version": version_string(version),
        **texts,
    }


# ---------------------------------------------------------------------------------------------
# <name>_generate_report.txt

_SIZE = r"([\d,]+)\s*B\b"
_TEXT_FIELDS = {
    "macc": re.compile(r"^\s*macc\s*:\s*([\d,]+)", re.M),
    "weights": re.compile(r"^\s*weights \(ro\)\s*:\s*" + _SIZE, re.M),
    "activations": re.compile(r"^\s*activations \(rw\)\s*:\s*" + _SIZE, re.M),
    "ram_total": re.compile(r"^\s*ram \(total\)\s*:\s*" + _SIZE, re.M),
}
_VERSION_LINE = re.compile(r"(?:ST Edge AI Core|STM32Cube\.AI|X-CUBE-AI)[^\n]*?v?(\d+\.\d+\.\d+)", re.I)
_RT_ROW = re.compile(r"^\s*RT total\s+([\d,]+)\s+[\d.]+%\s+([\d,]+)", re.M)


def parse_generate_report(text: str) -> dict[str, Any]:
    """The summary block of a ``*_generate_report.txt`` (``macc``, ``weights (ro)``,
    ``activations (rw)``, ``ram (total)``) and, when the tool estimated it, the runtime row of
    the ``Summary - "<series>" target`` table (``RT total  <flash>  x%  <ram>  y%``)."""
    out: dict[str, Any] = {}
    for key, pattern in _TEXT_FIELDS.items():
        match = pattern.search(text)
        out[key] = to_int(match.group(1), None) if match else None
    match = _VERSION_LINE.search(text)
    out["version"] = match.group(1) if match else None
    match = _RT_ROW.search(text)
    out["runtime_flash"] = to_int(match.group(1), None) if match else None
    out["runtime_ram"] = to_int(match.group(2), None) if match else None
    return out
