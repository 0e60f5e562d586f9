"""Dataset files and folders the user may not read (``chmod 000``), through the real command.

The tests run as root in CI, and root reads any file whatever its mode, so each command runs in a
child process without the privilege to bypass file permissions: as root, CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH are dropped from its capability bounding set before the interpreter is exec'd
(root stays root, so the interpreter and the test's folders stay reachable: switching to nobody's
uid fails where the interpreter lives under a root-only home, as pyenv's does in ``/root``); as
any other user, ``chmod 000`` is enough. A test is skipped only when the child can still read
the file (neither works).
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import config_text, error_of, write_image_folder

PR_CAPBSET_DROP = 24
FILE_PRIVILEGES = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def _drop_file_privileges():
    """The child's ``preexec_fn`` (None when not root: nothing to drop)."""
    if os.geteuid() != 0:
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def drop() -> None:
        for cap in FILE_PRIVILEGES:
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return drop


def run_unprivileged(*args: str, cwd: Path) -> tuple[int, str, str]:
    """``python -m stmclf ARGS`` (or ``python ARGS`` when the first is ``-c``) without the
    privilege to read files regardless of their mode; exit code, stdout, stderr."""
    command = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "stmclf", *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300,
                              preexec_fn=_drop_file_privileges(), env={**os.environ, "COLUMNS": "200"})
    except subprocess.SubprocessError as exc:  # the bounding set could not be changed (no CAP_SETPCAP)
        pytest.skip(f"cannot drop the file privileges of a child process: {exc}")
    return proc.returncode, proc.stdout, proc.stderr


@contextmanager
def unreadable(path: Path, cwd: Path):
    """``path`` with mode 000 for the block (its mode back after it, so the folder can be deleted);
    the test is skipped when an unprivileged child can still list or read it."""
    mode = path.stat().st_mode & 0o7777
    path.chmod(0)
    try:
        probe = "import os, sys; p = sys.argv[1]; os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read(1)"
        code, _, _ = run_unprivileged("-c", probe, str(path), cwd=cwd)
        if code == 0:
            pytest.skip(f"{path} stays readable for the child process (file privileges not dropped)")
        yield path
    finally:
        path.chmod(mode)


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    """A small class-folder dataset (12 files: checked in process, no worker pool) and its config."""
    data = write_image_folder(tmp_path / "data", per_class=4)
    config = tmp_path / "config.yaml"
    config.write_text(config_text(data, tmp_path / "run", tmp_path / "mlruns", epochs=1))
    return data, config


def test_data_check_lists_an_unreadable_image_as_a_problem_naming_it(dataset, tmp_path):
    data, config = dataset
    with unreadable(data / "dog" / "dog_002.png", tmp_path):
        code, out, err = run_unprivileged("data", "check", "--config", str(config), cwd=tmp_path)
    assert code == 2, err
    rows = [line for line in out.splitlines() if "unreadable" in line]
    assert len(rows) == 1 and "dog_002.png" in rows[0] and "Permission denied" in rows[0], out
    assert error_of(err) == f"stmclf: error: dataset check found 1 problem in {data} (see above)"


@pytest.mark.slow  # a real fit in a subprocess (~30 s); the data check above covers the same file read
def test_fit_skips_an_unreadable_image_in_one_line_naming_it(dataset, tmp_path):
    data, config = dataset
    with unreadable(data / "cat" / "cat_001.png", tmp_path):
        code, _, err = run_unprivileged("fit", "--config", str(config), cwd=tmp_path)
    assert code == 0, err
    skipped = [line for line in err.splitlines() if "skipping an unreadable image" in line]
    assert len(skipped) == 1 and "cat_001.png" in skipped[0] and "Permission denied" in skipped[0], err
    assert (tmp_path / "run" / "saved_models" / "best_model.pt").is_file()


@pytest.mark.slow  # unprivileged subprocesses (~20 s); the data check case above runs by default
def test_an_unreadable_class_folder_is_a_problem_and_one_line_naming_the_key(dataset, tmp_path):
    data, config = dataset
    with unreadable(data / "owl", tmp_path):
        code, out, err = run_unprivileged("data", "check", "--config", str(config), cwd=tmp_path)
        assert code == 2 and any("unreadable" in line and f"{data / 'owl'}" in line for line in out.splitlines()), out
        code, _, err = run_unprivileged("fit", "--config", str(config), cwd=tmp_path)
    assert code == 2
    assert error_of(err) == ("stmclf: error: dataset.training_path: unable to list the class folder "
                             f"{data / 'owl'}: Permission denied")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # unprivileged subprocesses (~20 s); the data check case above runs by default
def test_an_unreadable_dataset_root_is_one_line_naming_the_key_and_the_folder(dataset, tmp_path):
    """It was ``stmclf: error: DATA: Permission denied`` (the generic line of an OSError met anywhere),
    which named neither the config key nor what could not be done."""
    data, config = dataset
    with unreadable(data, tmp_path):
        code, _, err = run_unprivileged("fit", "--config", str(config), cwd=tmp_path)
    assert code == 2
    assert error_of(err) == ("stmclf: error: dataset.training_path: unable to list the dataset root directory "
                             f"{data}: Permission denied")
    assert not (tmp_path / "run").exists()


def test_an_unreadable_config_file_is_one_line_naming_it(dataset, tmp_path):
    _, config = dataset
    with unreadable(config, tmp_path):
        code, _, err = run_unprivileged("fit", "--config", str(config), cwd=tmp_path)
    assert code == 2
    assert error_of(err) == f"stmclf: error: {config}: cannot read the file (Permission denied)"
