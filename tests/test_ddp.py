"""Multi-process training through Lightning's DDP (gloo on CPU): one set of artifacts."""
from __future__ import annotations

import csv

import pytest

from conftest import config_text, run_cli


@pytest.mark.slow
def test_two_process_ddp_run_writes_one_set_of_artifacts(tmp_path, image_folder):
    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=2)
    text = text.replace("trainer:\n", "trainer:\n  accelerator: cpu\n  devices: 2\n  strategy: ddp\n"
                                      "  enable_progress_bar: false\n")
    (tmp_path / "ddp.yaml").write_text(text)
    code, out, err = run_cli("fit", "--config", str(tmp_path / "ddp.yaml"), cwd=tmp_path)
    assert code == 0, err[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "saved_models").iterdir()) == [
        "best_augmented_model.ckpt", "best_model.pt", "last_augmented_model.ckpt"]
    with open(run / "logs/metrics/train_metrics.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert len(list((run / "logs").glob("events.out.tfevents.*"))) == 1
    log = (run / "stmclf.log").read_text()
    assert log.count("operation finished: training") == 1
    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(str(tmp_path / "mlruns"))[0])
    runs = client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run mobilenet α0.35", "train"]  # one parent, one stage
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]  # ended by rank 0, the one that made them
    # 27 training images, batch 8, 2 ranks: 2 batches per rank per epoch
    import torch

    assert torch.load(run / "saved_models/last_augmented_model.ckpt", weights_only=True)["global_step"] == 4
