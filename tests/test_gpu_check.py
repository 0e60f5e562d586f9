"""benchmarks/gpu_check.sh --smoke: the GPU readiness check runs end to end on CPU (so it cannot rot)
and reports every figure, in the table and in the JSON (at --out and in $OUT)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

KEYS = {"mode", "device", "device_name", "model", "img_size", "batch_size", "precision", "channels_last",
        "augmentation", "augmentation_device", "num_workers", "train_images", "val_images", "epochs", "epochs_run",
        "train_img_per_s", "train_img_per_s_epochs", "goal_img_per_s", "goal_met", "loader_img_per_s",
        "loader_first_epoch_img_per_s", "loader_img_per_s_epochs", "gpu_util_mean", "gpu_util_max",
        "gpu_mem_max_mib", "val_accuracy", "best_val_accuracy", "val_accuracy_epochs", "accuracy_threshold",
        "accuracy_ok", "seconds_total"}


def test_gpu_check_smoke(tmp_path):
    out_json = tmp_path / "x.json"
    out_dir = tmp_path / "out"
    env = {**os.environ, "OUT": str(out_dir), "PYTHON": sys.executable,
           "STMCLF_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out_json)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads(out_json.read_text())
    assert KEYS <= report.keys(), KEYS - report.keys()
    assert report["mode"] == "smoke" and report["device"] == "cpu"
    assert report["img_size"] == 32 and report["model"] == "MobileNetV2-0.35"
    assert report["epochs_run"] == report["epochs"] == 2 and len(report["train_img_per_s_epochs"]) == 2
    assert report["train_img_per_s"] > 0 and report["loader_img_per_s"] > 0
    assert report["loader_first_epoch_img_per_s"] > 0
    # what the run really used, read from the trainer and the first training batch
    assert report["precision"] in ("32-true", "bf16-mixed")
    assert report["augmentation"] == "seed" and report["augmentation_device"] == "cpu"
    assert report["channels_last"] is True
    assert report["gpu_util_mean"] is None and report["goal_met"] is None  # n/a on CPU
    assert len(report["val_accuracy_epochs"]) == 2
    assert 0.0 <= report["val_accuracy"] <= 1.0 and report["best_val_accuracy"] == max(report["val_accuracy_epochs"])
    assert report["accuracy_ok"] is True
    assert report["train_images"] == 320 and report["val_images"] > 300  # held-out 20 % of the 1,797 digits

    # $OUT gets the same JSON and the log; the table is printed
    assert json.loads((out_dir / "gpu_check.json").read_text()) == report
    for log in (out_dir / "gpu_check.log", tmp_path / "x.log"):
        text = log.read_text()
        assert "training img/s" in text and "accuracy sanity" in text and "PASS" in text
    assert "loader img/s" in proc.stdout and "GPU utilisation" in proc.stdout
    assert not list(tmp_path.glob("stmclf-gpu-check-*"))  # the work folder was temporary


@pytest.mark.slow  # a benchmark script's own end-to-end run (~26 s on 2 cores); CI runs it with -m slow
def test_gpu_check_smoke_with_only_the_gpu_images_packages(tmp_path):
    """The lent GPU machines have PyTorch & co. but no network and no stmclf set-up: the check runs
    there on the image's packages plus the four wheels benchmarks/gpu_device.py carries. Emulated
    here with ``python -S`` on a folder of this venv's packages limited to that set."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_device", ROOT / "benchmarks" / "gpu_device.py")
    gpu_device = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_device)
    site = gpu_device.emulated_site(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(site), "STMCLF_CACHE": str(tmp_path / "cache")}
    env.pop("OUT", None)

    def python(*args, **kwargs):
        return subprocess.run([sys.executable, "-S", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              **kwargs)

    # the emulation holds: a carried package imports, packages the image lacks do not
    probe = python("-c", "import jsonargparse, torch, lightning\n"
                         "for name in ('mlflow', 'tensorflow', 'onnx2tf'):\n"
                         "    try:\n        __import__(name)\n    except ImportError:\n        continue\n"
                         "    raise SystemExit(name + ' imported')")
    assert probe.returncode == 0, probe.stderr[-2000:]

    proc = python(str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path / "g.json"), timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["epochs_run"] == 2 and report["accuracy_ok"] is True
    # the command given to the machine installs the wheels and runs this same check with python3
    command = gpu_device.device_command()
    assert ".whl/*.whl" in command and "PYTHON=python3" in command and "benchmarks/gpu_check.sh" in command
    assert {name.split("==")[0] for name in gpu_device.carried_pins()} == set(gpu_device.CARRIED)
