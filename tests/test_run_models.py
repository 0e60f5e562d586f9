"""Which model a mode or command works on: a model file that does not load is refused before any
run folder or MLflow run; `--run` commands use the run's own model; the file given on the command
line is named as such (`--ckpt`, `--model`) and recorded in the run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import error_of, COLORS, config_text, write_image_folder
from stmclf.cli.main import main
from test_keras_h5_malformed import GAP, _dense, _input, _sequential, _write

QDQ = """quantization:
  quantizer: onnx_quantizer
  quantization_type: PTQ
  quantization_input_type: uint8
  quantization_output_type: float
  granularity: per_channel
  export_dir: quantized_models
"""
"""The ONNX quantizer (QDQ int8 ONNX only: no TFLite conversion, fast)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two colour classes and a Keras .h5 (8x8x3 → global pooling → dense 2) written with h5py."""
    tmp = tmp_path_factory.mktemp("run_models")
    data = write_image_folder(tmp / "data", per_class=6, classes={k: COLORS[k] for k in ("cat", "dog")})
    h5 = _write(tmp / "source.h5", _sequential(_input([8, 8, 3]), GAP, _dense(2)))
    return tmp, data, h5


def _config(path: Path, data: Path, run_dir, mlruns: Path, *, mode: str = "training", model_path=None) -> Path:
    text = config_text(data, run_dir, mlruns, epochs=1, model="", extra=QDQ)
    text = text.replace("operation_mode: training", f"operation_mode: {mode}")
    if model_path is not None:
        text = text.replace("general:\n", f"general:\n  model_path: {model_path}\n", 1)
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["truncated_h5", "pickled"])
@pytest.mark.parametrize("mode", ["evaluation", "quantization", "benchmarking", "prediction"])
def test_a_model_file_that_does_not_load_leaves_no_run_folder(files, tmp_path, capsys, kind, mode):
    tmp, data, h5 = files
    bad = tmp_path / "bad.h5"
    if kind == "truncated_h5":
        bad.write_bytes(h5.read_bytes()[:600])
    else:
        bad = tmp_path / "evil.pt"
        torch.save(torch.nn.Linear(2, 2), bad)
    config = _config(tmp_path / "c.yaml", data, tmp_path / "run", tmp_path / "ml", mode=mode, model_path=bad)
    if mode == "prediction":
        config.write_text(config.read_text() + f"prediction:\n  test_files_path: {data / 'cat'}\n")
    assert main(["run", "--config", str(config), "--offline"]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and err.startswith(f"stmclf: error: general.model_path: {bad}"), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ml").exists()


def test_a_model_file_from_the_command_line_is_named_by_its_option(files, tmp_path, capsys):
    """--ckpt / --model, not general.model_path, in the error; nothing written; a .keras archive is
    told to be re-saved as .h5."""
    tmp, data, _ = files
    config = _config(tmp_path / "c.yaml", data, tmp_path / "run", tmp_path / "ml")
    (tmp_path / "m").mkdir()
    evil = tmp_path / "m/evil.pt"
    torch.save(torch.nn.Linear(2, 2), evil)
    keras3 = tmp_path / "m/x.keras"
    keras3.write_bytes(b"PK\x03\x04 a Keras 3 archive")
    for args, option in ((["export", "--ckpt", str(evil)], "--ckpt"),
                         (["benchmark", "--model", str(evil), "--offline"], "--model"),
                         (["predict", "--model", str(evil), "--images", str(data / "cat")], "--model"),
                         (["export", "--ckpt", str(keras3)], "--ckpt")):
        assert main([*args, "--config", str(config)]) == 2, args
        err = error_of(capsys.readouterr().err)
        assert len(err.splitlines()) == 1 and err.startswith(f"stmclf: error: {option}: {tmp_path / 'm'}"), err
    assert 'model.save("model.h5")' in err and "Keras .h5" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ml").exists()


def test_an_input_shape_beside_a_model_file_that_records_another_is_refused(files, tmp_path, capsys):
    """training.model.input_shape beside general.model_path gives the size of a torch file that
    records none: beside a .h5 (which records 8x8x3) another size is refused in one line naming the
    key and both shapes, before any run folder (it was ignored: the model trained at 8x8); the
    file's own size is accepted."""
    _, data, h5 = files
    config = _config(tmp_path / "ft.yaml", data, tmp_path / "run", tmp_path / "ml", model_path=h5)
    text = config.read_text()
    config.write_text(text.replace("training:\n", "training:\n  model:\n    input_shape: (16, 16, 3)\n"))
    for args in (["fit"], ["export", "--int8", "--format", "onnx"]):
        assert main([*args, "--config", str(config)]) == 2
        err = error_of(capsys.readouterr().err)
        assert err == (f"stmclf: error: training.model.input_shape: (16, 16, 3), but {h5} records the input shape "
                       "(8, 8, 3), the size its model was built for; remove training.model.input_shape (it gives "
                       "the size of a TorchScript file or pickled module that records none)"), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ml").exists()
    config.write_text(text.replace("training:\n", "training:\n  model:\n    input_shape: (8, 8, 3)\n"))
    assert main(["export", "--config", str(config), "--int8", "--format", "onnx"]) == 0


def test_run_commands_use_the_runs_own_model_and_record_a_given_one(files, tmp_path):
    """A training run fine-tuned from general.model_path (a .h5): `export --run` exports the run's
    best_model.pt and `benchmark --run` measures the run's int8 file, not the source .h5. A model
    given with --ckpt is recorded in the run's config.yaml, and later --run commands use it."""
    tmp, data, h5 = files
    config = _config(tmp_path / "ft.yaml", data, tmp_path / "runs/${now:%Y_%m_%d_%H_%M_%S}", tmp_path / "ml",
                     model_path=h5)
    assert main(["fit", "--config", str(config)]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    best = run / "saved_models/best_model.pt"
    assert main(["export", "--run", str(run), "--int8", "--format", "onnx"]) == 0
    summary = json.loads((run / "quantized_models/export_summary.json").read_text())
    assert summary["model_file"] == str(best)
    assert main(["benchmark", "--run", str(run), "--offline"]) == 0
    assert json.loads((run / "benchmark.json").read_text())["model"] == Path(summary["files"]["onnx_qdq"]).name
    assert not (run / "benchmark_models").exists()  # nothing measured as a float export of the .h5

    other = tmp_path / "other"  # a new run folder for a model given on the command line
    assert main(["export", "--config", str(config), "--run", str(other), "--ckpt", str(best), "--int8",
                 "--format", "onnx"]) == 0
    assert f"model_path: {best}" in (other / "config.yaml").read_text()
    assert main(["benchmark", "--run", str(other), "--offline"]) == 0
    assert json.loads((other / "benchmark.json").read_text())["model"] == "best_model_quant_qdq_pc.onnx"
    assert main(["export", "--run", str(other), "--no_int8", "--format", "onnx"]) == 0
    assert json.loads((other / "quantized_models/export_summary.json").read_text())["model_file"] == str(best)


def test_on_target_evaluation_is_refused_and_a_missing_board_is_named(files, tmp_path, capsys, caplog):
    """ST's evaluation_n6_config (evaluation.target: stedgeai_n6) was evaluated on the host without
    a word; a benchmark without a benchmarking section used the default board silently."""
    import logging

    from stmclf.benchmark.run import board_name
    from stmclf.config import load_config

    _, data, h5 = files
    config = _config(tmp_path / "eval.yaml", data, tmp_path / "run", tmp_path / "mlruns", mode="evaluation",
                     model_path=h5)
    config.write_text(config.read_text() + "evaluation:\n  target: stedgeai_n6\n")
    assert main(["run", "--config", str(config)]) == 2
    assert error_of(capsys.readouterr().err).startswith(
        "stmclf: error: evaluation.target: 'stedgeai_n6': only host evaluation is supported")
    assert not (tmp_path / "run").exists()
    with caplog.at_level(logging.WARNING, logger="stmclf.benchmark"):
        assert board_name(load_config(["--config", str(config)])) == "STM32H747I-DISCO"
    assert "benchmarking.board not given: benchmarking for STM32H747I-DISCO" in caplog.text


def _keras_h5(path: Path, *, dense_only: bool = False) -> Path:
    """A small tf_keras model saved as .h5 (8x8x3 → conv → global pooling → dense 2)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("tf_keras")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs if dense_only else keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(path)
    return path


def test_a_run_fine_tuned_from_a_model_file_does_not_need_the_file(files, tmp_path, caplog, forget_model_sources):
    """A run started from general.model_path (a tf_keras .h5) keeps a copy of the file in its
    checkpoints: with the .h5 deleted (or replaced by another model), predict, export, evaluation
    and resuming the run still rebuild the model it trained."""
    import logging

    from stmclf.models.model_file_entry import SOURCE_KEY

    _, data, _ = files
    h5 = _keras_h5(tmp_path / "mine.h5")
    sha = __import__("hashlib").sha256(h5.read_bytes()).hexdigest()
    config = _config(tmp_path / "ft.yaml", data, tmp_path / "run", tmp_path / "ml", model_path=h5)
    assert main(["fit", "--config", str(config)]) == 0
    run = tmp_path / "run"
    best = torch.load(run / "saved_models/best_model.pt", weights_only=True)
    assert best["hyper_parameters"]["model_spec"]["sha256"] == sha
    assert best[SOURCE_KEY]["content"].numpy().tobytes() == h5.read_bytes()
    h5.unlink()
    forget_model_sources()  # as in a new process: only the checkpoint

    with caplog.at_level(logging.INFO, logger="stmclf.models"):
        assert main(["predict", "--run", str(run), "--images", str(data / "cat")]) == 0
    assert "is missing: the model is rebuilt from the copy stored in its checkpoint" in caplog.text
    assert len((run / "predictions/predictions.csv").read_text().splitlines()) == 7  # header + 6 images
    assert main(["export", "--run", str(run), "--int8", "--format", "onnx"]) == 0
    assert (run / "quantized_models/best_model_quant_qdq_pc.onnx").is_file()
    evaluation = _config(tmp_path / "eval.yaml", data, tmp_path / "eval_run", tmp_path / "ml", mode="evaluation",
                         model_path=run / "saved_models/best_model.pt")
    assert main(["run", "--config", str(evaluation)]) == 0
    assert json.loads((tmp_path / "eval_run/results.json").read_text())[0]["set"] == "validation_set"

    _keras_h5(h5, dense_only=True)  # another model at the same path: the run keeps its own
    resumed = config.read_text().replace("epochs: 1", "epochs: 2").replace(str(run), str(tmp_path / "resumed"))
    resumed = resumed.replace("training:\n", "training:\n  resume_training_from: "
                                             f"{run / 'saved_models/last_augmented_model.ckpt'}\n")
    (tmp_path / "resume.yaml").write_text(resumed)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stmclf.models"):
        assert main(["fit", "--config", str(tmp_path / "resume.yaml")]) == 0
    assert "has changed since training: the model is rebuilt from the copy stored in its checkpoint" in caplog.text
    last = torch.load(tmp_path / "resumed/saved_models/last_augmented_model.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last[SOURCE_KEY]["content"].numpy().tobytes() == best[SOURCE_KEY]["content"].numpy(
    ).tobytes()  # the resumed run's checkpoints carry the original file, not the one now at its path


def _torchscript(path: Path, *, record_shape: bool) -> Path:
    """A scripted conv → BN → pool → linear classifier (2 classes), with or without the input_shape
    extra file."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).eval()
    extra = {"input_shape": "8,8,3"} if record_shape else {}
    torch.jit.save(torch.jit.script(net), str(path), _extra_files=extra)
    return path


def test_a_torchscript_source_without_its_input_shape_trains_exports_and_benchmarks(files, tmp_path, capsys):
    """A TorchScript file without the input_shape extra file: one line saying how to give the size;
    with training.model.input_shape in the config it fine-tunes, and the run (and the file itself)
    exports to float ONNX, QDQ ONNX and TFLite and benchmarks (the ONNX exporter cannot trace into
    a ScriptModule called by a plain module: the model is traced first)."""
    _, data, _ = files
    ts = _torchscript(tmp_path / "net.pt", record_shape=False)
    config = _config(tmp_path / "ts.yaml", data, tmp_path / "run", tmp_path / "ml", mode="evaluation", model_path=ts)
    assert main(["run", "--config", str(config)]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "does not record the input size: set training.model.input_shape" in err
    assert "_extra_files" in err and not (tmp_path / "run").exists()

    with_shape = config.read_text().replace("operation_mode: evaluation", "operation_mode: training").replace(
        "training:\n", "training:\n  model:\n    input_shape: (8, 8, 3)\n")
    (tmp_path / "fit.yaml").write_text(with_shape)
    assert main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    ts.unlink()  # the run is self-contained
    run = tmp_path / "run"
    assert main(["export", "--run", str(run), "--int8", "--format", "onnx,tflite"]) == 0
    summary = json.loads((run / "quantized_models/export_summary.json").read_text())
    assert {"onnx", "onnx_qdq", "tflite", "tflite_int8"} <= set(summary["files"])
    assert main(["benchmark", "--run", str(run), "--offline"]) == 0

    _torchscript(ts, record_shape=False)  # the file itself, without a training
    assert main(["benchmark", "--config", str(tmp_path / "fit.yaml"), "--model", str(ts), "--run",
                 str(tmp_path / "bench"), "--offline"]) == 0
    assert (tmp_path / "bench/benchmark_models/net.onnx").is_file()


def _damaged_copy_run(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    """A run folder (its ``config.yaml`` and ``saved_models/best_model.pt``) fine-tuned from a
    TorchScript file that is gone since, whose checkpoint's copy of the file is truncated (with a
    matching SHA-256: it is read, and does not load); and the run's config."""
    import hashlib

    from stmclf.models.model_file_entry import SOURCE_KEY, model_file_spec
    from stmclf.training.module import ClassifierModule

    source = _torchscript(tmp_path / "src.pt", record_shape=True)
    module = ClassifierModule(model_spec=model_file_spec(source, (8, 8, 3)), class_names=["cat", "dog"],
                              input_shape=[8, 8, 3], rescaling=(1 / 127.5, -1.0), optimizer=None)
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), "epoch": 0,
                  "pytorch-lightning_version": "2"}
    module.on_save_checkpoint(checkpoint)
    truncated = checkpoint[SOURCE_KEY]["content"][:400].clone()
    sha = hashlib.sha256(truncated.numpy().tobytes()).hexdigest()
    checkpoint["hyper_parameters"]["model_spec"]["sha256"] = sha
    checkpoint[SOURCE_KEY].update(sha256=sha, content=truncated)
    run = tmp_path / "run"
    (run / "saved_models").mkdir(parents=True)
    torch.save(checkpoint, run / "saved_models/best_model.pt")
    source.unlink()
    config = _config(run / "config.yaml", data, run, tmp_path / "ml", mode="evaluation",
                     model_path=run / "saved_models/best_model.pt")
    return run, config


@pytest.mark.parametrize("entry", ["--model", "--ckpt", "--run", "general.model_path", "fit general.model_path",
                                   "training.resume_training_from", "training.model.pretrained_model_path"])
def test_errors_about_a_checkpoints_model_file_name_the_option_that_gave_the_checkpoint(
        files, tmp_path, capsys, forget_model_sources, entry):
    """A run started from a model file rebuilds it from the copy its checkpoint stores: when that
    copy does not load, the error names the option or key the checkpoint was given under (and the
    checkpoint), not training.model.path, which the user never wrote."""
    _, data, _ = files
    run, config = _damaged_copy_run(tmp_path, data)
    best = run / "saved_models/best_model.pt"
    forget_model_sources()  # as in a new process: only the checkpoint
    command = {"--model": ["predict", "--model", str(best), "--images", str(data / "cat")],
               "--ckpt": ["export", "--ckpt", str(best), "--format", "onnx", "--no_int8"],
               "--run": ["predict", "--run", str(run), "--images", str(data / "cat")],
               "general.model_path": ["run", "--config", str(config)]}.get(entry)
    if command is None:  # training from the checkpoint, resuming it, or taking its backbone
        text = config.read_text().replace("operation_mode: evaluation", "operation_mode: training")
        if entry == "training.resume_training_from":
            text = text.replace("training:\n", f"training:\n  resume_training_from: {best}\n")
        elif entry == "training.model.pretrained_model_path":
            text = text.replace(f"  model_path: {best}\n", "").replace(
                "training:\n", "training:\n  model:\n    name: mobilenet\n    version: v2\n    alpha: 0.35\n"
                               f"    input_shape: (32, 32, 3)\n    pretrained_model_path: {best}\n")
        config.write_text(text)
        command = ["fit", "--config", str(config)]
    assert main(command) == 2
    err = error_of(capsys.readouterr().err)
    key = entry.split()[-1]
    assert len(err.splitlines()) == 1 and err.startswith(f"stmclf: error: {key}: "), err
    assert f"the copy of src.pt stored in {best}: " in err and "training.model.path" not in err, err


def test_a_model_file_is_imported_once_to_train_or_to_load_it(files, tmp_path, caplog):
    """fit from general.model_path (a .h5) and load_source_module import the file once each: the
    model that is checked is the one that trains. Counted by the importer's own log: one warning per
    import for a regularizer stmclf cannot apply."""
    import logging

    from stmclf.config import load_config
    from stmclf.models.source import resolve_model_source
    from stmclf.training.fit import train
    from stmclf.training.model_file import load_source_module

    _, data, _ = files
    keras = pytest.importorskip("tf_keras")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    regularizer = keras.regularizers.OrthogonalRegularizer(0.01)
    keras.Model(inputs, keras.layers.Dense(2, name="d", kernel_regularizer=regularizer)(x)).save(tmp_path / "reg.h5")
    warning = "layer 'd': unsupported regularizer 'OrthogonalRegularizer'"
    config = _config(tmp_path / "fit.yaml", data, tmp_path / "run", tmp_path / "ml", model_path=tmp_path / "reg.h5")
    with caplog.at_level(logging.WARNING, logger="stmclf.models.importers"):
        result = train(load_config(["--config", str(config)]))
    assert caplog.text.count(warning) == 1, caplog.text
    assert result.module.model.layer("d").weight.shape == (2, 4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stmclf.models.importers"):
        load_source_module(resolve_model_source(tmp_path / "reg.h5"))
    assert caplog.text.count(warning) == 1, caplog.text


_ORTHOGONAL = {"class_name": "OrthogonalRegularizer", "config": {"factor": 0.01, "mode": "rows"}}
"""A regularizer stmclf cannot apply: the Keras importer warns once per import of the file."""


@pytest.mark.parametrize("args", [
    ["run", "evaluation"], ["run", "quantization"], ["run", "prediction"], ["run", "benchmarking"],
    ["run", "chain_eqe"], ["run", "chain_eqeb"], ["run", "chain_qb"],
    ["export", "--ckpt", "--int8", "--format", "onnx"], ["benchmark", "--model"], ["predict", "--model"]],
    ids=lambda args: " ".join(args[:2]))
def test_a_model_file_given_to_a_mode_or_command_is_imported_once(files, tmp_path, caplog, args):
    """The modes and commands that take a model file (general.model_path, --ckpt, --model) check it
    before the run folder is made, then run their stages on it: the file is imported once per
    command, not once for the check and again for each stage. Counted by the importer's own log
    (one warning per import of a .h5 whose Dense layer has a regularizer stmclf cannot apply)."""
    import logging

    _, data, _ = files
    dense = _dense(2)
    dense["config"]["kernel_regularizer"] = _ORTHOGONAL
    h5 = _write(tmp_path / "reg.h5", _sequential(_input([8, 8, 3]), GAP, dense))
    command, rest = args[0], args[1:]
    mode = rest[0] if command == "run" else "training"
    config = _config(tmp_path / "c.yaml", data, tmp_path / "run", tmp_path / "ml", mode=mode,
                     model_path=h5 if command == "run" else None)
    config.write_text(config.read_text() + f"prediction:\n  test_files_path: {data / 'cat'}\n")
    if command == "run":
        argv = ["run", "--config", str(config), "--offline"]
    else:
        argv = [command, rest[0], str(h5), *rest[1:], "--config", str(config)]
        argv += ["--images", str(data / "cat")] if command == "predict" else []
        argv += ["--offline"] if command == "benchmark" else []
    with caplog.at_level(logging.WARNING, logger="stmclf.models.importers"):
        assert main(argv) == 0, argv
    assert caplog.text.count("layer 'd': unsupported regularizer 'OrthogonalRegularizer'") == 1, caplog.text
    if args == ["run", "evaluation"]:  # the file evaluated is still recorded with its results
        assert {r.get("file") for r in json.loads((tmp_path / "run/results.json").read_text())} == {str(h5)}
