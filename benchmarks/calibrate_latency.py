"""Fit the offline latency model of ``stmclf benchmark`` on ST's published inference times.

    .venv/bin/python benchmarks/calibrate_latency.py [--cache /tmp/stmclf_calib] [--build-only]

Every MCU inference time the model-zoo READMEs publish (reference inventory §9: STM32H747I-DISCO
@ 400 MHz and STM32F769I-DISCO @ 216 MHz, STM32Cube.AI 10, int8 per-channel TFLite, uint8 input,
float output) is paired with the same architecture built here: stmclf's Keras-parity zoo model
with random weights (latency does not depend on weight values) → float ONNX → onnx2tf →
TensorFlow's int8 per-channel converter (stmclf's own export functions). Each ``.tflite`` is built
once and cached in ``--cache``. The script then

1. reads each file with the offline estimator (``stmclf.benchmark.estimate``) and sums its MACC
   per layer type (:func:`stmclf.benchmark.latency.features`);
2. checks the weights against the published "Weights Flash" (the same architecture, class count
   and int8 layout as ST's model, to 1 %);
3. fits the cycle model of :mod:`stmclf.benchmark.latency` by least squares on the relative error
   (non-negative coefficients), and its leave-one-model-out error;
4. prints the table model, board, ST ms, ours, error % and the Python text of
   ``CALIBRATION`` and ``COEFFICIENTS`` to paste into ``stmclf/benchmark/latency.py``.

Building the 23 models takes ~15 minutes on 2 cores (onnx2tf); the fit takes a second.
"""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  (torch before TensorFlow: see docs/architecture.md, Invariants)

# key → (stmclf training.model spec, number of classes); the keys are latency.CALIBRATION's.
V1 = {"name": "mobilenet", "version": "v1"}
V2 = {"name": "mobilenet", "version": "v2"}
MODELS = {
    "mobilenet_v1_0.25_224_5": ({**V1, "alpha": 0.25, "input_shape": (224, 224, 3)}, 5),
    "mobilenet_v1_0.5_224_5": ({**V1, "alpha": 0.5, "input_shape": (224, 224, 3)}, 5),
    "mobilenet_v1_0.25_96_5": ({**V1, "alpha": 0.25, "input_shape": (96, 96, 3)}, 5),
    "mobilenet_v1_0.25_96x1_5": ({**V1, "alpha": 0.25, "input_shape": (96, 96, 1)}, 5),
    "mobilenet_v1_0.25_224_1000": ({**V1, "alpha": 0.25, "input_shape": (224, 224, 3)}, 1000),
    "mobilenet_v1_0.5_224_1000": ({**V1, "alpha": 0.5, "input_shape": (224, 224, 3)}, 1000),
    "mobilenet_v1_1.0_224_1000": ({**V1, "alpha": 1.0, "input_shape": (224, 224, 3)}, 1000),
    "mobilenet_v2_0.35_128_5": ({**V2, "alpha": 0.35, "input_shape": (128, 128, 3)}, 5),
    "mobilenet_v2_0.35_224_5": ({**V2, "alpha": 0.35, "input_shape": (224, 224, 3)}, 5),
    "mobilenet_v2_0.35_128_1000": ({**V2, "alpha": 0.35, "input_shape": (128, 128, 3)}, 1000),
    "mobilenet_v2_0.35_224_1000": ({**V2, "alpha": 0.35, "input_shape": (224, 224, 3)}, 1000),
    "mobilenet_v2_1.0_224_1000": ({**V2, "alpha": 1.0, "input_shape": (224, 224, 3)}, 1000),
    "mobilenet_v2_1.4_224_1000": ({**V2, "alpha": 1.4, "input_shape": (224, 224, 3)}, 1000),
    "fdmobilenet_0.25_224_5": ({"name": "fdmobilenet", "alpha": 0.25, "input_shape": (224, 224, 3)}, 5),
    "fdmobilenet_0.25_128_5": ({"name": "fdmobilenet", "alpha": 0.25, "input_shape": (128, 128, 3)}, 5),
    "st_fdmobilenet_v1_224_5": ({"name": "st_fdmobilenet", "version": "v1", "input_shape": (224, 224, 3)}, 5),
    "st_fdmobilenet_v1_128_5": ({"name": "st_fdmobilenet", "version": "v1", "input_shape": (128, 128, 3)}, 5),
    "resnet_v1_8_32_10": ({"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}, 10),
    "resnet_v1_32_32_100": ({"name": "resnet", "version": "v1", "depth": 32, "input_shape": (32, 32, 3)}, 100),
    "st_efficientnet_lc_v1_224_5": ({"name": "st_efficientnet_lc", "version": "v1", "input_shape": (224, 224, 3)},
                                    5),
    "st_efficientnet_lc_v1_128_5": ({"name": "st_efficientnet_lc", "version": "v1", "input_shape": (128, 128, 3)},
                                    5),
    "squeezenet_v11_224_5": ({"name": "squeezenet", "version": "v11", "input_shape": (224, 224, 3)}, 5),
    "squeezenet_v11_128_5": ({"name": "squeezenet", "version": "v11", "input_shape": (128, 128, 3)}, 5),
}
RESCALING = (1 / 127.5, -1.0)
H747, F769 = "STM32H747I-DISCO", "STM32F769I-DISCO"
# Every MCU inference time of reference inventory §9 (model-zoo READMEs): model, board, ms, and the
# published weights flash (KiB) that checks our model is the same network. Not used: ST ResNet 8
# Hybrid v1/v2 (28.93 / 25.2 ms), hybrid float/int8 Keras models without an int8 TFLite.
PUBLISHED = (
    ("mobilenet_v1_0.25_224_5", H747, 163.78, 214.69), ("mobilenet_v1_0.5_224_5", H747, 485.79, 812.61),
    ("mobilenet_v1_0.25_96_5", H747, 29.94, 214.69), ("mobilenet_v1_0.25_96x1_5", H747, 28.34, 214.55),
    ("mobilenet_v1_0.25_224_1000", H747, 166.75, 467.33), ("mobilenet_v1_0.5_224_1000", H747, 504.37, 1314),
    ("mobilenet_v1_1.0_224_1000", H747, 1641.84, 4157.09),
    ("mobilenet_v2_0.35_128_5", H747, 94.34, 406.86), ("mobilenet_v2_0.35_224_5", H747, 290.75, 406.86),
    ("mobilenet_v2_0.35_128_1000", H747, 116.13, 1654.5), ("mobilenet_v2_0.35_224_1000", H747, 313.92, 1654.5),
    ("mobilenet_v2_1.0_224_1000", H747, 1106.64, 3458.97), ("mobilenet_v2_1.4_224_1000", H747, 2010.66, 6015.34),
    ("fdmobilenet_0.25_224_5", H747, 53.52, 128.32), ("fdmobilenet_0.25_128_5", H747, 17.73, 128.32),
    ("st_fdmobilenet_v1_224_5", H747, 102.0, 144.93), ("st_fdmobilenet_v1_224_5", F769, 176.5, 144.93),
    ("st_fdmobilenet_v1_128_5", H747, 32.14, 144.93), ("st_fdmobilenet_v1_128_5", F769, 59.29, 144.93),
    ("resnet_v1_8_32_10", H747, 28.67, 76.9), ("resnet_v1_32_32_100", H747, 177.7, 464.38),
    ("st_efficientnet_lc_v1_224_5", H747, 438.33, 505.41), ("st_efficientnet_lc_v1_128_5", H747, 144.96, 505.41),
    ("squeezenet_v11_224_5", H747, 693.3, 716.71), ("squeezenet_v11_128_5", H747, 216.67, 716.71),
)


def build(key: str, cache: Path) -> Path:
    """``cache/<key>.tflite``: the zoo model with random weights as ST ships it (int8 per-channel,
    uint8 input, float output), built with stmclf's export functions unless already there."""
    out = cache / f"{key}.tflite"
    if out.is_file():
        return out
    from stmclf.export.onnx_export import ExportedClassifier
    from stmclf.export.tflite import onnx_to_saved_model, saved_model_to_int8_tflite
    from stmclf.models import build_model

    spec, classes = MODELS[key]
    torch.manual_seed(0)
    # these builders want their Dropout layers (identities in the exported model)
    dropout = 0.2 if spec["name"] in ("st_fdmobilenet", "st_efficientnet_lc") else None
    model = build_model(spec, classes, dropout).eval()
    with torch.no_grad():  # non-zero biases and BN statistics, as a trained model has
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(getattr(module, "bias", None), torch.nn.Parameter):
                module.bias.uniform_(-0.05, 0.05)
    h, w, c = spec["input_shape"]
    work = cache / f"{key}_work"
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / f"{key}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ExportedClassifier(model, softmax=True).eval(), (torch.zeros(1, c, h, w),), str(onnx_path),
                          input_names=["input"], output_names=["probabilities"], opset_version=17, dynamo=False)
    pixels = np.random.default_rng(0).integers(0, 256, (4, h, w, c)).astype(np.float32)
    pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255  # the whole pixel range: uint8 input = raw pixels
    x = pixels * np.float32(RESCALING[0]) + np.float32(RESCALING[1])
    log_file = work / "onnx2tf.log"
    saved = onnx_to_saved_model(onnx_path, work, log_file)
    partial = saved_model_to_int8_tflite(saved, work / out.name, x, log_file, onnx_path, per_channel=True,
                                         input_type="uint8", output_type="float")
    partial.replace(out)
    return out


def main() -> None:
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/stmclf_calib"))
    parser.add_argument("--build-only", action="store_true", help="build the missing .tflite files, then stop")
    parser.add_argument("--only", nargs="*", default=None, help="model keys to build (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.cache.mkdir(parents=True, exist_ok=True)
    for key in args.only or MODELS:
        print(f"building {key} ...", flush=True)
        build(key, args.cache)
    if args.build_only:
        return
    from stmclf.benchmark import latency as L
    from stmclf.benchmark.estimate import estimate_footprint

    rows, values = [], {}
    for key, board, ms, weights_kib in PUBLISHED:
        if key not in values:
            est = estimate_footprint(args.cache / f"{key}.tflite")
            ours = est.weights_bytes / 1024
            if abs(ours / weights_kib - 1) > 0.01:
                print(f"WARNING {key}: weights {ours:.2f} KiB, ST publishes {weights_kib} KiB: not the same network")
            values[key] = L.features(est)
        rows.append((key, board, ms, values[key]))
    coefficients = L.fit(rows)
    loo = L.leave_one_out(rows)
    L.COEFFICIENTS["Cortex-M7"] = coefficients
    errors = L.calibration_errors("Cortex-M7", rows)
    print(L.format_table(errors, "Fit on every published time (Cortex-M7)"))
    print(L.format_table(loo, "Leave one model out (its times predicted by a fit without it)"))
    worst, worst_loo = (max(abs(e[-1]) for e in table) for table in (errors, loo))
    print(f"largest |error|: fit {worst:.1f} %, leave-one-out {worst_loo:.1f} %")
    print("\n# --- paste into stmclf/benchmark/latency.py ---")
    print("CALIBRATION = (  # model, board, ST ms, (" + ", ".join(L.FEATURES) + ")")
    for key, board, ms, feats in rows:
        board = {H747: "H747", F769: "F769"}[board]
        print(f"    ({key!r}, {board}, {ms}, {tuple(feats[name] for name in L.FEATURES)}),".replace("'", '"'))
    print(")")
    print("COEFFICIENTS: dict[str, dict[str, float]] = {\"Cortex-M7\": {\n    "
          + ", ".join(f"{k!r}: {v:.6g}" for k, v in coefficients.items()).replace("'", '"') + "}}")
    print(f"LOO_ERROR_PCT: dict[str, float] = {{\"Cortex-M7\": {worst_loo:.1f}}}")


if __name__ == "__main__":
    main()
