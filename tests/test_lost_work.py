"""No lost work: every new run gets its own folder (also when two start in the same second), a
new MLflow store survives concurrent first use, checkpoints are written inside an epoch too
(``training.checkpoint_every``), and unfinished checkpoint files of a killed save are cleaned up.

Resuming from a mid-epoch checkpoint, bit for bit, is tested in ``test_determinism.py``.
"""
from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import Checkpoint

from conftest import QUANTIZATION, SIGNALLER, config_text, error_of, run_cli
from stmclf.cli.main import main
from stmclf.config import load_config
from stmclf.training.progress import MID_EPOCH_KEY, checkpoint_interval
from stmclf.training.run_dir import _claim_new_run_dir, create_run_dir, is_run_dir


@pytest.fixture(autouse=True)
def _detach_log_files(tmp_path):
    """create_run_dir attaches the run's log file to the ``stmclf`` logger: detach it afterwards."""
    yield
    logger = logging.getLogger("stmclf")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(str(tmp_path)):
            logger.removeHandler(handler)
            handler.close()


def _cfg(tmp_path, image_folder, run_dir, *extra):
    path = tmp_path / "c.yaml"
    path.write_text(config_text(image_folder, run_dir, tmp_path / "mlruns", epochs=1))
    return load_config(["--config", str(path), *extra])


# ---------------------------------------------------------------------------------------------
# one folder per run

def test_a_new_run_never_writes_into_another_runs_folder(tmp_path, image_folder, caplog):
    cfg = _cfg(tmp_path, image_folder, tmp_path / "run")
    first = create_run_dir(cfg)
    assert first.root == tmp_path / "run" and is_run_dir(first.root)
    first.make_training_dirs()  # as a training does
    (first.root / "saved_models/last_augmented_model.ckpt").write_bytes(b"first run's")
    with caplog.at_level(logging.WARNING, logger="stmclf"):
        second = create_run_dir(cfg)
        third = create_run_dir(cfg)
    assert (second.root, third.root) == (tmp_path / "run_1", tmp_path / "run_2")
    assert f"hydra.run.dir {tmp_path / 'run'} holds another run: this run writes into {tmp_path / 'run_1'}" in \
        caplog.text
    assert (first.root / "saved_models/last_augmented_model.ckpt").read_bytes() == b"first run's"
    assert all(is_run_dir(r.root) for r in (second, third))
    # an existing run given on purpose (--run, a checkpoint's folder) is reused, not renamed
    assert create_run_dir(cfg, root=first.root).root == first.root
    # an existing folder that holds no run is used as it is
    (tmp_path / "empty").mkdir()
    assert create_run_dir(_cfg(tmp_path, image_folder, tmp_path / "empty")).root == tmp_path / "empty"


def _claim(base: str, start: float, queue) -> None:
    while time.time() < start:
        time.sleep(0.0005)
    queue.put(str(_claim_new_run_dir(Path(base), f"pid {os.getpid()}\n")))


def test_runs_started_at_the_same_moment_get_different_folders(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 0.5
    workers = [ctx.Process(target=_claim, args=(str(tmp_path / "run"), start, queue)) for _ in range(8)]
    for worker in workers:
        worker.start()
    claimed = sorted(queue.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(10)
    assert sorted(claimed) == sorted([str(tmp_path / "run")] + [str(tmp_path / f"run_{i}") for i in range(1, 8)])
    owners = {(Path(folder) / "config.yaml").read_text() for folder in claimed}
    assert len(owners) == 8  # each folder's config.yaml written by one process


# ---------------------------------------------------------------------------------------------
# a new MLflow store, used by several processes at once

def _parent_run(store: str, run_root: str, start: float, queue) -> None:
    from stmclf.training.tracking import parent_run_id

    cfg = SimpleNamespace(mlflow=SimpleNamespace(uri=store), general=SimpleNamespace(project_name="lost_work"))
    while time.time() < start:
        time.sleep(0.0005)
    try:
        queue.put(("ok", parent_run_id(cfg, SimpleNamespace(root=Path(run_root)), "model")))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        queue.put(("error", f"{type(exc).__name__}: {exc}"[:500]))


def test_concurrent_first_use_of_a_new_mlflow_store(tmp_path):
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (imported once, before the fork)
    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        store = tmp_path / f"mlruns{round_}"
        queue = ctx.Queue()
        start = time.time() + 1.0
        runs = [tmp_path / f"r{round_}_{i}" for i in range(5)]
        workers = []
        for run in runs:
            run.mkdir()
            workers.append(ctx.Process(target=_parent_run, args=(str(store), str(run), start, queue)))
            workers[-1].start()
        results = [queue.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(30)
        assert [status for status, _ in results] == ["ok"] * 5, results
        assert len({run_id for _, run_id in results}) == 5
        client = MlflowClient(tracking_uri=resolve_tracking_uri(str(store))[0])
        experiment = client.get_experiment_by_name("lost_work")
        assert sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id])) == \
            sorted(f"{run.name} model" for run in runs)


@pytest.mark.slow
def test_two_fits_started_together_keep_their_own_folders_and_mlflow_runs(tmp_path, image_folder):
    """Two ``stmclf fit`` on the same config (time-stamped ``hydra.run.dir``, a fresh MLflow
    store), started together, three times: all succeed, each in its own folder with its own
    MLflow parent run (the processes that start in the same second share the time stamp)."""
    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    folders: list[Path] = []
    for round_ in range(3):
        mlruns = tmp_path / f"mlruns{round_}"
        text = config_text(image_folder, tmp_path / "runs" / "${now:%Y_%m_%d_%H_%M_%S}", mlruns, epochs=1)
        config = tmp_path / f"c{round_}.yaml"
        config.write_text(text)
        command = [sys.executable, "-m", "stmclf.cli.main", "fit", "--config", str(config),
                   "--trainer.enable_progress_bar", "false"]
        procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        errors = [proc.communicate(timeout=600)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], [e[-2000:] for e in errors]
        new = sorted(set((tmp_path / "runs").iterdir()) - set(folders))
        assert len(new) == 2 and all(is_run_dir(folder) for folder in new)
        folders += new
        records = [json.loads((folder / "mlflow_run.json").read_text()) for folder in new]
        assert records[0]["parent_run_id"] != records[1]["parent_run_id"]
        client = MlflowClient(tracking_uri=resolve_tracking_uri(str(mlruns))[0])
        experiment = client.get_experiment_by_name("pytest_project")
        runs = client.search_runs([experiment.experiment_id])
        parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
        assert set(parents) == {record["parent_run_id"] for record in records}
        assert {parents[r["parent_run_id"]].data.tags["stmclf.run_dir"] for r in records} == {str(f) for f in new}
        assert sorted(r.data.tags["mlflow.parentRunId"] for r in runs if r.info.run_name == "train") == \
            sorted(parents)  # one train stage under each parent
        for folder in new:
            assert (folder / "saved_models/best_model.pt").is_file()
    assert len(set(folders)) == 6


# ---------------------------------------------------------------------------------------------
# mid-epoch checkpoints

class SaveRecorder(Checkpoint):
    """Records every checkpoint written: (epoch, global step, written inside an epoch). A
    ``Checkpoint`` so that Lightning runs it after stmclf's checkpoint callbacks."""

    def __init__(self) -> None:
        self.saves: list[tuple[int, int, bool]] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saves.append((checkpoint["epoch"], checkpoint["global_step"], MID_EPOCH_KEY in checkpoint))


@pytest.mark.parametrize("every, mid_epoch_steps", [({"steps": 1}, [1, 2, 3, 5, 6, 7]), ({"steps": 2}, [2, 6]),
                                                    (False, [])], ids=["steps-1", "steps-2", "off"])
def test_checkpoints_inside_an_epoch(tmp_path, image_folder, every, mid_epoch_steps):
    from stmclf.training.fit import train

    value = json.dumps(every) if every else "false"
    cfg = _cfg(tmp_path, image_folder, tmp_path / "run", "--training.epochs", "2", "--training.checkpoint_every", value)
    recorder = SaveRecorder()
    train(cfg, callbacks=[recorder])
    # 27 images, batches of 8: 4 steps per epoch; never on an epoch's last batch (its own checkpoint follows)
    assert [step for _, step, mid in recorder.saves if mid] == mid_epoch_steps
    assert {step for _, step, mid in recorder.saves if not mid} == {4, 8}
    assert sorted(p.name for p in (tmp_path / "run/saved_models").iterdir()) == [
        "best_augmented_model.ckpt", "best_model.pt", "last_augmented_model.ckpt"]


def test_checkpoints_every_few_minutes(tmp_path, image_folder):
    from stmclf.training.fit import train

    cfg = _cfg(tmp_path, image_folder, tmp_path / "run", "--training.checkpoint_every", "{minutes: 0.0001}")
    recorder = SaveRecorder()
    train(cfg, callbacks=[recorder])
    assert [step for _, step, mid in recorder.saves if mid] == [1, 2, 3]  # 6 ms: after every batch but the last


@pytest.mark.parametrize("value, message", [
    ("{hours: 1}", "training.checkpoint_every: expecting {steps: N} or {minutes: M} (or false), got {'hours': 1.0}"),
    ("{steps: 0}", "training.checkpoint_every.steps: expecting a positive integer, got 0.0"),
    ("{steps: 2.5}", "training.checkpoint_every.steps: expecting a positive integer, got 2.5"),
    ("{minutes: -1}", "training.checkpoint_every.minutes: expecting a positive number, got -1.0"),
])
def test_bad_checkpoint_every_is_one_line(tmp_path, image_folder, capsys, value, message):
    (tmp_path / "c.yaml").write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1))
    assert main(["fit", "--config", str(tmp_path / "c.yaml"), "--training.checkpoint_every", value]) == 2
    assert error_of(capsys.readouterr().err) == f"stmclf: error: {message}"
    assert not (tmp_path / "run").exists()


def test_checkpoint_every_values():
    assert checkpoint_interval({"minutes": 5.0}) == {"minutes": 5.0}
    assert checkpoint_interval({"steps": 100.0}) == {"steps": 100}
    assert checkpoint_interval(False) == {}


# ---------------------------------------------------------------------------------------------
# unfinished checkpoint files

def test_unfinished_checkpoint_files_are_removed_when_the_run_folder_opens(tmp_path, image_folder):
    cfg = _cfg(tmp_path, image_folder, tmp_path / "run")
    run = create_run_dir(cfg)
    run.make_training_dirs()  # as a training does
    saved = run.saved_models
    (saved / "last_augmented_model.ckpt").write_bytes(b"the last whole checkpoint")
    orphan = saved / ".last_augmented_model.ckpt.k3j2h1x0.tmp"  # atomic_torch_save's name pattern
    orphan.write_bytes(b"half a checkpoint")
    fresh = saved / ".best_augmented_model.ckpt.a1b2c3d4.tmp"
    fresh.write_bytes(b"just created")
    busy = saved / ".best_model.pt.zz99yy88.tmp"
    busy.write_bytes(b"being written")
    old = time.time() - 60
    for path in (orphan, busy):
        os.utime(path, (old, old))
    fresh_time = time.time() + 3600  # "just written": left alone (the writer may not hold its lock yet)
    os.utime(fresh, (fresh_time, fresh_time))
    # another process is writing `busy` (atomic_torch_save holds an flock on its temporary file)
    writer = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(busy)!r}, 'rb'); fcntl.flock(f.fileno(), fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        create_run_dir(cfg, root=run.root)  # the run folder opened again (a resume)
    finally:
        writer.kill()
        writer.wait()
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        ["last_augmented_model.ckpt", fresh.name, busy.name])
    assert (saved / "last_augmented_model.ckpt").read_bytes() == b"the last whole checkpoint"
    log_text = run.log_file.read_text()
    assert log_text.count("unfinished file") == 1
    assert f"Removed 1 unfinished file(s) left by an interrupted save in {saved}: {orphan.name}" in log_text
    with open(busy, "rb") as handle:  # the lock was the writer's: now free
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---------------------------------------------------------------------------------------------
# a training stopped by a signal says so, and where it resumes from


@pytest.mark.parametrize("signum, epoch", [pytest.param(15, 1, id="SIGTERM after the first epoch"),
                                           pytest.param(2, 0, id="Ctrl+C in the first epoch",
                                                        marks=pytest.mark.slow)])
def test_a_signalled_training_exits_128_plus_the_signal_and_names_its_checkpoint(tmp_path, image_folder,
                                                                                 signum, epoch):
    """Lightning turns SIGTERM into exit status 0 and Ctrl+C into 1: a scheduler or a script would
    take a killed run for a finished (or failed) one. stmclf exits 128 + the signal, its last line
    names the checkpoint to resume from (or says none was written yet), and the MLflow stage is
    KILLED."""
    import mlflow
    from conftest import run_cli

    (tmp_path / "signaller.py").write_text(SIGNALLER)
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=3).replace(
        "  callbacks:\n", f"  callbacks:\n    signaller.SignalAt:\n      signum: {signum}\n      epoch: {epoch}\n"
                          "      batch: 1\n", 1))
    code, _, err = run_cli("fit", "--config", str(config), "--trust-code", cwd=tmp_path)
    name = "SIGTERM" if signum == 15 else "SIGINT"
    last = err.strip().splitlines()[-1]
    assert code == 128 + signum, err[-2000:]
    checkpoint = tmp_path / "run" / "saved_models" / "last_augmented_model.ckpt"
    if epoch:
        assert last == f"stmclf: interrupted ({name}); resume the training with --training.resume_training_from " \
                       f"{checkpoint}"
        assert checkpoint.is_file()
    else:
        assert last == f"stmclf: interrupted ({name}) before the training wrote its first checkpoint: it starts " \
                       "over when run again"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert "KILLED" in set(runs["status"]), runs[["tags.mlflow.runName", "status"]]


@pytest.mark.slow
def test_a_chain_stopped_after_its_training_names_the_command_that_does_the_rest(tmp_path, image_folder):
    """SIGTERM in a chain_tqe's export, once its training finished: the one line said only
    'stmclf: interrupted (SIGTERM)', so the way on was to run the chain again, training again in a
    new folder. It names the command that exports and evaluates the run's trained model (no
    resume: the training is whole), and that command does it."""
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, run, tmp_path / "mlruns", epochs=1).replace(
        "operation_mode: training", "operation_mode: chain_tqe") + QUANTIZATION)
    proc = subprocess.Popen([sys.executable, "-m", "stmclf", "run", "--config", str(config)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        log_file = run / "stmclf.log"
        if log_file.is_file() and "stage: export" in log_file.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(15)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    rest = f"stmclf export --run {run} --format tflite --int8"
    assert err.strip().splitlines()[-1] == "stmclf: interrupted (SIGTERM) after the training, whose model is " \
                                          f"saved; do the rest with: {rest}"
    code, _, err = run_cli(*rest.split()[1:], cwd=tmp_path)
    assert code == 0, err[-3000:]
    kinds = {r["kind"] for r in json.loads((run / "results.json").read_text())}
    assert {"float", "int"} <= kinds, kinds
    assert (run / "quantized_models/quantized_model.tflite").is_file()


@pytest.mark.slow
def test_a_resume_whose_fixed_run_folder_is_its_checkpoints_own_continues_there(tmp_path, image_folder):
    """hydra.run.dir fixed to the folder of the checkpoint it resumes (a job script requeued as it
    is: the same folder, resuming from its last checkpoint): the resumed run wrote into a new
    <dir>_1, so the next requeue resumed from the first folder's old checkpoint again, and every
    requeue lost the work of the one before."""
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1))
    assert main(["fit", "--config", str(config), "--training.precision", "32"]) == 0
    last = tmp_path / "run/saved_models/last_augmented_model.ckpt"
    assert main(["fit", "--config", str(config), "--training.precision", "32", "--training.epochs", "2",
                 "--training.resume_training_from", str(last)]) == 0
    assert not (tmp_path / "run_1").exists()
    epochs = [line.split(",")[0] for line in (tmp_path / "run/logs/metrics/train_metrics.csv").read_text().splitlines()]
    assert epochs[1:] == ["1", "2"]


def test_a_reused_run_folder_keeps_no_second_config_for_a_new_time_stamp_alone(tmp_path, image_folder):
    """A resume (or --run) reuses its run folder whatever folder the config's ${now:...} stamp
    names: a config that differs only in hydra.run.dir is the same config, so no
    config_<time>.yaml naming a folder that was never created is written beside it."""
    first = create_run_dir(_cfg(tmp_path, image_folder, tmp_path / "run"))
    again = create_run_dir(_cfg(tmp_path, image_folder, tmp_path / "elsewhere_2026_12_06_22_00_00"),
                           root=first.root)
    assert again.root == first.root
    assert sorted(p.name for p in first.root.glob("config*.yaml")) == ["config.yaml"]
    assert not (tmp_path / "elsewhere_2026_12_06_22_00_00").exists()
    changed = create_run_dir(_cfg(tmp_path, image_folder, tmp_path / "run", "--training.epochs", "3"),
                             root=first.root)
    assert len(list(changed.root.glob("config_*.yaml"))) == 1  # a real change is still kept beside it


def test_the_same_command_run_again_on_a_run_folder_saves_its_config_once(tmp_path, image_folder):
    """A resume run again as it is (a job requeued until its training ends: 31 SIGKILLed resumes of
    one run) saved one more config_<time>.yaml and stmclf_extras_<time>.yaml pair each time, all
    alike: the folder's latest config is the one compared, so only a change is saved."""
    first = create_run_dir(_cfg(tmp_path, image_folder, tmp_path / "run"))
    for _ in range(2):
        create_run_dir(_cfg(tmp_path, image_folder, tmp_path / "run", "--training.epochs", "3"), root=first.root)
        time.sleep(1.1)  # another time stamp
    assert len(list(first.root.glob("config_*.yaml"))) == 1
    assert len(list(first.root.glob("stmclf_extras_*.yaml"))) == 1
    create_run_dir(_cfg(tmp_path, image_folder, tmp_path / "run"), root=first.root)  # back to the first config
    assert len(list(first.root.glob("config_*.yaml"))) == 2  # the history of the commands is kept


def test_a_run_folder_has_one_writer_at_a_time(tmp_path, image_folder, capsys):
    """The same checkpoint resumed by two processes at once: the second stops in one line before
    writing anything (two trainings would interleave train_metrics.csv and race for the
    checkpoints); the first's lock goes with its process, even killed."""
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "runs" / "${now:%Y_%m_%d_%H_%M_%S}", tmp_path / "mlruns",
                                  epochs=1))
    assert main(["fit", "--config", str(config), "--training.precision", "32"]) == 0
    (root,) = [p for p in (tmp_path / "runs").iterdir() if is_run_dir(p)]
    checkpoint = root / "saved_models" / "last_augmented_model.ckpt"
    holder = subprocess.Popen([sys.executable, "-c", "import time\n"
                               "from stmclf.config import load_config\n"
                               "from stmclf.training.run_dir import create_run_dir\n"
                               f"create_run_dir(load_config(['--config', {str(config)!r}]), root={str(root)!r})\n"
                               "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    argv = ["fit", "--config", str(config), "--training.precision", "32", "--training.epochs", "2",
            "--training.resume_training_from", str(checkpoint)]
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in root.iterdir())
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{root}: another stmclf process is writing into this run folder" in err and "Traceback" not in err
        assert sorted(p.name for p in root.iterdir()) == before  # nothing written (no config_<time>.yaml)
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # the killed holder left no lock behind
    epochs = [line.split(",")[0] for line in (root / "logs" / "metrics" / "train_metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]  # each epoch once
