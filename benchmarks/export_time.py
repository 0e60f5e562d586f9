"""Export wall time per stage: float ONNX, QDQ int8 ONNX, float and int8 TFLite, evaluations.

    .venv/bin/python benchmarks/export_time.py [--images 300] [--alpha 0.35] [--size 128] [--tflm-images 64]

Workload (issue #6): MobileNetV2-0.35 at 128×128, 5 classes, exported by `stmclf.export.export_run`
(the code behind `stmclf export --int8`) from a stmclf model file, calibrated on a PNG class
folder and evaluated on its validation split (every artifact). The model's weights are random
(export time does not depend on them), its BatchNorm statistics measured on random images (a
realistic activation range). Goal: ≤ 45 s in total on 2 cores. The table prints each
stage and its share of the total; "raw" is a bare `torch.onnx.export` of the same model in the
same process, for scale. The TensorFlow Lite Micro check of the int8 TFLite (``tflm_check``,
``quantization.tflm_check_images`` images; goal ≤ 10 % of the export without it) gets its own line:
its seconds, the ratio, and what it measured. The load average is printed: other processes on
the machine slow every stage.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stmclf.config import load_config  # noqa: E402
from stmclf.training.checkpoint_io import atomic_torch_save  # noqa: E402
from stmclf.training.module import ClassifierModule  # noqa: E402

CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


def make_folder(root: Path, images: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (1, 1, 3))
        for i in range(images // len(CLASSES)):
            noise = rng.integers(-60, 60, (size + 32, size + 32, 3))
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def calibrate_batchnorm(module, size: int) -> None:
    """BatchNorm statistics of random images: with its initial statistics (mean 0, variance 1) a
    random MobileNetV2's activations shrink to ~1e-8 by the last layer, an int8 model of it has a
    softmax input scale TensorFlow Lite Micro refuses (it aborts), and no trained model looks like
    that. The weights stay random."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (32, 3, size, size), dtype=np.uint8))
    module.train()
    with torch.no_grad():
        for batch in images.split(16):
            module(module.preprocess(batch))
    module.eval()


def main() -> None:
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tflm-images", type=int, default=None,
                        help="quantization.tflm_check_images (default: stmclf's default)")
    args = parser.parse_args()
    logging.getLogger("stmclf").setLevel(logging.WARNING)
    from stmclf.export.export import export_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_folder(tmp / "data", args.images, args.size)
        spec = {"name": "mobilenet", "version": "v2", "alpha": args.alpha, "input_shape": [args.size, args.size, 3]}
        torch.manual_seed(0)
        module = ClassifierModule(spec, list(CLASSES), [args.size, args.size, 3], (1 / 127.5, -1.0), "Adam")
        calibrate_batchnorm(module, args.size)
        model_file = tmp / "best_model.pt"
        atomic_torch_save({"format": "stmclf-model/1", "hyper_parameters": dict(module.hparams),
                           "state_dict": module.state_dict()}, model_file)
        config = tmp / "export.yaml"
        tflm_key = f"  tflm_check_images: {args.tflm_images}" if args.tflm_images is not None else ""
        config.write_text(f"""
general: {{project_name: export_bench}}
operation_mode: quantization
dataset: {{training_path: {data}, validation_split: 0.2}}
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
{tflm_key}
mlflow: {{uri: {tmp / 'mlruns'}}}
hydra: {{run: {{dir: {tmp / 'run'}}}}}
""")
        cfg = load_config(["--config", str(config)])
        start = time.perf_counter()
        raw = tmp / "raw.onnx"
        torch.onnx.export(module.model.eval(), torch.zeros(1, 3, args.size, args.size), raw, dynamo=False,
                          opset_version=17)
        raw_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = export_run(cfg, model_file, tmp / "run", formats=("onnx", "tflite"), int8=True)
        wall = time.perf_counter() - start
    total = result.timings.get("total", wall)
    print(f"\nMobileNetV2-{args.alpha}@{args.size}, 5 classes, {args.images} PNG images "
          f"(calibration: training split, evaluation: validation split), torch threads {torch.get_num_threads()}")
    print("| stage | seconds | share |")
    print("|---|---|---|")
    for stage, seconds in result.timings.items():
        if stage != "total":
            print(f"| {stage} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    print(f"| **total (goal ≤ 45 s)** | **{total:.2f}** | |")
    print(f"| raw torch.onnx.export, for scale | {raw_seconds:.2f} | |")
    tflm = result.timings.get("tflm_check")
    if tflm is not None:
        print(f"\nTFLM check: {tflm:.2f} s = {100 * tflm / (total - tflm):.1f} % of the export without it "
              f"(goal ≤ 10 %); {result.checks.get('tflm_message', '')}")
    print(f"load average (1, 5, 15 min) {os.getloadavg()} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
