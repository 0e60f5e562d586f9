"""ST's own int8 recipe as the reference for ``stmclf export --int8``.

A tf_keras MobileNet V1 α0.25 at 96×96×3 with 2 classes (``tf_keras.applications.MobileNet``, the
structure of ST's zoo model ``mobilenet_v1_0.25_96``) is trained briefly on real images (two
classes of scikit-learn's handwritten digits, upsampled to 96×96 RGB) and saved as ``.h5``. It is
converted twice:

- ST's recipe (reference inventory §7.2): ``TFLiteConverter.from_keras_model``, ``optimizations
  = [DEFAULT]``, the calibration images one at a time as the representative dataset, per-channel
  weights (the default), ``inference_input_type = uint8``, ``inference_output_type = float32``, no
  ``supported_ops`` restriction — in a subprocess (TensorFlow stays out of this process);
- ``stmclf export --int8`` of the same ``.h5`` (Keras import → ONNX → onnx2tf → TFLite).

The two int8 files must match: size within 5 %, the same builtin ops, ≥ 98 % top-1 agreement on the
real test images, the same TensorFlow Lite Micro arena within 5 %.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stmclf.cli.main import main

pytest.importorskip("tensorflow")
pytest.importorskip("tflite_micro")

DIGITS = {"eight": 8, "three": 3}  # the two digits the 8×8 originals confuse most, sorted = label order
SIZE = 96
TRAIN_PER_CLASS, TEST_PER_CLASS = 80, 90

KERAS_SCRIPT = r'''
import json, os, sys, time
from pathlib import Path
start = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
from PIL import Image
import tensorflow as tf
import tf_keras as keras

data, out = Path(sys.argv[1]), Path(sys.argv[2])
classes = sorted(p.name for p in (data / "train").iterdir())

def load(split):
    pixels, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((data / split / name).glob("*.png")):
            pixels.append(np.asarray(Image.open(file).convert("RGB")))
            labels.append(label)
    return np.stack(pixels), np.array(labels)

def rescale(x):  # ST's rescaling: scale 1/127.5, offset -1
    return x.astype(np.float32) / 127.5 - 1.0

keras.utils.set_random_seed(0)
train_x, train_y = load("train")
model = keras.applications.MobileNet(alpha=0.25, weights=None, input_shape=(96, 96, 3), classes=2)
for layer in model.layers:  # Keras's 0.99 leaves the moving statistics at their start after ~100 steps
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9
model.compile(keras.optimizers.Adam(0.002), "sparse_categorical_crossentropy", ["accuracy"])
model.fit(rescale(train_x), train_y, batch_size=16, epochs=int(sys.argv[3]), verbose=0, shuffle=True)
model.save(out / "mobilenet_v1_0.25_96.h5")
test_x, test_y = load("test")
accuracy = float((model.predict(rescale(test_x), verbose=0).argmax(1) == test_y).mean())

# ST's quantizer (stm32ai-modelzoo-services, quantize.py: TFlite_converter, PTQ, uint8 in, float out)
def representative_dataset():
    for image in rescale(train_x):
        yield [image[None]]
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = representative_dataset
converter.inference_input_type = tf.uint8
converter.inference_output_type = tf.float32
(out / "st_int8.tflite").write_bytes(converter.convert())
print(json.dumps({"float_test_accuracy": accuracy, "seconds": time.perf_counter() - start}))
'''


def write_digits(root: Path) -> Path:
    """``root/{train,test}/<class>/*.png``: two digit classes, 96×96 RGB (bilinear upsampling)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for name, digit in DIGITS.items():
        indices = np.flatnonzero(bunch.target == digit)[: TRAIN_PER_CLASS + TEST_PER_CLASS]
        assert len(indices) == TRAIN_PER_CLASS + TEST_PER_CLASS
        for n, index in enumerate(indices):
            folder = root / ("train" if n < TRAIN_PER_CLASS else "test") / name
            folder.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray((bunch.images[index] * (255 / 16)).round().astype(np.uint8))
            gray.resize((SIZE, SIZE), Image.BILINEAR).convert("RGB").save(folder / f"{name}_{index:04d}.png")
    return root


def test_pixels(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    pixels, labels = [], []
    for label, name in enumerate(sorted(DIGITS)):
        for file in sorted((root / "test" / name).glob("*.png")):
            pixels.append(np.asarray(Image.open(file).convert("RGB")))
            labels.append(label)
    return np.stack(pixels), np.array(labels)


test_pixels.__test__ = False  # a helper, not a test


SHAPE_ARITHMETIC = {"SHAPE", "STRIDED_SLICE", "PACK"}
"""Ops that only compute a RESHAPE's target shape from a dynamic batch size (int32 tensors)."""


def graph_ops(path: Path) -> tuple[collections.Counter, collections.Counter]:
    """(compute ops, shape-arithmetic ops) of a TFLite file: builtin op names with their counts.
    An op counts as shape arithmetic only when it is in :data:`SHAPE_ARITHMETIC` and all its
    outputs are int32 (never activations)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    compute, shape = collections.Counter(), collections.Counter()
    for op in interpreter._get_ops_details():
        int32 = all(dtypes.get(i) == np.int32 for i in op["outputs"])
        (shape if op["op_name"] in SHAPE_ARITHMETIC and int32 else compute)[op["op_name"]] += 1
    return compute, shape


@pytest.mark.slow
def test_stmclf_int8_export_matches_st_recipe(tmp_path):
    from stmclf.export.tflite import TfliteModel
    from stmclf.export.tflm import measure_arena

    data = write_digits(tmp_path / "data")
    out = tmp_path / "keras"
    out.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(data), str(out), "8"], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["float_test_accuracy"] >= 0.85, info  # trained: the outputs mean something
    print("keras", info)
    h5, st_int8 = out / "mobilenet_v1_0.25_96.h5", out / "st_int8.tflite"

    config = tmp_path / "export.yaml"
    config.write_text(f"""\
general: {{project_name: st_int8_reference}}
operation_mode: quantization
dataset: {{training_path: {data / 'train'}, test_path: {data / 'test'}, validation_split: 0.2}}
preprocessing:
  rescaling: {{scale: 1/127.5, offset: -1}}
  resizing: {{aspect_ratio: fit, interpolation: bilinear}}
  color_mode: rgb
quantization:
  quantizer: TFlite_converter
  quantization_type: PTQ
  quantization_input_type: uint8
  quantization_output_type: float
  granularity: per_channel
  export_dir: quantized_models
mlflow: {{uri: {tmp_path / 'mlruns'}}}
hydra: {{run: {{dir: {tmp_path / 'run'}}}}}
""")
    assert main(["export", "--config", str(config), "--ckpt", str(h5), "--int8", "--format", "tflite",
                 "--run", str(tmp_path / "run")]) == 0
    ours = tmp_path / "run/quantized_models/quantized_model.tflite"
    summary = json.loads((tmp_path / "run/quantized_models/export_summary.json").read_text())

    # the same graph: the multiset of builtin ops that compute on activations. ST's converter sees
    # the Keras model with a dynamic batch, so the head's Reshape gets its target shape computed at
    # run time (SHAPE → STRIDED_SLICE → PACK on int32, one each); stmclf's file has a static batch
    # of 1 and a constant target shape. Those three int32 ops are the only difference allowed.
    (st_ops, st_shape), (our_ops, our_shape) = graph_ops(st_int8), graph_ops(ours)
    # the same size (weights, biases, per-channel scales)
    st_size, our_size = st_int8.stat().st_size, ours.stat().st_size
    # the same predictions on the real test images (raw uint8 pixels into both: uint8 input)
    pixels, labels = test_pixels(data)
    st_model, our_model = TfliteModel(st_int8), TfliteModel(ours)
    assert st_model.input.dtype == our_model.input.dtype == np.uint8
    st_out, our_out = st_model.run_raw(pixels), our_model.run_raw(pixels)
    agreement = float(np.mean(st_out.argmax(1) == our_out.argmax(1)))
    # the same memory on the MCU runtime
    st_arena, our_arena = measure_arena(st_int8), measure_arena(ours)
    numbers = (f"size ST {st_size} B / stmclf {our_size} B; agreement {100 * agreement:.1f} % on {len(pixels)} "
               f"images (accuracy ST {100 * np.mean(st_out.argmax(1) == labels):.1f} %, stmclf "
               f"{100 * np.mean(our_out.argmax(1) == labels):.1f} %); arena ST {st_arena.total_bytes} B "
               f"(head {st_arena.head_bytes} + tail {st_arena.tail_bytes}) / stmclf {our_arena.total_bytes} B "
               f"(head {our_arena.head_bytes} + tail {our_arena.tail_bytes}); ops ST {dict(st_ops)} + shape "
               f"{dict(st_shape)} / stmclf {dict(our_ops)} + shape {dict(our_shape)}")
    print(numbers)
    assert our_ops == st_ops, numbers
    assert st_shape == collections.Counter(SHAPE_ARITHMETIC) and not our_shape, numbers
    assert abs(our_size - st_size) <= 0.05 * st_size, numbers
    assert agreement >= 0.98, numbers
    assert abs(our_arena.total_bytes - st_arena.total_bytes) <= 0.05 * st_arena.total_bytes, numbers
    assert summary["checks"]["tflm_check"] == "ok" and summary["checks"]["tflm_arena_bytes"] == our_arena.total_bytes
