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

Each run of the tool has a time limit, like the Developer Cloud's (``STMCLF_CLOUD_DEADLINE``), set
from the environment (a property of the machine, not of the run): ``STMCLF_STEDGEAI_TIMEOUT``
seconds for ``generate`` (default 1800; a big model on a slow PC may need more) and
``STMCLF_STEDGEAI_VERSION_TIMEOUT`` for ``--version`` (default 60) — :func:`tool_timeouts`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from stmclf.benchmark.reports import (c_info_macc, count_value, footprint_sums, parse_generate_report,
                                      parse_network_report, to_int, version_string)
from stmclf.benchmark.results import Footprint
from stmclf.errors import UserError, env_seconds, one_line

log = logging.getLogger("stmclf.benchmark.stedgeai")

EXECUTABLE_NAMES = ("stedgeai", "stedgeai.exe", "stm32ai", "stm32ai.exe")
DEFAULT_TIMEOUT = 1800.0
VERSION_TIMEOUT = 60.0
TIMEOUT_ENV = "STMCLF_STEDGEAI_TIMEOUT"                  # seconds for generate
VERSION_TIMEOUT_ENV = "STMCLF_STEDGEAI_VERSION_TIMEOUT"  # seconds for --version
OUTPUT_SUBDIR = "stm32ai_files"
TAIL_BYTES = 64 * 1024           # of each of the tool's streams, kept in memory for the message
LOG_BYTES = 16 * 1024 * 1024     # of the tool's output written to stedgeai_generate.log
REPORT_BYTES = 256 * 1024 * 1024  # the largest report file read


class StEdgeAiError(UserError):
    """A failure of the local tool; one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, 1000, whole=True))


def _checked_name(executable: str, key: str) -> str:
    """The real file of ``executable`` (links followed) when its name is ST's tool's (``stedgeai``,
    ``stm32ai``, any suffix): a config can name a program for stmclf to run, so it runs no program
    of another name (a downloaded config's ``/bin/sh``, or a link named ``stedgeai`` to it)."""
    real = os.path.realpath(executable)
    if not Path(real).name.lower().startswith(("stedgeai", "stm32ai")):
        shown = executable if real == executable else f"{executable} (a link to {real})"
        raise StEdgeAiError(f"{key}: {shown} is not ST Edge AI's stedgeai (or stm32ai): stmclf runs no other "
                            "program a config names")
    return real


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


def tool_timeouts() -> tuple[float, float]:
    """(``--version``, ``generate``) time limits in seconds: ``$STMCLF_STEDGEAI_VERSION_TIMEOUT``
    (default 60) and ``$STMCLF_STEDGEAI_TIMEOUT`` (default 1800). A value that is not a number > 0
    is one line naming the variable (a :class:`UserError`: it is the user's setting, not the tool
    failing, so a benchmark does not fall back past it)."""
    return env_seconds(VERSION_TIMEOUT_ENV, VERSION_TIMEOUT), env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)


def _last_line(*texts: Optional[str]) -> str:
    for text in texts:
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "no output"


class _Run:
    """What a run of the tool left: its exit code and the last :data:`TAIL_BYTES` of its stdout
    and stderr (decoded, undecodable bytes replaced)."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode = returncode
        self.stdout = stdout.decode("utf-8", errors="replace")
        self.stderr = stderr.decode("utf-8", errors="replace")


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether the tool exited within ``timeout`` s, left unreaped (its pid, and so its process
    group's id, stays taken until :func:`_end` kills the group: no other process can be hit)."""
    if not hasattr(os, "waitid"):  # no process groups to keep (Windows)
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    delay = 0.005
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def _end(proc: subprocess.Popen) -> int:
    """Kill the tool and every process it started (its session's process group), then reap it."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait()


def _run_tool(cmd: list[str], *, timeout: float, what: str, env: Optional[dict] = None,
              log_file: Optional[Path] = None, setting: Optional[str] = None) -> _Run:
    """Run ``cmd`` in its own session, keeping only the tail of its output in memory (the first
    :data:`LOG_BYTES` go to ``log_file`` when given). On a timeout, Ctrl-C or any error, and once
    the tool has exited, its whole process group is killed: no child it started is left running.
    A timeout is the one line "``what`` within N s" (and the environment variable ``setting``
    that sets the limit)."""
    tails = {"stdout": bytearray(), "stderr": bytearray()}
    lock = threading.Lock()
    log = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (closed below)
    logged = [0]

    def pump(stream, name: str) -> None:
        tail = tails[name]
        for chunk in iter(lambda: stream.read1(65536), b""):
            tail += chunk
            if len(tail) > TAIL_BYTES:
                del tail[:len(tail) - TAIL_BYTES]
            if log is not None:
                with lock:
                    room = LOG_BYTES - logged[0]
                    if room > 0:
                        log.write(chunk[:room])
                    if 0 <= room < len(chunk):
                        log.write(b"\n[... the rest of the output is not kept]\n")
                    logged[0] += len(chunk)

    try:
        try:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise StEdgeAiError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
        readers = [threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            exited = _wait(proc, timeout)
        finally:  # also on Ctrl-C; once the tool exited, the children it left behind
            returncode = _end(proc)
            for reader, stream in zip(readers, (proc.stdout, proc.stderr)):
                reader.join(timeout=10)
                if not reader.is_alive():  # else a process outside the group holds the pipe
                    stream.close()
        if not exited:
            raise StEdgeAiError(f"{what} within {timeout:g} s" + (f" ({setting} sets the limit)" if setting else ""))
    finally:
        if log is not None:
            log.close()
    return _Run(returncode, bytes(tails["stdout"]), bytes(tails["stderr"]))


def tool_version(executable: str, *, timeout: Optional[float] = None) -> Optional[str]:
    """The "X.Y.Z" of ``<exe> --version`` (e.g. "ST Edge AI Core v2.0.0-20049" → "2.0.0");
    ``timeout``: seconds, default ``$STMCLF_STEDGEAI_VERSION_TIMEOUT`` (:func:`tool_timeouts`)."""
    timeout = tool_timeouts()[0] if timeout is None else timeout
    done = _run_tool([executable, "--version"], timeout=timeout,
                     what=f"{executable} --version did not answer", setting=VERSION_TIMEOUT_ENV)
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
                 timeout: Optional[float] = None, extra_args: Iterable[str] = ()) -> Path:
    """Run ``generate``; its output goes to ``<output_dir>/stedgeai_generate.log``. ``timeout``:
    seconds, default ``$STMCLF_STEDGEAI_TIMEOUT`` (:func:`tool_timeouts`)."""
    timeout = tool_timeouts()[1] if timeout is None else timeout
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = generate_command(executable, model_path, output_dir, target=target, optimization=optimization,
                           extra_args=extra_args)
    env = dict(os.environ)
    if tag:
        env["STATS_TYPE"] = f"stmai_modelzoo_{tag}"
    log.info("Starting the model memory footprints estimation with %s", Path(executable).name)
    log.debug("Command: %s", " ".join(cmd))
    log_file = output_dir / "stedgeai_generate.log"
    log_file.write_text(f"$ {' '.join(cmd)}\n", encoding="utf-8", errors="replace")
    done = _run_tool(cmd, env=env, timeout=timeout, what="stedgeai generate did not finish", log_file=log_file,
                     setting=TIMEOUT_ENV)
    if done.returncode != 0:
        raise StEdgeAiError(f"stedgeai generate failed (exit code {done.returncode}): "
                            f"{_last_line(done.stderr, done.stdout)} (full output: {log_file})")
    return output_dir


def _read_report(path: Path) -> Optional[str]:
    """The text of the report file ``path`` (None when there is none): a regular file of at most
    :data:`REPORT_BYTES`, opened without blocking (a FIFO left there is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StEdgeAiError(f"cannot read the stedgeai report {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StEdgeAiError(f"the stedgeai report {path} is not a regular file")
        if info.st_size > REPORT_BYTES:
            raise StEdgeAiError(f"the stedgeai report {path} is larger than {REPORT_BYTES // 2**20} MiB")
        data = f.read(REPORT_BYTES + 1)
    if len(data) > REPORT_BYTES:
        raise StEdgeAiError(f"the stedgeai report {path} is larger than {REPORT_BYTES // 2**20} MiB")
    return data.decode("utf-8", errors="replace")


def _load_json(path: Path) -> Optional[dict]:
    text = _read_report(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StEdgeAiError(f"cannot read the stedgeai report {path}: {one_line(exc)}") from None
    return data if isinstance(data, dict) else None


def _checked_counts(path: Path, values: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """``values`` with its ``fields`` checked as byte/MACC counts, one line naming ``path``."""
    try:
        for name in fields:
            values[name] = count_value(values.get(name), name)
    except ValueError as exc:
        raise StEdgeAiError(f"the stedgeai report {path}: {exc}") from None
    return values


def _c_info_sums(path: Path, c_info: dict) -> tuple[dict[str, Any], int]:
    """(:func:`footprint_sums` of ``memory_footprint``, Σ node MACC) of a c_info document, its
    counts checked (finite non-negative numbers; one line naming ``path`` otherwise)."""
    footprint = c_info.get("memory_footprint") or {}
    graphs = c_info.get("graphs") or []
    first = graphs[0] if isinstance(graphs, list) and graphs else {}
    nodes = (first.get("nodes") or []) if isinstance(first, dict) else None
    if not isinstance(footprint, dict) or not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise StEdgeAiError(f"the stedgeai report {path}: memory_footprint or graphs[0].nodes is malformed")
    raw = {f"memory_footprint.{k}": v for k, v in footprint.items()
           if k in ("activations", "weights", "kernel_ram", "extra_ram", "toolchain_ram", "kernel_flash",
                    "extra_flash", "toolchain_flash")}
    io = footprint.get("io") or []
    raw.update({f"memory_footprint.io[{i}]": v for i, v in enumerate(io if isinstance(io, list) else [io])})
    raw.update({f"graphs[0].nodes[{i}].macc": n.get("macc") for i, n in enumerate(nodes)})
    _checked_counts(path, raw, list(raw))
    return footprint_sums(footprint), c_info_macc(c_info)


def read_footprint(output_dir: Union[str, Path], *, name: str = "network", model: Optional[str] = None) -> Footprint:
    """Footprint from the reports ``generate`` wrote in ``output_dir`` (c-name ``name``)."""
    output_dir = Path(output_dir)
    report_path, c_info_path = output_dir / f"{name}_report.json", output_dir / f"{name}_c_info.json"
    report = _load_json(report_path)
    c_info = _load_json(c_info_path)
    sums, c_info_maccs = _c_info_sums(c_info_path, c_info) if c_info is not None else ({}, None)
    text_path = output_dir / f"{name}_generate_report.txt"
    text_report = _read_report(text_path)
    text = (_checked_counts(text_path, parse_generate_report(text_report),
                            ("macc", "weights", "activations", "ram_total", "runtime_flash", "runtime_ram"))
            if text_report is not None else None)
    values: dict[str, Any] = {}
    if report is not None:
        try:
            values = parse_network_report(report)
        except ValueError as exc:
            raise StEdgeAiError(f"the stedgeai report {report_path}: {exc}") from None
    elif text is not None:
        values = {"activations": text["activations"], "weights": text["weights"], "macc": text["macc"],
                  "version": text["version"]}
    elif c_info is not None:
        values = {"activations": sums["activations"], "weights": sums["weights"], "macc": c_info_maccs}
    else:
        raise StEdgeAiError(f"stedgeai generate wrote no report in {output_dir} (expected {name}_report.json or "
                            f"{name}_generate_report.txt)")
    if values.get("activations") is None or values.get("weights") is None:
        raise StEdgeAiError(f"the stedgeai report in {output_dir} has no ram_size/rom_size")
    runtime_ram = runtime_flash = None
    if c_info is not None:
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
                       timeout: Optional[float] = None,
                       key: str = "tools.stedgeai.path_to_stedgeai") -> Footprint:
    """Check the tool's version, run ``generate`` into ``output_dir`` (the reference uses
    ``<run dir>/stm32ai_files``) and read the footprint. ``timeout``: seconds for ``generate``,
    default ``$STMCLF_STEDGEAI_TIMEOUT`` (:func:`tool_timeouts`, also for ``--version``)."""
    version_timeout, generate_timeout = tool_timeouts()  # a wrong setting: one line before the tool runs
    model_path = Path(model_path)
    if not model_path.is_file():
        raise StEdgeAiError(f"model file not found: {model_path}")
    executable = resolve_executable(path_to_stedgeai, key)
    installed = tool_version(executable, timeout=version_timeout)
    wanted = version_string(version) if version not in (None, "") else None
    if wanted and installed and installed != wanted:
        log.warning("STM32Cube.AI / ST Edge AI Core installed version %s does not match the configured version %s",
                    installed, version)
    log.info("ST Edge AI Core version %s used", installed or "unknown")
    run_generate(executable, model_path, output_dir, target=target, optimization=optimization, tag=tag,
                 timeout=generate_timeout if timeout is None else timeout)
    footprint = read_footprint(output_dir, model=model_path.name)
    if footprint.cli_version_str is None:
        footprint.cli_version_str = installed
    return footprint
