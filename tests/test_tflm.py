"""TensorFlow Lite Micro check of int8 TFLite exports (stmclf/export/tflm.py): a real TFLM run in a
child process on real exported files — arena, agreement with LiteRT, accuracy; a model with an op
TFLM lacks keeps its LiteRT-checked file with one warning line; bad input is one line."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import QUANTIZATION, config_text, write_image_folder
from stmclf.config import load_config
from stmclf.errors import ConfigError, UserError

pytest.importorskip("tflite_micro")

CLASSES = ["cat", "dog", "owl"]
RESCALING = (1 / 127.5, -1.0)
SIZE = 16


class TiledNet(nn.Module):
    """conv → ReLU → global average → Tile (``x.repeat``) → linear: TFLite runs the Tile in int8,
    TensorFlow Lite Micro has no kernel for it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(16, len(CLASSES))

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).mean((2, 3)).repeat(1, 2))


def _module(images: np.ndarray, labels: np.ndarray, tile: bool = False):
    """ST's stmnist at 16×16 (or, with ``tile``, :class:`TiledNet`) trained for a few steps on the
    colour classes."""
    from stmclf.training.module import ClassifierModule

    torch.manual_seed(0)
    module = ClassifierModule(model_spec={"name": "stmnist", "input_shape": (SIZE, SIZE, 3)},
                              class_names=CLASSES, input_shape=[SIZE, SIZE, 3], rescaling=RESCALING,
                              optimizer="Adam")
    if tile:
        module.model = TiledNet()
    x, y = module.preprocess(torch.from_numpy(images)), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(module.model.parameters(), lr=0.01)
    module.train()
    for _ in range(40):
        loss = F.cross_entropy(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from stmclf.data.datamodule import ImageDataModule, ImageFormat
    from stmclf.export.images import load_images

    tmp = tmp_path_factory.mktemp("tflm")
    train = write_image_folder(tmp / "train", per_class=12, size=(SIZE, SIZE))
    test = write_image_folder(tmp / "test", per_class=8, size=(SIZE, SIZE), seed=5)

    def cfg(name: str, extra: str = ""):
        text = config_text(train, tmp / name, tmp / "mlruns", epochs=1, extra=QUANTIZATION + extra)
        text = text.replace("  validation_split: 0.25\n", f"  validation_split: 0.25\n  test_path: {test}\n")
        (tmp / f"{name}.yaml").write_text(text)
        return load_config(["--config", str(tmp / f"{name}.yaml")])

    base = cfg("base")
    datamodule = ImageDataModule(base.dataset, ImageFormat(SIZE, SIZE), batch_size=16, num_workers=0)
    images, labels = load_images(datamodule, datamodule.prepare_splits().train)
    return {"tmp": tmp, "cfg": cfg, "images": images, "labels": labels}


@pytest.fixture(scope="module")
def exported(data):
    """``stmclf export --int8`` of a trained stmnist model file: the journey (run folder, MLflow,
    results.json, report)."""
    from stmclf.orchestration import export_command
    from stmclf.training.model_file import MODEL_FORMAT

    module = _module(data["images"], data["labels"])
    model_file = data["tmp"] / "best_model.pt"
    torch.save({"format": MODEL_FORMAT, "epoch": 0, "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict()}, model_file)
    result, _ = export_command(data["cfg"]("ok"), str(model_file), formats=["tflite"], int8=True)
    return result


@pytest.mark.slow
def test_export_runs_the_int8_model_on_tflm(exported, data):
    checks = exported.checks
    assert checks["tflm_check"] == "ok"
    assert checks["tflm_images"] == 24  # the whole test set (fewer than the 32 asked for)
    assert checks["tflm_set"] == "test_set"
    # TFLM's reference kernels and LiteRT compute the same int8 graph
    assert checks["tflm_agreement"] >= 95.0 and checks["tflm_max_diff"] < 0.05
    assert checks["tflm_accuracy"] >= 90.0  # the colour classes are easy
    assert checks["tflm_arena_bytes"] == checks["tflm_arena_head_bytes"] + checks["tflm_arena_tail_bytes"] > 0
    assert checks["tflm_message"].startswith("TFLM check: int8 model runs on TensorFlow Lite Micro — arena ")
    assert exported.timings["tflm_check"] > 0
    summary = json.loads(exported.summary.read_text())
    assert summary["checks"]["tflm_arena_bytes"] == checks["tflm_arena_bytes"]
    assert summary["settings"]["tflm_check_images"] == 32
    run = data["tmp"] / "ok"
    assert checks["tflm_message"] in (run / "stmclf.log").read_text()
    # results.json: TFLM's accuracy on the whole test set, beside LiteRT's
    records = {(r["kind"], r["model"], r["set"]): r for r in json.loads((run / "results.json").read_text())}
    tflm = records[("tflm", "TFLite int8 on TFLM", "test_set")]
    assert (tflm["accuracy"], tflm["count"]) == (checks["tflm_accuracy"], 24)
    assert ("int", "TFLite int8", "test_set") in records
    # MLflow: the export stage's metrics and the check's outcome as params
    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(str(data["tmp"] / "mlruns"))[0])
    runs = client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id])
    export = next(r for r in runs if r.data.tags.get("stmclf.stage") == "export")
    assert export.data.metrics["tflm_arena_bytes"] == checks["tflm_arena_bytes"]
    assert export.data.metrics["tflm_agreement"] == checks["tflm_agreement"]
    assert export.data.params["tflm_check"] == "ok"
    # the journey report: the check's line, and the TFLM row of the accuracy table
    page = (run / "report.html").read_text()
    assert f'<p class="ok">{checks["tflm_message"]}</p>' in page
    assert "TFLite int8 on TFLM" in page


@pytest.mark.slow  # the exported fixture: a whole export journey
def test_measure_arena_and_run_tflm_match_litert(exported):
    """The module's API on the exported file: arena as TFLM reports it; outputs equal LiteRT's
    for the same uint8 input; float input is quantized as LiteRT's input is."""
    from stmclf.export.tflite import TfliteModel
    from stmclf.export.tflm import measure_arena, run_tflm, run_tflm_with_arena

    path = exported.tflite_int8
    arena = measure_arena(path)
    assert arena.total_bytes == exported.checks["tflm_arena_bytes"]
    assert (arena.persistent_bytes, arena.nonpersistent_bytes) == (arena.tail_bytes, arena.head_bytes)
    pixels = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    model = TfliteModel(path)
    litert = model.run_raw(pixels)
    got = run_tflm(path, pixels, batch=2)  # three batches
    assert got.shape == litert.shape == (5, 3)
    np.testing.assert_array_equal(run_tflm_with_arena(path, pixels, workers=2).outputs, got)  # two processes
    assert np.abs(got - litert).max() < 0.05
    floats = pixels.astype(np.float32) * RESCALING[0] + RESCALING[1]
    np.testing.assert_array_equal(run_tflm(path, floats, max_images=2),
                                  run_tflm(path, model.quantize_input(floats[:2])))


@pytest.mark.slow
def test_op_tflm_lacks_keeps_the_file_with_one_warning(data, caplog):
    from stmclf.export import export_run

    module = _module(data["images"], data["labels"], tile=True)
    with caplog.at_level(logging.WARNING, logger="stmclf.export"):
        result = export_run(data["cfg"]("tile"), module, data["tmp"] / "tile", formats=("tflite",))
    assert result.tflite_int8 is not None and result.tflite_int8.is_file()
    assert result.checks["tflite_int8_agreement"] >= 90.0  # LiteRT runs it fine
    assert result.checks["tflm_check"] == "failed"
    warnings = [r.getMessage() for r in caplog.records if "TFLM" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0] == ("TFLM check: op TILE is not supported by TensorFlow Lite Micro (quantized_model.tflite); "
                           "quantized_model.tflite is kept (checked with LiteRT)")
    assert result.checks["tflm_message"] == warnings[0]
    assert "tflm_arena_bytes" not in result.checks


def test_disabled_by_config_and_bad_value(data):
    from stmclf.export.export import ExportSettings

    assert ExportSettings.from_config(data["cfg"]("off", "  tflm_check_images: 0\n")).tflm_check_images == 0
    with pytest.raises(ConfigError, match="quantization.tflm_check_images") as info:
        ExportSettings.from_config(data["cfg"]("neg", "  tflm_check_images: -3\n"))
    assert "\n" not in str(info.value)


@pytest.mark.slow  # the exported fixture: a whole export journey
def test_bad_files_are_one_line(tmp_path, exported):
    from stmclf.export.tflm import TflmError, measure_arena, run_tflm

    with pytest.raises(TflmError, match="no such file"):
        measure_arena(tmp_path / "missing.tflite")
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(exported.tflite_int8.read_bytes()[:600])
    with pytest.raises(UserError) as info:
        measure_arena(truncated)
    assert str(info.value).startswith("TFLM: truncated.tflite") and "\n" not in str(info.value)
    with pytest.raises(TflmError, match="arena the model needs exceeds the 1,024 bytes given"):
        measure_arena(exported.tflite_int8, arena_limit=1024)
    with pytest.raises(TflmError, match="images of dtype int8 for a uint8 input"):
        run_tflm(exported.tflite_int8, np.zeros((1, SIZE, SIZE, 3), np.int8))
    with pytest.raises(TflmError, match=r"did not finish 3 inference\(s\) within 0 s"):
        run_tflm(exported.tflite_int8, np.zeros((3, SIZE, SIZE, 3), np.uint8), timeout=0.001)


@pytest.mark.slow  # the exported fixture: a whole export journey
def test_missing_package_is_one_line_not_a_failure(tmp_path, exported):
    """Without tflite_micro (hidden from a child interpreter) the check is skipped with one line
    saying how to install it; the export's result is otherwise unchanged."""
    script = tmp_path / "child.py"
    script.write_text(f"""
import logging, sys
from types import SimpleNamespace

import numpy as np


class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tflite_micro":
            raise ModuleNotFoundError(name)


sys.meta_path.insert(0, Hide())
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from stmclf.export.export import ExportResult, tflm_check

result = ExportResult()
images = SimpleNamespace(check=np.zeros((2, 3, {SIZE}, {SIZE}), np.uint8), check_labels=np.zeros(2, np.int64))
tflm_check(result, {str(exported.tflite_int8)!r}, images, None, None, {RESCALING!r}, 64)
print("CHECK", result.checks["tflm_check"])
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "TFLM" in line]
    assert lines == ["WARNING TFLM check skipped: tflite_micro is not installed (pip install 'stmclf[tflite]')"]
    assert "CHECK skipped" in proc.stdout


@pytest.mark.slow
def test_softmax_tflm_would_abort_on_is_one_warning(data, caplog):
    """Logits that span almost nothing give the int8 softmax an input scale TFLM's kernel aborts
    on (SIGABRT in the C++ runtime): one warning line naming the op and tensor, the file kept."""
    from stmclf.export import export_run

    module = _module(data["images"], data["labels"])
    last = [m for m in module.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.mul_(1e-9)
        last.bias.mul_(1e-9)
    with caplog.at_level(logging.WARNING, logger="stmclf.export"):
        result = export_run(data["cfg"]("flat"), module, data["tmp"] / "flat", formats=("tflite",))
    assert result.tflite_int8.is_file() and result.checks["tflm_check"] == "failed"
    warnings = [r.getMessage() for r in caplog.records if "TFLM" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith("TFLM check: quantized_model.tflite: op SOFTMAX (node ")
    assert "TensorFlow Lite Micro's int8 softmax aborts on it" in warnings[0]
