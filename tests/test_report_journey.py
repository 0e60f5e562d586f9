"""``stmclf report`` over a whole journey: a run directory with the files the real writers produce
(results.json, export_summary.json, benchmark.json, the deployment header, predictions.csv)."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from stmclf.evaluate.report import write_report

CLASSES = ["cat", "dog", "<b>owl</b>"]
N = 40  # test-set images


class _Tables(HTMLParser):
    """Every table row of a page: (css class of the row, [text of each cell])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_rows(page: str) -> list[tuple[str, list[str]]]:
    """Rows of the page's tables, less the raw listing of benchmark.json (a <details> block)."""
    parser = _Tables()
    parser.feed(re.sub(r"<details>.*?</details>", "", page, flags=re.DOTALL))
    return parser.rows


def row(page: str, *first: str) -> tuple[str, list[str]]:
    """The row whose first cells are ``first`` (artifact, file, set... or field)."""
    found = [r for r in table_rows(page) if r[1][:len(first)] == list(first)]
    assert len(found) == 1, (first, found)
    return found[0]


def _result(accuracy: float, predictions: np.ndarray, loss=None) -> dict:
    confusion = np.zeros((3, 3), np.int64)
    labels = np.arange(N) % 3
    np.add.at(confusion, (labels, predictions), 1)
    return {"accuracy": accuracy, "loss": loss, "count": N, "confusion": confusion, "predictions": predictions}


def _sized(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


@pytest.fixture()
def run(tmp_path) -> Path:
    from stmclf.benchmark.deploy_header import render_header
    from stmclf.benchmark.results import Footprint
    from stmclf.evaluate.artifacts import comparison_rows
    from stmclf.evaluate.predict import Prediction, write_csv
    from stmclf.evaluate.results import record_results
    from stmclf.export.export import ExportResult, ExportSettings

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("general:\n  project_name: journey\nquantization:\n  export_dir: int8_models\n")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(run / "training_curves.png")
    _sized(run / "saved_models/best_model.pt", 4096)

    # evaluate: the float model (validation + test), then every exported file on the test set
    labels = np.arange(N) % 3

    def flip(k):
        return np.where(np.arange(N) < k, (labels + 1) % 3, labels)

    float_test = _result(90.0, flip(4), loss=0.31)
    record_results(run, "float", "Float model", {"validation_set": _result(77.5, flip(9), loss=0.4),
                                                 "test_set": float_test}, CLASSES)
    exported = {"TFLite float": ("tflite_float", _result(90.0, flip(4), loss=0.32)),
                "ONNX QDQ int8": ("onnx_int", _result(92.5, flip(3))),
                "TFLite int8": ("int", _result(87.5, flip(5)))}
    for label, (kind, values) in exported.items():
        record_results(run, kind, label, {"test_set": values}, CLASSES)
    # ONNX float: only in export_summary.json (its results.json record was not kept)
    onnx_float = _result(90.0, flip(4), loss=0.31)

    # export: the files, then export_summary.json as ExportResult.write_summary writes it
    export_dir = run / "int8_models"
    result = ExportResult(onnx=_sized(export_dir / "best_model.onnx", 2048),
                          onnx_qdq=_sized(export_dir / "best_model_quant_qdq_pc.onnx", 1000),
                          tflite=_sized(export_dir / "best_model_float32.tflite", 1_572_864),
                          tflite_int8=_sized(export_dir / "quantized_model.tflite", 1536),
                          export_dir=export_dir, model_file=run / "saved_models/best_model.pt",
                          module=SimpleNamespace(model_name="mobilenet_v2_0.35", class_names=CLASSES,
                                                 hparams=SimpleNamespace(input_shape=(32, 32, 3))),
                          settings=ExportSettings(export_dir="int8_models"), formats=("onnx", "tflite"), int8=True,
                          rescaling=(1 / 127.5, -1.0), timings={"onnx_export": 1.234, "total": 9.5},
                          checks={"check_images": "dataset.test_path: 64 images", "onnx_max_diff": 1e-6,
                                  "onnx_qdq_agreement": 98.44, "tflite_float_agreement": 100.0,
                                  "tflite_int8_agreement": 96.88})
    result.results = {"Float model": {"test_set": float_test}, "ONNX float": {"test_set": onnx_float},
                      **{label: {"test_set": values} for label, (_, values) in exported.items()}}
    rows = comparison_rows({"test_set": float_test}, {"ONNX QDQ int8": {"test_set": exported["ONNX QDQ int8"][1]},
                                        "TFLite int8": {"test_set": exported["TFLite int8"][1]}})
    assert [r["agreement"] for r in rows] == [97.5, 97.5]
    result.checks["comparison"] = rows
    result.write_summary()

    # benchmark and deploy
    Footprint(source="estimate", board="STM32H747I-DISCO", rom_size=150_000, ram_size=120_000,
              macc=5_600_000, estimated_library_ram_size=10_000, estimated_library_flash_size=40_000,
              duration_ms=12.5, notes=["<script>alert(1)</script>"]).write_json(run / "benchmark.json")
    io = {"input": {"dtype": "uint8", "shape": (1, 32, 32, 3), "scale": 0.0078125, "zero_point": 128},
          "output": {"dtype": "float32", "shape": (1, 3), "scale": 0.0, "zero_point": 0}}
    cfg = {"preprocessing": {"resizing": {"aspect_ratio": "crop"}, "color_mode": "rgb"}}
    header = run / "generated/ai_model_config.h"
    header.parent.mkdir()
    header.write_text(render_header(cfg, CLASSES, io), encoding="ascii")

    # predict
    predictions = [Prediction(f"img_{i:02d}.png", CLASSES[i % 3], i % 3, 0.9, np.array([0.9, 0.05, 0.05]))
                   for i in range(25)]
    (run / "predictions").mkdir()
    write_csv(predictions, CLASSES, run / "predictions/predictions.csv")
    return run


def test_report_shows_the_whole_journey(run):
    page = write_report(run).read_text(encoding="utf-8")

    # accuracy per artifact: accuracy, delta vs the float model, file, size, agreement with float
    assert row(page, "Float model", "best_model.pt", "test set")[1][3:] == [
        "40", "90.00", "", "0.3100", "4.00 KiB (4,096 bytes)", "reference"]
    assert row(page, "Float model", "best_model.pt", "validation set")[1][4] == "77.50"
    assert row(page, "ONNX float", "best_model.onnx", "test set")[1][4:] == [
        "90.00", "+0.00", "0.3100", "2.00 KiB (2,048 bytes)", ""]
    assert row(page, "TFLite float", "best_model_float32.tflite", "test set")[1][4:] == [
        "90.00", "+0.00", "0.3200", "1.50 MiB (1,572,864 bytes)", "100.00*"]
    qdq = row(page, "ONNX QDQ int8", "best_model_quant_qdq_pc.onnx", "test set")
    assert qdq == ("int8", ["ONNX QDQ int8", "best_model_quant_qdq_pc.onnx", "test set", "40", "92.50", "+2.50", "",
                            "1000 B (1,000 bytes)", "97.50"])
    int8 = row(page, "TFLite int8", "quantized_model.tflite", "test set")
    assert int8 == ("int8", ["TFLite int8", "quantized_model.tflite", "test set", "40", "87.50", "-2.50", "",
                             "1.50 KiB (1,536 bytes)", "97.50"])
    assert '<span class="neg">-2.50</span>' in page  # float → int8 loss highlighted
    assert "Float → int8" in page and "87.50 % vs float 90.00 %" in page
    assert "check images (dataset.test_path: 64 images)" in page
    assert row(page, "onnx_export")[1] == ["onnx_export", "1.23"]

    # training: curves and confusion-matrix tables
    assert page.count("data:image/png;base64,") == 1
    assert row(page, "dog", "13", "76.92")  # validation: 9 of 40 wrong, 3 of them dogs

    # footprint vs the board (the writer does not record the board's memory yet)
    assert row(page, "board")[1] == ["board", "STM32H747I-DISCO"]
    assert row(page, "source")[1] == ["source", "offline estimate (estimate)"]
    assert row(page, "flash: weights")[1] == ["flash: weights", "146.48 KiB (150,000 bytes)"]
    assert row(page, "flash: total")[1] == ["flash: total", "185.55 KiB (190,000 bytes)"]
    assert row(page, "RAM: activations")[1] == ["RAM: activations", "117.19 KiB (120,000 bytes)"]
    assert row(page, "MACC")[1] == ["MACC", "5,600,000 (5.600 M)"]
    assert row(page, "inference time")[1] == ["inference time", "12.50 ms"]
    assert row(page, "flash", "185.55 KiB (190,000 bytes) weights + code")[1][2] == "not recorded"
    assert "does not record the board&#x27;s memory sizes" in page

    # the deployment header
    header = {cells[0]: cells[1] for _, cells in table_rows(page) if cells and cells[0].isupper()}
    assert header["NB_CLASSES"] == "3"
    assert header["CLASSES_TABLE"] == "3: cat, dog, <b>owl</b>"  # text of the cell: the tags were escaped
    assert (header["INPUT_HEIGHT"], header["INPUT_WIDTH"], header["INPUT_CHANNELS"]) == ("32", "32", "3")
    assert header["QUANT_INPUT_TYPE"] == "UINT8_FORMAT (1)" and header["QUANT_OUTPUT_TYPE"] == "FLOAT32_FORMAT (3)"
    assert header["INPUT_QUANT_SCALE"] == "0.0078125" and header["INPUT_QUANT_ZERO_POINT"] == "128"
    assert header["ASPECT_RATIO_MODE"] == "ASPECT_RATIO_CROP (2)" and header["PP_COLOR_MODE"] == "RGB_FORMAT (1)"

    # predictions: the first 20 rows
    assert "first 20 of 25 prediction(s)" in page
    assert row(page, "img_19.png")[1][:4] == ["img_19.png", "dog", "1", "0.900000"]
    assert "img_20.png" not in page

    # journey and config
    assert row(page, "benchmark", "benchmark.json")[1][2] == "present"
    assert "export_dir: int8_models" in page

    # run files are untrusted: their HTML is escaped everywhere
    assert "<b>owl</b>" not in page and "&lt;b&gt;owl&lt;/b&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_board_capacity_when_the_benchmark_records_it(run):
    from stmclf.benchmark.boards import BOARDS

    board = BOARDS["STM32H747I-DISCO"]
    data = json.loads((run / "benchmark.json").read_text())
    data.update(board_flash_bytes=board.flash_bytes, board_ram_bytes=board.ram_bytes)
    (run / "benchmark.json").write_text(json.dumps(data))
    page = write_report(run).read_text(encoding="utf-8")
    assert row(page, "flash")[1] == ["flash", "185.55 KiB (190,000 bytes) weights + code",
                                     "2.00 MiB (2,097,152 bytes) internal", "9.1 %", "yes"]
    assert row(page, "RAM")[1] == ["RAM", "126.95 KiB (130,000 bytes) activations + runtime",
                                   "1.00 MiB (1,048,576 bytes) internal", "12.4 %", "yes"]
    assert "does not record the board" not in page

    data["ram_size"] = 1_100_000  # activations + runtime (1,110,000 bytes) > 1 MiB of SRAM
    (run / "benchmark.json").write_text(json.dumps(data))
    page = write_report(run).read_text(encoding="utf-8")
    assert row(page, "RAM")[1][3:] == ["105.9 %", "no"]


def test_missing_and_malformed_files_do_not_break_the_report(run):
    (run / "benchmark.json").write_text("{not json")
    (run / "int8_models/export_summary.json").write_text("[1, 2")
    (run / "generated/ai_model_config.h").unlink()
    (run / "predictions/predictions.csv").unlink()
    page = write_report(run).read_text(encoding="utf-8")
    assert "benchmark.json: not valid JSON" in page and "export_summary.json: not valid JSON" in page
    # results.json still gives the accuracies; the files are found under their default names
    assert row(page, "TFLite int8", "quantized_model.tflite", "test set")[1][4:6] == ["87.50", "-2.50"]
    assert "ONNX float" not in page.split("<h2>Accuracy</h2>")[1].split("</table>")[0]  # only in the summary
    assert "Deployment header" not in page and "<h2>Predictions" not in page

    (run / "results.json").write_text(json.dumps([{"model": "x"}, "junk", {"model": "Float model", "set": "test_set",
                                                                          "kind": "float", "accuracy": 50,
                                                                          "confusion": [[1, 2]]}]))
    page = write_report(run).read_text(encoding="utf-8")
    assert "results.json: 2 malformed record(s) skipped" in page
    assert row(page, "Float model", "best_model.pt", "test set")[1][4] == "50.00"
    assert "per-class accuracy not shown" in page

    (run / "results.json").write_text("")
    assert "results.json: not valid JSON" in write_report(run).read_text(encoding="utf-8")


def test_a_run_with_only_its_config(tmp_path):
    (tmp_path / "config.yaml").write_text("general: [unclosed\n")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "<h2>Journey</h2>" in page and "<h2>Config</h2>" in page
    assert "config.yaml: not valid YAML" in page
    assert "<h2>Accuracy</h2>" not in page and "Benchmark" not in page


def test_results_of_another_model_under_the_same_label_replace_the_older_ones(tmp_path):
    """A run's float model rows are those of the file last evaluated under that label: exporting
    another model (a Keras .h5) into the run drops the trained model's rows, validation set
    included, and the report names no file of the run for a model that lives outside it."""
    from stmclf.config.run_files import CONFIG_NAME
    from stmclf.evaluate.report import RunFiles
    from stmclf.evaluate.results import read_results, record_results

    run = tmp_path / "run"
    (run / "saved_models").mkdir(parents=True)
    (run / CONFIG_NAME).write_text("general: {project_name: p}\n")
    trained = run / "saved_models" / "best_model.pt"
    trained.write_bytes(b"trained")
    other = tmp_path / "theirs.h5"
    other.write_bytes(b"keras")
    confusion = np.eye(2, dtype=np.int64)
    both = {"validation_set": {"accuracy": 40.0, "count": 2, "confusion": confusion},
            "test_set": {"accuracy": 30.0, "count": 2, "confusion": confusion}}
    record_results(run, "float", "Float model", both, ["a", "b"], trained)
    assert RunFiles(run).artifact_file("Float model") == trained
    record_results(run, "float", "Float model", {"test_set": {"accuracy": 26.0, "count": 2, "confusion": confusion}},
                   ["a", "b"], other)
    rows = [(r["set"], r["accuracy"], Path(r["file"]).name) for r in read_results(run) if r["model"] == "Float model"]
    assert rows == [("test_set", 26.0, "theirs.h5")]
    assert RunFiles(run).artifact_file("Float model") is None  # not best_model.pt: that is another model
