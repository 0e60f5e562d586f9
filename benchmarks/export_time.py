"""Export wall time per stage: float ONNX, QDQ int8 ONNX, float and int8 TFLite, evaluations.

    .venv/bin/python benchmarks/export_time.py [--images 300] [--alpha 0.35] [--size 128]

Workload (issue #6): MobileNetV2-0.35 at 128×128, 5 classes, exported by `stmclf.export.export_run`
(the code behind `stmclf export --int8`) from a stmclf model file, calibrated on a PNG class
folder and evaluated on its validation split (every artifact). The model's weights are random:
export time does not depend on them. Goal: ≤ 45 s in total on 2 cores. The table prints each
stage and its share of the total; "raw" is a bare `torch.onnx.export` of the same model in the
same process, for scale.
"""
from __future__ import annotations

import argparse
import logging
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    logging.getLogger("stmclf").setLevel(logging.WARNING)
    from stmclf.export.export import export_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_folder(tmp / "data", args.images, args.size)
        spec = {"name": "mobilenet", "version": "v2", "alpha": args.alpha, "input_shape": [args.size, args.size, 3]}
        module = ClassifierModule(spec, list(CLASSES), [args.size, args.size, 3], (1 / 127.5, -1.0), "Adam")
        model_file = tmp / "best_model.pt"
        atomic_torch_save({"format": "stmclf-model/1", "hyper_parameters": dict(module.hparams),
                           "state_dict": module.state_dict()}, model_file)
        config = tmp / "export.yaml"
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


if __name__ == "__main__":
    main()
