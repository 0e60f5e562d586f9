"""`stmclf export` on a trained run, then `operation_mode: evaluation` of each exported model."""
from __future__ import annotations

import json

import pytest

from conftest import QUANTIZATION, as_evaluation_of, config_text
from stmclf.cli.main import main


@pytest.mark.slow
def test_export_cli_then_evaluate_every_artifact(tmp_path, image_folder):
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml", epochs=1))
    assert main(["fit", "--config", str(config)]) == 0
    best = tmp_path / "run/saved_models/best_model.pt"
    export_cfg = tmp_path / "export.yaml"
    export_cfg.write_text(config_text(image_folder, tmp_path / "export_run", tmp_path / "ml", epochs=1))
    assert main(["export", "--config", str(export_cfg), "--ckpt", str(best), "--int8"]) == 0
    out = tmp_path / "export_run/quantized_models"
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary
    artifacts = sorted(out.glob("*.onnx")) + sorted(out.glob("*.tflite"))
    assert {p.name for p in artifacts} >= {"best_model.onnx", "quantized_model.tflite"}
    for artifact in artifacts:
        text = config_text(image_folder, tmp_path / f"eval_{artifact.stem}", tmp_path / "ml", model="")
        text = as_evaluation_of(text, artifact)
        path = tmp_path / f"eval_{artifact.stem}.yaml"
        path.write_text(text)
        assert main(["run", "--config", str(path)]) == 0, artifact
        records = json.loads((tmp_path / f"eval_{artifact.stem}/results.json").read_text())
        assert records[0]["set"] == "validation_set" and 0 <= records[0]["accuracy"] <= 100



@pytest.mark.slow
def test_chain_tqe_and_chain_eqe(tmp_path, image_folder):
    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    text = config_text(image_folder, tmp_path / "tqe", tmp_path / "ml", epochs=1, extra=QUANTIZATION)
    (tmp_path / "tqe.yaml").write_text(text.replace("operation_mode: training", "operation_mode: chain_tqe"))
    assert main(["run", "--config", str(tmp_path / "tqe.yaml")]) == 0
    assert (tmp_path / "tqe/quantized_models/quantized_model.tflite").exists()
    records = json.loads((tmp_path / "tqe/results.json").read_text())
    assert {r["kind"] for r in records} >= {"float", "int"}
    client = MlflowClient(tracking_uri=resolve_tracking_uri(str(tmp_path / "ml"))[0])
    runs = client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id])
    (run,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # one parent: the journey
    assert {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId")} == {"train", "export", "evaluate"}
    assert "int_acc_validation_set" in run.data.metrics and "float_acc_validation_set" in run.data.metrics

    eqe = config_text(image_folder, tmp_path / "eqe", tmp_path / "ml", model="", extra=QUANTIZATION.replace(
        "TFlite_converter", "onnx_quantizer"))
    eqe = eqe.replace("operation_mode: training", "operation_mode: chain_eqe").replace(
        "general:\n", f"general:\n  model_path: {tmp_path / 'tqe/saved_models/best_model.pt'}\n", 1)
    (tmp_path / "eqe.yaml").write_text(eqe)
    assert main(["run", "--config", str(tmp_path / "eqe.yaml")]) == 0
    assert list((tmp_path / "eqe/quantized_models").glob("*_quant_qdq_pc.onnx"))


@pytest.mark.slow
def test_runs_that_do_not_train_make_no_saved_models_or_logs(tmp_path, image_folder):
    """A training run has saved_models/ and logs/; an evaluation and an export of a user's model file
    (outside any run folder) make run folders without them (they used to be left there empty), and
    `stmclf report --run` still reads such a folder."""
    import shutil

    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml", epochs=1))
    assert main(["fit", "--config", str(config)]) == 0
    assert (tmp_path / "run/saved_models/best_model.pt").is_file()
    assert list((tmp_path / "run/logs").rglob("train_metrics.csv"))
    user_model = tmp_path / "user_model.pt"
    shutil.copy(tmp_path / "run/saved_models/best_model.pt", user_model)

    text = config_text(image_folder, tmp_path / "eval_run", tmp_path / "ml", model="")
    text = as_evaluation_of(text, user_model)
    (tmp_path / "eval.yaml").write_text(text)
    assert main(["run", "--config", str(tmp_path / "eval.yaml")]) == 0
    assert (tmp_path / "eval_run/results.json").is_file()
    export_cfg = tmp_path / "export.yaml"
    export_cfg.write_text(config_text(image_folder, tmp_path / "export_run", tmp_path / "ml", epochs=1))
    assert main(["export", "--config", str(export_cfg), "--ckpt", str(user_model)]) == 0
    assert (tmp_path / "export_run/quantized_models/export_summary.json").is_file()
    for run in ("eval_run", "export_run"):
        made = sorted(p.name for p in (tmp_path / run).iterdir())
        assert "saved_models" not in made and "logs" not in made, (run, made)
    assert main(["report", "--run", str(tmp_path / "eval_run")]) == 0
