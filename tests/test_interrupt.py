"""Ctrl+C always ends the ``stmclf`` command (stmclf/cli/interrupt.py): the first one stops it
gracefully as before; a command still running ``GRACE_S`` seconds later says how to stop it at once,
and a second Ctrl+C ends it at once with exit code 130 and one line, even while the main thread is
stuck in C++ (a trusted TorchScript model looping forever). Real CLI processes on real files; each child is killed by the
test when it outlives its deadline, so a regression fails instead of hanging the suite."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import config_text, evaluation_of_a_model_module
from stmclf.cli.interrupt import GRACE_S, HINT, interrupt_guard

REPO = Path(__file__).resolve().parents[1]


class _Stuck(torch.nn.Module):
    """Says so on stdout, then loops forever inside TorchScript's interpreter (C++)."""

    def forward(self, x):
        print("stuck in the model")
        i = 0
        while i >= 0:
            i = i + 1
        return x.mean(dim=[2, 3])


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "stmclf", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(proc: subprocess.Popen, text: bytes, timeout: float, stream: str = "stdout") -> bytes:
    """``stream`` up to ``text`` (the child is killed, and the test fails, if it does not come)."""
    pipe = getattr(proc, stream)
    seen, end = b"", time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([pipe], [], [], max(end - time.monotonic(), 0))
        chunk = os.read(pipe.fileno(), 4096) if ready else b""
        if not chunk:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"no {text!r} on {stream} within {timeout} s; seen: {seen.decode()[-1000:]}; "
                        f"stdout/stderr: {(out + err).decode()[-2000:]}")
        seen += chunk
    return seen


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, float, str]:
    """(exit code, seconds taken, stderr); a child still running after ``timeout`` is killed and
    the test fails."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"still running {timeout} s after Ctrl+C (killed); stderr: {err.decode()[-2000:]}")
    return proc.returncode, time.monotonic() - start, err.decode()


@pytest.mark.parametrize("presses", [pytest.param(1, id="one Ctrl+C: a hint, then the second stops it"),
                                     pytest.param(2, id="two Ctrl+C: at once")])
def test_ctrl_c_ends_a_command_stuck_in_a_trusted_torchscript_model(tmp_path, presses):
    """Before interrupt_guard, Python's KeyboardInterrupt waited for the model to return: never,
    whatever the number of Ctrl+C."""
    model = tmp_path / "stuck.pt"
    torch.jit.save(torch.jit.script(_Stuck()), str(model), _extra_files={"input_shape": "8,8,3"})
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "images" / "a.png")
    config = tmp_path / "c.yaml"
    config.write_text("preprocessing:\n  rescaling: {scale: 1/127.5, offset: -1}\n"
                      "  resizing: {aspect_ratio: fit, interpolation: bilinear}\n  color_mode: rgb\n")
    proc = _start(["predict", "--config", str(config), "--model", str(model), "--images", str(tmp_path / "images"),
                   "--trust-model-file"], tmp_path)
    _wait_for(proc, b"stuck in the model", timeout=300)
    time.sleep(0.5)  # well inside the loop
    proc.send_signal(signal.SIGINT)
    hint = b""
    if presses == 1:  # still running: the hint after the grace period, never an exit without a second Ctrl+C
        hint = _wait_for(proc, HINT.encode(), timeout=GRACE_S + 30, stream="stderr")
        time.sleep(1.0)
        assert proc.poll() is None, "a single Ctrl+C must not end the command at once"
    else:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, took, err = _finish(proc, timeout=GRACE_S)
    assert (code, hint.decode() + err) == (130, ("" if presses == 2 else HINT)
                                           + "stmclf: interrupted (SIGINT) and stopped at once: Ctrl+C pressed again\n")


STUCK_ONCE_RUNNING = """\
import os
import sqlite3

import torch

STORE = {store!r}


@torch.jit.script
def spin(x: torch.Tensor) -> torch.Tensor:
    i = 0
    while i >= 0:
        i = i + 1
    return x


class StuckNet(torch.nn.Module):
    \"\"\"A classifier that, once the ``evaluate`` stage's MLflow run is RUNNING in the store, says
    so on stdout and loops forever inside TorchScript's interpreter (C++).\"\"\"

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))

    def forward(self, x):
        if os.path.exists(STORE):
            with sqlite3.connect(STORE) as db:
                if db.execute("select 1 from runs where name = 'evaluate' and status = 'RUNNING'").fetchall():
                    print("stuck in the model", flush=True)
                    spin(x)
        return self.head(x)
"""


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, id="Ctrl+C twice"),
                                    pytest.param(signal.SIGTERM, id="SIGTERM twice", marks=pytest.mark.slow)])
def test_a_command_stopped_at_once_ends_its_mlflow_runs_killed(tmp_path, image_folder, signum):
    """The second signal ended the process with its MLflow runs (the folder's parent run, the
    ``evaluate`` stage) RUNNING for ever; now they are KILLED, and the process still ends at once."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns" / "mlflow.db"
    (tmp_path / "stuck_once_running.py").write_text(STUCK_ONCE_RUNNING.format(store=str(store)))
    config = evaluation_of_a_model_module(tmp_path, image_folder, "stuck_once_running", "StuckNet")
    proc = _start(["run", "--config", str(config), "--trust-model-file"], tmp_path)
    _wait_for(proc, b"stuck in the model", timeout=300)
    time.sleep(0.5)  # well inside the loop
    proc.send_signal(signum)
    time.sleep(0.5)
    proc.send_signal(signum)
    code, _, err = _finish(proc, timeout=GRACE_S)
    assert code == 128 + signum, err[-2000:]
    assert err.endswith("stopped at once: Ctrl+C pressed again\n" if signum == signal.SIGINT
                        else "stopped at once: SIGTERM received again\n"), err[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted((r.info.run_name == "evaluate", r.info.status) for r in runs) == [
        (False, "KILLED"), (True, "KILLED")], [(r.info.run_name, r.info.status) for r in runs]


CTRL_C = """
import os
import signal

from lightning.pytorch.callbacks import Callback


class CtrlC(Callback):  # Ctrl+C from a terminal: SIGINT to the whole process group (loader workers too)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 1:
            os.killpg(os.getpgrp(), signal.SIGINT)
"""


def test_ctrl_c_during_a_fit_with_loader_workers_still_stops_gracefully(tmp_path, image_folder):
    """The first Ctrl+C is Lightning's graceful stop and the CLI's usual last line; the loader workers
    (forked) get the SIGINT too, which must not count as a second Ctrl+C of the command."""
    (tmp_path / "ctrl_c.py").write_text(CTRL_C)
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=2).replace(
        "  num_workers: 0\n", "  num_workers: 1\n").replace("  callbacks:\n", "  callbacks:\n    ctrl_c.CtrlC: {}\n", 1))
    proc = _start(["fit", "--config", str(config), "--trust-code"], tmp_path)
    code, _, err = _finish(proc, timeout=600)
    assert code == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == ("stmclf: interrupted (SIGINT) before the training wrote its first "
                                            "checkpoint: it starts over when run again")
    assert "stopped at once" not in err and "Traceback" not in err, err[-2000:]


TERM_GROUP = """
import os
import signal

from lightning.pytorch.callbacks import Callback


class TermGroup(Callback):  # GNU timeout, systemd's stop, Slurm's scancel: SIGTERM to every process of the job

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 1:
            os.killpg(os.getpgrp(), signal.SIGTERM)
"""


def test_sigterm_to_the_process_group_during_a_fit_with_loader_workers_stops_gracefully(tmp_path, image_folder):
    """``timeout 1h stmclf fit ...`` at its limit, ``systemctl stop``, ``scancel``: SIGTERM reaches the
    loader workers too. They died of it, and the parent's training ended in torch's traceback
    "DataLoader worker (pid N) is killed by signal: Terminated" instead of Lightning's graceful stop
    and the CLI's one line (exit 143). The workers leave SIGTERM to the training process."""
    (tmp_path / "term_group.py").write_text(TERM_GROUP)
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=2).replace(
        "  num_workers: 0\n", "  num_workers: 1\n").replace(
        "  callbacks:\n", "  callbacks:\n    term_group.TermGroup: {}\n", 1))
    proc = _start(["fit", "--config", str(config), "--trust-code"], tmp_path)
    code, _, err = _finish(proc, timeout=600)
    assert code == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == ("stmclf: interrupted (SIGTERM) before the training wrote its first "
                                            "checkpoint: it starts over when run again")
    assert "Traceback" not in err and "killed by signal" not in err, err[-2000:]


def test_the_guard_is_gone_after_the_command(tmp_path):
    """Tests run the CLI in-process (``main``, which installs nothing): the guard of the console
    entry point gives Python's SIGINT handler and wakeup fd back when the command ends."""
    before = signal.getsignal(signal.SIGINT)
    with interrupt_guard():
        assert signal.getsignal(signal.SIGINT) != before
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.set_wakeup_fd(-1) == -1
