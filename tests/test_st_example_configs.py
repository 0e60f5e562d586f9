"""ST's example configs run as written (only their paths changed), with ``general.model_path`` on a
Keras ``.h5`` and on a stmclf ``best_model.pt``: quantization, evaluation, prediction,
benchmarking (offline estimate) and the chains eqeb, eqe, qb, tqe, tqeb.

The examples are in ``st_examples.py``. Artifacts are made once per module: a digits dataset, a
trained tf_keras MobileNet-style ``.h5`` (with TensorFlow's float outputs and TensorFlow's own int8
TFLite), and a ``best_model.pt`` from a tiny ``stmclf fit``; every mode runs with both sources.
chain_tqe is the one example run with more than its paths changed: ``--training.epochs 1`` on
the command line (ST's file trains 120 epochs). With ``general.model_path`` given, the chain_tqe(b)
examples drop ``training.model`` (mutually exclusive with it, in ST's checker as in stmclf's).
"""
from __future__ import annotations

from conftest import error_of

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from st_examples import (
    CLASS_NAMES,
    ST_EXAMPLES,
    ExamplePaths,
    KerasArtifacts,
    fit_config,
    input_quantization,
    load_images,
    run_tflite,
    start_keras_artifacts,
    write_digits_dataset,
    write_yaml,
)

from stmclf.cli.main import main

QUANTIZED = "quantized_models/quantized_model.tflite"
AGREEMENT = 0.9  # int8 vs float top-1 agreement on the test images


@dataclass
class Artifacts:
    root: Path
    data: Path
    keras: KerasArtifacts
    best_model: Path
    mlruns: Path

    def model(self, source: str) -> Path:
        return {"keras_h5": self.keras.h5, "stmclf": self.best_model, "tflite_int8": self.keras.tflite_int8}[source]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Artifacts:
    root = tmp_path_factory.mktemp("st_examples")
    data = write_digits_dataset(root / "data")
    keras_done = start_keras_artifacts(data, root / "keras")  # in a subprocess, while stmclf fit runs here
    mlruns = root / "mlruns"
    fit = write_yaml(fit_config(data, root / "fit", mlruns, epochs=2), root / "fit.yaml")
    assert main(["fit", "--config", str(fit)]) == 0
    best = root / "fit/saved_models/best_model.pt"
    assert best.is_file()
    keras = keras_done()
    assert keras.h5.is_file() and keras.tflite_int8.is_file() and keras.test_accuracy >= 0.8
    return Artifacts(root, data, keras, best, mlruns)


def run_example(mode: str, model_path, run_dir: Path, art: Artifacts, *extra: str) -> int:
    """Write ST's ``<mode>_config.yaml`` with the test's paths and run it (``--offline``)."""
    paths = ExamplePaths(str(model_path) if model_path else None, art.data, art.mlruns, run_dir)
    config = write_yaml(ST_EXAMPLES[mode](paths), run_dir.parent / f"{run_dir.name}_{mode}_config.yaml")
    return main(["run", "--config", str(config), "--offline", *extra])


@pytest.fixture(scope="module")
def quantized(artifacts, tmp_path_factory):
    """ST's quantization example, run once per model source: source → run directory."""
    done: dict[str, Path] = {}

    def get(source: str) -> Path:
        if source not in done:
            run_dir = tmp_path_factory.mktemp(f"quantization_{source}") / "run"
            code = run_example("quantization", artifacts.model(source), run_dir, artifacts)
            assert code == 0, f"quantization of {source} exited {code}"
            done[source] = run_dir
        return done[source]
    return get


def float_reference(art: Artifacts, source: str, pixels: np.ndarray) -> np.ndarray:
    """Float softmax outputs on the test images: TensorFlow's for the .h5, the torch model's for best_model.pt."""
    if source == "keras_h5":
        return art.keras.tf_float_outputs()["probs"]
    import torch

    from stmclf.training.model_file import load_classifier

    module = load_classifier(art.best_model)
    scale, offset = module.hparams.rescaling
    x = torch.from_numpy(pixels.astype(np.float32) * scale + offset).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return module.model(x).softmax(1).numpy()


def read_results(run_dir: Path) -> list[dict]:
    records = json.loads((run_dir / "results.json").read_text())
    assert records and all(0 <= r["accuracy"] <= 100 for r in records)
    return records


def check_benchmark(run_dir: Path) -> dict:
    bench = json.loads((run_dir / "benchmark.json").read_text())
    assert "estimate" in bench["source"] and bench["board"] == "STM32H747I-DISCO"
    assert bench["rom_size"] > 0 and bench["ram_size"] > 0 and bench["macc"] > 0
    return bench


SOURCES = ["keras_h5", "stmclf"]


# -- the fixtures themselves -------------------------------------------------------------------

def test_artifacts_are_usable(artifacts):
    from stmclf.models.importers import load_model_file

    imported = load_model_file(artifacts.keras.h5)
    assert imported.kind == "keras_h5" and imported.input_shape == (32, 32, 3) and imported.num_outputs == 3
    assert imported.has_dropout
    names, pixels, labels = load_images(artifacts.data / "test")
    reference = artifacts.keras.tf_float_outputs()
    assert list(reference["names"]) == names and (reference["labels"] == labels).all()
    # TensorFlow's own int8 TFLite (ST's *_int8.tflite) agrees with TensorFlow's float outputs
    tf_int8 = run_tflite(artifacts.keras.tflite_int8, pixels)
    assert (tf_int8.argmax(1) == reference["probs"].argmax(1)).mean() >= AGREEMENT


def test_every_example_parses(artifacts, tmp_path, capsys):
    for source in SOURCES:
        for mode, example in ST_EXAMPLES.items():
            paths = ExamplePaths(str(artifacts.model(source)), artifacts.data, artifacts.mlruns, tmp_path / "run")
            config = write_yaml(example(paths), tmp_path / f"{mode}_{source}.yaml")
            with pytest.raises(SystemExit) as exit_info:
                main(["run", "--config", str(config), "--offline", "--print_config"])
            assert exit_info.value.code == 0, (mode, source)
            assert f"operation_mode: {mode}" in capsys.readouterr().out


# -- quantization -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_quantization(source, artifacts, quantized):
    run_dir = quantized(source)
    tflite = run_dir / QUANTIZED
    assert tflite.is_file() and (run_dir / "quantized_models/export_summary.json").is_file()
    dtype, scale, _ = input_quantization(tflite)
    assert dtype == np.uint8  # quantization_input_type: uint8: raw pixels go in (the scale absorbs the rescaling)
    assert scale == pytest.approx(1 / 127.5, rel=1e-3)
    _, pixels, _ = load_images(artifacts.data / "test")
    int8 = run_tflite(tflite, pixels)
    reference = float_reference(artifacts, source, pixels)
    agreement = (int8.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= AGREEMENT, f"int8 TFLite of {source} agrees with the float model on {agreement:.0%}"


# -- evaluation -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_evaluation(source, artifacts, tmp_path):
    assert run_example("evaluation", artifacts.model(source), tmp_path / "run", artifacts) == 0
    records = read_results(tmp_path / "run")
    test_set = [r for r in records if r["set"] == "test_set"]
    assert test_set and test_set[0]["count"] == 30
    if source == "keras_h5":  # the same images, the same float model: TensorFlow's accuracy
        assert test_set[0]["accuracy"] == pytest.approx(100 * artifacts.keras.test_accuracy, abs=100 / 30 + 1e-6)


# -- prediction -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES + ["tflite_int8"])
def test_prediction(source, artifacts, tmp_path):
    """ST's prediction example takes an int8 .tflite; the float sources work the same way."""
    assert run_example("prediction", artifacts.model(source), tmp_path / "run", artifacts) == 0
    out = tmp_path / "run/predictions"
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    folder = artifacts.data / "test" / CLASS_NAMES[0]
    assert len(rows) == len(list(folder.glob("*.png"))) == 10
    assert len(list(out.glob("*.png"))) == 10
    assert {r["label"] for r in rows} <= set(CLASS_NAMES)
    if source != "stmclf":  # the Keras model is trained well: compare with TensorFlow's float labels
        reference = artifacts.keras.tf_float_outputs()
        expected = {Path(str(n)).name: CLASS_NAMES[int(p.argmax())]
                    for n, p in zip(reference["names"], reference["probs"])}
        agree = np.mean([expected[Path(r["file"]).name] == r["label"] for r in rows])
        assert agree >= AGREEMENT


# -- benchmarking -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_benchmarking(source, artifacts, quantized, tmp_path):
    """Like ST's example, the benchmarked file is the int8 TFLite of the model: TensorFlow's
    converter's for the .h5 (ST's ``*_int8.tflite``), stmclf's quantization for best_model.pt."""
    model = artifacts.keras.tflite_int8 if source == "keras_h5" else quantized(source) / QUANTIZED
    assert run_example("benchmarking", model, tmp_path / "run", artifacts) == 0
    check_benchmark(tmp_path / "run")


# -- chains -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_chain_eqeb(source, artifacts, tmp_path):
    run_dir = tmp_path / "run"
    assert run_example("chain_eqeb", artifacts.model(source), run_dir, artifacts) == 0
    assert (run_dir / QUANTIZED).is_file()
    kinds = {r["kind"] for r in read_results(run_dir)}
    assert kinds >= {"float", "int"}
    check_benchmark(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("mode,extra", [
    pytest.param("chain_eqe", (), id="chain_eqe"),
    pytest.param("chain_qb", (), id="chain_qb"),
    pytest.param("chain_tqe", ("--training.epochs", "1"), id="chain_tqe"),  # ST's file trains 120 epochs
    pytest.param("chain_tqeb", (), id="chain_tqeb"),  # ST's file trains 1 epoch
])
def test_other_chains(mode, source, extra, artifacts, tmp_path):
    run_dir = tmp_path / "run"
    assert run_example(mode, artifacts.model(source), run_dir, artifacts, *extra) == 0
    assert (run_dir / QUANTIZED).is_file()
    if mode != "chain_qb":
        assert "int" in {r["kind"] for r in read_results(run_dir)}
    if mode in ("chain_qb", "chain_tqeb"):
        check_benchmark(run_dir)
    if mode.startswith("chain_t"):
        assert (run_dir / "saved_models/best_model.pt").is_file()


# -- sources a mode cannot use --------------------------------------------------------------

def _one_error_line(stderr: str, model: Path) -> None:
    lines = [line for line in error_of(stderr).splitlines() if line.strip()]  # after the log lines
    assert len(lines) == 1 and lines[0].startswith("stmclf: error:") and str(model) in lines[0], stderr


def test_benchmarking_a_keras_file_measures_its_float_model(artifacts, tmp_path):
    """ST's service benchmarks a Keras .h5 as it is (float): stmclf measures its float ONNX export."""
    assert run_example("benchmarking", artifacts.keras.h5, tmp_path / "run", artifacts) == 0
    bench = check_benchmark(tmp_path / "run")
    converted = tmp_path / "run" / "benchmark_models" / f"{artifacts.keras.h5.stem}.onnx"
    assert converted.is_file() and bench["source"] == "estimate"


def test_benchmarking_a_file_that_is_no_model_is_refused(artifacts, tmp_path):
    junk = tmp_path / "model.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))  # an HDF5 signature, no Keras model behind it
    paths = ExamplePaths(str(junk), artifacts.data, artifacts.mlruns, tmp_path / "run")
    config = write_yaml(ST_EXAMPLES["benchmarking"](paths), tmp_path / "benchmarking_config.yaml")
    stmclf = Path(sys.executable).with_name("stmclf")
    command = [str(stmclf)] if stmclf.exists() else [sys.executable, "-m", "stmclf.cli.main"]
    proc = subprocess.run([*command, "run", "--config", str(config), "--offline"], capture_output=True, text=True,
                          check=False, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 2
    _one_error_line(proc.stderr, junk)


def test_quantizing_a_tflite_file_is_refused(artifacts, tmp_path, capsys):
    code = run_example("quantization", artifacts.keras.tflite_int8, tmp_path / "run", artifacts)
    assert code == 2
    _one_error_line(capsys.readouterr().err, artifacts.keras.tflite_int8)
    assert not (tmp_path / "run" / QUANTIZED).exists()
