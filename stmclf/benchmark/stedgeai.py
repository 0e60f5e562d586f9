"""Local ST Edge AI Core (``stedgeai``) / STM32Cube.AI CLI benchmark (``tools.stedgeai.on_cloud:
False`` and the fallback of the cloud flow for MCU boards).

As the reference does: ``<exe> --version`` (a mismatch with ``tools.*.version`` is a warning), then

    <exe> generate --target stm32 -m <model> -v 0 --allocate-inputs --allocate-outputs
                   --output <out> --workspace <out> --optimization <balanced|time|ram>

with ``STATS_TYPE=stmai_modelzoo_<tag>`` in the environment, and the footprint read from
``<out>/network_report.json`` (``ram_size`` — a list up to 8.1, an int from 9.0 —, ``rom_size``,
``rom_n_macc``). When present, ``network_c_info.json`` adds the runtime RAM/flash estimate
(``kernel_*``/``extra_*``/``toolchain_*``); ``network_generate_report.txt`` is the fallback when the
JSON report is missing. The reference writes into ``<run dir>/stm32ai_files``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from stmclf.benchmark.reports import (c_info_macc, footprint_sums, parse_generate_report, parse_network_report,
                                      to_int, version_string)
from stmclf.benchmark.results import Footprint
from stmclf.errors import UserError, one_line

log = logging.getLogger("stmclf.benchmark.stedgeai")

EXECUTABLE_NAMES = ("stedgeai", "stedgeai.exe", "stm32ai", "stm32ai.exe")
DEFAULT_TIMEOUT = 1800.0
OUTPUT_SUBDIR = "stm32ai_files"


class StEdgeAiError(UserError):
    """A failure of the local tool; one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, 1000, whole=True))


def _checked_name(executable: str, key: str) -> str:
    """``executable`` when its file name is ST's tool's (``stedgeai``, ``stm32ai``, any suffix): a
    config can name a program for stmclf to run, so it runs no program of another name (a
    downloaded config's ``/bin/sh``)."""
    if not Path(executable).name.lower().startswith(("stedgeai", "stm32ai")):
        raise StEdgeAiError(f"{key}: {executable} is not ST Edge AI's stedgeai (or stm32ai): stmclf runs no other "
                            "program a config names")
    return executable


def resolve_executable(path: Union[str, Path, None], key: str = "tools.stedgeai.path_to_stedgeai") -> str:
    """The executable named by ``path``: a file, a folder holding ``stedgeai``, or a command on PATH,
    whose name is ST's tool's."""
    if not path:
        raise StEdgeAiError(f"{key} is not set: give the path to the stedgeai executable (ST Edge AI Core, "
                            "https://www.st.com/en/development-tools/stedgeai-core.html)")
    candidate = Path(os.path.expanduser(str(path)))
    if candidate.is_dir():
        found = next((candidate / n for n in EXECUTABLE_NAMES if (candidate / n).is_file()), None)
        if found is None:
            raise StEdgeAiError(f"{key}: no stedgeai executable in the folder {candidate}")
        candidate = found
    if candidate.is_file():
        if not os.access(candidate, os.X_OK):
            raise StEdgeAiError(f"{key}: {candidate} is not executable")
        return _checked_name(str(candidate), key)
    on_path = shutil.which(str(path))
    if on_path:
        return _checked_name(on_path, key)
    raise StEdgeAiError(f"{key}: {path} not found; give the path to the stedgeai executable")


def _last_line(*texts: Optional[str]) -> str:
    for text in texts:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "no output"


def tool_version(executable: str, *, timeout: float = 60.0) -> Optional[str]:
    """The "X.Y.Z" of ``<exe> --version`` (e.g. "ST Edge AI Core v2.0.0-20049" → "2.0.0")."""
    try:
        done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StEdgeAiError(f"{executable} --version did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise StEdgeAiError(f"cannot run {executable}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise StEdgeAiError(f"{executable} --version failed (exit code {done.returncode}): "
                            f"{_last_line(done.stderr, done.stdout)}")
    text = done.stdout or done.stderr
    tail = text.split("v")[-1] if "v" in text else text  # the version follows the last "v"
    return version_string(tail) or version_string(text)


def generate_command(executable: str, model_path: Union[str, Path], output_dir: Union[str, Path], *,
                     target: str = "stm32", optimization: str = "balanced",
                     extra_args: Iterable[str] = ()) -> list[str]:
    out = str(output_dir)
    return [executable, "generate", "--target", target, "-m", str(model_path), "-v", "0", "--allocate-inputs",
            "--allocate-outputs", "--output", out, "--workspace", out, "--optimization", optimization.lower(),
            *extra_args]


def run_generate(executable: str, model_path: Union[str, Path], output_dir: Union[str, Path], *,
                 target: str = "stm32", optimization: str = "balanced", tag: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, extra_args: Iterable[str] = ()) -> Path:
    """Run ``generate``; its output goes to ``<output_dir>/stedgeai_generate.log``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = generate_command(executable, model_path, output_dir, target=target, optimization=optimization,
                           extra_args=extra_args)
    env = dict(os.environ)
    if tag:
        env["STATS_TYPE"] = f"stmai_modelzoo_{tag}"
    log.info("Starting the model memory footprints estimation with %s", Path(executable).name)
    log.debug("Command: %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StEdgeAiError(f"stedgeai generate did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise StEdgeAiError(f"cannot run {executable}: {exc.strerror or exc}") from None
    log_file = output_dir / "stedgeai_generate.log"
    log_file.write_text(f"$ {' '.join(cmd)}\n{done.stdout or ''}{done.stderr or ''}", encoding="utf-8")
    if done.returncode != 0:
        raise StEdgeAiError(f"stedgeai generate failed (exit code {done.returncode}): "
                            f"{_last_line(done.stderr, done.stdout)} (full output: {log_file})")
    return output_dir


def _load_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StEdgeAiError(f"cannot read the stedgeai report {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def read_footprint(output_dir: Union[str, Path], *, name: str = "network", model: Optional[str] = None) -> Footprint:
    """Footprint from the reports ``generate`` wrote in ``output_dir`` (c-name ``name``)."""
    output_dir = Path(output_dir)
    report = _load_json(output_dir / f"{name}_report.json")
    c_info = _load_json(output_dir / f"{name}_c_info.json")
    text_path = output_dir / f"{name}_generate_report.txt"
    text = (parse_generate_report(text_path.read_text(encoding="utf-8", errors="replace"))
            if text_path.is_file() else None)
    values: dict[str, Any] = {}
    if report is not None:
        values = parse_network_report(report)
    elif text is not None:
        values = {"activations": text["activations"], "weights": text["weights"], "macc": text["macc"],
                  "version": text["version"]}
    elif c_info is not None:
        sums = footprint_sums(c_info.get("memory_footprint") or {})
        values = {"activations": sums["activations"], "weights": sums["weights"], "macc": c_info_macc(c_info)}
    else:
        raise StEdgeAiError(f"stedgeai generate wrote no report in {output_dir} (expected {name}_report.json or "
                            f"{name}_generate_report.txt)")
    if values.get("activations") is None or values.get("weights") is None:
        raise StEdgeAiError(f"the stedgeai report in {output_dir} has no ram_size/rom_size")
    runtime_ram = runtime_flash = None
    if c_info is not None:
        sums = footprint_sums(c_info.get("memory_footprint") or {})
        if sums["has_runtime"]:
            runtime_ram, runtime_flash = sums["runtime_ram"], sums["runtime_flash"]
    if runtime_ram is None and text is not None and text.get("runtime_ram") is not None:
        runtime_ram, runtime_flash = text["runtime_ram"], text["runtime_flash"]
    version = values.get("version") or (text or {}).get("version")
    return Footprint(source="stedgeai", ram_size=to_int(values["activations"]), rom_size=to_int(values["weights"]),
                     macc=to_int(values.get("macc"), None), total_ram_io_size=values.get("io"),
                     estimated_library_ram_size=runtime_ram, estimated_library_flash_size=runtime_flash,
                     cli_version_str=version, date_time=values.get("date_time"),
                     cli_parameters=values.get("cli_parameters"), model=model)


def stedgeai_footprint(model_path: Union[str, Path], output_dir: Union[str, Path], *,
                       path_to_stedgeai: Union[str, Path, None], optimization: str = "balanced",
                       version: Any = None, tag: Optional[str] = None, target: str = "stm32",
                       timeout: float = DEFAULT_TIMEOUT, key: str = "tools.stedgeai.path_to_stedgeai") -> Footprint:
    """Check the tool's version, run ``generate`` into ``output_dir`` (the reference uses
    ``<run dir>/stm32ai_files``) and read the footprint."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise StEdgeAiError(f"model file not found: {model_path}")
    executable = resolve_executable(path_to_stedgeai, key)
    installed = tool_version(executable)
    wanted = version_string(version) if version not in (None, "") else None
    if wanted and installed and installed != wanted:
        log.warning("STM32Cube.AI / ST Edge AI Core installed version %s does not match the configured version %s",
                    installed, version)
    log.info("ST Edge AI Core version %s used", installed or "unknown")
    run_generate(executable, model_path, output_dir, target=target, optimization=optimization, tag=tag,
                 timeout=timeout)
    footprint = read_footprint(output_dir, model=model_path.name)
    if footprint.cli_version_str is None:
        footprint.cli_version_str = installed
    return footprint
