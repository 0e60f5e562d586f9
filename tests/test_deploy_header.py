"""The deployed C header ``ai_model_config.h``: written from a run directory (config.yaml, the
recorded class names, the int8 TFLite model), valid C (compiled with gcc), with the right class
names, sizes, pre-processing modes, I/O types and quantization parameters."""
from __future__ import annotations

from conftest import error_of

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401 - torch before TensorFlow in one process
import yaml

from stmclf.benchmark.deploy_header import (HEADER_NAME, build_deploy_header, c_float, c_string, header_path,
                                            read_tflite_io)
from stmclf.config.run_files import read_run_config
from stmclf.errors import ConfigError, UserError

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is not installed")


def _int8_tflite(path: Path, height: int, width: int, channels: int, classes: int, input_type: str,
                 output_type: str) -> Path:
    """A small conv → mean → dense → softmax classifier, full-integer int8, rescaled input in [-1, 1]."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(0, 0.3, (3, 3, channels, 8)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 1, (8, classes)).astype(np.float32))
    bias = tf.constant(rng.normal(0, 0.1, (classes,)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, channels], tf.float32)])
    def model(x):
        y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        return tf.nn.softmax(tf.matmul(tf.reduce_mean(y, axis=[1, 2]), dense) + bias)

    def representative():
        for i in range(8):
            x = rng.uniform(-1, 1, (1, height, width, channels)).astype(np.float32)
            x[0, 0, 0], x[0, 0, 1] = -1.0, 1.0
            yield [x]

    types = {"uint8": tf.uint8, "int8": tf.int8, "float": tf.float32}
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = types[input_type]
    converter.inference_output_type = types[output_type]
    converter.representative_dataset = representative
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected" (int8/uint8 input)
        path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    return {"rgb": _int8_tflite(root / "rgb.tflite", 24, 32, 3, 3, "uint8", "float"),
            "gray": _int8_tflite(root / "gray.tflite", 16, 16, 1, 4, "int8", "int8")}


def _run_dir(tmp_path: Path, model: Path, *, class_names=None, export_dir=None, aspect="fit", color="rgb",
             deployment=None, extra_files=None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"general": {"project_name": "demo"}, "operation_mode": "chain_tqe",
           "dataset": {"name": "demo", "class_names": class_names},
           "preprocessing": {"rescaling": {"scale": 1 / 127.5, "offset": -1.0},
                             "resizing": {"aspect_ratio": aspect, "interpolation": "bilinear"}, "color_mode": color},
           "quantization": None if export_dir is None else {"quantizer": "TFlite_converter", "quantization_type": "PTQ",
                                                            "quantization_input_type": "uint8",
                                                            "quantization_output_type": "float",
                                                            "export_dir": export_dir},
           "deployment": deployment}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    folder = run / (export_dir or "quantized_models")
    folder.mkdir()
    shutil.copyfile(model, folder / "quantized_model.tflite")
    for name, content in (extra_files or {}).items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(content)
    return run


def _write_header(run: Path, out: Path | None = None) -> Path:
    """What ``stmclf deploy-header --run RUN [--out OUT]`` writes: the header of the run's int8
    export, from the run's config, to OUT or the run's default path."""
    header = build_deploy_header(run, cfg=read_run_config(run), key="--run")
    return header.write(out if out is not None else header_path(run))


def _defines(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^#define (\w+)\s+(.*)$", text, re.M)}


def _gcc(tmp_path: Path, header: Path, body: str, *, run: bool = False) -> str:
    source = tmp_path / "check.c"
    source.write_text(f'#include "{header.name}"\n#include <stdio.h>\n{body}\n')
    args = [GCC, "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{header.parent}", str(source)]
    if not run:
        result = subprocess.run(args + ["-fsyntax-only"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return ""
    exe = tmp_path / "check"
    result = subprocess.run(args + ["-o", str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return subprocess.run([str(exe)], capture_output=True, check=True).stdout.decode("utf-8")


@needs_gcc
def test_header_from_config_class_names_compiles(tmp_path, models):
    run = _run_dir(tmp_path, models["rgb"], class_names=["tulips", "daisy", "roses"], export_dir="int8_models",
                   aspect="crop")
    header = _write_header(run)
    assert header == run / "generated" / HEADER_NAME
    text = header.read_text()
    d = _defines(text)
    assert d["NB_CLASSES"] == "(3)"
    assert (d["INPUT_HEIGHT"], d["INPUT_WIDTH"], d["INPUT_CHANNELS"]) == ("(24)", "(32)", "(3)")
    assert d["ASPECT_RATIO_MODE"] == "ASPECT_RATIO_CROP" and d["PP_COLOR_MODE"] == "RGB_FORMAT"
    assert d["QUANT_INPUT_TYPE"] == "UINT8_FORMAT" and d["QUANT_OUTPUT_TYPE"] == "FLOAT32_FORMAT"
    io = read_tflite_io(run / "int8_models" / "quantized_model.tflite")
    assert float(d["INPUT_QUANT_SCALE"].strip("()f")) == pytest.approx(io["input"]["scale"], rel=1e-6)
    assert int(d["INPUT_QUANT_ZERO_POINT"].strip("()")) == io["input"]["zero_point"]
    assert io["input"]["scale"] == pytest.approx(2 / 255, rel=1e-3)  # the [-1, 1] input range in uint8
    assert d["OUTPUT_QUANT_SCALE"] == "(0.0f)" and d["OUTPUT_QUANT_ZERO_POINT"] == "(0)"  # float output
    assert "CAMERA_INTERFACE" not in d and "DISPLAY_INTERFACE" not in d
    body = """CLASSES_TABLE;
_Static_assert(NB_CLASSES == 3, "classes");
_Static_assert(INPUT_HEIGHT == 24 && INPUT_WIDTH == 32 && INPUT_CHANNELS == 3, "size");
_Static_assert(ASPECT_RATIO_MODE == 2 && PP_COLOR_MODE == RGB_FORMAT, "preprocessing");
_Static_assert(QUANT_INPUT_TYPE == UINT8_FORMAT && QUANT_OUTPUT_TYPE == FLOAT32_FORMAT, "types");
int main(void) {
    for (int i = 0; i < NB_CLASSES; i++) printf("%s\\n", classes_table[i]);
    printf("%.9g %d\\n", (double)INPUT_QUANT_SCALE, INPUT_QUANT_ZERO_POINT);
    return 0;
}"""
    _gcc(tmp_path, header, body)
    out = _gcc(tmp_path, header, body, run=True).splitlines()
    assert out[:3] == ["daisy", "roses", "tulips"]  # configured names are sorted: output index order
    scale, zero = out[3].split()
    assert float(scale) == pytest.approx(io["input"]["scale"], rel=1e-6) and int(zero) == io["input"]["zero_point"]


@needs_gcc
def test_header_names_from_the_export_summary_and_int8_io(tmp_path, models):
    names = ['say "hi"', "back\\slash", "caf\u00e9", "what??!"]  # quotes, backslash, UTF-8, a trigraph
    run = _run_dir(tmp_path, models["gray"], class_names=None, color="grayscale",
                   extra_files={"quantized_models/export_summary.json": '{"class_names": %s}' % _json(names)})
    out = tmp_path / "inc" / HEADER_NAME
    assert _write_header(run, out) == out
    d = _defines(out.read_text())
    assert d["NB_CLASSES"] == "(4)" and d["INPUT_CHANNELS"] == "(1)" and d["PP_COLOR_MODE"] == "GRAYSCALE_FORMAT"
    assert d["QUANT_INPUT_TYPE"] == "INT8_FORMAT" and d["QUANT_OUTPUT_TYPE"] == "INT8_FORMAT"
    io = read_tflite_io(run / "quantized_models" / "quantized_model.tflite")
    assert io["output"]["dtype"] == "int8" and io["output"]["scale"] > 0
    assert float(d["OUTPUT_QUANT_SCALE"].strip("()f")) == pytest.approx(io["output"]["scale"], rel=1e-6)
    assert int(d["OUTPUT_QUANT_ZERO_POINT"].strip("()")) == io["output"]["zero_point"]
    printed = _gcc(tmp_path, out, """CLASSES_TABLE;
int main(void) { for (int i = 0; i < NB_CLASSES; i++) printf("%s\\n", classes_table[i]); return 0; }""", run=True)
    assert printed.splitlines() == names  # recorded names are kept in their (output) order, bytes intact


def _json(value) -> str:
    import json

    return json.dumps(value)


@needs_gcc
def test_camera_and_display_interfaces(tmp_path, models):
    run = _run_dir(tmp_path, models["rgb"], class_names=["a", "b", "c"],
                   deployment={"c_project_path": "app", "IDE": "GCC", "verbosity": 1,
                               "hardware_setup": {"serie": "STM32H7", "board": "NUCLEO-H743ZI2"}})
    d = _defines(_write_header(run).read_text())
    assert d["CAMERA_INTERFACE"] == "CAMERA_INTERFACE_DCMI" and d["DISPLAY_INTERFACE"] == "DISPLAY_INTERFACE_USB"
    assert d["CAMERA_SENSOR"] == "CAMERA_SENSOR_OV5640"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["deployment"]["hardware_setup"].update(input="CAMERA_INTERFACE_SPI", output="DISPLAY_INTERFACE_SPI")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    header = _write_header(run)
    d = _defines(header.read_text())
    assert d["CAMERA_INTERFACE"] == "CAMERA_INTERFACE_SPI" and d["DISPLAY_INTERFACE"] == "DISPLAY_INTERFACE_SPI"
    _gcc(tmp_path, header, """CLASSES_TABLE;
_Static_assert(CAMERA_INTERFACE == 3 && DISPLAY_INTERFACE == 2, "interfaces");""")
    cfg["deployment"]["hardware_setup"].update(board="STM32H747I-DISCO", input=None, output=None)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "CAMERA_INTERFACE" not in _defines(_write_header(run).read_text())  # the board's own camera/LCD
    cfg["deployment"]["hardware_setup"].update(board="NUCLEO-H743ZI2", input="CAMERA_INTERFACE_HDMI")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="deployment.hardware_setup.input"):
        _write_header(run)
    cfg["deployment"]["hardware_setup"].update(board="NUCLEO-NOPE", input=None)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="deployment.hardware_setup.board"):
        _write_header(run)


def test_header_errors(tmp_path, models):
    with pytest.raises(UserError, match="no config.yaml"):
        _write_header(tmp_path)
    run = _run_dir(tmp_path, models["rgb"], class_names=["a", "b"])  # the model has 3 outputs
    with pytest.raises(UserError, match="outputs 3 scores"):
        _write_header(run)
    (run / "quantized_models" / "quantized_model.tflite").unlink()
    with pytest.raises(UserError, match="no int8 TFLite"):
        _write_header(run)
    other = tmp_path / "other"
    other.mkdir()
    run2 = _run_dir(other, models["rgb"], class_names=None)
    with pytest.raises(ConfigError, match="dataset.class_names"):
        _write_header(run2)
    gray = tmp_path / "gray"
    gray.mkdir()
    run3 = _run_dir(gray, models["gray"], class_names=list("abcd"), color="rgb")
    with pytest.raises(UserError, match="channel"):
        _write_header(run3)


def test_c_literals():
    assert c_string('a"b\\c?') == '"a\\"b\\\\c\\?"'
    assert c_string("\u00e9") == '"\\303\\251"'
    assert c_float(1.0) == "(1.0f)" and c_float(0.0078125) == "(0.0078125f)" and c_float(1e-12) == "(1e-12f)"
    with pytest.raises(UserError):
        c_float(float("nan"))


def _unquantized_tflite(path: Path, *, weights_only: bool = False, activations16: bool = False) -> Path:
    """A float TFLite classifier (8x8x3 → 64-channel conv → mean → dense 3), or the same with
    int8 weights and float activations (dynamic-range quantization), or with int8 weights and
    int16 activations (16x8 quantization)."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    kernel = tf.constant(rng.normal(0, 0.3, (3, 3, 3, 64)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 1, (64, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def model(x):
        return tf.matmul(tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME")), axis=[1, 2]), dense)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()])
    if weights_only or activations16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if activations16:
        converter.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)]
                                                    for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    path.write_bytes(converter.convert())
    return path


def test_an_st_deployment_config_and_a_users_int8_tflite(tmp_path, models, capsys):
    """ST's deployment config (general.model_path: the user's int8 .tflite; class names and
    pre-processing, no rescaling) gives the header in a new run folder; a float TFLite, one with
    int8 weights but float activations, or one with int16 activations (16x8), is refused in one
    line before any folder is made."""
    from stmclf.cli.main import main

    model = Path(shutil.copyfile(models["rgb"], tmp_path / "mine_int8.tflite"))
    config = tmp_path / "deployment_config.yaml"
    config.write_text(f"""general:
  model_path: {model}
operation_mode: deployment
dataset:
  class_names: [tulips, daisy, roses]
preprocessing:
  resizing: {{interpolation: bilinear, aspect_ratio: crop}}
  color_mode: rgb
tools:
  stedgeai: {{version: 10.0.0, optimization: balanced, on_cloud: true, path_to_stedgeai: /opt/st/stedgeai}}
  path_to_cubeIDE: /opt/st/stm32cubeide
deployment:
  c_project_path: ../application_code/image_classification/STM32H7/
  IDE: GCC
  verbosity: 1
  hardware_setup: {{serie: STM32H7, board: NUCLEO-H743ZI2, input: CAMERA_INTERFACE_SPI}}
mlflow:
  uri: {tmp_path / 'ml'}
hydra:
  run:
    dir: {tmp_path / 'run'}
""")
    assert main(["deploy-header", "--config", str(config)]) == 0
    text = (tmp_path / "run/generated" / HEADER_NAME).read_text()
    d = _defines(text)
    assert d["NB_CLASSES"] == "(3)" and (d["INPUT_HEIGHT"], d["INPUT_WIDTH"]) == ("(24)", "(32)")
    assert d["ASPECT_RATIO_MODE"] == "ASPECT_RATIO_CROP" and d["QUANT_INPUT_TYPE"] == "UINT8_FORMAT"
    assert d["CAMERA_INTERFACE"] == "CAMERA_INTERFACE_SPI" and d["DISPLAY_INTERFACE"] == "DISPLAY_INTERFACE_USB"
    assert "rescaling" not in text  # the config gives none: the int8 input quantization holds it
    io = read_tflite_io(model)
    assert float(d["INPUT_QUANT_SCALE"].strip("()f")) == pytest.approx(io["input"]["scale"], rel=1e-6)
    assert '"daisy", "roses", "tulips"' in text
    capsys.readouterr()

    for name, kind, why in (("float.tflite", {}, "is a float TFLite model; the deployment header accepts an int8 "
                                                 "TFLite model"),
                            ("dynamic.tflite", {"weights_only": True}, "is not a full-integer model: its CONV_2D "
                                                                       "layers compute in float"),
                            ("16x8.tflite", {"activations16": True}, "has int16 activations (its CONV_2D layers "
                                                                     "compute on int16: a 16x8-quantized model); ST's "
                                                                     "application runs int8 models")):
        other = _unquantized_tflite(tmp_path / name, **kind)
        capsys.readouterr()  # TensorFlow's converter warnings
        assert main(["deploy-header", "--config", str(config), "--model", str(other)]) == 2
        err = error_of(capsys.readouterr().err)
        assert len(err.splitlines()) == 1 and err.startswith(f"stmclf: error: --model: {other} {why}"), err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run"]


def test_a_run_without_an_int8_export_is_told_to_export_first(tmp_path, models, capsys):
    """``deploy-header --run RUN`` deploys the run's int8 export: without one, one line says to
    export the run first; the run's ``general.model_path`` (the model it was fine-tuned from, here
    another int8 .tflite) is not taken instead. Nothing is written."""
    from stmclf.cli.main import main

    run = _run_dir(tmp_path, models["rgb"], class_names=["a", "b", "c"])
    (run / "quantized_models/quantized_model.tflite").unlink()
    source = Path(shutil.copyfile(models["rgb"], tmp_path / "source.tflite"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["general"]["model_path"] = str(source)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["deploy-header", "--run", str(run)]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and err == (
        f"stmclf: error: {run / 'quantized_models'}: no int8 TFLite model (quantized_model.tflite); export the run "
        f"first (stmclf export --run {run} --int8, or operation_mode quantization)"), err
    assert not (run / "generated").exists()
