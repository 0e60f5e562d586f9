"""What a user sees of a training: epochs from 1 and accuracies in % everywhere (epoch lines, Rich
bar, CSV, curves, MLflow steps), one plain line per epoch on stderr when it is not a terminal (stdout
holds the result table alone), and no harmless third-party warnings."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET

import pytest

from conftest import config_text

EPOCHS = 2
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  loss (\d+\.\d{4})  accuracy (\d+\.\d{2}) %  val_loss (\d+\.\d{4})  "
                        r"val_accuracy (\d+\.\d{2}) %  lr (\S+)  (\d+\.\d) s$")


def _config(tmp_path, image_folder, epochs: int):
    # the default model summary (its bf16 warning is one of the harmless ones)
    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=epochs)
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("enable_model_summary: false", "enable_model_summary: true"))
    return path


@pytest.fixture(scope="module")
def piped(tmp_path_factory, image_folder):
    """``stmclf fit`` in bf16, stdout and stderr captured (pipes, not a terminal): one ~30 s run
    shared by the tests marked slow below."""
    tmp = tmp_path_factory.mktemp("piped")
    config = _config(tmp, image_folder, EPOCHS)
    proc = subprocess.run([sys.executable, "-m", "stmclf.cli.main", "fit", "--config", str(config),
                           "--trainer.precision", "bf16-mixed"], capture_output=True, text=True, cwd=tmp,
                          timeout=600, env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc.stdout, proc.stderr


@pytest.mark.slow
def test_one_plain_line_per_epoch_counted_from_1(piped):
    _, out, err = piped
    lines = [line for line in (out + err).splitlines() if line.startswith("epoch")]
    matches = [EPOCH_LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(int(m[1]), int(m[2])) for m in matches] == [(e, EPOCHS) for e in range(1, EPOCHS + 1)]
    for m in matches:
        assert 0 <= float(m[4]) <= 100 and 0 <= float(m[6]) <= 100
    for bar in (r"it/s", r"Epoch \d+/\d+", r"Sanity", r"Validation"):  # no Rich bar, no sanity/validation bars
        assert not re.search(bar, out + err), out
    # the log (epoch lines, runtime, accuracies) on stderr; stdout is the data: the result table
    assert len([line for line in err.splitlines() if EPOCH_LINE.match(line)]) == EPOCHS
    assert "Best model (max val_accuracy)" in out and "validation set" in out
    assert not re.search(r"(?m)^(epoch \d|Training runtime|operation finished)", out), out


@pytest.mark.slow
def test_no_third_party_warnings(piped):
    _, out, err = piped
    text = out + err
    for word in ("site-packages", "Warning:", "UserWarning", "DeprecationWarning", "FutureWarning", "Traceback"):
        assert word not in text, text[-3000:]


@pytest.mark.slow
def test_csv_log_and_curves_count_epochs_from_1_in_percent(piped):
    tmp, _, err = piped
    run = tmp / "run"
    with open(run / "logs/metrics/train_metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    lines = {int(m[1]): m for m in map(EPOCH_LINE.match, err.splitlines()) if m}
    for row in rows:  # the same numbers as the printed lines, in the same unit
        line = lines[int(row["epoch"])]
        assert f"{float(row['accuracy']):.2f}" == line[4] and f"{float(row['val_accuracy']):.2f}" == line[6]
        assert f"{float(row['loss']):.4f}" == line[3]
    log = (run / "stmclf.log").read_text()
    assert f"INFO epoch 1/{EPOCHS}  loss" in log and f"INFO epoch {EPOCHS}/{EPOCHS}  loss" in log

    import matplotlib

    from stmclf.training.tracking import plot_training_curves

    svg = tmp / "curves.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # tick labels kept as text
        plot_training_curves(run / "logs/metrics/train_metrics.csv", svg)
    root = ET.parse(svg).getroot()
    ticks = ["".join(g.itertext()).strip() for g in root.iter() if re.fullmatch(r"xtick_\d+", g.get("id", ""))]
    assert ticks[:EPOCHS] == [str(e) for e in range(1, EPOCHS + 1)], ticks  # the accuracy plot's epochs
    assert "accuracy (%)" in svg.read_text()


@pytest.mark.slow
def test_mlflow_steps_are_the_csv_epochs(piped):
    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    tmp, _, _ = piped
    client = MlflowClient(tracking_uri=resolve_tracking_uri(str(tmp / "mlruns"))[0])
    (run,) = client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id],
                                filter_string="tags.`stmclf.stage` = 'train'")
    for metric in ("val_accuracy", "loss", "lr"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), metric
    assert not client.get_metric_history(run.info.run_id, "epoch")  # no 0-based "epoch" metric


def test_harmless_warnings_are_hidden_only_where_they_come_from():
    from stmclf.cli.main import NOISY_WARNINGS, _quiet_libraries

    summary = "Precision bf16-mixed is not supported by the model summary.  Estimated model size ..."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_libraries()
        warnings.warn_explicit(summary, UserWarning, "model_summary.py", 1,
                               module="lightning.pytorch.utilities.model_summary.model_summary")
        warnings.warn_explicit(summary, UserWarning, "mine.py", 1, module="my_project.train")  # not Lightning's
        warnings.warn_explicit(summary, DeprecationWarning, "model_summary.py", 1,
                               module="lightning.pytorch.utilities.model_summary.model_summary")  # other category
        warnings.warn_explicit("You set `trainer.foo` to a value that makes no sense", UserWarning, "trainer.py", 1,
                               module="lightning.pytorch.trainer.trainer")  # a real warning
    assert [(w.category, w.filename) for w in caught] == [
        (UserWarning, "mine.py"), (DeprecationWarning, "model_summary.py"), (UserWarning, "trainer.py")]
    assert all(len(entry) == 3 for entry in NOISY_WARNINGS)


@pytest.mark.slow
def test_terminal_gets_the_rich_bar_and_the_log_file_the_lines(tmp_path, image_folder):
    """In a terminal (a pseudo-terminal here): the Rich bar with "Epoch 1/1" and accuracies in %, the
    epoch line only in ``stmclf.log``."""
    import pty

    config = _config(tmp_path, image_folder, 1)
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", "LINES": "50"}
    proc = subprocess.Popen([sys.executable, "-m", "stmclf.cli.main", "fit", "--config", str(config)],
                            stdin=subprocess.DEVNULL, stdout=child_fd, stderr=child_fd, cwd=tmp_path, env=env)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert proc.wait(timeout=600) == 0, text[-3000:]
    assert "Epoch 1/1" in text and "Epoch 0/" not in text
    assert re.search(r"val_accuracy: \d+\.\d\d %", text), text[-2000:]
    assert not re.search(r"(?m)^epoch 1/1  loss", text)  # the bar shows the epoch: no second line for it
    assert "site-packages" not in text
    assert re.search(r"INFO epoch 1/1  loss \S+  accuracy \S+ %", (tmp_path / "run/stmclf.log").read_text())


def test_a_librarys_module_level_warning_does_not_print_every_later_line_twice():
    """onnxruntime's quantizer calls ``logging.warning`` at module level, which gives an unset-up
    root logger a handler of its own: every stmclf line after it then printed twice. The CLI's
    console set-up gives the root a handler for other libraries' warnings, so nothing doubles. Every
    log line is on stderr: stdout is a command's data."""
    script = ("import logging\n"
              "from stmclf.cli.main import _setup_console_logging\n"
              "_setup_console_logging()\n"
              "logging.warning(\"Axis 1 is out-of-range for weight 'w'\")\n"
              "logging.getLogger('stmclf.export').info('the float ONNX model agrees')\n"
              "logging.getLogger('onnx').info('an INFO of a library stays quiet')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == ["WARNING:root:Axis 1 is out-of-range for weight 'w'",
                                        "the float ONNX model agrees"]
