"""The scripts beside the ``stmclf`` command (``benchmarks/*.py``, ``python -m stmclf.augment.bench``)
parse their options as stmclf does: no prefix of an option taken, a one-line error naming the
option or choice meant (they used plain argparse: ``unrecognized arguments: --epoch 3`` after the
usage, with no hint, and ``--max 5`` taken as ``--max-per-split 5``). Argument parsing only: each
script stops at its error, before any work."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py")) + [ROOT / "stmclf" / "augment" / "bench.py"]


@pytest.mark.parametrize("argv, error", [
    (["chain_accuracy.py", "--epoch", "3"], "unknown option --epoch (did you mean --epochs?); "
                                            "see 'chain_accuracy.py --help'"),
    (["chain_accuracy.py", "--max", "5"], "unknown option --max (did you mean --max-per-split?)"),
    (["chain_accuracy.py", "--mode", "chain"], "argument --mode: invalid choice: 'chain' (choose from 'chain_tqe', "
                                               "'training') (did you mean chain_tqe?)"),
    (["reference_loader.py", "images", "--siz", "32"], "unknown option --siz (did you mean --size?)"),
    (["reference_train.py", "resnet8", "--step", "3"], "unknown option --step (did you mean --steps?)"),
    (["gpu_device.py", "comand"], "argument what: invalid choice: 'comand' (choose from 'wheels', 'command', "
                                  "'site') (did you mean command?)"),
])
def test_a_benchmark_script_names_the_option_meant(argv, error, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.startswith(f"{argv[0]}: error: {error}") and proc.stderr.count("\n") == 1, proc.stderr


def test_augment_bench_names_the_option_meant(capsys):
    from stmclf.augment.bench import main

    with pytest.raises(SystemExit) as done:
        main(["--batc", "4"])
    assert done.value.code == 2
    assert capsys.readouterr().err.endswith("error: unknown option --batc (did you mean --batch?); "
                                            f"see '{Path(sys.argv[0]).name} --help'\n")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_script_parses_with_stmclfs_parser(script):
    """A script's parser is ``stmclf.config.parser.ScriptParser``, never a plain ``argparse.ArgumentParser``."""
    plain = [node.lineno for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Call)
             and (ast.unparse(node.func).endswith("ArgumentParser"))]
    assert not plain, f"{script.name}: argparse.ArgumentParser at line(s) {plain}: use ScriptParser"
