"""Local ``stedgeai generate`` benchmark with a stand-in executable writing the real report files."""
from __future__ import annotations

from conftest import error_of

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from stmclf.benchmark.reports import parse_generate_report
from stmclf.benchmark.stedgeai import (StEdgeAiError, generate_command, read_footprint, resolve_executable,
                                       stedgeai_footprint, tool_version)
from stmclf.errors import UserError

ACTIVATIONS, WEIGHTS, MACC = 150_528, 409_600, 3_523_456
KERNEL_RAM, KERNEL_FLASH, TOOLCHAIN_FLASH = 3_072, 20_480, 1_024

# What ST Edge AI Core 2.0 writes (trimmed): network_report.json, network_c_info.json and the text report.
STAND_IN = r'''
import json, os, sys, time
mode = os.environ.get("FAKE_STEDGEAI_MODE", "ok")
args = sys.argv[1:]
if args == ["--version"]:
    print("ST Edge AI Core v2.0.0-20049")
    sys.exit(0)
with open(os.environ["FAKE_STEDGEAI_LOG"], "w") as f:
    json.dump({"argv": args, "STATS_TYPE": os.environ.get("STATS_TYPE")}, f)
if mode == "fail":
    print("ST Edge AI Core v2.0.0-20049")
    print("Neural Network Tools for STM32 family v1.7.0 (stm.ai v10.0.0-20049)", file=sys.stderr)
    print("E010(InvalidModelError): Unsupported layer types: Custom>MyLayer, stopping.", file=sys.stderr)
    sys.exit(1)
if mode == "hang":
    time.sleep(30)
out = args[args.index("--output") + 1]
model = args[args.index("-m") + 1]
os.makedirs(out, exist_ok=True)
report = {
    "_allocate_inputs": True, "_allocate_outputs": True,
    "cli_parameters": "generate --target stm32 -m " + model + " -v 0 --allocate-inputs --allocate-outputs",
    "cli_version": {"extra": "20049", "major": 2, "micro": 0, "minor": 0}, "cli_version_str": "2.0.0-20049",
    "code_size": 0, "compression": [], "date_time": "2025-03-14T10:20:30+0100", "error": 0, "error_str": [],
    "exec_cmd": "generate", "exec_duration": 0.0, "hash": "0x4f6a0b8c9e1d2f3a4b5c6d7e8f901234",
    "inputs": ["serving_default_input_10"], "layers": [], "model_files": [model], "model_n_params": 401234,
    "model_name": "mobilenet_v2_0_35_128_int8", "model_size": 409600, "model_type": "tflite", "name": "network",
    "outputs": ["nl_65"], "ram_io_size": [0, 0], "ram_size": %(ram)s, "report_version": 2.1, "rom_cfact": 1.0,
    "rom_heap_inspector": 2048, "rom_inputs": [], "rom_n_macc": %(macc)d, "rom_outputs": [],
    "rom_size": %(rom)d, "strategy": "", "tools_api_version": "2.0.0-20049", "tools_version": "2.0.0-20049",
    "val_error": -1.0, "val_error_desc": "None (None) #1", "val_metrics": []}
c_info = {"json_schema_version": "2.0",
          "environment": {"generated_model": {"name": "network", "generated_time": "2025-03-14T10:20:30"},
                          "tools": [{"name": "STEdgeAI Core", "version": {"major": 2, "minor": 0, "micro": 0},
                                     "arguments": "generate", "input_model": {"name": "m", "type": "tflite"}}]},
          "graphs": [{"name": "network", "nodes": [{"id": 0, "name": "conv", "macc": %(macc)d}]}],
          "memory_footprint": {"series": "stm32f4", "activations": %(act)d, "weights": %(rom)d, "io": [0, 0],
                               "kernel_ram": %(kram)d, "kernel_flash": %(kflash)d, "toolchain_ram": 0,
                               "toolchain_flash": %(tflash)d, "extra_ram": 0, "extra_flash": 0},
          "memory_pools": [], "buffers": []}
text = """ST Edge AI Core v2.0.0-20049
Created date          : 2025-03-14 10:20:30
Parameters            : generate --target stm32 -m model.tflite -v 0

Exec/report summary (generate)
------------------------------------------------------------------------------------------------
model file         :   model.tflite
type               :   tflite
c_name             :   network
options            :   allocate-inputs, allocate-outputs
optimization       :   balanced
target/series      :   stm32f4
model_fmt          :   ss/sa per channel
params #           :   401,234 items (1.53 MiB)
------------------------------------------------------------------------------------------------
input 1/1          :   'serving_default_input_10', int8(1x128x128x3), 48.00 KBytes, QLinear(0.007843138,-1,int8), activations
output 1/1         :   'nl_65', f32(1x101), 404 Bytes, activations
macc               :   3,523,456
weights (ro)       :   409,600 B (400.00 KiB) (1 segment) / -1,195,336(-74.5%%) vs float model
activations (rw)   :   150,528 B (147.00 KiB) (1 segment) *
ram (total)        :   150,528 B (147.00 KiB) = 150,528 + 0 + 0
------------------------------------------------------------------------------------------------
(*) 'input'/'output' buffers can be used from the activations buffer

 Summary - "stm32f4" target
 --------------------------------------------------
               FLASH (ro)      %%*   RAM (rw)      %%
 --------------------------------------------------
 RT total          21,504   5.0%%      3,072   2.0%%
 --------------------------------------------------
 TOTAL            431,104            153,600
 --------------------------------------------------
 *  rt/total
"""
if mode in ("ok", "old"):
    with open(os.path.join(out, "network_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "network_c_info.json"), "w") as f:
        json.dump(c_info, f, indent=1)
if mode in ("ok", "old", "text_only"):
    with open(os.path.join(out, "network_generate_report.txt"), "w") as f:
        f.write(text)
print("ST Edge AI Core v2.0.0-20049")
print("Generated files (7)")
''' % {"ram": "%(ram)s", "macc": MACC, "rom": WEIGHTS, "act": ACTIVATIONS, "kram": KERNEL_RAM, "kflash": KERNEL_FLASH,
       "tflash": TOOLCHAIN_FLASH}


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:
    """A fake ``stedgeai`` executable (a Python script); its argv/env go to FAKE_STEDGEAI_LOG."""
    exe = tmp_path / "bin" / "stedgeai"
    exe.parent.mkdir()
    write_stand_in(exe, str(ACTIVATIONS))  # ST Edge AI ≥ 9.0: ram_size is an int
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_STEDGEAI_LOG", str(tmp_path / "call.json"))
    monkeypatch.setenv("FAKE_STEDGEAI_MODE", "ok")
    return exe


def write_stand_in(exe: Path, ram_form: str) -> None:
    exe.write_text(f"#!{sys.executable}\n" + STAND_IN.replace("%(ram)s", ram_form))


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "mobilenet_v2_0.35_128_int8.tflite"
    path.write_bytes(b"TFL3" + b"\0" * 64)
    return path


def test_generate_success(stand_in, model, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run" / "stm32ai_files"
    fp = stedgeai_footprint(model, out, path_to_stedgeai=stand_in, optimization="time", version="2.0.0",
                            tag="mobilenet_128_proj")
    call = json.loads((tmp_path / "call.json").read_text())
    assert call["argv"] == ["generate", "--target", "stm32", "-m", str(model), "-v", "0", "--allocate-inputs",
                            "--allocate-outputs", "--output", str(out), "--workspace", str(out), "--optimization",
                            "time"]
    assert call["STATS_TYPE"] == "stmai_modelzoo_mobilenet_128_proj"
    assert fp.source == "stedgeai" and fp.board is None
    assert (fp.ram_size, fp.rom_size, fp.macc) == (ACTIVATIONS, WEIGHTS, MACC)
    assert fp.estimated_library_ram_size == KERNEL_RAM
    assert fp.estimated_library_flash_size == KERNEL_FLASH + TOOLCHAIN_FLASH
    assert fp.cli_version_str == "2.0.0" and fp.model == model.name
    m = fp.metrics()
    assert (m["RAM Activations KiB"], m["Flash weights KiB"], m["MACCs M"]) == (147.0, 400.0, 3.523)
    assert m["Total RAM KiB"] == 150.0 and "inference_time ms" not in m
    assert (out / "stedgeai_generate.log").read_text().startswith("$ ")
    assert "does not match" not in caplog.text


def test_old_report_format_and_version_warning(stand_in, model, tmp_path, caplog):
    write_stand_in(stand_in, f"[{ACTIVATIONS}, 0]")  # ≤ 8.1: ram_size is a list
    caplog.set_level(logging.WARNING)
    fp = stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=stand_in, version=9.1)
    assert fp.ram_size == ACTIVATIONS
    assert "installed version 2.0.0 does not match the configured version 9.1" in caplog.text


def test_text_report_fallback(stand_in, model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEDGEAI_MODE", "text_only")
    fp = stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=stand_in.parent)  # a folder works too
    assert (fp.ram_size, fp.rom_size, fp.macc) == (ACTIVATIONS, WEIGHTS, MACC)
    assert (fp.estimated_library_flash_size, fp.estimated_library_ram_size) == (21_504, 3_072)  # "RT total" row
    assert fp.cli_version_str == "2.0.0"


def test_generate_failure_is_one_line_with_last_stderr_line(stand_in, model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEDGEAI_MODE", "fail")
    with pytest.raises(StEdgeAiError) as err:
        stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=stand_in)
    text = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in text
    assert text.startswith("stedgeai generate failed (exit code 1): E010(InvalidModelError): Unsupported layer types")
    assert "stedgeai_generate.log" in text


def test_generate_timeout(stand_in, model, tmp_path, monkeypatch):
    from stmclf.benchmark import stedgeai
    monkeypatch.setenv("FAKE_STEDGEAI_MODE", "hang")
    with pytest.raises(StEdgeAiError, match="did not finish within 0.5 s"):
        stedgeai.run_generate(str(stand_in), model, tmp_path / "o", timeout=0.5)


def test_missing_report(stand_in, model, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEDGEAI_MODE", "no_report")
    with pytest.raises(StEdgeAiError, match="wrote no report"):
        stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=stand_in)


def test_missing_or_bad_executable(tmp_path, model):
    with pytest.raises(StEdgeAiError, match="path_to_stedgeai is not set"):
        stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=None)
    with pytest.raises(StEdgeAiError, match=r"tools.stedgeai.path_to_stedgeai: /nowhere/stedgeai not found") as err:
        resolve_executable("/nowhere/stedgeai")
    assert "\n" not in str(err.value)
    plain = tmp_path / "stedgeai"
    plain.write_text("not a program")
    plain.chmod(0o644)
    with pytest.raises(StEdgeAiError, match="is not executable"):
        resolve_executable(plain)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(StEdgeAiError, match="no stedgeai executable in the folder"):
        resolve_executable(tmp_path / "empty_dir")
    broken = tmp_path / "broken"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    with pytest.raises(StEdgeAiError, match="cannot run"):
        tool_version(str(broken))
    with pytest.raises(StEdgeAiError, match="model file not found"):
        stedgeai_footprint(tmp_path / "nope.tflite", tmp_path / "o", path_to_stedgeai=plain)


def test_generate_command_and_reports(tmp_path):
    assert generate_command("stedgeai", "m.onnx", "out", optimization="RAM")[-2:] == ["--optimization", "ram"]
    text = textwrap.dedent("""\
         macc               :   12,960
         weights (ro)       :   2,704 B (2.64 KiB) (1 segment) / -192(-6.6%) vs float model
         activations (rw)   :   1,780 B (1.74 KiB) (1 segment) *
         ram (total)        :   1,780 B (1.74 KiB) = 1,780 + 0 + 0
    """)
    parsed = parse_generate_report(text)
    assert (parsed["macc"], parsed["weights"], parsed["activations"]) == (12960, 2704, 1780)
    assert parsed["runtime_ram"] is None
    (tmp_path / "network_c_info.json").write_text(json.dumps({"memory_footprint": {"activations": 10, "weights": 20},
                                                              "graphs": [{"nodes": [{"macc": 5}, {"macc": 7}]}]}))
    fp = read_footprint(tmp_path)
    assert (fp.ram_size, fp.rom_size, fp.macc, fp.estimated_library_ram_size) == (10, 20, 12, None)


def test_a_config_cannot_make_stmclf_run_another_program(tmp_path):
    """path_to_stedgeai names a program stmclf runs: only one named as ST's tool is run."""
    marker = tmp_path / "ran"
    evil = tmp_path / "bin" / "evil_tool"
    evil.parent.mkdir()
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    for path in (evil, "sh"):
        with pytest.raises(StEdgeAiError, match="is not ST Edge AI's stedgeai"):
            resolve_executable(path)
    assert not marker.exists()


# --- a tool that misbehaves: links, its output, its reports, its children ----------------------


def sh_tool(path: Path, body: str) -> Path:
    """A fake ``stedgeai`` shell script; ``$out`` is the folder given after ``--output``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n"
                    'case "$1" in --version) echo "ST Edge AI Core v2.0.0-20049"; exit 0;; esac\n'
                    'while [ $# -gt 0 ]; do [ "$1" = --output ] && out=$2; shift; done\n' + body)
    path.chmod(0o755)
    return path


def test_a_link_named_stedgeai_to_another_program_is_refused(tmp_path, model, monkeypatch):
    """The name checked is the real file's: a link ``stedgeai`` → /bin/sh would run ``sh generate``,
    i.e. a ``generate`` script from the current folder."""
    marker = tmp_path / "PWNED"
    (tmp_path / "generate").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (tmp_path / "generate").chmod(0o755)
    link = tmp_path / "stedgeai"
    link.symlink_to(os.path.realpath("/bin/sh"))
    monkeypatch.chdir(tmp_path)
    for path in (link, tmp_path, "./stedgeai"):
        with pytest.raises(StEdgeAiError, match=r"\(a link to .*\) is not ST Edge AI's stedgeai") as err:
            stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=path)
        assert "\n" not in str(err.value)
    assert not marker.exists()
    real = sh_tool(tmp_path / "ST" / "stedgeai", "")  # a link of any name to the real tool is fine
    (tmp_path / "my_tool").symlink_to(real)
    assert resolve_executable(tmp_path / "my_tool") == str(real)


def test_undecodable_output_gives_the_one_line_failure(tmp_path, model):
    exe = sh_tool(tmp_path / "bin" / "stedgeai", "printf 'x\\033[2J\\nE\\000\\377\\376 boom\\n' >&2\nexit 77\n")
    with pytest.raises(StEdgeAiError, match=r"^stedgeai generate failed \(exit code 77\): .*boom") as err:
        stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=exe)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert b"\377\376 boom" in (tmp_path / "o" / "stedgeai_generate.log").read_bytes()


def test_a_flood_of_output_is_not_kept_in_memory(tmp_path, model):
    """40 MB on stdout: only a tail is kept in memory, the log keeps its first LOG_BYTES."""
    from stmclf.benchmark import stedgeai
    flood = "head -c 40000000 /dev/zero | tr '\\0' a\necho\n"
    exe = tmp_path / "bin" / "stedgeai"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\n{flood}echo 'ST Edge AI Core v2.0.0-20049'\n"
                   '[ "$1" = --version ] && exit 0\necho "E999: out of luck" >&2\nexit 3\n')
    exe.chmod(0o755)
    tracemalloc.start()
    try:
        assert tool_version(str(exe)) == "2.0.0"
        with pytest.raises(StEdgeAiError, match=r"exit code 3\): E999: out of luck"):
            stedgeai.run_generate(str(exe), model, tmp_path / "o")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, peak
    log_size = (tmp_path / "o" / "stedgeai_generate.log").stat().st_size
    assert stedgeai.LOG_BYTES <= log_size < stedgeai.LOG_BYTES + 4096


@pytest.mark.parametrize("field, value, shown", [
    ("ram_size", "NaN", "ram_size is nan"), ("ram_size", "[-Infinity, 0]", "ram_size[0] is -inf"),
    ("rom_size", "-1", "rom_size is -1"), ("rom_size", '"1e999"', "rom_size is the string '1e999'"),
    ("rom_n_macc", "1e999", "rom_n_macc is inf"), ("ram_size", "1" + "0" * 400, "ram_size is 1" + "0" * 39 + "…"),
    ("ram_io_size", "[0, NaN]", "ram_io_size[1] is nan"), ("rom_size", "[1]", "rom_size is list")])
def test_absurd_numbers_in_network_report_are_one_line(tmp_path, model, field, value, shown):
    report = {"ram_size": 1000, "rom_size": 2000, "rom_n_macc": 3000, "ram_io_size": [0, 0]}
    text = json.dumps(report).replace(f'"{field}": {json.dumps(report[field])}', f'"{field}": {value}')
    (tmp_path / "report.json").write_text(text)
    exe = sh_tool(tmp_path / "bin" / "stedgeai", f'cp {tmp_path / "report.json"} "$out/network_report.json"\n')
    with pytest.raises(StEdgeAiError) as err:
        stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=exe)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "o" / "network_report.json") in message
    assert shown in message and "expected a finite non-negative number" in message


def test_absurd_numbers_in_c_info_and_text_report_are_one_line(tmp_path):
    (tmp_path / "network_c_info.json").write_text('{"memory_footprint": {"activations": 10, "weights": 20, '
                                                  '"kernel_ram": NaN}, "graphs": []}')
    with pytest.raises(StEdgeAiError, match=r"network_c_info.json: memory_footprint.kernel_ram is nan"):
        read_footprint(tmp_path)
    (tmp_path / "network_c_info.json").unlink()
    (tmp_path / "network_generate_report.txt").write_text(f" macc : 12\n weights (ro) : 20 B\n"
                                                          f" activations (rw) : {'9' * 30} B\n")
    with pytest.raises(StEdgeAiError, match=r"network_generate_report.txt: activations is \d+: expected"):
        read_footprint(tmp_path)


def test_no_nan_from_the_report_reaches_benchmark_json(stand_in, model, tmp_path):
    text = stand_in.read_text().replace('"date_time": "2025-03-14T10:20:30+0100"', '"date_time": float("nan")')
    stand_in.write_text(text.replace('"cli_parameters": "generate', '"cli_parameters": float("inf") and "x'))
    fp = stedgeai_footprint(model, tmp_path / "o", path_to_stedgeai=stand_in)
    assert fp.date_time is None and fp.ram_size == ACTIVATIONS
    json.dumps(fp.to_dict(), allow_nan=False)


def _run_python(code: str, timeout: float) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with stmclf importable: a regression that blocks fails here."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_report_left_as_a_fifo_is_refused_not_waited_on(tmp_path, model):
    exe = sh_tool(tmp_path / "bin" / "stedgeai", 'mkfifo "$out/network_report.json"\n')
    code = ("from stmclf.benchmark.stedgeai import StEdgeAiError, stedgeai_footprint\n"
            f"try:\n    stedgeai_footprint({str(model)!r}, {str(tmp_path / 'o')!r}, path_to_stedgeai={str(exe)!r})\n"
            "except StEdgeAiError as exc:\n    print('ERR', exc)\n")
    done = _run_python(code, timeout=60)
    assert done.stdout.startswith("ERR the stedgeai report ") and "is not a regular file" in done.stdout


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie) — polled a few seconds, as its new parent reaps it."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def child_pids():
    """Pids of the ``sleep`` children the fake tools start, killed at the end whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _spawning_tool(tmp_path: Path, pid_file: Path) -> Path:
    exe = tmp_path / "bin" / "stedgeai"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}.tmp\nmv {pid_file}.tmp {pid_file}\nwait\n")
    exe.chmod(0o755)
    return exe


def test_the_tools_children_do_not_outlive_a_timeout(tmp_path, model, child_pids):
    from stmclf.benchmark import stedgeai
    pid_file = tmp_path / "child.pid"
    exe = _spawning_tool(tmp_path, pid_file)
    with pytest.raises(StEdgeAiError, match=r"--version did not answer within 1 s"):
        tool_version(str(exe), timeout=1)
    child_pids.append(int(pid_file.read_text()))
    assert not _alive(child_pids[-1])
    pid_file.unlink()
    with pytest.raises(StEdgeAiError, match=r"stedgeai generate did not finish within 1 s"):
        stedgeai.run_generate(str(exe), model, tmp_path / "o", timeout=1)
    child_pids.append(int(pid_file.read_text()))
    assert not _alive(child_pids[-1])


def test_the_tools_children_do_not_outlive_ctrl_c(tmp_path, child_pids):
    pid_file = tmp_path / "child.pid"
    exe = _spawning_tool(tmp_path, pid_file)
    code = ("from stmclf.benchmark.stedgeai import tool_version\n"
            f"tool_version({str(exe)!r}, timeout=60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if pid_file.exists():
                break
            time.sleep(0.05)
        child_pids.append(int(pid_file.read_text()))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert b"KeyboardInterrupt" in err
    assert not _alive(child_pids[-1])


# --- the time limits: $STMCLF_STEDGEAI_TIMEOUT (generate), $STMCLF_STEDGEAI_VERSION_TIMEOUT ------

@pytest.fixture
def onnx_model(tmp_path) -> Path:
    """A float ONNX model the command reads (8x8x3 → global pooling → dense 2)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight, bias])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _benchmark_config(tmp_path: Path, exe: Path) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(f"tools:\n  stedgeai:\n    on_cloud: False\n    path_to_stedgeai: {exe}\n"
                    f"benchmarking:\n  board: STM32H747I-DISCO\nmlflow:\n  uri: {tmp_path / 'mlruns'}\n")
    return path


@pytest.mark.parametrize("variable, expected", [
    ("STMCLF_STEDGEAI_TIMEOUT", "stedgeai generate did not finish within 1.5 s (STMCLF_STEDGEAI_TIMEOUT sets the "
                                "limit)"),
    ("STMCLF_STEDGEAI_VERSION_TIMEOUT", "--version did not answer within 1.5 s (STMCLF_STEDGEAI_VERSION_TIMEOUT "
                                        "sets the limit)"),
])
def test_the_local_tools_time_limits_are_set_by_the_environment(stand_in, onnx_model, tmp_path, monkeypatch, capsys,
                                                                 variable, expected):
    """`stmclf benchmark` with a local stedgeai that takes 30 s (to answer --version, or to generate):
    with the variable at 1.5 s, the command ends in one line (exit 2) about 1.5 s after that call
    of the tool started (the time the tool writes FAKE_STEDGEAI_LOG), not after the tool's 30 s."""
    from stmclf.cli.main import main

    if variable == "STMCLF_STEDGEAI_VERSION_TIMEOUT":
        stand_in.write_text(stand_in.read_text().replace(
            'if args == ["--version"]:\n',
            'if args == ["--version"]:\n    open(os.environ["FAKE_STEDGEAI_LOG"], "w").close()\n    time.sleep(30)\n'))
    monkeypatch.setenv("FAKE_STEDGEAI_MODE", "hang")  # generate sleeps 30 s
    monkeypatch.setenv(variable, "1.5")
    code = main(["benchmark", "--config", str(_benchmark_config(tmp_path, stand_in)), "--model", str(onnx_model),
                 "--run", str(tmp_path / "run")])
    elapsed = time.time() - (tmp_path / "call.json").stat().st_mtime  # since the tool's call started
    err = error_of(capsys.readouterr().err)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("stmclf: error: "), err
    assert expected in err, err
    assert 1.0 <= elapsed < 8, elapsed


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_wrong_time_limit_is_one_line_before_anything_runs(stand_in, onnx_model, tmp_path, monkeypatch, capsys, value):
    """A wrong $STMCLF_STEDGEAI_TIMEOUT is named in one line (exit 2) before the run folder is made
    or the tool runs; --offline, which runs no tool, does not read it."""
    from stmclf.cli.main import main

    monkeypatch.setenv("STMCLF_STEDGEAI_TIMEOUT", value)
    config = _benchmark_config(tmp_path, stand_in)
    assert main(["benchmark", "--config", str(config), "--model", str(onnx_model), "--run", str(tmp_path / "run")]) == 2
    err = error_of(capsys.readouterr().err)
    assert err == f"stmclf: error: STMCLF_STEDGEAI_TIMEOUT={value!r} is not a number of seconds > 0", err
    assert not (tmp_path / "run").exists() and not (tmp_path / "call.json").exists()
    assert main(["benchmark", "--config", str(config), "--model", str(onnx_model), "--run", str(tmp_path / "run"),
                 "--offline"]) == 0
    assert "STMCLF_STEDGEAI_TIMEOUT" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["benchmark", "run"])
def test_a_local_tool_that_is_not_stedgeai_is_refused_before_the_run_folder(onnx_model, tmp_path, capsys, command):
    """With ``on_cloud: False`` the configured tool is the benchmark's source: a path that is not
    ST's tool (here /bin/sh) is one line before the run folder or the ONNX export are made (it was
    refused only at the benchmark stage, after both)."""
    from stmclf.cli.main import main

    config = _benchmark_config(tmp_path, Path("/bin/sh"))
    run_dir = tmp_path / "run"
    if command == "run":
        config.write_text(config.read_text() + f"operation_mode: benchmarking\ngeneral:\n  model_path: {onnx_model}\n"
                                               f"hydra:\n  run:\n    dir: {run_dir}\n")
        args = ["run", "--config", str(config)]
    else:
        args = ["benchmark", "--config", str(config), "--model", str(onnx_model), "--run", str(run_dir)]
    assert main(args) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith("stmclf: error: tools.stedgeai.path_to_stedgeai: /bin/sh") and len(err.splitlines()) == 1, err
    assert "is not ST Edge AI's stedgeai" in err
    assert not run_dir.exists()


def test_the_default_board_is_announced_once(onnx_model, tmp_path, caplog):
    """Without a benchmarking section the default board is named in one warning (it came twice: at
    the command's early check and again when measuring)."""
    import logging

    from stmclf.cli.main import main

    config = tmp_path / "c.yaml"
    config.write_text(f"mlflow:\n  uri: {tmp_path / 'mlruns'}\n")
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        assert main(["benchmark", "--config", str(config), "--model", str(onnx_model), "--run", str(tmp_path / "run"),
                     "--offline"]) == 0
    assert caplog.text.count("benchmarking.board not given: benchmarking for STM32H747I-DISCO") == 1, caplog.text
