"""Local ``stedgeai generate`` benchmark with a stand-in executable writing the real report files."""
from __future__ import annotations

import json
import logging
import sys
import textwrap
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
