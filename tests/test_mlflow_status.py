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

In every case no run of the store is RUNNING, and the run folder's parent run ends as its
stage: KILLED, KILLED, FAILED (it was marked FINISHED when it was created, before any stage ran).

The parent run tells the truth while the command runs (review: FINISHED from its creation):
RUNNING, with the ``train`` run, during the fit and during the evaluation after it (Lightning's
own end of the fit marked ``train`` FINISHED there), then FINISHED.

A fit killed outright (SIGKILL: also the OOM killer, a power loss) ends nothing: its runs stayed
RUNNING for ever. The next command that opens the store marks them KILLED, with one warning line
naming the process; the runs of a live process, of another host, or without stmclf's owner tags
are left RUNNING. A run folder used again after such a kill reopens its parent run: RUNNING, owned
by the new process, then FINISHED.
"""
from __future__ import annotations

import pytest

from conftest import SIGNALLER as SIGNAL_AT, config_text, evaluation_of_a_model_module, run_cli

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


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _runs(store):
    """{run name: status}; the run folder's parent run (``run <model>``) as ``parent``."""
    client = _client(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {"parent" if r.info.run_name.startswith("run ") else r.info.run_name: r.info.status
            for r in client.search_runs(experiments)}


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
    assert runs == {"parent": status, "train": status}, runs


WATCH = """\
import json
import sqlite3

from lightning.pytorch.callbacks import Callback

STORE = {store!r}


def record(when):
    \"\"\"The statuses of the store's runs now, a line of ``statuses.jsonl``.\"\"\"
    with sqlite3.connect(STORE) as db:
        runs = {{("parent" if name.startswith("run ") else name): status
                for name, status in db.execute("select name, status from runs")}}
    with open("statuses.jsonl", "a") as out:
        out.write(json.dumps({{"when": when, "runs": runs}}) + "\\n")


class Watch(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 0:
            record("fit")

    def on_fit_end(self, trainer, pl_module):
        seen = []

        def hook(module, args):
            if not seen:
                seen.append(record("evaluation after the fit"))
        pl_module.register_forward_pre_hook(hook)
"""


@pytest.mark.slow  # a real fit in a subprocess (~17 s)
def test_the_parent_run_is_running_until_its_stages_all_finished(tmp_path, image_folder):
    """The parent run was FINISHED from its creation on, and Lightning's end of the fit marked the
    ``train`` run FINISHED while the trained model was still being evaluated."""
    import json

    (tmp_path / "watch.py").write_text(WATCH.format(store=str(tmp_path / "mlruns" / "mlflow.db")))
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1).replace(
        "  callbacks:\n", "  callbacks:\n    watch.Watch: {}\n", 1))
    got, _, err = run_cli("fit", "--config", str(config), "--trust-code", cwd=tmp_path)
    assert got == 0, err[-3000:]
    seen = [json.loads(line) for line in (tmp_path / "statuses.jsonl").read_text().splitlines()]
    assert seen == [{"when": "fit", "runs": {"parent": "RUNNING", "train": "RUNNING"}},
                    {"when": "evaluation after the fit", "runs": {"parent": "RUNNING", "train": "RUNNING"}}]
    assert _runs(tmp_path / "mlruns") == {"parent": "FINISHED", "train": "FINISHED"}


@pytest.mark.slow  # real processes killed and rerun (tens of s); test_reconcile_tells_... covers the rule
def test_runs_of_a_killed_fit_are_marked_killed_by_the_next_command(tmp_path, image_folder):
    """SIGKILL of a real ``stmclf fit`` in its first epoch, then a second fit on the same store."""
    import os
    import socket

    from stmclf.training.mlflow_runs import ENDED_TAG, owner_tags

    store = tmp_path / "mlruns"
    (tmp_path / "signaller.py").write_text(SIGNALLER)
    first = tmp_path / "c.yaml"
    first.write_text(config_text(image_folder, tmp_path / "run", store, epochs=2).replace(
        "  callbacks:\n", "  callbacks:\n    signaller.SignalAt:\n      signum: 9\n      epoch: 0\n"
                          "      batch: 1\n", 1))
    got, _, err = run_cli("fit", "--config", str(first), "--trust-code", cwd=tmp_path)
    assert got == -9, err[-3000:]
    assert _runs(store) == {"parent": "RUNNING", "train": "RUNNING"}
    client = _client(store)
    (killed_train,) = client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id],
                                         filter_string="attributes.run_name = 'train'")
    killed_pid = killed_train.data.tags["stmclf.pid"]
    assert killed_train.data.tags["stmclf.host"] == socket.gethostname()
    # Runs that are not a dead stmclf's of this host: left alone.
    other = client.create_experiment("other")
    live = client.create_run(other, run_name="live", tags=owner_tags()).info.run_id  # this test's process
    elsewhere = client.create_run(other, run_name="elsewhere", tags={
        **owner_tags(), "stmclf.host": "another-host", "stmclf.pid": killed_pid}).info.run_id
    untagged = client.create_run(other, run_name="untagged").info.run_id

    second = tmp_path / "c2.yaml"
    second.write_text(config_text(image_folder, tmp_path / "run2", store, epochs=1))
    got, _, err = run_cli("fit", "--config", str(second), cwd=tmp_path)
    assert got == 0, err[-3000:]
    lines = [line for line in err.splitlines() if "ended without ending its runs" in line]
    assert len(lines) == 1 and f"process {killed_pid} on {socket.gethostname()}" in lines[0], err[-3000:]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    of_killed = [r for r in runs if r.data.tags.get("stmclf.host") == socket.gethostname()
                 and r.data.tags.get("stmclf.pid") == killed_pid]
    killed_ids = {r.info.run_id for r in of_killed}
    assert sorted(r.info.run_name.split(" ")[0] for r in of_killed) == ["run", "train"]
    for run in of_killed:
        assert run.info.status == "KILLED" and run.info.end_time, run.info
        assert f"its process {killed_pid} on {socket.gethostname()} had ended" in run.data.tags[ENDED_TAG]
        assert run.info.run_id in lines[0]
    assert sorted((r.info.run_name.split(" ")[0], r.info.status) for r in runs if r.info.run_id not in killed_ids) == [
        ("elsewhere", "RUNNING"), ("live", "RUNNING"), ("run2", "FINISHED"), ("train", "FINISHED"),
        ("untagged", "RUNNING")]
    assert client.get_run(live).data.tags["stmclf.pid"] == str(os.getpid())
    assert {client.get_run(r).info.status for r in (live, elsewhere, untagged)} == {"RUNNING"}


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

    store = tmp_path / "mlruns" / "mlflow.db"
    (tmp_path / "killer.py").write_text(KILLER.format(store=str(store)))
    config = evaluation_of_a_model_module(tmp_path, image_folder, "killer", "KillNet")
    got, _, err = run_cli("run", "--config", str(config), "--trust-model-file", cwd=tmp_path)
    assert got == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "stmclf: interrupted (SIGTERM)", err[-3000:]
    runs = _runs(tmp_path / "mlruns")
    assert runs.get("evaluate") == "KILLED", runs
    assert "RUNNING" not in runs.values(), runs


def test_reconcile_tells_a_gone_process_from_a_live_one(tmp_path, caplog):
    """Runs of a real store whose owner tags name: this (live) process; its pid with another start
    time (a process gone, its pid given to this one); another boot of this host (a power loss);
    another pid namespace (a container with the same host name); a pid that no process has.
    Only the gone ones become KILLED, with one warning line per process."""
    import os
    import subprocess
    import sys

    from stmclf.training.mlflow_runs import PROCESS_TAG, owner_tags, reconcile
    from stmclf.training.tracking import resolve_tracking_uri

    me = owner_tags()
    boot, namespace, start = me[PROCESS_TAG].split(" ")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process
    resolve_tracking_uri(str(tmp_path / "mlruns"))  # a new directory store, as stmclf makes it
    client = _client(tmp_path / "mlruns")
    experiment = client.create_experiment("e")
    tags = {
        "live": me,
        "pid reused": {**me, PROCESS_TAG: f"{boot} {namespace} {int(start) - 1}"},
        "power loss": {**me, PROCESS_TAG: f"another-boot {namespace} {start}"},
        "container": {**me, PROCESS_TAG: f"another-boot pid:[1] {start}", "stmclf.pid": str(dead.pid)},
        "dead pid": {**me, "stmclf.pid": str(dead.pid), PROCESS_TAG: f"{boot} {namespace} 1"},
    }
    ids = {name: client.create_run(experiment, run_name=name, tags=t).info.run_id for name, t in tags.items()}
    with caplog.at_level("WARNING"):
        ended = reconcile(client)
    assert sorted(ended) == sorted(ids[n] for n in ("pid reused", "power loss", "dead pid"))
    assert {n: client.get_run(i).info.status for n, i in ids.items()} == {
        "live": "RUNNING", "pid reused": "KILLED", "power loss": "KILLED", "container": "RUNNING",
        "dead pid": "KILLED"}
    warnings = [r.getMessage() for r in caplog.records if "ended without ending its runs" in r.getMessage()]
    assert len(warnings) == 2 and any(f"process {os.getpid()} on" in w for w in warnings), warnings
    assert reconcile(client) == []  # nothing left to do


PARENT_THEN_DIE = """\
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from stmclf.training.tracking import parent_run_id

cfg = SimpleNamespace(mlflow=SimpleNamespace(uri=sys.argv[1]), general=SimpleNamespace(project_name="p"))
print(parent_run_id(cfg, SimpleNamespace(root=Path(sys.argv[2])), "model"), flush=True)
os._exit(0)  # as a process killed outright: nothing ended
"""


@pytest.mark.slow  # real processes killed and rerun (tens of s); test_reconcile_tells_... covers the rule
def test_a_run_folder_used_again_reopens_its_parent_after_a_killed_command(tmp_path, caplog):
    """A command that died with the run folder's parent run RUNNING; the next command on that run
    folder (a resume, ``--run``) marks it KILLED (its process is gone), then takes it over: RUNNING,
    owned by this process, without the KILLED note, and FINISHED when it ends."""
    import os
    import subprocess
    import sys
    from types import SimpleNamespace

    from stmclf.training import mlflow_runs
    from stmclf.training.tracking import parent_run_id

    (tmp_path / "run").mkdir()
    store = tmp_path / "mlruns"
    out = subprocess.run([sys.executable, "-c", PARENT_THEN_DIE, str(store), str(tmp_path / "run")],
                         capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    client = _client(store)
    assert client.get_run(out).info.status == "RUNNING"
    cfg = SimpleNamespace(mlflow=SimpleNamespace(uri=str(store)), general=SimpleNamespace(project_name="p"))
    try:
        with caplog.at_level("WARNING"):
            assert parent_run_id(cfg, SimpleNamespace(root=tmp_path / "run"), "model") == out
        assert any(out in r.getMessage() and "marked KILLED" in r.getMessage() for r in caplog.records)
        run = client.get_run(out)
        assert run.info.status == "RUNNING" and run.data.tags["stmclf.pid"] == str(os.getpid())
        assert mlflow_runs.ENDED_TAG not in run.data.tags
    finally:
        mlflow_runs.end_open_runs("FINISHED")
    assert client.get_run(out).info.status == "FINISHED"
