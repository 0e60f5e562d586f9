"""Offline latency model (stmclf/benchmark/latency.py) and the companions of `stmclf benchmark`:
TFLite Micro's measured arena, the board-fit check on it, the latency estimate; on real int8
TFLite files built here, the stored calibration against ST's published times, and the report."""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  (torch before TensorFlow: docs/architecture.md, Invariants)

from stmclf.benchmark import latency as L
from stmclf.benchmark.boards import BOARDS
from stmclf.benchmark.estimate import estimate_footprint
from stmclf.benchmark.results import Footprint
from stmclf.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def _tflite(path: Path, size: int, width: int, *, channels: int = 3, quantized: bool = True) -> Path:
    """conv 3×3 (channels → width) → ReLU → conv 1×1 (width → width) → mean → dense(3) → softmax,
    full-integer int8 with uint8 input (or float32), random weights."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    k1 = tf.constant(rng.normal(0, 0.3, (3, 3, channels, width)).astype(np.float32))
    k2 = tf.constant(rng.normal(0, 0.3, (1, 1, width, width)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 1, (width, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, channels], tf.float32)])
    def model(x):
        y = tf.nn.relu(tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(x, k1, 1, "SAME")), k2, 1, "SAME"))
        return tf.nn.softmax(tf.matmul(tf.reduce_mean(y, axis=[1, 2]), dense))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()])
    if quantized:
        def representative():
            for _ in range(4):
                x = rng.uniform(-1, 1, (1, size, size, channels)).astype(np.float32)
                x[0, 0, 0], x[0, 0, 1] = -1.0, 1.0
                yield [x]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.representative_dataset = representative
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("latency")
    return {"narrow": _tflite(root / "narrow.tflite", 32, 8), "wide": _tflite(root / "wide.tflite", 32, 32),
            "float": _tflite(root / "float.tflite", 32, 8, quantized=False),
            "big_arena": _tflite(root / "big_arena.tflite", 64, 32)}  # 64×64×32 int8 maps: 128 KiB each


# --------------------------------------------------------------------------------------------
# the stored calibration


def _script():
    spec = importlib.util.spec_from_file_location("calibrate_latency", ROOT / "benchmarks/calibrate_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_covers_every_published_mcu_time():
    """One row per int8 MCU time of reference inventory §9, as the calibration script lists them."""
    published = {(key, board, ms) for key, board, ms, _weights in _script().PUBLISHED}
    stored = {(model, board, ms) for model, board, ms, _ in L.CALIBRATION}
    assert stored == published and len(stored) == 25
    assert {board for _, board, _ in stored} == {"STM32H747I-DISCO", "STM32F769I-DISCO"}
    assert all(len(values) == len(L.FEATURES) and sum(values) > 0 for *_, values in L.CALIBRATION)


def test_coefficients_reproduce_st_published_times_within_the_stated_error():
    errors = L.calibration_errors("Cortex-M7")
    assert len(errors) == len(L.CALIBRATION)
    worst = max(abs(e[-1]) for e in errors)
    assert worst == pytest.approx(L.calibration_error_pct("Cortex-M7"))
    assert worst <= 12.0  # the stated fit error (docstring, summary line): every published time within ±12 %
    for model, board, published, ours, error in errors:
        assert ours > 0 and abs(ours / published - 1) * 100 == pytest.approx(abs(error))
    # the same network on two M7 boards: our cycles are the same, the clocks make the difference
    h747, f769 = (next(e for e in errors if e[0] == "st_fdmobilenet_v1_224_5" and e[1] == board)
                  for board in ("STM32H747I-DISCO", "STM32F769I-DISCO"))
    assert f769[3] == pytest.approx(h747[3] * 400 / 216)


def test_coefficients_are_the_fit_of_the_stored_table_and_loo_is_as_stated():
    pytest.importorskip("scipy")
    rows = L.calibration_rows()
    fitted = L.fit(rows)
    for name in L.FEATURES:
        assert fitted[name] == pytest.approx(L.COEFFICIENTS["Cortex-M7"][name], rel=1e-4, abs=1e-6)
    assert all(value >= 0 for value in fitted.values())
    loo = L.leave_one_out(rows)
    assert len(loo) == len(rows)
    assert max(abs(e[-1]) for e in loo) == pytest.approx(L.LOO_ERROR_PCT["Cortex-M7"], abs=0.05)
    assert max(abs(e[-1]) for e in loo) <= 20.0


# --------------------------------------------------------------------------------------------
# real files


def test_latency_of_a_real_tflite_is_positive_and_scales_with_macc(tiny):
    narrow, wide = (estimate_footprint(tiny[k]) for k in ("narrow", "wide"))
    assert wide.macc > 4 * narrow.macc
    a, b = (L.estimate_latency(e, "STM32H747I-DISCO") for e in (narrow, wide))
    assert 0 < a.ms < b.ms and a.inferences_per_s > b.inferences_per_s
    assert b.cycles / a.cycles > 2  # the 1×1 and 3×3 convolutions dominate both
    feats = L.features(narrow)
    assert feats["conv_macc"] > 0 and feats["pointwise_macc"] > 0 and feats["convert_macc"] > 0
    assert sum(feats.values()) == narrow.macc  # every layer's MACC in exactly one type
    # another M7 board: the same cycles at its own clock
    f769 = L.estimate_latency(narrow, "STM32F769I-DISCO")
    assert f769.cycles == pytest.approx(a.cycles) and f769.ms == pytest.approx(a.ms * 400 / 216)
    text = a.summary()
    assert "ms" in text and "inf/s" in text and "STM32H747I-DISCO @ 400 MHz" in text and "±12 %" in text
    record = a.to_dict()
    assert record["source"] == "estimate" and record["ms"] > 0 and record["loo_error_pct"] == 19.4


@pytest.mark.parametrize("board, words", [("STM32N6570-DK", "NPU"), ("STM32MP157F-DK2", "MPU board"),
                                          ("B-U585I-IOT02A", "Cortex-M33"), ("NUCLEO-G474RE", "Cortex-M4")])
def test_uncalibrated_boards_get_a_reason_and_no_number(tiny, board, words):
    est = estimate_footprint(tiny["narrow"])
    reason = L.no_latency_reason(board)
    assert reason and words in reason and board in reason and "\n" not in reason
    with pytest.raises(L.NoLatency, match=words):
        L.estimate_latency(est, board)


def test_float_models_get_no_latency(tiny):
    est = estimate_footprint(tiny["float"])
    assert not est.quantized
    with pytest.raises(L.NoLatency, match="float model"):
        L.estimate_latency(est, "STM32H747I-DISCO")


def test_every_cortex_m7_board_is_calibrated():
    for board in BOARDS.values():
        calibrated = L.no_latency_reason(board.name) is None
        assert calibrated == (board.cpu == "Cortex-M7" and not board.npu and not board.mpu), board.name


def test_onnx_has_no_tflm_figure_and_float_onnx_no_latency(tmp_path):
    from stmclf.benchmark.run import add_companions, companion_lines

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), opset_version=17, dynamo=False)
    est = estimate_footprint(path)
    footprint = est.footprint("STM32H747I-DISCO")
    add_companions(footprint, path, "STM32H747I-DISCO", est)
    assert footprint.tflm["available"] is False and footprint.tflm["reason"].startswith("n/a (ONNX model")
    assert "float model" in footprint.latency["reason"]
    assert footprint.ram_fit["ram_source"] == "estimate" and footprint.ram_fit["fits"]
    text = "\n".join(line for _, line in companion_lines(footprint))
    assert "TFLM: n/a (ONNX model" in text and "offline estimate: no TFLM arena" in text


# --------------------------------------------------------------------------------------------
# `stmclf benchmark --offline` end to end


def _run_dir(root: Path) -> Path:
    (run,) = [p for p in (root / "experiments_outputs").iterdir() if p.name != "mlruns"]
    return run


@pytest.mark.slow
def test_benchmark_offline_prints_estimate_arena_latency_and_writes_them(tiny, tmp_path, monkeypatch):
    pytest.importorskip("tflite_micro")
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--model", str(tiny["narrow"]), "--offline", "--board", "STM32H747I-DISCO"]) == 0
    run = _run_dir(tmp_path)
    bench = json.loads((run / "benchmark.json").read_text())
    assert bench["source"] == "estimate" and bench["board"] == "STM32H747I-DISCO"
    assert bench["ram_size"] > 0 and bench["rom_size"] > 0 and bench["macc"] > 0
    tflm = bench["tflm"]
    assert tflm["source"] == "tflm" and tflm["available"] is True
    assert tflm["arena_bytes"] == tflm["head_bytes"] + tflm["tail_bytes"] > bench["ram_size"] // 2
    assert tflm["persistent_bytes"] == tflm["tail_bytes"] and bench["TFLM arena KiB"] == round(tflm["arena_bytes"] / 1024, 2)
    latency = bench["latency"]
    assert latency["source"] == "estimate" and latency["ms"] > 0 and latency["clock_mhz"] == 400
    assert latency["inferences_per_s"] == pytest.approx(1000 / latency["ms"], rel=1e-3)
    assert bench["Latency estimate ms"] == round(latency["ms"], 2)
    fit = bench["ram_fit"]
    assert fit["ram_source"] == "tflm" and fit["fits"] and fit["ram_needed_bytes"] == tflm["arena_bytes"]
    log = (run / "stmclf.log").read_text()
    assert "TFLM measured arena" in log and "latency ≈" in log and "inf/s" in log
    assert "Board fit (RAM from the TFLM measured arena" in log
    # MLflow: the benchmark stage's metrics carry the arena and the latency
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'experiments_outputs/mlruns/mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = next(r.data.metrics for r in runs if r.data.tags.get("stmclf.stage") == "benchmark")
    assert metrics["Latency estimate ms"] == pytest.approx(latency["ms"], abs=0.01)
    assert metrics["TFLM arena KiB"] > 0
    # the journey report shows the arena, the latency and the figure the fit check used
    assert main(["report", "--run", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "RAM: TFLM measured arena" in page and "latency (offline estimate)" in page
    assert "Board-fit check (RAM from the TFLM measured arena)" in page


@pytest.mark.slow
def test_arena_larger_than_the_board_ram_says_so_in_one_line(tiny, tmp_path, monkeypatch):
    """Two 64×64×32 int8 maps (256 KiB planned) on the smallest board (NUCLEO-F401RE, 96 KiB, no
    external RAM, Cortex-M4): the fit check names the board, the figure and its source; no latency."""
    pytest.importorskip("tflite_micro")
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--model", str(tiny["big_arena"]), "--offline", "--board", "NUCLEO-F401RE"]) == 0
    run = _run_dir(tmp_path)
    bench = json.loads((run / "benchmark.json").read_text())
    fit = bench["ram_fit"]
    assert fit["ram_source"] == "tflm" and fit["fits"] is False and fit["ram"] == "no"
    problem = fit["problem"]
    arena_kib = bench["tflm"]["arena_bytes"] / 1024
    assert arena_kib > 96
    assert problem == (f"the model does not fit NUCLEO-F401RE: RAM needs {arena_kib:.1f} KiB (TFLM measured arena) "
                       f"but the board has 96 KiB internal and no external RAM")
    assert bench["latency"]["available"] is False and "Cortex-M4" in bench["latency"]["reason"]
    log = (run / "stmclf.log").read_text()
    assert problem in log and "no latency estimate for NUCLEO-F401RE (Cortex-M4)" in log


# --------------------------------------------------------------------------------------------
# benchmark.json of either naming in the journey report


@pytest.mark.parametrize("record, shown", [
    ({"source": "board", "board": "STM32H747I-DISCO", "ram_size": 1000, "rom_size": 2000, "duration_ms": 3.5},
     "board run (STM32Cube.AI Developer Cloud)"),
    ({"source": "cloud-analyze", "ram_size": 1000, "rom_size": 2000}, "cloud analyze"),
    ({"source": "offline-estimate", "ram_size": 1000, "rom_size": 2000}, "offline estimate"),
    ({"source": "cloud", "cloud_mode": "board", "ram_size": 1000, "rom_size": 2000},
     "STM32Cube.AI Developer Cloud board run"),
])
def test_report_reads_old_and_new_source_names(tmp_path, record, shown):
    from stmclf.evaluate.report import write_report

    (tmp_path / "config.yaml").write_text("operation_mode: benchmarking\n")
    (tmp_path / "benchmark.json").write_text(json.dumps(record))
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert f"{shown} <small>({record['source']})</small>" in page
    assert Footprint.from_dict(record).source in ("cloud", "estimate")
