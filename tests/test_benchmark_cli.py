"""`stmclf benchmark --offline` and the chains that end in a benchmark, with no account or network."""
from __future__ import annotations

import json

import pytest

from conftest import QUANTIZATION as QUANTIZATION_ONLY, config_text
from stmclf.cli.main import main

QUANTIZATION = QUANTIZATION_ONLY + """benchmarking:
  board: STM32H747I-DISCO
tools:
  stedgeai:
    version: 10.0.0
    optimization: balanced
    on_cloud: True
    path_to_stedgeai: /nonexistent/stedgeai
"""


@pytest.mark.slow
def test_chain_tqeb_offline_then_benchmark_and_header(tmp_path, image_folder, capsys):
    text = config_text(image_folder, tmp_path / "tqeb", tmp_path / "ml", epochs=1, extra=QUANTIZATION)
    (tmp_path / "tqeb.yaml").write_text(text.replace("operation_mode: training", "operation_mode: chain_tqeb"))
    assert main(["run", "--config", str(tmp_path / "tqeb.yaml"), "--offline"]) == 0
    bench = json.loads((tmp_path / "tqeb/benchmark.json").read_text())
    assert bench["source"] == "estimate"
    assert bench["rom_size"] > 0 and bench["ram_size"] > 0 and bench["macc"] > 0
    # the chain's int8 TFLite: TFLM's measured arena, the fit check on it, the latency on the H747
    assert bench["tflm"]["source"] == "tflm" and bench["tflm"]["arena_bytes"] > 0
    assert bench["ram_fit"]["ram_source"] == "tflm" and bench["ram_fit"]["fits"]
    assert bench["latency"]["source"] == "estimate" and bench["latency"]["ms"] > 0
    assert "Benchmark" in (tmp_path / "tqeb/report.html").read_text()
    int8 = tmp_path / "tqeb/quantized_models/quantized_model.tflite"

    cfg = config_text(image_folder, tmp_path / "qb", tmp_path / "ml", model="", extra=QUANTIZATION)
    cfg = cfg.replace("operation_mode: training", "operation_mode: chain_qb").replace(
        "general:\n", f"general:\n  model_path: {tmp_path / 'tqeb/saved_models/best_model.pt'}\n", 1)
    (tmp_path / "qb.yaml").write_text(cfg)
    assert main(["run", "--config", str(tmp_path / "qb.yaml"), "--offline"]) == 0
    assert json.loads((tmp_path / "qb/benchmark.json").read_text())["source"] == "estimate"

    (tmp_path / "b.yaml").write_text(config_text(image_folder, tmp_path / "b", tmp_path / "ml", model="",
                                                 extra=QUANTIZATION))
    assert main(["benchmark", "--config", str(tmp_path / "b.yaml"), "--model", str(int8), "--offline",
                 "--board", "NUCLEO-H743ZI2"]) == 0
    assert json.loads((tmp_path / "b/benchmark.json").read_text())["board"] in (None, "NUCLEO-H743ZI2")
    assert main(["benchmark", "--config", str(tmp_path / "b.yaml"), "--model", str(int8), "--offline",
                 "--board", "NOT-A-BOARD"]) == 2
    assert "benchmarking.board" in capsys.readouterr().err

    assert main(["deploy-header", "--run", str(tmp_path / "tqeb")]) == 0
    header = (tmp_path / "tqeb/generated/ai_model_config.h").read_text()
    assert "NB_CLASSES" in header and '"owl"' in header


@pytest.mark.slow
def test_fallback_order_ends_with_the_offline_estimate(tmp_path, image_folder, monkeypatch, caplog):
    """Cloud unreachable and the local stedgeai missing: the numbers come from the estimate."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in ("VERSIONS_URL", "USER_SERVICE_URL", "FILE_SERVICE_URL", "BENCHMARK_SERVICE_URL", "SSO_URL",
                 "STM32AI_SERVICE_URL"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}/x")
    monkeypatch.setenv("stmai_username", "nobody@example.com")
    monkeypatch.setenv("stmai_password", "not-a-password")
    monkeypatch.setenv("HOME", str(tmp_path))
    text = config_text(image_folder, tmp_path / "t", tmp_path / "ml", epochs=1, extra=QUANTIZATION)
    (tmp_path / "t.yaml").write_text(text.replace("operation_mode: training", "operation_mode: chain_tqeb"))
    with caplog.at_level("WARNING", logger="stmclf"):
        assert main(["run", "--config", str(tmp_path / "t.yaml")]) == 0
    assert json.loads((tmp_path / "t/benchmark.json").read_text())["source"] == "estimate"
    log = (tmp_path / "t/stmclf.log").read_text()
    assert "not-a-password" not in log
    # the login before training failed: the benchmark falls back at once, without a second try
    cloud = [r.getMessage() for r in caplog.records if "Developer Cloud" in r.getMessage()]
    assert len(cloud) == 1 and cloud[0].startswith("Developer Cloud unavailable"), cloud
