"""ST's image-classification example configs (stm32ai-modelzoo-services,
``image_classification/src/config_file_examples/``) as Python data, plus the test artifacts they run on.

Each ``st_*`` function returns one example with the sections, keys and values of ST's file; only
the paths (model, datasets, prediction folder, MLflow store, run directory) and the dataset's own
identity (``name``, ``class_names``) are the test's. Tool paths (``path_to_stedgeai``,
``path_to_cubeIDE``) keep ST's placeholders: with ``on_cloud: True`` they are never used, and the
tests pass ``--offline`` so that benchmarking falls back to the offline estimate.

Artifacts:

- :func:`write_digits_dataset`: class folders of scikit-learn's handwritten digits (real data),
  upscaled to 32x32 RGB PNGs, in ``train/`` and ``test/``;
- :func:`make_keras_artifacts`: a small MobileNet-style tf_keras model trained on those images and
  saved as legacy ``.h5``, its float softmax outputs on the test images (``.npz``) and the int8
  TFLite TensorFlow's own converter makes from it (ST's ``*_int8.tflite``). It runs in a
  subprocess: TensorFlow is never imported into the test process;
- :func:`fit_config`: a tiny ``stmclf fit`` config whose run writes ``saved_models/best_model.pt``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DIGITS = {"zero": 0, "one": 1, "two": 2}
"""Class folder → digit of scikit-learn's ``load_digits``."""
CLASS_NAMES = sorted(DIGITS)
IMAGE_SIZE = 32
RESCALING = {"scale": "1/127.5", "offset": -1}  # every ST example uses this rescaling
STEDGEAI_EXE = ("C:/Users/<XXXXX>/STM32Cube/Repository/Packs/STMicroelectronics/X-CUBE-AI/<*.*.*>/Utilities/"
                "windows/stedgeai.exe")
CUBE_IDE = "C:/ST/STM32CubeIDE_<*.*.*>/STM32CubeIDE/stm32cubeide.exe"


# -- data ------------------------------------------------------------------------------------

def write_digits_dataset(root: Path, train_per_class: int = 30, test_per_class: int = 10) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``: 32x32 RGB digits (ink white)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for name, digit in DIGITS.items():
        indices = np.flatnonzero(bunch.target == digit)[: train_per_class + test_per_class]
        assert len(indices) == train_per_class + test_per_class
        for n, index in enumerate(indices):
            split = "train" if n < train_per_class else "test"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray((bunch.images[index] * (255 / 16)).round().astype(np.uint8))
            gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB").save(
                folder / f"{name}_{index:04d}.png")
    return root


def load_images(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(relative file names, uint8 NHWC pixels, labels) of the class folders under ``folder``."""
    from PIL import Image

    names, pixels, labels = [], [], []
    for label, name in enumerate(CLASS_NAMES):
        for file in sorted((folder / name).glob("*.png")):
            names.append(f"{name}/{file.name}")
            pixels.append(np.asarray(Image.open(file).convert("RGB")))
            labels.append(label)
    return names, np.stack(pixels), np.array(labels)


# -- Keras model (in a subprocess) -------------------------------------------------------------

KERAS_SCRIPT = r'''
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, sys.argv[2])
import numpy as np
import tensorflow as tf
import tf_keras as keras
from st_examples import load_images, CLASS_NAMES, IMAGE_SIZE

data, out = sys.argv[1], sys.argv[3]
keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()
def rescale(x):
    return x.astype(np.float32) / 127.5 - 1.0
_, train_x, train_y = load_images(__import__("pathlib").Path(data) / "train")
test_names, test_x, test_y = load_images(__import__("pathlib").Path(data) / "test")
L = keras.layers
inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
x = L.BatchNormalization(momentum=0.9)(x)
x = L.ReLU(6.0)(x)
for filters, stride in ((16, 1), (32, 2)):
    x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU(6.0)(x)
    x = L.Conv2D(filters, 1, use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
x = L.GlobalAveragePooling2D()(x)
x = L.Dropout(0.2)(x)
outputs = L.Dense(len(CLASS_NAMES), activation="softmax")(x)
model = keras.Model(inputs, outputs, name="tiny_mobilenet")
model.compile(keras.optimizers.Adam(float(sys.argv[5])), "sparse_categorical_crossentropy", ["accuracy"])
model.fit(rescale(train_x), train_y, batch_size=16, epochs=int(sys.argv[4]), verbose=0, shuffle=True)
model.save(os.path.join(out, "tiny_mobilenet.h5"))
probs = model.predict(rescale(test_x), verbose=0)
np.savez(os.path.join(out, "tf_float_outputs.npz"), names=np.array(test_names), probs=probs, labels=test_y)

def calibration():
    for image in rescale(train_x[::3]):
        yield [image[None]]
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = calibration
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = tf.uint8
converter.inference_output_type = tf.float32
with open(os.path.join(out, "tiny_mobilenet_int8.tflite"), "wb") as handle:
    handle.write(converter.convert())
accuracy = float((probs.argmax(1) == test_y).mean())
print(json.dumps({"test_accuracy": accuracy, "layers": len(model.layers)}))
'''


@dataclass
class KerasArtifacts:
    h5: Path
    tflite_int8: Path
    float_outputs: Path
    test_accuracy: float
    layers: int

    def tf_float_outputs(self) -> dict[str, np.ndarray]:
        data = np.load(self.float_outputs)
        return {"names": data["names"], "probs": data["probs"], "labels": data["labels"]}


def start_keras_artifacts(data_root: Path, out: Path, epochs: int = 20,
                          learning_rate: float = 0.005) -> Callable[[], KerasArtifacts]:
    """Start training and saving the tf_keras model in a subprocess (TensorFlow stays out of this
    process); the returned function waits for it. Other work may run meanwhile."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, "-c", KERAS_SCRIPT, str(data_root), str(Path(__file__).parent), str(out),
                             str(epochs), str(learning_rate)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)

    def wait() -> KerasArtifacts:
        stdout, stderr = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the Keras model failed:\n{stderr[-4000:]}")
        info = json.loads(stdout.strip().splitlines()[-1])
        return KerasArtifacts(out / "tiny_mobilenet.h5", out / "tiny_mobilenet_int8.tflite",
                              out / "tf_float_outputs.npz", info["test_accuracy"], info["layers"])
    return wait


def make_keras_artifacts(data_root: Path, out: Path, **kwargs: Any) -> KerasArtifacts:
    return start_keras_artifacts(data_root, out, **kwargs)()


# -- TFLite ----------------------------------------------------------------------------------

def run_tflite(path: Path, pixels: np.ndarray, rescaling: tuple[float, float] = (1 / 127.5, -1.0)) -> np.ndarray:
    """Outputs of a TFLite model on uint8 NHWC pixels, one image at a time. A uint8 input takes
    the raw pixels (its scale/zero-point absorb the rescaling); an int8 input the pixels quantized
    with its own scale/zero-point; a float input the rescaled pixels."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    results = []
    for image in pixels:
        if inp["dtype"] == np.uint8:
            x = image
        elif inp["dtype"] == np.int8:
            real = image.astype(np.float32) * rescaling[0] + rescaling[1]
            x = np.clip(np.round(real / scale + zero), -128, 127).astype(np.int8)
        else:
            x = (image.astype(np.float32) * rescaling[0] + rescaling[1]).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        out_scale, out_zero = out["quantization"]
        if out["dtype"] in (np.int8, np.uint8) and out_scale:
            y = (y.astype(np.float32) - out_zero) * out_scale
        results.append(np.asarray(y, dtype=np.float32))
    return np.stack(results)


def input_quantization(path: Path) -> tuple[Any, float, int]:
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    return detail["dtype"], *detail["quantization"]


# -- ST's example configs ----------------------------------------------------------------------

@dataclass
class ExamplePaths:
    """Where the test's data lives; everything else in an example is ST's."""

    model_path: str | None
    dataset: Path  # holds train/ and test/ class folders
    mlflow_uri: Path
    run_dir: Path
    dataset_name: str = "digits"

    @property
    def training_path(self) -> str:
        return str(self.dataset / "train")

    @property
    def test_path(self) -> str:
        return str(self.dataset / "test")

    @property
    def quantization_path(self) -> str:
        return str(self.dataset / "train")

    @property
    def test_files_path(self) -> str:  # ST predicts the images of one class folder
        return str(self.dataset / "test" / CLASS_NAMES[0])


def _tail(p: ExamplePaths) -> dict:
    return {"mlflow": {"uri": str(p.mlflow_uri)}, "hydra": {"run": {"dir": str(p.run_dir)}}}


def _preprocessing(interpolation: str, aspect_ratio: str = "fit") -> dict:
    return {"rescaling": dict(RESCALING),
            "resizing": {"aspect_ratio": aspect_ratio, "interpolation": interpolation},
            "color_mode": "rgb"}


def _ptq(export_dir: bool = True) -> dict:
    section = {"quantizer": "TFlite_converter", "quantization_type": "PTQ",
               "quantization_input_type": "uint8", "quantization_output_type": "float"}
    if export_dir:
        section["export_dir"] = "quantized_models"
    return section


def _tools_and_board() -> dict:
    return {"tools": {"stedgeai": {"version": "10.0.0", "optimization": "balanced", "on_cloud": True,
                                   "path_to_stedgeai": STEDGEAI_EXE},
                      "path_to_cubeIDE": CUBE_IDE},
            "benchmarking": {"board": "STM32H747I-DISCO"}}


def st_quantization(p: ExamplePaths) -> dict:
    return {"operation_mode": "quantization",
            "general": {"model_path": p.model_path},
            "dataset": {"name": p.dataset_name, "class_names": CLASS_NAMES,
                        "quantization_path": p.quantization_path, "quantization_split": 0.4},
            "preprocessing": _preprocessing("nearest"),
            "quantization": _ptq(),
            **_tail(p)}


def st_evaluation(p: ExamplePaths) -> dict:
    return {"operation_mode": "evaluation",
            "general": {"model_path": p.model_path},
            "dataset": {"test_path": p.test_path},
            "preprocessing": _preprocessing("bilinear"),
            **_tail(p)}


def st_prediction(p: ExamplePaths) -> dict:
    return {"operation_mode": "prediction",
            "general": {"model_path": p.model_path},
            "dataset": {"class_names": CLASS_NAMES},
            "preprocessing": _preprocessing("bilinear"),
            "prediction": {"test_files_path": p.test_files_path},
            **_tail(p)}


def st_benchmarking(p: ExamplePaths) -> dict:
    return {"operation_mode": "benchmarking",
            "general": {"model_path": p.model_path},
            "preprocessing": _preprocessing("bilinear"),
            **_tools_and_board(),
            **_tail(p)}


def st_chain_eqeb(p: ExamplePaths) -> dict:
    # ST's file has no export_dir here (the default, quantized_models, applies)
    return {"operation_mode": "chain_eqeb",
            "general": {"model_path": p.model_path},
            "dataset": {"training_path": p.training_path, "validation_split": 0.1,
                        "quantization_path": p.quantization_path, "quantization_split": 0.05},
            "preprocessing": _preprocessing("bilinear"),
            "quantization": _ptq(export_dir=False),
            **_tools_and_board(),
            **_tail(p)}


def st_chain_eqe(p: ExamplePaths) -> dict:
    return {"operation_mode": "chain_eqe",
            "general": {"model_path": p.model_path},
            "dataset": {"name": p.dataset_name, "class_names": CLASS_NAMES, "test_path": p.test_path,
                        "quantization_path": p.quantization_path},
            "preprocessing": _preprocessing("nearest"),
            "quantization": _ptq(),
            **_tail(p)}


def st_chain_qb(p: ExamplePaths) -> dict:
    return {"operation_mode": "chain_qb",
            "general": {"model_path": p.model_path},
            "preprocessing": _preprocessing("nearest"),
            "quantization": _ptq(),
            **_tools_and_board(),
            **_tail(p)}


ST_AUGMENTATION = {"random_contrast": {"factor": 0.4}, "random_brightness": {"factor": 0.2},
                   "random_flip": {"mode": "horizontal_and_vertical"},
                   "random_translation": {"width_factor": 0.2, "height_factor": 0.2},
                   "random_rotation": {"factor": 0.15},
                   "random_zoom": {"width_factor": 0.25, "height_factor": 0.25}}


def _train_quantize(p: ExamplePaths, mode: str, *, frozen_layers: Any, epochs: int, pretrained_weights: Any) -> dict:
    """chain_tqe / chain_tqeb. ST's files train ``training.model`` (MobileNet V2 0.35 at 224);
    with ``general.model_path`` given (chain_tqeb's file has the key, empty), ``training.model``
    must go: the two are mutually exclusive in ST's checker as in stmclf's."""
    training: dict[str, Any] = {
        "model": {"name": "mobilenet", "version": "v2", "alpha": 0.35, "pretrained_weights": pretrained_weights,
                  "input_shape": "(224, 224, 3)"},
        "frozen_layers": frozen_layers, "batch_size": 32, "epochs": epochs, "dropout": 0.3,
        "optimizer": {"Adam": {"learning_rate": 0.001}},
        "callbacks": {"ReduceLROnPlateau": {"monitor": "val_accuracy", "factor": 0.5, "patience": 10},
                      "EarlyStopping": {"monitor": "val_accuracy", "patience": 40}}}
    if p.model_path:
        del training["model"]
    config = {"operation_mode": mode,
              "general": {"project_name": "my_project", "model_path": p.model_path, "logs_dir": "logs",
                          "saved_models_dir": "saved_models", "display_figures": True, "global_seed": 127,
                          "gpu_memory_limit": 3},
              "dataset": {"name": p.dataset_name, "class_names": CLASS_NAMES, "training_path": p.training_path,
                          "validation_split": 0.15, "quantization_split": 0.3},
              "preprocessing": _preprocessing("nearest"),
              "data_augmentation": {k: dict(v) for k, v in ST_AUGMENTATION.items()},
              "training": training,
              "quantization": _ptq(),
              **_tail(p)}
    if mode == "chain_tqe":  # ST's chain_tqe file has no model_path key
        if not p.model_path:
            del config["general"]["model_path"]
    else:
        config.update(_tools_and_board())
        config["mlflow"], config["hydra"] = config.pop("mlflow"), config.pop("hydra")
    return config


def st_chain_tqe(p: ExamplePaths) -> dict:
    return _train_quantize(p, "chain_tqe", frozen_layers="(0:-7, -5)", epochs=120, pretrained_weights="imagenet")


def st_chain_tqeb(p: ExamplePaths) -> dict:
    return _train_quantize(p, "chain_tqeb", frozen_layers="None", epochs=1, pretrained_weights="None")


ST_EXAMPLES = {"quantization": st_quantization, "evaluation": st_evaluation, "prediction": st_prediction,
               "benchmarking": st_benchmarking, "chain_eqeb": st_chain_eqeb, "chain_eqe": st_chain_eqe,
               "chain_qb": st_chain_qb, "chain_tqe": st_chain_tqe, "chain_tqeb": st_chain_tqeb}
"""operation_mode → the example config of ST's ``<mode>_config.yaml``."""

SECTION_ORDER = ("general", "operation_mode", "dataset", "preprocessing", "data_augmentation", "training",
                 "quantization", "prediction", "tools", "benchmarking", "mlflow", "hydra")


class _Dumper(yaml.SafeDumper):
    """Block style, except lists (``class_names: [a, b]``) as ST writes them."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def write_yaml(config: dict, path: Path) -> Path:
    """The config as YAML, sections in ST's order (values as ST writes them: ``1/127.5``, ``True``)."""
    ordered = {k: config[k] for k in SECTION_ORDER if k in config}
    ordered.update({k: v for k, v in config.items() if k not in ordered})
    path.write_text(yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, default_flow_style=False))
    return path


# -- the stmclf model file ----------------------------------------------------------------------

def fit_config(dataset: Path, run_dir: Path, mlflow_uri: Path, epochs: int = 2) -> dict:
    """A tiny training run (MobileNet V2 0.35 at 32x32, with dropout so fine-tuning may set it)."""
    return {"general": {"project_name": "st_examples", "global_seed": 7},
            "operation_mode": "training",
            "dataset": {"name": "digits", "training_path": str(dataset / "train"), "validation_split": 0.2,
                        "seed": 3, "num_workers": 0},
            "preprocessing": _preprocessing("bilinear"),
            "training": {"model": {"name": "mobilenet", "version": "v2", "alpha": 0.35,
                                   "input_shape": f"({IMAGE_SIZE}, {IMAGE_SIZE}, 3)"},
                         "dropout": 0.2, "batch_size": 16, "epochs": epochs,
                         "optimizer": {"Adam": {"learning_rate": 0.005}}},
            "mlflow": {"uri": str(mlflow_uri)},
            "hydra": {"run": {"dir": str(run_dir)}},
            "trainer": {"enable_model_summary": False}}
