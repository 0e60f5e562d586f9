"""An interrupted or failed stage never leaves its MLflow run RUNNING (review: a run stopped by
Ctrl+C or SIGTERM, or one that failed, stayed RUNNING in the store for ever).

Real ``python -m stmclf fit`` subprocesses on the tiny image folder; a callback of the config
(``--trust-code``) sends the signal, or raises, at a fixed point; the store is then read with
MLflow's client:

- Ctrl+C (SIGINT) in the first epoch: the ``train`` run is KILLED;
- SIGTERM after the fit, while the trained model is evaluated (Lightning's SIGTERM handler is
  gone by then: Python's default ended the process at once, exit -15, the run stayed RUNNING):
  exit 143, ``stmclf: interrupted (SIGTERM)``, the ``train`` run KILLED;
- an error in that evaluation: the ``train`` run FAILED;
- SIGTERM while an ``evaluation`` mode's ``evaluate`` stage runs (a pickled model, trusted with
  ``--trust-model-file``, signals its own process once that stage's run is RUNNING in the store):
  Python's default handler ended the process (exit -15) and left the run RUNNING; now exit 143,
  the run KILLED.

In every case no run of the store is RUNNING.
"""
from __future__ import annotations

import pytest

from conftest import SIGNALLER as SIGNAL_AT, config_text, run_cli

SIGNALLER = SIGNAL_AT + """

class AfterFit(Callback):
    \"\"\"Once the fit is over, the model's next forward (the evaluation of the trained model)
    sends ``signum`` to the process, or raises when ``signum`` is 0.\"\"\"

    def __init__(self, signum: int):
        self.signum = signum

    def on_fit_end(self, trainer, pl_module):
        def hook(module, args):
            if self.signum:
                os.kill(os.getpid(), self.signum)
            else:
                raise RuntimeError("evaluation broke")
        pl_module.register_forward_pre_hook(hook)
"""


def _runs(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_name: r.info.status for r in client.search_runs(experiments)}


@pytest.mark.parametrize("callback, code, line, status", [
    pytest.param("SignalAt:\n      signum: 2\n      epoch: 0\n      batch: 1\n", 130, "interrupted (SIGINT)",
                 "KILLED", id="Ctrl+C during the fit"),
    pytest.param("AfterFit:\n      signum: 15\n", 143, "interrupted (SIGTERM)", "KILLED",
                 id="SIGTERM during the evaluation after the fit"),
    pytest.param("AfterFit:\n      signum: 0\n", 1, "evaluation broke", "FAILED",
                 id="an error during the evaluation after the fit"),
])
def test_an_interrupted_or_failed_stage_does_not_stay_running(tmp_path, image_folder, callback, code, line, status):
    (tmp_path / "signaller.py").write_text(SIGNALLER)
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=2).replace(
        "  callbacks:\n", f"  callbacks:\n    signaller.{callback}", 1))
    got, _, err = run_cli("fit", "--config", str(config), "--trust-code", cwd=tmp_path)
    assert got == code, err[-3000:]
    assert line in err.strip().splitlines()[-1], err[-3000:]
    runs = _runs(tmp_path / "mlruns")
    assert runs.get("train") == status, runs
    assert "RUNNING" not in runs.values(), runs


KILLER = """\
import os
import signal
import sqlite3

import torch

STORE = {store!r}


class KillNet(torch.nn.Module):
    \"\"\"A classifier that sends SIGTERM to its own process as soon as the ``evaluate`` stage's
    MLflow run is RUNNING in the store: the signal arrives while that stage evaluates.\"\"\"

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))

    def forward(self, x):
        if os.path.exists(STORE):
            with sqlite3.connect(STORE) as db:
                if db.execute("select 1 from runs where name = 'evaluate' and status = 'RUNNING'").fetchall():
                    os.kill(os.getpid(), signal.SIGTERM)
        return self.head(x)
"""


def test_sigterm_during_an_evaluation_stage_ends_its_run_killed(tmp_path, image_folder):
    """Python's default SIGTERM ended ``stmclf run`` (evaluation) on the spot: exit -15 and the
    ``evaluate`` run RUNNING for ever. Now: exit 143, one line, the run KILLED."""
    import subprocess
    import sys

    store = tmp_path / "mlruns" / "mlflow.db"
    (tmp_path / "killer.py").write_text(KILLER.format(store=str(store)))
    subprocess.run([sys.executable, "-c", "import torch, killer; torch.save(killer.KillNet(), 'killer.pt')"],
                   cwd=tmp_path, check=True, timeout=300)
    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1,
                       model="  model:\n    input_shape: (32, 32, 3)\n")
    text = text.replace("operation_mode: training", "operation_mode: evaluation").replace(
        "  global_seed: 7\n", f"  global_seed: 7\n  model_path: {tmp_path / 'killer.pt'}\n")
    (tmp_path / "c.yaml").write_text(text)
    got, _, err = run_cli("run", "--config", str(tmp_path / "c.yaml"), "--trust-model-file", cwd=tmp_path)
    assert got == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "stmclf: interrupted (SIGTERM)", err[-3000:]
    runs = _runs(tmp_path / "mlruns")
    assert runs.get("evaluate") == "KILLED", runs
    assert "RUNNING" not in runs.values(), runs
