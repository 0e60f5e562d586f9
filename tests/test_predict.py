"""Prediction (``stmclf predict`` and ``operation_mode: prediction``) with every artifact type:
a stmclf .pt, float and QDQ ONNX, float and int8 TFLite, on a folder written here."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import error_of, COLORS, write_image_folder
from stmclf.errors import ConfigError, UserError

CLASSES = sorted(COLORS)
RESCALING = (1 / 127.5, -1.0)
SPEC = {"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}


def train_small_model(train_dir: Path, steps: int = 40):
    """A ResNet-8 at 32×32 trained for a few Adam steps on the colour classes; (module, images)."""
    from stmclf.data.datamodule import load_image, ImageFormat
    from stmclf.training.module import ClassifierModule

    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # denormals make CPU training crawl (as in stmclf fit)
    module = ClassifierModule(model_spec=dict(SPEC), class_names=CLASSES, input_shape=[32, 32, 3],
                              rescaling=RESCALING, optimizer={"Adam": {"learning_rate": 0.005}})
    fmt = ImageFormat(32, 32)
    files = sorted(p for p in train_dir.rglob("*.png"))
    images = torch.from_numpy(np.stack([load_image(str(f), fmt).transpose(2, 0, 1) for f in files]))
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    optimizer = torch.optim.Adam(module.parameters(), lr=0.005)
    module.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randperm(len(images), generator=generator)[:16]
        loss = F.cross_entropy(module(module.preprocess(images[index])), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval(), images.numpy()


def save_model_file(module, path: Path) -> Path:
    from stmclf.training.model_file import MODEL_FORMAT

    torch.save({"format": MODEL_FORMAT, "epoch": 0, "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict()}, path)
    return path


def write_predict_folder(root: Path) -> Path:
    """Two images per class (flat, named after their class), a text file and a broken PNG."""
    classes = write_image_folder(root / "by_class", per_class=2, seed=11, size=(40, 30))
    folder = root / "images"
    folder.mkdir(parents=True)
    for image in sorted(classes.rglob("*.png")):
        image.rename(folder / image.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "subdir").mkdir()
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from stmclf.export.onnx_export import export_onnx
    from stmclf.export.onnx_qdq import quantize_qdq
    from stmclf.export.images import pin_input_range, rescale

    tmp = tmp_path_factory.mktemp("predict")
    train_dir = write_image_folder(tmp / "train", per_class=12)
    module, images = train_small_model(train_dir)
    model_file = save_model_file(module, tmp / "best_model.pt")
    onnx = export_onnx(module, tmp / "export" / "best_model.onnx", batch_size=1)
    qdq = quantize_qdq(onnx, tmp / "export" / "best_model_quant_qdq_pc.onnx",
                       rescale(pin_input_range(images), RESCALING))
    return {"tmp": tmp, "module": module, "pt": model_file, "onnx": onnx, "qdq": qdq, "images": images,
            "folder": write_predict_folder(tmp), "train_dir": train_dir}


def _check_outputs(result, folder: Path, min_correct: int = 5) -> None:
    assert len(result.rows) == 6
    names = [Path(r.file).name for r in result.rows]
    assert names == sorted(names)
    skipped = {Path(f).name for f, _ in result.skipped}
    assert skipped == {"notes.txt", "broken.png"}
    correct = sum(Path(r.file).name.split("_")[0] == r.label for r in result.rows)
    assert correct >= min_correct, [(Path(r.file).name, r.label, r.score) for r in result.rows]
    for row in result.rows:
        assert 0.0 < row.score <= 1.0 + 1e-6
        assert row.image is not None and row.image.is_file() and row.image.parent == result.out_dir
        with Image.open(row.image) as png:
            assert min(png.size) >= 256  # small images are enlarged for the label to be readable
    assert result.out_dir.name == "predictions"
    with open(result.csv, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [Path(r["file"]).name for r in table] == names
    assert list(table[0]) == ["file", "label", "class_index", "score", *[f"prob_{c}" for c in CLASSES]]
    for line, row in zip(table, result.rows):
        assert line["label"] == row.label and float(line["score"]) == pytest.approx(row.score, abs=1e-5)
        probs = [float(line[f"prob_{c}"]) for c in CLASSES]
        assert probs[int(line["class_index"])] == pytest.approx(max(probs))


def test_predict_model_file(setup, tmp_path, capsys):
    from stmclf.evaluate.predict import predict_folder

    result = predict_folder(setup["pt"], setup["folder"], tmp_path / "run")
    _check_outputs(result, setup["folder"])
    assert result.class_names == CLASSES and result.model_label == "Float model"
    for row in result.rows:  # softmax of the logits
        assert row.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    out = capsys.readouterr().out
    assert "Predictions of best_model.pt" in out and "cat_000.png" in out


def test_predict_file_name_that_is_not_utf8(setup, tmp_path, capsys):
    """A file named in latin-1: predicted like the others; the CSV (UTF-8) and the table show its
    undecodable byte as \\xe9 instead of failing with UnicodeEncodeError."""
    import os

    from stmclf.evaluate.predict import predict_folder

    folder = tmp_path / "images"
    folder.mkdir()
    source = sorted(setup["folder"].glob("cat_*.png"))[0]
    (Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))).write_bytes(source.read_bytes())
    result = predict_folder(setup["pt"], folder, tmp_path / "run")
    assert [Path(r.file).name for r in result.rows] == [os.fsdecode(b"caf\xe9.png")]
    assert result.rows[0].image.is_file()
    rows = list(csv.DictReader(open(result.csv, newline="", encoding="utf-8")))
    assert rows[0]["file"].endswith("/images/caf\\xe9.png") and rows[0]["label"] == result.rows[0].label
    assert "caf\\xe9.png" in capsys.readouterr().out



def test_predict_thin_images_and_long_names(setup, tmp_path):
    """A 1×20,000 strip gives an annotated copy of at most 2,048 px (was 256×5,120,000 px, 6 GB of
    memory); two files with the same 251-character stem get copies whose names fit in 255 bytes
    (was an OSError traceback)."""
    from stmclf.evaluate.predict import predict_folder

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((1, 20_000, 3), 90, np.uint8)).save(folder / "strip.png")
    source = sorted(setup["folder"].glob("cat_*.png"))[0]
    for suffix in (".png", ".jpg"):
        Image.open(source).convert("RGB").save(folder / ("L" * 251 + suffix))
    result = predict_folder(setup["pt"], folder, tmp_path / "run")
    assert len(result.rows) == 3
    names = [row.image.name for row in result.rows]
    assert len(set(names)) == 3 and all(len(os.fsencode(name)) <= 255 for name in names)
    with Image.open(next(r.image for r in result.rows if Path(r.file).name == "strip.png")) as strip:
        assert max(strip.size) <= 2048 and min(strip.size) >= 1
def test_predict_onnx_float_and_qdq_match_torch(setup, tmp_path):
    from stmclf.evaluate.predict import predict_folder

    reference = predict_folder(setup["pt"], setup["folder"], tmp_path / "pt", annotate=False, print_table=False)
    onnx = predict_folder(setup["onnx"], setup["folder"], tmp_path / "onnx", print_table=False)
    qdq = predict_folder(setup["qdq"], setup["folder"], tmp_path / "qdq", print_table=False)
    _check_outputs(onnx, setup["folder"])
    _check_outputs(qdq, setup["folder"])
    assert [r.label for r in onnx.rows] == [r.label for r in reference.rows]
    assert np.allclose([r.score for r in onnx.rows], [r.score for r in reference.rows], atol=1e-4)
    assert qdq.model_label == "ONNX QDQ int8"
    assert np.mean([a.label == b.label for a, b in zip(qdq.rows, reference.rows)]) >= 5 / 6


def test_class_names_from_config_and_mismatch(setup, tmp_path):
    from stmclf.config import load_config
    from stmclf.evaluate.predict import predict_folder

    path = tmp_path / "c.yaml"
    path.write_text("dataset:\n  class_names: [owl, cat, dog]\npreprocessing:\n  rescaling: {scale: 1/127.5, "
                    "offset: -1}\n  color_mode: rgb\n")
    cfg = load_config(["--config", str(path)])
    result = predict_folder(setup["onnx"], setup["folder"], tmp_path / "a", cfg=cfg, annotate=False,
                            print_table=False)
    assert result.class_names == CLASSES  # sorted, as training orders them
    path.write_text("dataset:\n  class_names: [cat, dog, fox]\n")
    with pytest.raises(ConfigError, match="trained on classes"):
        predict_folder(setup["pt"], setup["folder"], tmp_path / "b", cfg=load_config(["--config", str(path)]))


def test_cli_predict_without_config(setup, tmp_path, capsys):
    from stmclf.cli.main import main

    out = tmp_path / "cli"
    assert main(["predict", "--model", str(setup["onnx"]), "--images", str(setup["folder"]),
                 "--out", str(out)]) == 0
    assert (out / "predictions" / "predictions.csv").is_file()
    assert len(list((out / "predictions").glob("*.png"))) == 6
    assert (out / "stmclf.log").is_file()
    assert "owl_001.png" in capsys.readouterr().out
    # no image directory: one-line error
    assert main(["predict", "--model", str(setup["onnx"]), "--images", str(tmp_path / "nope"),
                 "--out", str(out)]) == 2


def test_operation_mode_prediction(setup, tmp_path):
    from stmclf.cli.main import main

    run_dir = tmp_path / "run"
    config = tmp_path / "predict.yaml"
    config.write_text(f"""\
general:
  project_name: predict_test
  model_path: {setup['pt']}
operation_mode: prediction
dataset:
  class_names: [cat, dog, owl]
preprocessing:
  rescaling:
    scale: 1/127.5
    offset: -1
  resizing:
    aspect_ratio: fit
    interpolation: bilinear
  color_mode: rgb
prediction:
  test_files_path: {setup['folder']}
mlflow:
  uri: {tmp_path / 'mlruns'}
hydra:
  run:
    dir: {run_dir}
""")
    assert main(["run", "--config", str(config)]) == 0
    with open(run_dir / "predictions" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert sum(Path(r["file"]).name.split("_")[0] == r["label"] for r in rows) >= 5
    assert (run_dir / "config.yaml").is_file()
    assert "operation_mode: prediction" in (run_dir / "stmclf.log").read_text()


def test_a_wrong_images_folder_is_one_line_naming_its_key_before_any_run_is_made(setup, tmp_path, capsys):
    """A dataset's root given as the folder to classify (its class folders are not read) made an
    empty predictions.csv, over the run's earlier one, and exit code 0; a misspelled or missing
    folder was "NAME: no such image directory" (a file too) under no key, after the mode had made its
    run folder and MLflow run. Each is now one line under the option or key that named the folder,
    before anything is written."""
    from stmclf.cli.main import main

    dataset = setup["train_dir"]  # cat/, dog/, owl/
    image = next(setup["folder"].glob("*.png"))
    cases = [(dataset, "no image file (JPEG, PNG, BMP or GIF) directly in the folder; its sub-folders "
                       "(cat, dog, owl) are not read: give the folder that holds the images"),
             (tmp_path / "imgaes", "no such folder; expected the folder of the images to classify"),
             (image, "not a folder; expected the folder of the images to classify")]
    for folder, why in cases:
        out = tmp_path / "cli"
        assert main(["predict", "--model", str(setup["onnx"]), "--images", str(folder), "--out", str(out)]) == 2
        assert error_of(capsys.readouterr().err) == f"stmclf: error: --images: {folder}: {why}"
        assert not (out / "predictions").exists()
        run_dir = tmp_path / "run"
        config = tmp_path / "predict.yaml"
        config.write_text(f"""\
general:
  model_path: {setup['pt']}
operation_mode: prediction
dataset:
  class_names: [cat, dog, owl]
prediction:
  test_files_path: {folder}
mlflow:
  uri: {tmp_path / 'mlruns'}
hydra:
  run:
    dir: {run_dir}
""")
        assert main(["run", "--config", str(config)]) == 2
        assert error_of(capsys.readouterr().err) == f"stmclf: error: prediction.test_files_path: {folder}: {why}"
        assert not run_dir.exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_predict_tflite_float_and_int8(setup, tmp_path):
    from stmclf.config import load_config
    from stmclf.evaluate.predict import predict_folder
    from stmclf.export.onnx_export import reference_outputs
    from stmclf.export.tflite import convert_tflite

    images = setup["images"]
    check = images[:8]
    tfl = convert_tflite(setup["onnx"], tmp_path / "tfl", rescaling=RESCALING, check_images=check,
                         expected=reference_outputs(setup["module"], check), calibration=images)
    reference = predict_folder(setup["pt"], setup["folder"], tmp_path / "pt", annotate=False, print_table=False)
    # no config and no export summary: the rescaling is unknown
    with pytest.raises(UserError, match="--config"):
        predict_folder(tfl.float_path, setup["folder"], tmp_path / "x")
    config = tmp_path / "c.yaml"
    config.write_text("dataset:\n  class_names: [cat, dog, owl]\npreprocessing:\n  rescaling: {scale: 1/127.5, "
                      "offset: -1}\n")
    cfg = load_config(["--config", str(config)])
    floats = predict_folder(tfl.float_path, setup["folder"], tmp_path / "f", cfg=cfg, print_table=False)
    _check_outputs(floats, setup["folder"])
    assert [r.label for r in floats.rows] == [r.label for r in reference.rows]
    assert np.allclose([r.score for r in floats.rows], [r.score for r in reference.rows], atol=1e-3)
    # int8: class names and rescaling from the export summary beside the file
    (tmp_path / "tfl" / "export_summary.json").write_text(json.dumps(
        {"class_names": CLASSES, "rescaling": list(RESCALING), "files": {"tflite_int8": str(tfl.int8_path)}}))
    ints = predict_folder(tfl.int8_path, setup["folder"], tmp_path / "i", print_table=False)
    _check_outputs(ints, setup["folder"])
    assert ints.model_label == "TFLite int8"
    assert np.mean([a.label == b.label for a, b in zip(ints.rows, reference.rows)]) >= 5 / 6


def test_to_probabilities():
    from stmclf.evaluate.predict import to_probabilities

    p = to_probabilities(np.array([[0.0, np.log(3.0)]]), "logits")
    assert p == pytest.approx(np.array([[0.25, 0.75]]))
    assert to_probabilities(np.array([[0.2, 0.8]]), "probabilities") == pytest.approx(np.array([[0.2, 0.8]]))
    assert to_probabilities(np.array([[0.0]]), "logits") == pytest.approx(np.array([[0.5, 0.5]]))


def test_imported_model_without_config_needs_the_rescaling(setup, tmp_path, capsys):
    """A Keras .h5 (or foreign ONNX) records no rescaling: without a config, one line asking for
    --config (as for a TFLite file), not a silent 1/255; with one, the config's rescaling."""
    from stmclf.cli.main import main
    from stmclf.config import load_config
    from stmclf.evaluate.predict import predict_folder
    from test_keras_h5_malformed import GAP, _dense, _input, _sequential, _write

    h5 = _write(tmp_path / "imported.h5", _sequential(_input([8, 8, 3]), GAP, _dense(2)))
    with pytest.raises(UserError, match="does not record its rescaling; give --config"):
        predict_folder(h5, setup["folder"], tmp_path / "x")
    assert main(["predict", "--model", str(h5), "--images", str(setup["folder"]), "--out", str(tmp_path / "o")]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "give --config" in err, err
    config = tmp_path / "c.yaml"
    config.write_text("dataset:\n  class_names: [cat, dog]\npreprocessing:\n  rescaling: {scale: 1/127.5, "
                      "offset: -1}\n")
    result = predict_folder(h5, setup["folder"], tmp_path / "y", cfg=load_config(["--config", str(config)]),
                            annotate=False, print_table=False)
    assert len(result.rows) == 6 and result.class_names == ["cat", "dog"]
    # stmclf's own files record their rescaling and need no config
    assert len(predict_folder(setup["pt"], setup["folder"], tmp_path / "z", annotate=False,
                              print_table=False).rows) == 6


def test_class_names_of_a_file_without_them_come_from_the_dataset_folders(setup, tmp_path):
    """An ONNX (or TFLite) file that stores no class names, with a config whose dataset gives its
    classes as folders (dataset.training_path): labelled by the folder names, not class_0 ..."""
    import onnx

    from stmclf.config import load_config
    from stmclf.evaluate.predict import predict_folder

    foreign = onnx.load(str(setup["onnx"]))
    del foreign.metadata_props[:]  # what another tool writes: no stmclf metadata
    path = tmp_path / "foreign.onnx"
    onnx.save(foreign, str(path))
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset:\n  training_path: {setup['train_dir']}\npreprocessing:\n  rescaling: "
                      "{scale: 1/127.5, offset: -1}\n  color_mode: rgb\n")
    result = predict_folder(path, setup["folder"], tmp_path / "run", cfg=load_config(["--config", str(config)]),
                            annotate=False, print_table=False)
    assert result.class_names == CLASSES
    correct = sum(Path(r.file).name.split("_")[0] == r.label for r in result.rows)
    assert correct >= 5, [(r.file, r.label) for r in result.rows]


def test_a_trusted_pickled_module_without_a_config_is_one_clean_refusal(setup, tmp_path, capsys):
    """A pickled torch.save(module) with --trust-model-file: without a config its rescaling is
    unknown, so prediction is refused in one line before any run folder (the grant is not lost
    between the check load and the stage's load: no crash there); with a config it predicts, its
    input size from training.model.input_shape (the module records none)."""
    from torch import nn

    from stmclf.cli.main import main

    path = tmp_path / "net.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3)), path)
    folder = setup["folder"]
    assert main(["predict", "--model", str(path), "--images", str(folder), "--trust-model-file",
                 "--out", str(tmp_path / "o")]) == 2
    err = error_of(capsys.readouterr().err)
    assert err == (f"stmclf: error: {path}: the file does not record its rescaling; give --config with a "
                   "preprocessing section (preprocessing.rescaling)"), err
    assert not (tmp_path / "o").exists()

    config = tmp_path / "c.yaml"
    config.write_text(f"dataset:\n  class_names: {CLASSES}\npreprocessing:\n  rescaling: {{scale: 1/127.5, "
                      "offset: -1}\ntraining:\n  model:\n    input_shape: (16, 16, 3)\n  batch_size: 4\n  epochs: 1\n"
                      f"  optimizer: {{Adam: {{learning_rate: 0.001}}}}\nmlflow:\n  uri: {tmp_path / 'ml'}\n")
    assert main(["predict", "--config", str(config), "--model", str(path), "--images", str(folder),
                 "--trust-model-file", "--out", str(tmp_path / "p")]) == 0
    rows = (tmp_path / "p/predictions/predictions.csv").read_text().splitlines()
    assert len(rows) == 7 and all(row.split(",")[1] in CLASSES for row in rows[1:]), rows
