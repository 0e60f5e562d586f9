"""``stmclf data check``, ``dataset.check_image_files`` and skipping bad files during training,
on real files written here."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import config_text, write_image_folder
from stmclf.cli.main import main
from stmclf.data.check import check_dataset, inspect_file, print_report
from stmclf.data.datamodule import ImageFileDataset, ImageFormat, collate_skip_bad
from stmclf.data.folder import FileList


def _jpeg_bytes(size: int = 64) -> bytes:
    import io

    pixels = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_truncated_jpeg(path: Path) -> Path:
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def write_random_bytes(path: Path) -> Path:
    path.write_bytes(b"\x00" + np.random.default_rng(2).bytes(700))
    return path


def dataset_config(path: Path, training: Path, validation: Path | None = None, extra: str = "") -> Path:
    lines = ["dataset:", "  name: pytest", f"  training_path: {training}"]
    if validation is not None:
        lines.append(f"  validation_path: {validation}")
    lines += [extra.rstrip()] if extra else []
    lines += ["preprocessing:", "  rescaling: {scale: 1/127.5, offset: -1}", "  color_mode: rgb"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A training folder with one of each problem, and a validation folder that lacks a class."""
    root = tmp_path_factory.mktemp("broken")
    train = write_image_folder(root / "train", per_class=12)
    valid = write_image_folder(root / "valid", per_class=4,
                               classes={"cat": (220, 40, 40), "dog": (40, 200, 40), "fox": (200, 200, 40)})
    expected = {
        ("corrupt", write_truncated_jpeg(train / "cat" / "truncated.jpg")),
        ("not-image", write_random_bytes(train / "dog" / "random.png")),
        ("empty-file", train / "dog" / "zero.jpg"),
        ("not-image", train / "owl" / "notes.txt"),
        ("sub-folder", train / "owl" / "nested"),
        ("sub-folder", train / "owl" / "nested" / "deeper"),
        ("empty-class", train / "fox"),
        ("missing-class", valid / "owl"),
    }
    (train / "dog" / "zero.jpg").write_bytes(b"")
    (train / "owl" / "notes.txt").write_text("these are owls\n")
    (train / "owl" / "nested" / "deeper").mkdir(parents=True)
    (train / "owl" / "nested" / "copy.png").write_bytes((train / "owl" / "owl_000.png").read_bytes())
    (train / "fox").mkdir()
    config = dataset_config(root / "config.yaml", train, valid)
    return SimpleNamespace(root=root, train=train, valid=valid, config=config,
                           expected={(kind, str(path)) for kind, path in expected})


def _section(training, validation=None, **kwargs):
    from stmclf.config.sections import Dataset

    return Dataset(training_path=str(training), validation_path=str(validation) if validation else None, **kwargs)


# ---------------------------------------------------------------------------------------------
# check_dataset

def test_every_problem_is_reported_by_path(broken):
    report = check_dataset(_section(broken.train, broken.valid), workers=2)
    assert not report.ok
    assert {(p.kind, p.path) for p in report.problems} == broken.expected
    keys = {p.path: p.key for p in report.problems}
    assert keys[str(broken.valid / "owl")] == "dataset.validation_path"
    assert keys[str(broken.train / "fox")] == "dataset.training_path"
    details = {p.path: p.detail for p in report.problems}
    assert ".txt" in details[str(broken.train / "owl" / "notes.txt")]
    assert "JPEG, PNG, GIF or BMP" in details[str(broken.train / "dog" / "random.png")]
    assert "1 file(s)" in details[str(broken.train / "owl" / "nested")]
    train = report.folders[0]
    assert train.counts == {"cat": 12, "dog": 12, "fox": 0, "owl": 12}
    assert train.bad == {"cat": 1, "dog": 2, "fox": 0, "owl": 1}
    assert report.folders[1].counts == {"cat": 4, "dog": 4, "fox": 4}
    assert report.class_names == ["cat", "dog", "fox", "owl"]
    assert report.summary().startswith("dataset check found 8 problems in ")


def test_pool_and_inline_agree(broken):
    pooled = check_dataset(_section(broken.train, broken.valid), workers=3)
    inline = check_dataset(_section(broken.train, broken.valid), workers=1)
    assert pooled.problems == inline.problems
    assert pooled.folders == inline.folders
    assert pooled.files_checked == inline.files_checked == 12 * 3 + 4 + 4 * 3


def test_inspect_file_kinds(tmp_path, broken):
    assert inspect_file(str(broken.train / "cat" / "cat_000.png")) == (None, "")
    assert inspect_file(str(broken.train / "cat" / "truncated.jpg"))[0] == "corrupt"
    assert inspect_file(str(broken.train / "dog" / "zero.jpg")) == ("empty-file", "zero-byte file")
    text = tmp_path / "text.png"
    text.write_text("hello, not an image\n")
    assert inspect_file(str(text)) == ("not-image", "text content, not an image")
    tiff = tmp_path / "picture.jpg"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiff, format="TIFF")
    kind, detail = inspect_file(str(tiff))
    assert kind == "not-image" and detail.startswith("TIFF image")
    assert inspect_file(str(tmp_path / "absent.png"))[0] == "unreadable"


def test_folder_problems_are_collected_not_raised(tmp_path):
    train = write_image_folder(tmp_path / "train", per_class=2)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "loose.png").write_bytes((train / "cat" / "cat_000.png").read_bytes())
    section = _section(train, tmp_path / "flat", test_path=str(tmp_path / "absent"),
                       class_names=["owl", "dog", "cat", "yak"])
    report = check_dataset(section, workers=1)
    found = {(p.kind, p.path) for p in report.problems}
    assert found == {("missing-class", str(train / "yak")),
                     ("no-classes", str(tmp_path / "flat")),
                     ("missing-root", str(tmp_path / "absent"))}
    assert {(w.kind, w.path) for w in report.warnings} == {("stray-file", str(tmp_path / "flat"))}
    assert report.class_names == ["cat", "dog", "owl", "yak"]


def test_check_and_loader_agree_on_extra_and_badly_named_class_folders(tmp_path, caplog):
    """The classes are the training folders (or dataset.class_names): a validation or test class
    folder outside them is ignored by the loader, with a warning, and is an ``extra-class``
    warning in the check (the check called the training set's class 'missing' while training
    dropped those images silently). A class folder whose name is not UTF-8 text, which training
    refuses, is a check problem too."""
    import os

    from stmclf.data.folder import make_splits

    train = write_image_folder(tmp_path / "train", per_class=3)
    valid = write_image_folder(tmp_path / "valid", per_class=2)
    test = write_image_folder(tmp_path / "test", per_class=2)
    (valid / "zebra").mkdir()
    (valid / "zebra" / "z.png").write_bytes((train / "cat" / "cat_000.png").read_bytes())
    (test / "wolf").mkdir()
    (test / "wolf" / "w.png").write_bytes((train / "cat" / "cat_000.png").read_bytes())
    section = _section(train, valid, test_path=str(test))
    report = check_dataset(section, workers=1)
    assert report.ok and report.class_names == ["cat", "dog", "owl"]
    assert {(w.kind, w.key, w.detail) for w in report.warnings if w.kind == "extra-class"} == {
        ("extra-class", f"dataset.{key}_path", f"class folder(s) {name} are not among the 3 classes found in "
                                              "dataset.training_path: ignored")
        for key, name in (("validation", "zebra"), ("test", "wolf"))}
    with caplog.at_level(logging.WARNING, logger="stmclf.data"):
        splits = make_splits(section)
    assert splits.class_names == ["cat", "dog", "owl"] and len(splits.valid) == 6 and len(splits.test) == 6
    assert sorted(r.getMessage() for r in caplog.records if "not among" in r.getMessage()) == [
        "dataset.test_path: class folder(s) wolf are not among the 3 classes found in dataset.training_path: ignored",
        "dataset.validation_path: class folder(s) zebra are not among the 3 classes found in dataset.training_path: "
        "ignored"]
    latin = os.fsdecode(os.fsencode(train) + b"/caf\xe9")
    os.mkdir(latin)
    report = check_dataset(_section(train), workers=1)
    assert [(p.kind, p.path) for p in report.problems] == [("class-name", f"{train}/caf\\xe9")]


def test_builtin_dataset_paths_are_not_folders(tmp_path):
    from stmclf.config.sections import Dataset

    test = write_image_folder(tmp_path / "test", per_class=2)
    report = check_dataset(Dataset(name="cifar10", training_path=str(tmp_path / "batches"), test_path=str(test)),
                           workers=1)
    assert report.ok and [f.key for f in report.folders] == ["dataset.test_path"]
    assert "not folder datasets" in report.notes[0]


def test_imbalance_is_a_warning(tmp_path):
    train = write_image_folder(tmp_path / "train", per_class=12, classes={"cat": (200, 0, 0), "owl": (0, 0, 200)})
    write_image_folder(tmp_path / "train", per_class=3, classes={"dog": (0, 200, 0)})
    report = check_dataset(_section(train), workers=1)
    assert report.ok
    [warning] = report.warnings
    assert warning.kind == "imbalance" and warning.path == str(train)
    assert "'cat' has 12" in warning.detail and "'dog' 3" in warning.detail and "ratio 4.0 > 3" in warning.detail
    assert check_dataset(_section(train), workers=1, imbalance_ratio=4.0).warnings == []
    assert check_dataset(_section(train), workers=1, imbalance_ratio=None).warnings == []


def test_report_printer(broken):
    from rich.console import Console

    console = Console(record=True, width=300)
    print_report(check_dataset(_section(broken.train, broken.valid), workers=1), console, max_rows=3)
    text = console.export_text()
    assert "Images per class" in text and "Problems (8)" in text
    assert "12 (+2 bad)" in text and "missing" in text
    assert "... and 5 more problems" in text
    assert "dataset check found" not in text  # the caller's one error line says it (it came twice)


# ---------------------------------------------------------------------------------------------
# stmclf data check

def test_cli_broken_dataset_exits_2(broken, capsys):
    code = main(["data", "check", "--config", str(broken.config), "--workers", "2"])
    out, err = capsys.readouterr()
    assert code == 2
    for _, path in broken.expected:
        assert path in out, path
    common = broken.root.name
    assert err.strip().startswith("stmclf: error: dataset check found 8 problems in ")
    assert common in err and err.strip().endswith("(see above)")
    assert len(err.strip().splitlines()) == 1
    assert "dataset check found" not in out  # said once, by the error line


def test_cli_clean_dataset_exits_0_with_counts(tmp_path, capsys):
    train = write_image_folder(tmp_path / "train", per_class=5)
    valid = write_image_folder(tmp_path / "valid", per_class=2, seed=1)
    config = dataset_config(tmp_path / "config.yaml", train, valid)
    assert main(["data", "check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert "no problems" in out and err == ""
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in out.splitlines() if line.startswith("│")}
    assert rows["cat"] == ["5", "2"] and rows["total"] == ["15", "6"]


def test_cli_overrides_and_options(broken, tmp_path, capsys):
    clean = write_image_folder(tmp_path / "clean", per_class=6, classes={"cat": (200, 0, 0), "dog": (0, 200, 0)})
    write_image_folder(tmp_path / "clean", per_class=1, classes={"owl": (0, 0, 200)})
    argv = ["data", "check", "--config", str(broken.config), "--dataset.training_path", str(clean),
            "--dataset.validation_path", "null", "--workers", "1"]
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    assert "class imbalance" in out and "ratio 6.0 > 3" in out
    assert main(argv + ["--imbalance_ratio", "10"]) == 0
    assert "class imbalance" not in capsys.readouterr().out
    assert main(["data", "check", "--config", str(broken.config), "--dataset.bogus", "1"]) == 2
    assert "dataset.bogus: unknown key" in capsys.readouterr().err


def test_cli_without_dataset_section(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("general:\n  project_name: x\n")
    assert main(["data", "check", "--config", str(config)]) == 2
    assert "missing 'dataset' section" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# dataset.check_image_files and bad files during training

def test_check_image_files_stops_fit_before_training(broken, tmp_path, capsys):
    config = tmp_path / "fit.yaml"
    config.write_text(config_text(broken.train, tmp_path / "run", tmp_path / "mlruns", epochs=1))
    code = main(["fit", "--config", str(config), "--dataset.check_image_files", "true"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "dataset check found 7 problems" in err and "check_image_files" in err
    for kind, path in broken.expected:
        if kind != "missing-class":  # the validation folder is not part of this config
            assert path in out, path
    assert not (tmp_path / "run").exists()  # stopped before the run directory and the Trainer


def test_check_image_files_passes_on_a_clean_dataset(tmp_path, caplog):
    from stmclf.data.check import check_image_files

    train = write_image_folder(tmp_path / "train", per_class=3)
    caplog.set_level(logging.INFO, logger="stmclf.data")
    report = check_image_files(_section(train), workers=1)
    assert report.ok and report.files_checked == 9
    assert "no problems" in caplog.text


def test_collate_skip_bad():
    good = [(torch.full((3, 4, 5), i, dtype=torch.uint8), i) for i in range(3)]
    images, labels = collate_skip_bad([good[0], None, good[2]])
    assert images.shape == (2, 3, 4, 5) and labels.tolist() == [0, 2]
    images, labels = collate_skip_bad(good)
    assert images.shape == (3, 3, 4, 5) and labels.dtype == torch.long
    images, labels = collate_skip_bad([None, None], empty_shape=(3, 4, 5))
    assert images.shape == (0, 3, 4, 5) and images.dtype == torch.uint8
    assert labels.shape == (0,) and labels.dtype == torch.long


def test_bad_file_is_skipped_and_logged_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("STMCLF_CACHE", "off")
    train = write_image_folder(tmp_path / "train", per_class=1, size=(8, 8))
    bad = str(write_truncated_jpeg(tmp_path / "train" / "cat" / "bad.jpg"))
    files = FileList([str(train / "cat" / "cat_000.png"), bad, str(train / "dog" / "dog_000.png")], [0, 0, 1])
    dataset = ImageFileDataset(files, ImageFormat(8, 8))
    caplog.set_level(logging.WARNING, logger="stmclf.data")
    for _ in range(3):
        assert dataset[1] is None
        assert dataset[0][0].shape == (3, 8, 8)
    records = [r for r in caplog.records if bad in r.getMessage()]
    assert len(records) == 1 and records[0].name == "stmclf.data"


def _tiny_module():
    from stmclf.training.module import ClassifierModule

    return ClassifierModule(model_spec={"name": "mobilenet", "version": "v2", "alpha": 0.35,
                                        "input_shape": (32, 32, 3)},
                            class_names=["cat", "dog"], input_shape=[32, 32, 3], rescaling=(1 / 127.5, -1.0),
                            optimizer={"Adam": {"learning_rate": 0.001}})


def test_an_entirely_bad_batch_is_skipped(tmp_path, monkeypatch):
    import lightning as L
    from torch.utils.data import DataLoader

    from stmclf.evaluate.accuracy import evaluate_module

    monkeypatch.setenv("STMCLF_CACHE", "off")
    train = write_image_folder(tmp_path / "train", per_class=2, size=(32, 32),
                               classes={"cat": (200, 0, 0), "dog": (0, 200, 0)})
    bad = [str(write_truncated_jpeg(tmp_path / f"bad{i}.jpg")) for i in range(2)]
    good = sorted(str(p) for p in train.glob("*/*.png"))
    files = FileList(bad + good, [0, 1, 0, 0, 1, 1])
    dataset = ImageFileDataset(files, ImageFormat(32, 32))
    loader = DataLoader(dataset, batch_size=2, shuffle=False,
                        collate_fn=lambda batch: collate_skip_bad(batch, empty_shape=(3, 32, 32)))
    batches = list(loader)
    assert batches[0][0].shape == (0, 3, 32, 32)
    module = _tiny_module()
    assert module.training_step(batches[0], 0) is None
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.state.finished
    results = evaluate_module(module, [("set", loader)])
    assert results["set"]["count"] == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_training_with_a_corrupt_file_completes(tmp_path, caplog, workers):
    train = write_image_folder(tmp_path / "train", per_class=8)
    bad = str(write_truncated_jpeg(train / "dog" / "dog_corrupt.jpg"))
    config = tmp_path / "config.yaml"
    text = config_text(train, tmp_path / "run", tmp_path / "mlruns", epochs=2)  # the file is read twice
    config.write_text(text.replace("num_workers: 0", f"num_workers: {workers}"))
    caplog.set_level(logging.WARNING, logger="stmclf.data")
    assert main(["fit", "--config", str(config), "--trainer.enable_progress_bar", "false"]) == 0
    assert (tmp_path / "run" / "saved_models" / "best_augmented_model.ckpt").is_file()
    log_file = (tmp_path / "run" / "stmclf.log").read_text()
    assert log_file.count(bad) == 1  # worker processes write to the run's log file too
    if workers == 0:
        assert len([r for r in caplog.records if bad in r.getMessage()]) == 1


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="resource limits and /proc: Linux")
def test_cli_checks_in_process_when_the_pool_cannot_start(tmp_path):
    """A real ``stmclf data check`` whose process may hold 40 file descriptors (RLIMIT_NOFILE, set
    for the child only): 30 worker processes cannot start (each holds two pipes), so the files are
    checked in the process, after one warning line, with no traceback of ours and exit code 0."""
    import resource
    import subprocess
    import sys

    train = write_image_folder(tmp_path / "train", per_class=20)
    config = dataset_config(tmp_path / "config.yaml", train)

    def limit_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    done = subprocess.run([sys.executable, "-m", "stmclf", "data", "check", "--config", str(config), "--workers", "30"],
                          preexec_fn=limit_files, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "files in" in done.stdout and "no problems" in done.stdout, done.stdout
    warning = [line for line in done.stderr.splitlines() if "worker processes unavailable" in line]
    assert len(warning) == 1 and "Too many open files" in warning[0] and "checking in this process" in warning[0], \
        done.stderr
    assert "stmclf/data/check.py" not in done.stderr and "ProcessPoolExecutor" not in done.stderr, done.stderr


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="/proc: Linux")
def test_cli_checks_in_process_when_a_worker_is_killed(tmp_path):
    """A real ``stmclf data check`` one of whose worker processes is SIGKILLed (as the OOM killer
    does) as soon as the workers exist, before 200 large images can be decoded: the pool breaks
    (BrokenProcessPool), one warning line says so and the rest is checked in the process (it used
    to end with the BrokenProcessPool traceback, exit 1)."""
    import signal
    import subprocess
    import sys
    import time

    gradient = np.tile(np.linspace(0, 255, 1500, dtype=np.uint8), (1500, 1))
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(100):
            Image.fromarray(np.stack([gradient] * 3, -1)).save(tmp_path / "train" / name / f"{i}.png", compress_level=1)
    config = dataset_config(tmp_path / "config.yaml", tmp_path / "train")
    process = subprocess.Popen([sys.executable, "-m", "stmclf", "data", "check", "--config", str(config), "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    killed = None
    deadline = time.monotonic() + 240
    while process.poll() is None and killed is None and time.monotonic() < deadline:
        below = _descendants(process.pid)
        if len(below) >= 3:  # the fork server and the 2 workers (fork: the 2 workers and their manager's none)
            killed = below[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    out, err = process.communicate(timeout=300)
    assert killed is not None, err
    assert process.returncode == 0, err
    assert "200 files in" in out and "no problems" in out, out
    warning = [line for line in err.splitlines() if "worker processes unavailable" in line]
    assert len(warning) == 1 and "BrokenProcessPool" in warning[0] and "checking in this process" in warning[0], err
    assert "Traceback" not in err, err
