"""One journey, one run folder, one MLflow parent run: fit → export → benchmark → deploy-header,
model sources, resume from the command line."""
from __future__ import annotations

import hashlib
import html
import json
import shutil

import pytest
import torch

from conftest import QUANTIZATION, error_of
from stmclf.cli.main import main
from stmclf.training.tracking import resolve_tracking_uri



def _runs(mlruns):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(str(mlruns))[0])
    experiment = client.get_experiment_by_name("pytest_project")
    return client, client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def journey(tmp_path_factory, image_folder):
    """``stmclf fit`` into a time-stamped run folder (the default form of hydra.run.dir)."""
    from conftest import config_text

    tmp = tmp_path_factory.mktemp("journey")
    text = config_text(image_folder, tmp / "runs/${now:%Y_%m_%d_%H_%M_%S}", tmp / "mlruns", epochs=2,
                       extra=QUANTIZATION)
    (tmp / "c.yaml").write_text(text)
    assert main(["fit", "--config", str(tmp / "c.yaml")]) == 0
    (run,) = list((tmp / "runs").iterdir())
    return tmp, run


@pytest.mark.slow
def test_fit_export_benchmark_deploy_stay_in_one_run_folder(journey, capsys):
    tmp, run = journey
    assert main(["export", "--run", str(run), "--int8"]) == 0
    assert main(["benchmark", "--run", str(run), "--offline"]) == 0
    assert main(["deploy-header", "--run", str(run)]) == 0
    assert main(["report", "--run", str(run)]) == 0
    assert [p.name for p in (tmp / "runs").iterdir()] == [run.name]  # nothing outside the run folder
    for name in ("saved_models/best_model.pt", "quantized_models/quantized_model.tflite",
                 "quantized_models/export_summary.json", "benchmark.json", "generated/ai_model_config.h",
                 "results.json", "report.html", "mlflow_run.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "benchmark.json").read_text())["source"] == "estimate"
    kinds = {r["kind"] for r in json.loads((run / "results.json").read_text())}
    assert {"float", "int", "onnx_float", "tflite_float"} <= kinds
    # The run's own config.yaml was kept (the commands read it; nothing rewrote it).
    assert "operation_mode: training" in (run / "config.yaml").read_text()

    client, runs = _runs(tmp / "mlruns")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == f"{run.name} mobilenet α0.35"
    children = {r.data.tags["stmclf.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parent.info.run_id}
    assert set(children) == {"train", "export", "evaluate", "benchmark", "deploy"}
    assert len(runs) == 6
    # four commands reused the parent run: RUNNING during each, FINISHED after the last
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert "int_acc_validation_set" in children["evaluate"].data.metrics
    assert "MACCs M" in children["benchmark"].data.metrics
    # the parent shows the journey: metrics of every stage and the report
    assert {"float_acc_validation_set", "int_acc_validation_set", "MACCs M"} <= set(parent.data.metrics)
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "generated" in {a.path for a in client.list_artifacts(children["deploy"].info.run_id)}


@pytest.mark.slow
def test_export_infers_the_run_folder_from_the_checkpoint(journey, tmp_path):
    tmp, run = journey
    model = run / "saved_models/best_model.pt"
    assert main(["export", "--config", str(tmp / "c.yaml"), "--ckpt", str(model), "--format", "onnx",
                 "--no_int8"]) == 0
    assert (run / "quantized_models/best_model.onnx").is_file()
    assert [p.name for p in (tmp / "runs").iterdir()] == [run.name]


def test_resume_from_the_command_line_keeps_training_model_and_the_best_score(journey, tmp_path, capsys):
    """--ckpt_path with training.model still in the config; the earlier best score is kept."""
    tmp, run = journey
    last = run / "saved_models/last_augmented_model.ckpt"
    before = torch.load(last, weights_only=True)
    best_key = next(k for k in before["callbacks"] if "val_accuracy" in k)
    earlier_best = float(before["callbacks"][best_key]["best_model_score"])
    from conftest import config_text

    text = config_text(tmp / "data_unused", tmp_path / "resumed", tmp / "mlruns", epochs=3, extra=QUANTIZATION)
    text = text.replace(f"training_path: {tmp / 'data_unused'}",
                        f"training_path: {before['hyper_parameters'] and _train_dir(run)}")
    (tmp_path / "r.yaml").write_text(text)
    # Lightning's name, from the command line, training.model untouched; the model also differs
    assert main(["fit", "--config", str(tmp_path / "r.yaml"), "--ckpt_path", str(last),
                 "--training.model.alpha", "0.5"]) == 0
    err = capsys.readouterr()
    assert "differs from the checkpoint's model" in err.out + err.err
    resumed = torch.load(tmp_path / "resumed/saved_models/last_augmented_model.ckpt", weights_only=True)
    assert resumed["epoch"] == 2
    state = resumed["callbacks"][best_key]
    assert float(state["best_model_score"]) >= earlier_best
    best = torch.load(tmp_path / "resumed/saved_models/best_augmented_model.ckpt", weights_only=True)
    assert float(best["callbacks"][best_key]["best_model_score"]) == pytest.approx(float(state["best_model_score"]))
    # the best checkpoint is the best of the whole run: epoch 1 or 2 of the first part, or epoch 3
    assert (best["epoch"] < 2) == (float(state["best_model_score"]) == pytest.approx(earlier_best))


def _train_dir(run) -> str:
    for line in (run / "config.yaml").read_text().splitlines():
        if line.strip().startswith("training_path:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no training_path in the run's config")


def test_resume_training_from_as_an_override_with_training_model_present(journey, tmp_path):
    tmp, run = journey
    last = run / "saved_models/last_augmented_model.ckpt"
    from conftest import config_text

    text = config_text(tmp / "x", tmp_path / "resumed2", tmp / "mlruns", epochs=3).replace(
        f"training_path: {tmp / 'x'}", f"training_path: {_train_dir(run)}")
    (tmp_path / "r.yaml").write_text(text)
    assert main(["fit", "--config", str(tmp_path / "r.yaml"), "--training.resume_training_from", str(last)]) == 0
    rows = (tmp_path / "resumed2/logs/metrics/train_metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3"]


def test_moved_mlflow_store_keeps_its_artifacts_readable(journey, tmp_path):
    tmp, run = journey
    moved = tmp_path / "elsewhere/mlruns"
    shutil.copytree(tmp / "mlruns", moved)
    shutil.rmtree(tmp_path / "elsewhere/mlruns/artifacts", ignore_errors=True)
    shutil.copytree(tmp / "mlruns/artifacts", moved / "artifacts")
    original = tmp / "mlruns"
    hidden = tmp / "mlruns_hidden"
    original.rename(hidden)  # the old location is gone, as after a move
    try:
        client, runs = _runs(moved)
        train = next(r for r in runs if r.data.tags.get("stmclf.stage") == "train")
        assert str(moved) in train.info.artifact_uri
        local = client.download_artifacts(train.info.run_id, "config.yaml", str(tmp_path))
        assert "operation_mode: training" in open(local).read()
    finally:
        hidden.rename(original)


def test_model_sources_are_told_by_content(tmp_path, journey):
    from stmclf.errors import ConfigError
    from stmclf.models.source import resolve_model_source

    tmp, run = journey
    best = resolve_model_source(run / "saved_models/best_model.pt")
    assert best.kind == "stmclf" and best.can("quantize") and best.can("resume") and best.is_torch
    renamed = tmp_path / "model.onnx"  # the name lies: the content decides
    shutil.copy(run / "saved_models/best_model.pt", renamed)
    assert resolve_model_source(renamed).kind == "stmclf"
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    with pytest.raises(ConfigError) as err:
        resolve_model_source(weights).require("evaluate", "evaluation")
    message = str(err.value)
    assert message.startswith("general.model_path: ") and "weights.pt is a state dict" in message
    assert "evaluation accepts a stmclf model" in message and "\n" not in message
    (tmp_path / "junk.h5").write_bytes(b"not a model at all")
    assert resolve_model_source(tmp_path / "junk.h5").kind == "unknown"
    with pytest.raises(ConfigError, match="unable to find"):
        resolve_model_source(tmp_path / "missing.tflite")


@pytest.mark.slow
def test_exported_files_are_sorted_by_kind(journey):
    from stmclf.models.source import resolve_model_source

    tmp, run = journey
    folder = run / "quantized_models"
    if not (folder / "quantized_model.tflite").exists():
        assert main(["export", "--run", str(run), "--int8"]) == 0
    kinds = {p.name: resolve_model_source(p).kind for p in folder.iterdir() if p.suffix in (".onnx", ".tflite")}
    assert kinds["best_model.onnx"] == "onnx_float"
    assert kinds["best_model_quant_qdq_pc.onnx"] == "onnx_qdq"
    assert kinds["best_model_float32.tflite"] == "tflite_float"
    assert kinds["quantized_model.tflite"] == "tflite_int8"


def test_benchmark_of_a_trained_model_measures_its_float_onnx(journey, tmp_path, capsys):
    tmp, run = journey
    assert main(["benchmark", "--config", str(tmp / "c.yaml"), "--model", str(run / "saved_models/best_model.pt"),
                 "--run", str(tmp_path / "b"), "--offline"]) == 0
    assert (tmp_path / "b/benchmark_models/best_model.onnx").is_file()
    assert json.loads((tmp_path / "b/benchmark.json").read_text())["source"] == "estimate"
    state_dict = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, state_dict)
    code = main(["benchmark", "--config", str(tmp / "c.yaml"), "--model", str(state_dict), "--offline"])
    err = error_of(capsys.readouterr().err)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "weights.pt is a state dict" in err and "benchmarking accepts" in err


def test_benchmark_of_a_run_without_its_export_says_it_measures_the_float_model(journey, tmp_path, caplog):
    """A run whose export was never made or was interrupted (a config with a quantization section):
    benchmark --run measured the float best_model.pt as if nothing were missing (the log said only
    "(onnx, float)"); it says the int8 export is missing and the command that makes it."""
    tmp, trained = journey
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("quantized_models", "benchmark*", "generated",
                                                                "report.html", "mlflow_run.json"))
    with caplog.at_level("WARNING", logger="stmclf"):
        assert main(["benchmark", "--run", str(run), "--offline"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "has no exported model" in r.getMessage()]
    assert warnings == [f"benchmark --run {run}: the run has no exported model (no export was made, or it did not "
                        f"finish); benchmarking its float best_model.pt instead. For the int8 figures: stmclf export "
                        f"--run {run} --int8, then benchmark again"], [r.getMessage() for r in caplog.records]
    assert (run / "benchmark.json").is_file()


def test_the_files_of_an_export_killed_half_way_are_removed_by_the_next(journey, tmp_path, caplog):
    """A SIGKILL during an export leaves its hidden ``.<name>.partial`` ONNX file (written by
    torch.onnx by its path) or an atomic write's ``.<name>.<random>.tmp`` in the export folder; they
    stayed there for ever. The next export in that run folder removes them (a file being written is
    never one of them: the run folder has one writer at a time)."""
    import os

    tmp, trained = journey
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("quantized_models", "benchmark*", "generated",
                                                                "report.html", "mlflow_run.json"))
    export_dir = run / "quantized_models"
    export_dir.mkdir()
    left = [export_dir / ".best_model.onnx.partial", export_dir / ".export_summary.json.k3j9x2.tmp"]
    for path in left:
        path.write_bytes(b"half")
        os.utime(path, (1, 1))  # from a process killed long ago
    kept = export_dir / "notes.partial.txt"  # not a leftover: named otherwise
    kept.write_text("mine")
    with caplog.at_level("INFO", logger="stmclf"):
        assert main(["export", "--run", str(run), "--format", "onnx", "--no-int8"]) == 0
    assert not any(path.exists() for path in left) and kept.exists()
    assert (export_dir / "best_model.onnx").is_file()
    assert f"Removed 2 unfinished file(s) left by an interrupted save in {export_dir}: .best_model.onnx.partial, " \
           ".export_summary.json.k3j9x2.tmp" in caplog.text


def test_an_export_older_than_the_runs_model_is_not_used_in_silence(journey, tmp_path, capsys):
    """A later training rewrites best_model.pt in the run folder: benchmark --run and deploy-header
    --run refuse the run's earlier export (one line naming the command that exports it again), the
    report flags it at the top; the export summary records the SHA-256 of the model it was made from.
    A summary written before the fingerprint was recorded is used as before."""
    tmp, trained = journey
    run = tmp_path / "my run"  # a copy of the trained run, with its own MLflow parent run and no export yet
    # (a space in its path: the commands the messages give are quoted for the shell)
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("quantized_models", "benchmark*", "generated",
                                                                "report.html", "mlflow_run.json"))
    best = run / "saved_models/best_model.pt"
    assert main(["export", "--run", str(run), "--int8"]) == 0
    summary = json.loads((run / "quantized_models/export_summary.json").read_text())
    exported = hashlib.sha256(best.read_bytes()).hexdigest()
    assert main(["deploy-header", "--run", str(run)]) == 0  # the export matches the model: used
    capsys.readouterr()

    checkpoint = torch.load(best, map_location="cpu", weights_only=True)  # "a later training": new weights
    state = checkpoint["state_dict"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.5
    torch.save(checkpoint, best)

    header = run / "generated/ai_model_config.h"
    header.unlink()
    for command, use in ((["benchmark", "--run", str(run), "--offline"], "benchmark"),
                         (["deploy-header", "--run", str(run)], "deploy")):
        code = main(command)
        err = error_of(capsys.readouterr().err)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{run}/quantized_models/quantized_model.tflite: outdated, exported before {best} changed" in err, err
        assert f"export the run again: stmclf export --run '{run}' --int8" in err, err
        assert f"--model '{run}/quantized_models/quantized_model.tflite' to {use} that file as it is" in err, err
    assert not (run / "benchmark.json").exists() and not header.exists()

    assert main(["report", "--run", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert '<p class="bad" id="outdated-export">Outdated export: saved_models/best_model.pt changed after ' \
           'quantized_models was exported' in page
    assert html.escape(f"Export the run again: stmclf export --run '{run}' --int8") in page
    assert "Outdated export" in capsys.readouterr().err

    # an explicit --model is the user's choice: the file is used as it is
    assert main(["deploy-header", "--run", str(run), "--model",
                 str(run / "quantized_models/quantized_model.tflite")]) == 0
    # what the check reads: the model's SHA-256 and its place in the run folder (a moved run keeps its own)
    assert summary["model_sha256"] == exported
    assert summary["model_file_relative"] == "../saved_models/best_model.pt"

    # a summary written before the fingerprint was recorded: used as before, without a warning
    summary.pop("model_sha256"), summary.pop("model_file_relative")
    (run / "quantized_models/export_summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["deploy-header", "--run", str(run)]) == 0
    assert main(["report", "--run", str(run)]) == 0
    assert "outdated" not in capsys.readouterr().err.lower()
    assert "outdated-export" not in (run / "report.html").read_text()

