"""A bad environment is one line naming the path, exit code 2, and nothing already written is
changed: an unwritable run folder, an unwritable MLflow store, a full disk during training; an
unwritable image cache is a warning and training goes on without it.

Read-only and full folders are real filesystems: tmpfs mounts (read-only, or a few MB), since
the tests run as root, for whom permission bits do not stop a write. Without the right to mount
(not root) these tests are skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import config_text, run_cli
from stmclf.errors import UserError
from stmclf.training.checkpoint_io import atomic_torch_save


@pytest.fixture
def mount():
    """``mount(path, options)``: a tmpfs at ``path`` (``ro``, ``size=2m``, ...), unmounted after the
    test; ``mount(path, bind_ro=True)``: ``path`` itself made read-only (a read-only bind mount)."""
    made: list[Path] = []

    def _mount(path: Path, options: str = "size=4m", bind_ro: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        commands = ([["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]]
                    if bind_ro else [["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]])
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                if made and made[-1] == path:
                    subprocess.run(["umount", "-l", str(path)], capture_output=True)
                pytest.skip(f"cannot mount here ({done.stderr.strip()}): these tests need root")
            if not made or made[-1] != path:
                made.append(path)
        return path

    yield _mount
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _config(tmp_path, image_folder, run_dir, mlruns, epochs=1, extra_training=""):
    text = config_text(image_folder, run_dir, mlruns, epochs=epochs)
    text = text.replace("  batch_size: 8\n", "  batch_size: 8\n" + extra_training)
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("trainer:\n", "trainer:\n  enable_progress_bar: false\n"))
    return path


def _error_line(code: int, err: str) -> str:
    """The run's one error line (stderr also carries Lightning's INFO lines)."""
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("stmclf: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# run folder

def test_run_dir_under_a_read_only_folder(tmp_path, image_folder, mount):
    readonly = mount(tmp_path / "ro", "ro,size=1m")
    config = _config(tmp_path, image_folder, readonly / "run", tmp_path / "mlruns")
    code, _, err = run_cli("fit", "--config", str(config), cwd=tmp_path)
    line = _error_line(code, err)
    assert line == f"stmclf: error: hydra.run.dir: cannot write the run directory {readonly / 'run'}: " \
                   "Read-only file system"
    assert not (tmp_path / "mlruns").exists()  # stopped before anything else was written


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, image_folder):
    """A one-epoch run in the default folder (``./experiments_outputs/${now:...}``)."""
    tmp = tmp_path_factory.mktemp("trained")
    text = config_text(image_folder, Path("unused"), tmp / "mlruns", epochs=1)
    (tmp / "c.yaml").write_text(text.replace("hydra:\n  run:\n    dir: unused\n", ""))
    code, _, err = run_cli("fit", "--config", str(tmp / "c.yaml"), "--trainer.enable_progress_bar", "false", cwd=tmp)
    assert code == 0, err[-3000:]
    (run,) = (tmp / "experiments_outputs").iterdir()
    return tmp, run


@pytest.mark.slow
def test_resuming_into_a_read_only_run_folder(trained_run, mount):
    tmp, run = trained_run
    last = run / "saved_models/last_augmented_model.ckpt"
    before = {p.name: _sha(p) for p in run.rglob("*") if p.is_file()}
    mount(run, bind_ro=True)
    code, _, err = run_cli("fit", "--config", str(tmp / "c.yaml"), "--training.epochs", "2",
                           "--training.resume_training_from", str(last), "--trainer.enable_progress_bar", "false",
                           cwd=tmp)
    line = _error_line(code, err)
    assert line.startswith(f"stmclf: error: run directory: cannot write the run directory {run}: ")
    assert line.endswith("Read-only file system")
    assert {p.name: _sha(p) for p in run.rglob("*") if p.is_file()} == before
    assert torch.load(last, weights_only=True)["epoch"] == 0


# ---------------------------------------------------------------------------------------------
# MLflow store

@pytest.mark.parametrize("inside", [False, True], ids=["new-store-folder", "existing-empty-folder"])
def test_mlflow_store_in_a_read_only_folder(tmp_path, image_folder, mount, inside):
    readonly = mount(tmp_path / "ro", "ro,size=1m")
    store = readonly if inside else readonly / "mlruns"
    config = _config(tmp_path, image_folder, tmp_path / "run", store)
    code, _, err = run_cli("fit", "--config", str(config), cwd=tmp_path)
    line = _error_line(code, err)
    detail = f"{store / '.lock'}: Read-only file system" if inside else "Read-only file system"
    assert line == f"stmclf: error: mlflow.uri: cannot write the MLflow store {store}: {detail}"
    assert (tmp_path / "run/config.yaml").is_file()  # the run folder came first and is left as it is


# ---------------------------------------------------------------------------------------------
# full disk

FILLER = """\
import os

from lightning.pytorch.callbacks import Callback


class FillDisk(Callback):
    \"\"\"At the start of epoch ``epoch``, fill the filesystem of ``path`` but ``leave_kb``.\"\"\"

    def __init__(self, path: str, epoch: int = 1, leave_kb: int = 512):
        self.path, self.epoch, self.leave_kb = path, epoch, leave_kb

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            stat = os.statvfs(self.path)
            free = stat.f_bavail * stat.f_frsize - self.leave_kb * 1024
            with open(os.path.join(self.path, "filler"), "wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, max(free, 1))
"""


@pytest.mark.slow
def test_disk_full_while_saving_a_checkpoint(tmp_path, image_folder, mount):
    """The run folder's disk fills up after the first epoch: the next checkpoint save fails with
    one line, the first epoch's checkpoints stay whole and no temporary file is left."""
    disk = mount(tmp_path / "small", "size=32m")
    (tmp_path / "filler.py").write_text(FILLER)
    config = _config(tmp_path, image_folder, disk / "run", tmp_path / "mlruns", epochs=3)
    config.write_text(config.read_text().replace(
        "  callbacks:\n", f"  callbacks:\n    filler.FillDisk:\n      path: {disk}\n      epoch: 1\n", 1))
    code, _, err = run_cli("fit", "--config", str(config), "--trust-code", cwd=tmp_path)
    line = _error_line(code, err)
    saved = disk / "run/saved_models"
    assert line.startswith(f"stmclf: error: {saved}/") and "augmented_model.ckpt: cannot save the checkpoint: " \
        "No space left on device; the previous " in line, line
    assert sorted(p.name for p in saved.iterdir()) == ["best_augmented_model.ckpt", "last_augmented_model.ckpt"]
    for name in ("best_augmented_model.ckpt", "last_augmented_model.ckpt"):
        assert torch.load(saved / name, weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_disk_full_under_the_mlflow_store_during_training(tmp_path, image_folder, mount):
    """The MLflow store's disk fills up after the first epoch: MLflow's next write fails deep in
    SQLite; the run ends with one line naming the store, the checkpoints stay whole."""
    disk = mount(tmp_path / "small", "size=8m")
    (tmp_path / "filler.py").write_text(FILLER)
    config = _config(tmp_path, image_folder, tmp_path / "run", disk / "mlruns", epochs=3)
    config.write_text(config.read_text().replace(
        "  callbacks:\n", f"  callbacks:\n    filler.FillDisk:\n      path: {disk}\n      epoch: 1\n"
                          "      leave_kb: 0\n", 1))
    code, _, err = run_cli("fit", "--config", str(config), "--trust-code", cwd=tmp_path)
    line = _error_line(code, err)
    assert line.startswith("stmclf: error: ") and ("mlflow.uri" in line or str(disk) in line), line
    assert "No space left on device" in line or "disk is full" in line, line
    last = tmp_path / "run/saved_models/last_augmented_model.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] >= 0


def test_atomic_save_on_a_full_disk_keeps_the_previous_file(tmp_path, mount):
    disk = mount(tmp_path / "small", "size=1m")
    target = disk / "model.ckpt"
    atomic_torch_save({"v": torch.ones(10)}, target)
    with pytest.raises(UserError) as error:
        atomic_torch_save({"v": torch.ones(1_000_000)}, target)  # 4 MB
    assert str(error.value) == f"{target}: cannot save the checkpoint: No space left on device; " \
                               "the previous model.ckpt is unchanged"
    assert torch.equal(torch.load(target, weights_only=True)["v"], torch.ones(10))
    assert [p.name for p in disk.iterdir()] == ["model.ckpt"]  # no temporary file left


def test_atomic_save_into_a_read_only_folder(tmp_path, mount):
    readonly = mount(tmp_path / "ro", "ro,size=1m")
    with pytest.raises(UserError, match=f"^{readonly / 'm.ckpt'}: cannot save the checkpoint: Read-only file system$"):
        atomic_torch_save({"v": 1}, readonly / "m.ckpt")


# ---------------------------------------------------------------------------------------------
# the run's other files: whole or unchanged

RECORD_RESULTS = """\
import resource, sys
import numpy as np
from stmclf.errors import UserError
from stmclf.evaluate.results import record_results

resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # a file size limit: File too large
n = 100  # a 100-class confusion matrix: ~40 kB of JSON
try:
    record_results(sys.argv[1], "int", "TFLite int8", {"validation_set": {"accuracy": 50.0, "count": n * n,
                   "confusion": np.ones((n, n), dtype=np.int64)}}, [f"c{i}" for i in range(n)])
except UserError as exc:
    print(exc)
"""


def test_results_json_that_cannot_be_written_whole_keeps_the_earlier_results(tmp_path):
    """An evaluation whose results.json hits a file size limit (or a full disk) half-way left it cut
    (write_text truncates first): every earlier result lost, and the next evaluation of the run
    stopped on a JSONDecodeError traceback. It is written whole or not at all: one line naming it,
    the earlier records unchanged, no temporary file left."""
    from stmclf.evaluate.results import record_results

    record_results(tmp_path, "float", "Float model", {"validation_set": {"accuracy": 90.0, "count": 4}}, ["a", "b"])
    before = (tmp_path / "results.json").read_bytes()
    (tmp_path / "child.py").write_text(RECORD_RESULTS)
    done = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{tmp_path / 'results.json'}: cannot write the file: File too large; the " \
                                  "previous results.json is unchanged"
    assert (tmp_path / "results.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "results.json"]


def test_a_damaged_results_json_is_kept_aside_and_the_evaluation_goes_on(tmp_path, caplog):
    """A results.json cut by an older version (or by hand) stopped every later evaluation of the run
    with a JSONDecodeError traceback: it is kept aside as results.json.damaged with one warning."""
    from stmclf.evaluate.results import record_results

    (tmp_path / "results.json").write_text('[{"kind": "float", "model": "Float model", "set": "valid')
    with caplog.at_level("WARNING", logger="stmclf.evaluate"):
        record_results(tmp_path, "float", "Float model", {"validation_set": {"accuracy": 90.0, "count": 4}},
                       ["a", "b"])
    assert (tmp_path / "results.json.damaged").read_text().endswith('"valid')
    assert [(r["set"], r["accuracy"]) for r in json.loads((tmp_path / "results.json").read_text())] == \
        [("validation_set", 90.0)]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{tmp_path / 'results.json'}: not valid JSON (") and \
        warning.endswith("; kept as results.json.damaged, the earlier results are not in the new file")


# ---------------------------------------------------------------------------------------------
# image cache: a warning, not an error

@pytest.mark.slow
def test_read_only_image_cache_trains_without_it(tmp_path, image_folder, mount):
    cache = mount(tmp_path / "cache", "ro,size=1m")
    config = _config(tmp_path, image_folder, tmp_path / "run", tmp_path / "mlruns")
    env = {**os.environ, "STMCLF_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-m", "stmclf.cli.main", "fit", "--config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "run/stmclf.log").read_text()
    # one warning for the training and the validation sets together, naming the folder
    assert log.count("Image cache disabled") == 1
    assert f"Image cache disabled: {cache / 'images'}: Read-only file system" in log
    assert (tmp_path / "run/saved_models/best_model.pt").is_file()


def test_image_cache_on_a_full_disk_is_disabled_not_a_crash(tmp_path, mount, monkeypatch, caplog):
    from stmclf.data import cache as cache_module

    disk = mount(tmp_path / "cache", "size=64k")
    monkeypatch.setenv("STMCLF_CACHE", str(disk))
    with caplog.at_level("WARNING"):
        # 200 KB of images do not fit: refused when the cache is created, not a SIGBUS while filling it
        assert cache_module.open_cache(["a", "b"], {"f": 1}, (50, 64, 64, 1)) is None
        assert cache_module.open_cache(["c"], {"f": 1}, (60, 64, 64, 1)) is None
    warnings = [r.getMessage() for r in caplog.records if "Image cache disabled" in r.getMessage()]
    assert warnings == [f"Image cache disabled: {disk / 'images'}: No space left on device (set STMCLF_CACHE to "
                        "a writable folder; images are decoded every epoch meanwhile)"]
    assert list((disk / "images").iterdir()) == []  # nothing half-made left behind
    small = cache_module.open_cache(["d"], {"f": 1}, (4, 8, 8, 1))  # what fits is still cached
    assert small is not None and small.get(0, lambda: torch.ones(8, 8, 1, dtype=torch.uint8).numpy()).sum() == 64


# ---------------------------------------------------------------------------------------------
# MLflow server that does not answer, scheme MLflow does not know

def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri, reason", [
    (f"http://127.0.0.1:{_closed_port()}", "Connection refused"),
    ("bogus-scheme://x", "unsupported URI 'bogus-scheme://x'"),
])
def test_an_unusable_tracking_uri_is_one_line_not_a_hang(tmp_path, image_folder, uri, reason):
    import time

    config = _config(tmp_path, image_folder, tmp_path / "run", uri)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stmclf.cli.main", "fit", "--config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    line = _error_line(done.returncode, done.stderr)
    assert line.startswith(f"stmclf: error: mlflow.uri: cannot use the MLflow tracking URI {uri}: ")
    assert reason in line
    assert time.monotonic() - start < 90  # MLflow's own defaults retry for minutes
