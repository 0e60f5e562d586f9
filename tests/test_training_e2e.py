"""End-to-end `stmclf fit` on a tiny image folder: run directory, MLflow, resume, atomic saves."""
from __future__ import annotations

from conftest import as_evaluation_of, error_of

import csv
import re

import pytest
import torch

from stmclf.cli.main import main
from stmclf.config import load_config
from stmclf.training.checkpoint_io import atomic_torch_save
from stmclf.training.fit import train
from stmclf.training.tracking import resolve_tracking_uri


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder):
    from conftest import config_text

    tmp = tmp_path_factory.mktemp("fit")
    config = tmp / "config.yaml"
    config.write_text(config_text(image_folder, tmp / "run", tmp / "mlruns", epochs=2))
    code = main(["fit", "--config", str(config)])
    assert code == 0
    return tmp


def test_run_directory_layout(trained):
    run = trained / "run"
    for name in ("config.yaml", "stmclf.log", "training_curves.png", "saved_models/best_augmented_model.ckpt",
                 "saved_models/last_augmented_model.ckpt", "logs/metrics/train_metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "logs").glob("events.out.tfevents.*"))
    rows = _rows(run / "logs/metrics/train_metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]  # epochs from 1
    assert set(rows[0]) == {"epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss"}
    assert float(rows[0]["lr"]) == pytest.approx(0.005)
    log = (run / "stmclf.log").read_text()
    for line in ("operation_mode: training", "Model name : mobilenet_v2_alpha_0.35", "Training runtime",
                 "Float model validation set accuracy", "operation finished: training"):
        assert line in log
    assert "epochs: 2" in (run / "config.yaml").read_text()
    assert (run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoints_hold_everything_needed(trained):
    last = torch.load(trained / "run/saved_models/last_augmented_model.ckpt", weights_only=True)
    best = torch.load(trained / "run/saved_models/best_augmented_model.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["optimizer_states"]
    assert last["hyper_parameters"]["class_names"] == ["cat", "dog", "owl"]
    assert best["epoch"] in (0, 1)


def test_mlflow_run_read_back(trained):
    from mlflow.tracking import MlflowClient

    tracking_uri, _ = resolve_tracking_uri(str(trained / "mlruns"))
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("pytest_project")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # the run folder's parent run and its "train" stage
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (run,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "run mobilenet α0.35" and parent.info.status == "FINISHED"
    assert run.info.run_name == "train" and run.info.status == "FINISHED"
    assert parent.data.metrics["float_acc_validation_set"] == run.data.metrics["float_acc_validation_set"]
    assert run.data.params["operation_mode"] == "training"
    assert run.data.params["training.batch_size"] == "8"
    assert run.data.params["training.model.alpha"] == "0.35"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert len(history) == 2
    assert 0 <= run.data.metrics["float_acc_validation_set"] <= 100
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "stmclf.log", "saved_models"} <= artifacts


def test_resume_continues_epoch_count(trained, tmp_path, image_folder):
    from conftest import config_text

    last = trained / "run/saved_models/last_augmented_model.ckpt"
    text = config_text(image_folder, tmp_path / "resumed", trained / "mlruns", epochs=4, model="")
    text = text.replace("training:\n", f"training:\n  resume_training_from: {last}\n", 1)
    (tmp_path / "resume.yaml").write_text(text)
    result = train(load_config(["--config", str(tmp_path / "resume.yaml")]))
    rows = _rows(tmp_path / "resumed/logs/metrics/train_metrics.csv")
    assert [r["epoch"] for r in rows] == ["3", "4"]
    assert result.epochs_run == 2
    resumed = torch.load(result.last_checkpoint, weights_only=True)
    assert resumed["epoch"] == 3
    assert resumed["global_step"] == 2 * torch.load(last, weights_only=True)["global_step"]
    # running it again with the same epochs: already finished, one-line error
    (tmp_path / "again.yaml").write_text(text.replace(str(last), str(result.last_checkpoint)))
    assert main(["fit", "--config", str(tmp_path / "again.yaml")]) == 2


def test_resume_from_a_non_checkpoint_is_refused(tmp_path, capsys, image_folder):
    from conftest import config_text

    bogus = tmp_path / "last.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    text = config_text(image_folder, tmp_path / "r", tmp_path / "ml", model="")
    text = text.replace("training:\n", f"training:\n  resume_training_from: {bogus}\n", 1)
    (tmp_path / "c.yaml").write_text(text)
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "training.resume_training_from: " in capsys.readouterr().err


def test_resume_from_a_model_file_or_a_tampered_checkpoint_is_one_line(trained, tmp_path, capsys, image_folder):
    from conftest import config_text

    last = torch.load(trained / "run/saved_models/last_augmented_model.ckpt", weights_only=True)
    tampered = {"epoch": {**last, "epoch": "abc"}, "hparams": {**last, "hyper_parameters": {"foo": 1}},
                "hparams-int": {**last, "hyper_parameters": 5}, **tampered_weights(last)}
    sources = {"best_model": trained / "run/saved_models/best_model.pt"}
    for name, checkpoint in tampered.items():
        sources[name] = tmp_path / f"{name}.ckpt"
        torch.save(checkpoint, sources[name])
    for name, source in sources.items():
        text = config_text(image_folder, tmp_path / f"r_{name}", tmp_path / "ml", epochs=4, model="")
        (tmp_path / f"{name}.yaml").write_text(
            text.replace("training:\n", f"training:\n  resume_training_from: {source}\n", 1))
        assert main(["fit", "--config", str(tmp_path / f"{name}.yaml")]) == 2, name
        err = error_of(capsys.readouterr().err)
        assert err.startswith("stmclf: error: training.resume_training_from: ") and "Traceback" not in err, err
        if name.startswith("weights-"):
            assert "does not match the model it describes" in err and len(err.splitlines()) == 1, err


def tampered_weights(checkpoint: dict) -> dict[str, dict]:
    """Copies of ``checkpoint`` whose weights do not fit the model its hyper-parameters describe."""
    state = checkpoint["state_dict"]
    first = next(iter(state))
    return {"weights-shape": {**checkpoint, "state_dict": {**state, first: torch.zeros(3, 3)}},
            "weights-not-tensor": {**checkpoint, "state_dict": {**state, first: 5}},
            "weights-extra": {**checkpoint, "state_dict": {**state, "model.extra.weight": torch.zeros(1)}}}


@pytest.mark.parametrize("mode", ["evaluation", "training"])
def test_model_file_with_weights_that_do_not_fit_is_one_line(trained, tmp_path, capsys, image_folder, mode):
    """A damaged or crafted best_model.pt as general.model_path (evaluation, or fine-tuning from it):
    a one-line error naming the key, not load_state_dict's RuntimeError."""
    from conftest import config_text

    best = torch.load(trained / "run/saved_models/best_model.pt", weights_only=True)
    for name, model in tampered_weights(best).items():
        path = tmp_path / f"{name}.pt"
        torch.save(model, path)
        text = config_text(image_folder, tmp_path / f"r_{name}", tmp_path / "ml", model="")
        text = text.replace("operation_mode: training", f"operation_mode: {mode}").replace(
            "general:\n", f"general:\n  model_path: {path}\n", 1)
        (tmp_path / f"{name}.yaml").write_text(text)
        assert main(["run", "--config", str(tmp_path / f"{name}.yaml")]) == 2, name
        err = error_of(capsys.readouterr().err)
        assert err.startswith(f"stmclf: error: general.model_path: {path} does not match the model it describes"), err
        assert len(err.splitlines()) == 1, err


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "model.ckpt"
    atomic_torch_save({"v": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"v": Unpicklable()}, target)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_best_model_file_and_confusion_matrices(trained):
    run = trained / "run"
    best = torch.load(run / "saved_models/best_model.pt", weights_only=True)
    assert best["format"] == "stmclf-model/1" and "optimizer_states" not in best
    assert (run / "float_model_confusion_matrix_validation_set.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluation_mode_reproduces_validation_accuracy(trained, tmp_path, image_folder):
    from mlflow.tracking import MlflowClient

    from conftest import config_text

    text = config_text(image_folder, tmp_path / "eval_run", trained / "mlruns", model="")
    text = as_evaluation_of(text, trained / "run/saved_models/best_model.pt")
    (tmp_path / "eval.yaml").write_text(text)
    assert main(["run", "--config", str(tmp_path / "eval.yaml")]) == 0
    assert (tmp_path / "eval_run/float_model_confusion_matrix_validation_set.png").exists()
    assert "operation_mode: evaluation" in (tmp_path / "eval_run/stmclf.log").read_text()
    client = MlflowClient(tracking_uri=resolve_tracking_uri(str(trained / "mlruns"))[0])
    runs = client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id])
    parents = {r.info.run_id: r.info.run_name.split()[0] for r in runs if "mlflow.parentRunId" not in r.data.tags}
    stages = {(parents[r.data.tags["mlflow.parentRunId"]], r.info.run_name): r for r in runs
              if r.data.tags.get("mlflow.parentRunId") in parents}
    assert stages[("eval_run", "evaluate")].data.metrics["float_acc_validation_set"] == \
        stages[("run", "train")].data.metrics["float_acc_validation_set"]
    assert stages[("eval_run", "evaluate")].data.params["operation_mode"] == "evaluation"


def test_multi_step_training_from_model_file(trained, tmp_path, image_folder):
    from conftest import config_text

    step1 = trained / "run/saved_models/best_model.pt"
    text = config_text(image_folder, tmp_path / "step2", tmp_path / "ml", model="", epochs=1)
    text = text.replace("general:\n", f"general:\n  model_path: {step1}\n", 1).replace(
        "  batch_size: 8\n", f"  batch_size: 8\n  frozen_layers: (0:-1)\n  trained_model_path: {tmp_path / 'step2.pt'}\n")
    (tmp_path / "step2.yaml").write_text(text)
    result = train(load_config(["--config", str(tmp_path / "step2.yaml")]))
    before = torch.load(step1, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "step2.pt", weights_only=True)["state_dict"]
    assert torch.equal(before["model.layers.Conv1.weight"], after["model.layers.Conv1.weight"])  # frozen
    assert result.epochs_run == 1


def test_html_report(trained, capsys):
    assert main(["report", str(trained / "run")]) == 0
    page = (trained / "run/report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # curves + confusion matrix, embedded
    assert "validation set" in page and "accuracy (%)" in page and "project_name: pytest_project" in page
    # the final tables' loss is the cross-entropy alone (val_loss adds the kernel regularizers), named so
    assert "<th>cross-entropy</th>" in page or ">cross-entropy<" in page
    assert re.search(r"validation set accuracy : \d+\.\d\d % \(cross-entropy \d+\.\d{4}\)",
                     (trained / "run/stmclf.log").read_text())
    assert main(["report", str(trained / "mlruns")]) == 2
    assert "no config.yaml; is this a stmclf run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_from_a_keras_h5_model_file_and_resume(tmp_path, image_folder):
    """Bring your own model: ST-style Keras .h5 as general.model_path, frozen layers, resume."""
    import torchvision.io  # noqa: F401  (torch's native libraries before TensorFlow's)
    import tf_keras

    from conftest import config_text

    inputs = tf_keras.Input((32, 32, 3))
    x = tf_keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.ReLU(6.0)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    x = tf_keras.layers.Dropout(0.3)(x)
    outputs = tf_keras.layers.Dense(3, activation="softmax")(x)
    tf_keras.Model(inputs, outputs).save(tmp_path / "st_model.h5")
    text = config_text(image_folder, tmp_path / "byom", tmp_path / "ml", model="", epochs=1)
    text = text.replace("general:\n", f"general:\n  model_path: {tmp_path / 'st_model.h5'}\n", 1).replace(
        "  batch_size: 8\n", "  batch_size: 8\n  dropout: 0.2\n  frozen_layers: (1:3)\n")
    (tmp_path / "byom.yaml").write_text(text)
    result = train(load_config(["--config", str(tmp_path / "byom.yaml")]))
    hparams = torch.load(result.last_checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["model_spec"]["name"] == "model_file"
    # the reference's dropout rule: this model has a Dropout layer, so training.dropout is required
    (tmp_path / "nodrop.yaml").write_text(text.replace("  dropout: 0.2\n", ""))
    assert main(["fit", "--config", str(tmp_path / "nodrop.yaml")]) == 2
    resume = text.replace(f"  model_path: {tmp_path / 'st_model.h5'}\n", "").replace(
        "epochs: 1", "epochs: 2").replace(f"dir: {tmp_path / 'byom'}", f"dir: {tmp_path / 'byom2'}").replace(
        "training:\n", f"training:\n  resume_training_from: {result.last_checkpoint}\n", 1)
    (tmp_path / "resume.yaml").write_text(resume)
    assert train(load_config(["--config", str(tmp_path / "resume.yaml")])).epochs_run == 1


def test_a_refused_command_leaves_its_reason_in_the_run_log(trained, tmp_path, capsys):
    """An error met after the command opened the run folder ends its stmclf.log too (the console
    printed it on stderr only): the log of a run tells what happened to it."""
    missing = tmp_path / "no_such_folder"  # the calibration set is listed by the export stage, in the run
    assert main(["export", "--run", str(trained / "run"), "--format", "onnx", "--int8",
                 "--dataset.quantization_path", str(missing)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("stmclf: error: ") and str(missing) in line, line
    assert (trained / "run/stmclf.log").read_text().splitlines()[-1].endswith(f"ERROR {line}")


def test_a_model_file_inside_a_run_brings_that_runs_config(trained, image_folder, capsys):
    """``predict --model <run>/saved_models/best_model.pt`` without --config writes into that run
    and uses its config (preprocessing, MLflow store), as --run does, not the bare defaults."""
    model = trained / "run/saved_models/best_model.pt"
    log = trained / "run/stmclf.log"
    before = log.read_text()
    assert main(["predict", "--model", str(model), "--images", str(image_folder / "cat")]) == 0
    added = log.read_text()[len(before):]
    assert "stage: predict" in added and "No preprocessing section" not in added
