"""Export: float ONNX, int8 QDQ ONNX, float and int8 TFLite of a small trained MobileNetV2, each
checked against torch on held-out images; calibration rules; one-line errors."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import config_text, write_image_folder
from stmclf.config import load_config
from stmclf.errors import ConfigError, UserError

MODEL_SPEC = {"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (32, 32, 3)}
CLASSES = ["cat", "dog", "owl"]
RESCALING = (1 / 127.5, -1.0)


def _config(tmp: Path, train_dir, test_dir, extra: str = "", run: str = "run"):
    path = tmp / f"{run}.yaml"
    text = config_text(train_dir, tmp / run, tmp / "mlruns", epochs=1, extra=extra)
    if test_dir is not None:
        text = text.replace("  validation_split: 0.25\n", f"  validation_split: 0.25\n  test_path: {test_dir}\n")
    path.write_text(text)
    return load_config(["--config", str(path)])


def _train_module(cfg, steps: int = 200):
    """A MobileNetV2-0.35 at 32×32 trained for a few Adam steps (confident on the colour classes)."""
    from stmclf.data.datamodule import ImageDataModule, ImageFormat
    from stmclf.export.images import load_images
    from stmclf.training.module import ClassifierModule

    torch.manual_seed(0)
    module = ClassifierModule(model_spec=dict(MODEL_SPEC), class_names=CLASSES, input_shape=[32, 32, 3],
                              rescaling=RESCALING, optimizer={"Adam": {"learning_rate": 0.005}})
    datamodule = ImageDataModule(cfg.dataset, ImageFormat(32, 32), batch_size=16, num_workers=0)
    train_images, labels = load_images(datamodule, datamodule.prepare_splits().train)
    images, labels = torch.from_numpy(train_images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.005)
    module.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randperm(len(images), generator=generator)[:16]
        loss = F.cross_entropy(module(module.preprocess(images[index])), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval(), train_images


def _save_model_file(module, path: Path) -> Path:
    from stmclf.training.model_file import MODEL_FORMAT

    torch.save({"format": MODEL_FORMAT, "epoch": 0, "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    train_dir = write_image_folder(tmp / "train", per_class=24)
    test_dir = write_image_folder(tmp / "test", per_class=10, seed=5)
    cfg = _config(tmp, train_dir, test_dir)
    module, train_images = _train_module(cfg)
    model_file = _save_model_file(module, tmp / "best_model.pt")
    from stmclf.data.datamodule import ImageDataModule, ImageFormat
    from stmclf.export.images import load_images

    datamodule = ImageDataModule(cfg.dataset, ImageFormat(32, 32), batch_size=16, num_workers=0)
    test_images, test_labels = load_images(datamodule, datamodule.prepare_splits().test)
    return {"tmp": tmp, "cfg": cfg, "module": module, "model_file": model_file, "train_dir": train_dir,
            "test_dir": test_dir, "test_images": test_images, "test_labels": test_labels,
            "train_images": train_images}


@pytest.fixture(scope="module")
def exported(setup):
    """The full export (both formats, int8), then every file evaluated, run once."""
    from stmclf.evaluate.artifacts import evaluate_export
    from stmclf.export import export_run

    result = export_run(setup["cfg"], setup["model_file"], setup["tmp"] / "run")
    evaluate_export(setup["cfg"], result, setup["tmp"] / "run")
    return result


def _torch_probs(module, images):
    from stmclf.export.onnx_export import reference_outputs

    return reference_outputs(module, images, softmax=True)


def test_export_writes_every_file_with_reference_names(exported, setup):
    export_dir = setup["tmp"] / "run" / "quantized_models"
    assert {k: Path(v).name for k, v in exported.items()} == {
        "onnx": "best_model.onnx", "onnx_qdq": "best_model_quant_qdq_pc.onnx", "tflite": "best_model_float32.tflite",
        "tflite_int8": "quantized_model.tflite", "summary": "export_summary.json"}
    assert all(Path(p).parent == export_dir and Path(p).stat().st_size > 0 for p in exported.values())
    for stage in ("onnx_export", "onnx_check", "onnx_qdq", "onnx2tf", "tflite_float", "tflite_int8", "evaluation",
                  "total"):
        assert exported.timings[stage] >= 0
    assert exported.checks["calibration"] == "dataset.training_path: 72 images"
    assert not list(export_dir.glob(".*partial"))


def test_float_onnx_matches_torch(exported, setup):
    from stmclf.export.onnx_export import input_shape_of, onnx_session, read_metadata, run_onnx

    path = exported["onnx"]
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    assert input_shape_of(path) == [1, 3, 32, 32]
    meta = read_metadata(path)
    assert meta["class_names"] == CLASSES and meta["input"] == "rescaled"
    assert meta["rescaling"] == pytest.approx(list(RESCALING))
    images = setup["test_images"]
    got = run_onnx(session, images.astype(np.float32) * np.float32(RESCALING[0]) + np.float32(RESCALING[1]))
    expected = _torch_probs(setup["module"], images)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.allclose(got.sum(1), 1, atol=1e-5)  # softmax output


def test_onnx_dynamic_batch_logits_and_folded_rescaling(setup, tmp_path):
    from stmclf.export.onnx_export import export_onnx, input_shape_of, onnx_session, reference_outputs

    module, images = setup["module"], setup["test_images"][:8]
    dynamic = export_onnx(module, tmp_path / "dyn.onnx", batch_size=None, softmax=False)
    assert input_shape_of(dynamic)[0] == "batch"
    session = onnx_session(dynamic)
    assert session.get_outputs()[0].name == "logits"
    rescaled = images.astype(np.float32) * np.float32(RESCALING[0]) + np.float32(RESCALING[1])
    logits = session.run(None, {"input": rescaled})[0]
    assert np.abs(logits - reference_outputs(module, images, softmax=False)).max() <= 1e-4
    folded = export_onnx(module, tmp_path / "folded.onnx", fold_rescaling=True)
    probs = onnx_session(folded).run(None, {"input": images.astype(np.float32)})[0]
    assert np.abs(probs - _torch_probs(module, images)).max() <= 1e-4


class _BatchOfOne(torch.nn.Module):
    """Declares a free batch size but reshapes to a batch of one (a common hand-written export)."""

    def __init__(self, flat: bool) -> None:
        super().__init__()
        self.conv, self.flat = torch.nn.Conv2d(3, 2, 3), flat
        self.dense = torch.nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.dense(y.reshape(1, 72)) if self.flat else self.dense(y.reshape(-1, 72))[:1]


@pytest.mark.parametrize("flat", [True, False], ids=["reshape-fails", "wrong-output-batch"])
def test_onnx_model_that_runs_one_image_only(tmp_path, flat, caplog):
    """A model that declares a free batch but runs one image (onnxruntime fails, or gives one row
    for a batch) is run image by image, with one warning; one that fails on one image is one line."""
    from stmclf.export.onnx_export import onnx_session, run_onnx

    model = _BatchOfOne(flat).eval()
    path = tmp_path / "one.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 8, 8), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    x = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)
    session = onnx_session(path)
    with caplog.at_level(logging.WARNING, logger="stmclf.export"):
        got = run_onnx(session, x, batch=4)
        again = run_onnx(session, x, batch=4)
    with torch.no_grad():
        expected = np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy() for i in range(5)])
    assert got.shape == (5, 3) and np.abs(got - expected).max() <= 1e-5
    assert np.array_equal(got, again)
    assert [r.getMessage() for r in caplog.records].count(
        f"{path} declares a free batch size but runs only one image at a time: evaluated image by image") == 1

    small = x[:, :, :4, :4]  # no image of this size runs
    with pytest.raises(UserError, match=rf"^{path}: onnxruntime cannot run this model on input \[4, 3, 4, 4\] "):
        run_onnx(onnx_session(path), small, batch=4)


def _agreement(a, b) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_qdq_per_channel_and_per_tensor_agree_with_float(exported, setup, tmp_path):
    from stmclf.export.images import rescale
    from stmclf.export.onnx_export import onnx_session, run_onnx
    from stmclf.export.onnx_qdq import is_quantized_onnx, quantize_qdq

    images = setup["test_images"]  # held out: never part of the calibration set
    expected = _torch_probs(setup["module"], images)
    x = rescale(images, RESCALING)
    per_channel = exported["onnx_qdq"]
    assert is_quantized_onnx(per_channel) and not is_quantized_onnx(exported["onnx"])
    calibration = setup["train_images"]
    per_tensor = quantize_qdq(exported["onnx"], tmp_path / "best_model_quant_qdq_pt.onnx",
                              rescale(calibration, RESCALING), per_channel=False, calib_moving_average=True)
    for path in (per_channel, per_tensor):
        got = run_onnx(onnx_session(path), x)
        assert _agreement(got, expected) >= 0.95, path.name
    assert onnx_session(per_tensor).get_inputs()[0].type == "tensor(float)"


def test_an_export_leaves_the_recursion_limit_as_it_was(exported):
    """onnx2tf sets sys.setrecursionlimit(2**31 - 1) when imported: any deep recursion later in the
    process (a Developer Cloud reply nested 100,000 deep) crashed it with a segfault instead of
    raising RecursionError."""
    import sys

    from stmclf.benchmark.cloud import decode_json

    assert sys.getrecursionlimit() < 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_json(b"[" * 100_000 + b"]" * 100_000)


def test_the_recursion_limit_is_sane_even_when_onnx2tf_was_imported_first():
    """A process that imported onnx2tf itself before the TFLite stack (as pytest.importorskip does)
    had its limit at 2**31 - 1 already: restoring "the limit before" kept it there."""
    import subprocess
    import sys

    code = ("import sys, torch\ntry:\n    import triton  # before TensorFlow's libraries, as stmclf does\n"
            "except ImportError:\n    pass\nimport onnx2tf\nfrom stmclf.export.tflite import require_tflite_stack\n"
            "require_tflite_stack()\nprint(sys.getrecursionlimit())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1000"


def test_float_tflite_matches_torch(exported, setup):
    from stmclf.export.images import rescale
    from stmclf.export.tflite import TfliteModel, nhwc

    model = TfliteModel(exported["tflite"])
    assert model.input.dtype == np.float32 and model.input.shape == (1, 32, 32, 3)
    assert not model.quantized
    images = setup["test_images"]
    got = model.predict(nhwc(rescale(images, RESCALING)))
    assert np.abs(got - _torch_probs(setup["module"], images)).max() <= 1e-4


def test_int8_tflite_takes_raw_uint8_pixels(exported, setup):
    from stmclf.export.tflite import TfliteModel, nhwc

    model = TfliteModel(exported["tflite_int8"])
    assert model.quantized and model.input.dtype == np.uint8 and model.output.dtype == np.float32
    assert model.input.scale == pytest.approx(RESCALING[0], rel=1e-4)
    assert model.input.zero_point in (127, 128)
    assert model.takes_raw_pixels(RESCALING)
    images = setup["test_images"]
    got = model.run_raw(nhwc(images))  # raw pixels, no arithmetic
    expected = _torch_probs(setup["module"], images)
    assert _agreement(got, expected) >= 0.95
    assert exported.checks["tflite_int8_raw_pixels"] is True
    # the evaluation of the int8 file feeds it what the board does: the raw pixels, bit for bit
    from stmclf.evaluate.artifacts import TflitePredictor

    predictor = TflitePredictor(exported["tflite_int8"], RESCALING)
    assert predictor.raw_pixels and np.array_equal(predictor.predict(images), got)


def test_artifact_evaluation_and_reports(exported, setup):
    import json

    run = setup["tmp"] / "run"
    labels = set(exported.results)
    assert labels == {"Float model", "ONNX float", "TFLite float", "ONNX QDQ int8", "TFLite int8"}
    float_acc = exported.results["Float model"]["test_set"]["accuracy"]
    for label in ("ONNX float", "TFLite float"):
        values = exported.results[label]["test_set"]
        assert values["accuracy"] == float_acc and values["loss"] is not None and values["count"] == 30
    for label in ("ONNX QDQ int8", "TFLite int8"):
        assert abs(exported.results[label]["test_set"]["accuracy"] - float_acc) <= 5.0
        assert exported.results[label]["test_set"]["loss"] is None
    rows = {row["model"]: row for row in exported.checks["comparison"]}
    assert rows["ONNX float"]["delta"] == 0 and rows["ONNX float"]["agreement"] == 100.0
    records = json.loads((run / "results.json").read_text())
    assert {(r["kind"], r["model"]) for r in records} == {
        ("float", "Float model"), ("onnx_float", "ONNX float"), ("tflite_float", "TFLite float"),
        ("onnx_int", "ONNX QDQ int8"), ("int", "TFLite int8"), ("tflm", "TFLite int8 on TFLM")}
    for kind in ("float", "int", "onnx_int", "onnx_float", "tflite_float"):
        assert (run / f"{kind}_model_confusion_matrix_test_set.png").is_file()
    summary = json.loads(exported["summary"].read_text())
    assert summary["timings"]["total"] > 0 and summary["settings"]["per_channel"] is True


def test_evaluate_artifact_matches_evaluate_module(exported, setup):
    from stmclf.data.datamodule import ImageDataModule, ImageFormat
    from stmclf.evaluate.accuracy import evaluate_module
    from stmclf.evaluate.artifacts import evaluate_artifact

    dm = ImageDataModule(setup["cfg"].dataset, ImageFormat(32, 32), batch_size=16, num_workers=0)
    loaders = [("test_set", dm.loader_for(dm.prepare_splits().test))]
    reference = evaluate_module(setup["module"], loaders)["test_set"]
    for artifact in (setup["model_file"], exported["onnx"]):
        got = evaluate_artifact(artifact, loaders, rescaling=RESCALING)["test_set"]
        assert got["accuracy"] == reference["accuracy"]
        assert np.array_equal(got["confusion"], reference["confusion"])
        assert got["loss"] == pytest.approx(reference["loss"], rel=1e-3, abs=1e-5)


def test_export_reads_images_with_the_models_rescaling_also_when_the_config_has_none(setup, tmp_path, caplog):
    """ST's deployment configs have no preprocessing.rescaling: an export with one reads the dataset
    with the model's own rescaling (it failed with 'missing required key preprocessing.rescaling'
    after announcing the export); another rescaling in the config is one warning."""
    from stmclf.config.sections import Rescaling
    from stmclf.export.images import gather_images

    cfg = _config(tmp_path, setup["train_dir"], setup["test_dir"])
    cfg.operation_mode, cfg.preprocessing.rescaling = "deployment", None
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        images, _, evaluation = gather_images(cfg, setup["module"], int8=True, max_calibration=8, check_images=4)
        assert evaluation[0] == "test_set" and len(images.check) == 4 and not caplog.records
        cfg.preprocessing.rescaling = Rescaling(scale=1 / 255, offset=0.0)
        gather_images(cfg, setup["module"], int8=True, max_calibration=8, check_images=4)
    assert [r.getMessage() for r in caplog.records] == [
        f"preprocessing.rescaling ({1 / 255}, 0.0) differs from the model's {tuple(RESCALING)}: using the model's"]


def test_a_sure_but_wrong_model_has_the_same_loss_as_its_onnx_file(setup, tmp_path):
    """The float model's cross-entropy is of its softmax clipped as Keras does, like every exported
    file's: an image the model is sure of, wrongly, counts −log(1e-7), not the logit gap (the
    float model said 11.09 where its own ONNX file said 5.50)."""
    import copy

    from stmclf.data.datamodule import ImageDataModule, ImageFormat
    from stmclf.evaluate.accuracy import evaluate_module
    from stmclf.evaluate.artifacts import evaluate_artifact
    from stmclf.export.onnx_export import export_onnx

    module = copy.deepcopy(setup["module"])
    head = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[0] += 1e4  # class 0 for every image, surely: the others have p(true class) ≈ 0
    dm = ImageDataModule(setup["cfg"].dataset, ImageFormat(32, 32), batch_size=16, num_workers=0)
    loaders = [("test_set", dm.loader_for(dm.prepare_splits().test))]
    reference = evaluate_module(module, loaders)["test_set"]
    wrong = 1 - reference["accuracy"] / 100
    assert 0 < wrong < 1 and reference["loss"] == pytest.approx(-np.log(1e-7) * wrong, rel=1e-3)
    got = evaluate_artifact(export_onnx(module, tmp_path / "sure.onnx"), loaders, rescaling=RESCALING)["test_set"]
    assert got["accuracy"] == reference["accuracy"]
    assert got["loss"] == pytest.approx(reference["loss"], rel=1e-3)


@pytest.mark.slow
def test_int8_tflite_per_tensor_int8_io(exported, setup, tmp_path):
    """Per-tensor weights with int8 input and output: raw pixels − 128 go in."""
    from stmclf.export.tflite import TfliteModel, convert_tflite, nhwc

    images = setup["test_images"]
    expected = _torch_probs(setup["module"], images)
    calibration = setup["train_images"]
    out = convert_tflite(exported["onnx"], tmp_path, rescaling=RESCALING, check_images=images, expected=expected,
                         calibration=calibration, per_channel=False, input_type="int8", output_type="int8")
    model = TfliteModel(out.int8_path)
    assert model.input.dtype == np.int8 and model.output.dtype == np.int8
    assert model.takes_raw_pixels(RESCALING)
    got = model.run_raw(model.raw_pixel_input(nhwc(images)))
    assert _agreement(got, expected) >= 0.95
    assert (tmp_path / "onnx2tf.log").is_file()


def test_random_calibration_warns_loudly(setup, tmp_path, caplog):
    """No quantization, training or validation set: random calibration with a warning."""
    from stmclf.export import export_run

    text = config_text(setup["test_dir"], tmp_path / "run", tmp_path / "mlruns", epochs=1)
    text = text.replace(f"  training_path: {setup['test_dir']}\n", f"  test_path: {setup['test_dir']}\n")
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_config(["--config", str(tmp_path / "c.yaml")])
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        result = export_run(cfg, setup["model_file"], tmp_path / "run", formats=("onnx",))
    assert result.checks["random_calibration"] is True
    assert result.checks["calibration"] == "10 random images"
    assert any("RANDOM" in r.getMessage() for r in caplog.records)
    assert set(result) == {"onnx", "onnx_qdq", "summary"}


def test_calibration_subset_rules():
    from types import SimpleNamespace

    from stmclf.data.folder import FileList, Splits
    from stmclf.export.images import calibration_files, pin_input_range

    files = FileList([f"f{i}.png" for i in range(1000)], [0] * 1000, "root")
    splits = Splits(["a"], train=files.subset(0, 800), valid=files.subset(800), quantization=files)
    dataset = SimpleNamespace(quantization_path=None, quantization_split=None)
    chosen, text = calibration_files(splits, dataset)
    assert chosen.paths == files.paths[:500] and "first 500 of 1000" in text
    dataset.quantization_split = 0.25
    chosen, text = calibration_files(splits, dataset)
    assert chosen.paths == files.paths[:250] and "quantization_split 0.25" in text
    dataset.quantization_split = 0.0001
    with pytest.raises(ConfigError, match="dataset.quantization_split"):
        calibration_files(splits, dataset)
    assert calibration_files(Splits(["a"]), dataset)[0] is None
    pinned = pin_input_range(np.full((2, 3, 4, 4), 100, np.uint8))
    assert pinned.min() == 0 and pinned.max() == 255 and (pinned[1] == 100).all()


def test_wrong_kind_of_model_file_is_one_line(setup, tmp_path):
    from stmclf.export import export_run

    keras = tmp_path / "model.h5"
    keras.write_bytes(b"\x89HDF\r\n\x1a\n")  # an HDF5 signature, but no Keras model in it
    not_a_model = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, not_a_model)
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    for path, expected in ((keras, "model.h5"), (not_a_model, "export accepts"), (tflite, "export accepts")):
        with pytest.raises(UserError) as info:
            export_run(setup["cfg"], path, tmp_path / "run", formats=("onnx",), int8=False)
        message = str(info.value)
        assert "\n" not in message and str(path) in message and expected in message


def test_dynamic_onnx_refused_for_tflite(setup, tmp_path):
    from stmclf.export.onnx_export import export_onnx
    from stmclf.export.tflite import onnx_to_saved_model

    dynamic = export_onnx(setup["module"], tmp_path / "dyn.onnx", batch_size=None)
    with pytest.raises(UserError) as info:
        onnx_to_saved_model(dynamic, tmp_path, tmp_path / "log.txt")
    assert "\n" not in str(info.value) and "static batch-1" in str(info.value) and str(dynamic) in str(info.value)


def test_unsupported_operator_is_one_line(setup, tmp_path):
    from types import SimpleNamespace

    from stmclf.export.onnx_export import export_onnx

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.special.i0(x).mean((2, 3))  # no ONNX equivalent

    fake = SimpleNamespace(model=Unexportable(), model_name="unexportable", class_names=CLASSES,
                           hparams=SimpleNamespace(input_shape=[8, 8, 3], rescaling=RESCALING))
    with pytest.raises(UserError) as info:
        export_onnx(fake, tmp_path / "x.onnx")
    message = str(info.value)
    assert "\n" not in message and "x.onnx" in message and "opset 17" in message and "aten::i0" in message
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(UserError, match="target_opset"):
        export_onnx(setup["module"], tmp_path / "y.onnx", opset=11)


def test_quantization_section_settings(setup, tmp_path):
    from stmclf.export.export import ExportSettings, parse_formats

    assert ExportSettings.from_config(setup["cfg"]) == ExportSettings()
    extra = """quantization:
  quantizer: onnx_quantizer
  quantization_type: PTQ
  quantization_input_type: int8
  quantization_output_type: float
  granularity: per_tensor
  target_opset: 15
  export_dir: q
  extra_options: calib_moving_average
"""
    cfg = _config(tmp_path, setup["train_dir"], None, extra=extra, run="q")
    settings = ExportSettings.from_config(cfg)
    assert (settings.export_dir, settings.per_channel, settings.opset, settings.input_type, settings.output_type,
            settings.calib_moving_average, settings.primary) == ("q", False, 15, "int8", "float", True, "onnx")
    cfg.quantization.quantization_type = "QAT"
    with pytest.raises(ConfigError, match="quantization.quantization_type"):
        ExportSettings.from_config(cfg)
    assert parse_formats("tflite,onnx") == ("onnx", "tflite")
    with pytest.raises(UserError, match="--format"):
        parse_formats("onnx,keras")


def test_export_command_run_directory(setup, tmp_path):
    """The command: run directory, log lines, MLflow runs, files in quantization.export_dir."""
    from stmclf.orchestration import export_command

    cfg = _config(tmp_path, setup["train_dir"], setup["test_dir"], run="mode")
    result, _ = export_command(cfg, setup["model_file"], formats=["onnx"], int8=True)
    run = tmp_path / "mode"
    assert result["onnx_qdq"] == run / "quantized_models" / "best_model_quant_qdq_pc.onnx"
    log_text = (run / "stmclf.log").read_text()
    for line in ("operation_mode: export", "Calibration set: dataset.training_path: 72 images",
                 "ONNX QDQ int8 test set accuracy", "Export stage total", "operation finished: export"):
        assert line in log_text
    assert (run / "report.html").is_file()
    with pytest.raises(ConfigError, match="general.model_path"):
        export_command(cfg)


def test_missing_quantization_path_is_one_line(setup, tmp_path):
    from stmclf.export import export_run

    missing = tmp_path / "nowhere"
    text = config_text(setup["train_dir"], tmp_path / "run", tmp_path / "mlruns", epochs=1)
    text = text.replace("  validation_split: 0.25\n", f"  validation_split: 0.25\n  quantization_path: {missing}\n")
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_config(["--config", str(tmp_path / "c.yaml")])
    with pytest.raises(ConfigError) as info:
        export_run(cfg, setup["model_file"], tmp_path / "run", formats=("onnx",))
    assert "\n" not in str(info.value) and "dataset.quantization_path" in str(info.value)
    assert str(missing) in str(info.value)


def test_op_without_tflite_kernel_is_one_line(tmp_path):
    """An op onnx2tf converts but TFLite has no builtin kernel for: no TFLite file, one line naming it."""
    from types import SimpleNamespace

    from stmclf.export.onnx_export import export_onnx
    from stmclf.export.tflite import convert_tflite

    class Determinant(torch.nn.Module):
        def forward(self, x):
            d = torch.linalg.det(x[:, :, :3, :3].mean(1))
            return torch.stack([d, -d, 2 * d], 1)

    fake = SimpleNamespace(model=Determinant(), model_name="det", class_names=CLASSES,
                           hparams=SimpleNamespace(input_shape=[8, 8, 3], rescaling=RESCALING))
    onnx_file = export_onnx(fake, tmp_path / "det.onnx", batch_size=1)
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    expected = torch.softmax(Determinant()(torch.from_numpy(images).float() * RESCALING[0] + RESCALING[1]), 1).numpy()
    with pytest.raises(UserError) as info:
        convert_tflite(onnx_file, tmp_path / "out", rescaling=RESCALING, check_images=images, expected=expected)
    message = str(info.value)
    assert "\n" not in message and "MatrixDeterminant" in message and str(onnx_file) in message
    assert not list((tmp_path / "out").glob("*.tflite"))


@pytest.mark.parametrize("per_channel", [True, False])
def test_low_int8_agreement_advice_fits_the_granularity(per_channel, caplog):
    """The advice for a quantized model that disagrees with the float one never suggests the
    granularity already in use."""
    import logging

    from stmclf.export.export import _warn_low_agreement

    with caplog.at_level(logging.WARNING, logger="stmclf"):
        _warn_low_agreement("TFLite int8", 0.88, random_calibration=False, per_channel=per_channel)
        _warn_low_agreement("TFLite int8", 0.95, random_calibration=False, per_channel=per_channel)
    [record] = caplog.records
    assert "agrees with the float model on only 88.0 %" in record.message
    assert ("per_channel" in record.message) is not per_channel
    assert "--per-layer" in record.message


def test_the_commands_after_an_export_find_its_folder(tmp_path):
    """benchmark, deploy-header, the report and --run lookups read the run's latest export: the
    configured folder, or the one an override (--quantization.export_dir) wrote more recently."""
    import os

    from stmclf.export.export import SUMMARY_NAME, run_export_dir

    run = tmp_path / "run"
    run.mkdir()
    assert run_export_dir(run) == run / "quantized_models"  # nothing exported yet
    assert run_export_dir(run, "int8") == run / "int8"
    (run / "quantized_models").mkdir()
    (run / "quantized_models" / SUMMARY_NAME).write_text("{}")
    (run / "qm2").mkdir()
    (run / "qm2" / SUMMARY_NAME).write_text("{}")
    os.utime(run / "quantized_models" / SUMMARY_NAME, ns=(1_000_000_000, 1_000_000_000))
    assert run_export_dir(run) == run / "qm2"  # the newer export, though the config names the default
    os.utime(run / "qm2" / SUMMARY_NAME, ns=(500_000_000, 500_000_000))
    assert run_export_dir(run) == run / "quantized_models"
    assert run_export_dir(run, "qm2") == run / "quantized_models"  # an older export is not taken for it


class _PythonBranch(torch.nn.Module):
    """Python control flow on the input's values: tracing records the example's branch only."""

    def __init__(self, branch: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.low, self.high = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        self.branch = branch

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        if self.branch and x.mean() > 0.3:
            return self.high(h) * 5
        return self.low(h)


def test_traced_data_dependent_control_flow_is_refused(tmp_path):
    """The ONNX exporter traces the model: a Python branch on the input's values is frozen to the
    example's branch (torch only warns, and the benchmark's check on mid-grey noise agreed). The
    exported file is checked on inputs over the whole range: one line says tracing froze the
    control flow, and no file is left; a model whose branch does not depend on the values exports."""
    from types import SimpleNamespace

    from stmclf.export.onnx_export import export_onnx

    fake = SimpleNamespace(model=_PythonBranch().eval(), model_name="branchy", class_names=CLASSES,
                           hparams=SimpleNamespace(input_shape=[8, 8, 3], rescaling=RESCALING))
    for batch_size in (1, None):
        with pytest.raises(UserError) as info:
            export_onnx(fake, tmp_path / "x.onnx", batch_size=batch_size)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / 'x.onnx'}: unable to export branchy to ONNX: the exporter traces the "
                                  "model, and tracing froze its data-dependent control flow (torch: Converting a "
                                  "tensor to a Python boolean might cause the trace to be incorrect): "), message
        assert "\n" not in message and "torch.export.save" in message and "target_opset" not in message
        assert not list(tmp_path.iterdir())
    fake.model = _PythonBranch(branch=False).eval()
    assert export_onnx(fake, tmp_path / "y.onnx", batch_size=1).is_file()


def test_a_batch_dependent_torchscript_model_is_named_as_such_and_loads_quietly(tmp_path):
    """A TorchScript model whose branch reads the whole batch (``x.mean()``) exports faithfully
    image by image (the scripted branch is kept in the ONNX file), but disagrees with torch run on a
    batch: the check says the model mixes the images of its batch, not that the opset is wrong.
    torch's deprecation of torch.jit.load and its .grad warning on a TorchScript model's
    parameters are not shown."""
    import warnings

    from stmclf.export.onnx_export import check_onnx, export_onnx
    from stmclf.models.model_file_entry import model_file_spec
    from stmclf.training.module import ClassifierModule

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.low, self.high = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x)).mean((2, 3))
            if bool(x.mean() > 0.3):
                return self.high(h) * 5
            return self.low(h)

    torch.manual_seed(0)
    path = tmp_path / "branch.pt"
    torch.jit.save(torch.jit.script(Net().eval()), str(path), _extra_files={"input_shape": "8,8,3"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = ClassifierModule(model_spec=model_file_spec(path, (8, 8, 3)), class_names=CLASSES,
                                  input_shape=[8, 8, 3], rescaling=RESCALING, optimizer=None).eval()
        onnx_file = export_onnx(module, tmp_path / "branch.onnx", batch_size=1)
    shown = [str(w.message) for w in caught]
    assert not [m for m in shown if "torch.jit.load" in m or ".grad attribute" in m], shown
    images = np.concatenate([np.zeros((2, 3, 8, 8), np.uint8), np.full((2, 3, 8, 8), 255, np.uint8)])
    with pytest.raises(UserError) as info:
        check_onnx(module, onnx_file, images)
    message = str(info.value)
    assert "Net computes an image's output from the other images of its batch" in message, message
    assert "target_opset" not in message and "\n" not in message
