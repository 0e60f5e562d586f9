"""Training throughput: `stmclf fit` against a raw PyTorch train step on in-memory tensors.

    .venv/bin/python benchmarks/train_throughput.py [--images 1920] [--epochs 3]
        [--models mobilenetv2 resnet8] [--precision 32 bf16-mixed] [--augment off seed] [--rounds 3]

Workloads: MobileNetV2-0.35 at 128×128 and ResNet-8 at 32×32, batch 64, from a PNG class
folder (Fashion-MNIST 28×28 PNGs when Debian's dataset-fashion-mnist is installed, else
synthetic PNGs), with and without the seed's augmentation block (contrast 0.4, brightness
0.2, horizontal flip, translation 0.1, rotation 0.05, zoom 0.1), fp32 and bf16-mixed.
`stmclf fit` is measured in-process through its real pipeline (loader workers, image cache,
on-device rescaling and augmentation, channels_last, the training step, callbacks) from the
second epoch on, training batches only (validation excluded). The raw step is the same model,
optimizer and loss on uint8 tensors already in memory, without augmentation. The "TF step"
column is the reference's tf_keras ``fit`` step on the same model and batch, measured in the same
run in its own process (``benchmarks/reference_train.py``; off with ``--no-tf``); the quoted
column is ST's whole service as measured on this machine kind (shared/spec/performance_targets.md).
On a machine whose speed drifts (a shared VM), ``--rounds N`` measures everything N times, the TF
step and ours alternated in each round, and adds the median and range of the ratios taken within
each round.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from child_json import run_child_json  # noqa: E402
from stmclf.config import load_config  # noqa: E402
from stmclf.models import build_model  # noqa: E402
from stmclf.training.allocator import keep_freed_memory  # noqa: E402
from stmclf.training.fit import train  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")


class TrainBatchTimer(Callback):
    """Wall time of the training batches of every epoch after the first (no validation)."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0
        self._count = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._count = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count += int(batch[1].shape[0])
        if trainer.current_epoch >= 1 and batch_idx == trainer.num_training_batches - 1:
            self.seconds += time.perf_counter() - self._start
            self.images += self._count


def make_dataset(root: Path, images: int) -> str:
    if FMNIST.is_dir():
        from stmclf.data.fetch import fetch_dataset

        per_split = images
        fetch_dataset("fashion-mnist", root / "fmnist", max_per_split=per_split)
        return f"fashion-mnist PNG 28×28 ({per_split} train images)", str(root / "fmnist" / "train")
    rng = np.random.default_rng(0)
    for c in range(5):
        folder = root / "synthetic" / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images // 5):
            Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return f"synthetic PNG 128×128 ({images} images)", str(root / "synthetic")


MODELS = {
    "mobilenetv2": ("MobileNetV2-0.35 @128", "name: mobilenet\n    version: v2\n    alpha: 0.35",
                    {"name": "mobilenet", "version": "v2", "alpha": 0.35}, 128),
    "resnet8": ("ResNet-8 @32", "name: resnet\n    version: v1\n    depth: 8",
                {"name": "resnet", "version": "v1", "depth": 8}, 32),
}
REFERENCE = {("mobilenetv2", "seed"): 299, ("mobilenetv2", "off"): 438, ("resnet8", "off"): 2296}
SEED_AUGMENTATION = """data_augmentation:
  random_contrast: {factor: 0.4}
  random_brightness: {factor: 0.2}
  random_flip: {mode: horizontal}
  random_translation: {width_factor: 0.1, height_factor: 0.1}
  random_rotation: {factor: 0.05}
  random_zoom: {width_factor: 0.1, height_factor: 0.1}
"""


def bench_config_text(*, dataset: dict, model: str, size: int, batch: int, epochs: int, run_root: Path,
                      lr: float = 0.001, general: Optional[dict] = None, trainer: Optional[dict] = None,
                      augment: bool = False) -> str:
    """The training config the speed scripts run (benchmarks and gpu_check)."""
    trainer = {"enable_progress_bar": False, "enable_model_summary": False, **(trainer or {})}
    return f"""
general: {json.dumps(general or {"project_name": "bench"})}
operation_mode: training
dataset: {json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataset.items()})}
preprocessing:
  rescaling: {{scale: 1/127.5, offset: -1}}
  resizing: {{aspect_ratio: fit, interpolation: bilinear}}
  color_mode: rgb
training:
  model:
    {MODELS[model][1]}
    input_shape: ({size}, {size}, 3)
  batch_size: {batch}
  epochs: {epochs}
  optimizer: {{Adam: {{learning_rate: {lr}}}}}
mlflow: {{uri: {run_root / 'mlruns'}}}
hydra: {{run: {{dir: {run_root / 'run'}}}}}
trainer: {json.dumps(trainer)}
""" + (SEED_AUGMENTATION if augment else "")


def fit_throughput(train_dir: str, run_root: Path, epochs: int, batch: int, precision: str,
                   model: str = "mobilenetv2", augment: bool = False) -> float:
    run_root.mkdir(parents=True, exist_ok=True)
    config = run_root / "bench.yaml"
    config.write_text(bench_config_text(dataset={"training_path": train_dir, "validation_split": 0.05}, model=model,
                                        size=MODELS[model][3], batch=batch, epochs=epochs, run_root=run_root,
                                        augment=augment))
    argv = ["--config", str(config), "--trainer.precision", precision]
    timer = TrainBatchTimer()
    train(load_config(argv), callbacks=[timer])
    return timer.images / timer.seconds


def raw_step(batch: int, precision: str, classes: int = 10, model_name: str = "mobilenetv2"):
    """(model, uint8 images, step): one train step of the model (channels_last, fused Adam, the
    images rescaled on the fly, ``torch.autocast`` for ``bf16-mixed``) on a fixed random batch,
    with the allocator setting ``stmclf fit`` applies (``keep_freed_memory``: without it the step
    re-faults ~3,500 pages per ResNet-8 step and runs 15-30 % slower; before, the raw step had it
    only when a fit had run first in the same process)."""
    keep_freed_memory()
    _, _, spec, size = MODELS[model_name]
    model = build_model({**spec, "input_shape": (size, size, 3)},
                        num_classes=classes, dropout=None).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, fused=True)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,))
    model.train()

    def step() -> None:
        x = images.float().mul_(1 / 127.5).sub_(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, images, step


def raw_throughput(batch: int, steps: int, precision: str, classes: int = 10,
                   model_name: str = "mobilenetv2") -> float:
    _, _, step = raw_step(batch, precision, classes, model_name)
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def tf_step_throughput(model_name: str, batch: int, steps: int) -> Optional[float]:
    """The reference's tf_keras training step (benchmarks/reference_train.py), in its own process."""
    try:
        return run_child_json("reference_train.py", model_name, "--batch", str(batch), "--steps", str(steps),
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))["img_per_s"]
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return None


def main() -> None:
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1920, help="training images (per epoch)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", nargs="*", default=["mobilenetv2"], choices=list(MODELS))
    parser.add_argument("--precision", nargs="*", default=["32"], help="e.g. 32 bf16-mixed")
    parser.add_argument("--augment", nargs="*", default=["off"], choices=["off", "seed"])
    parser.add_argument("--no-tf", action="store_true", help="skip the reference's tf_keras step")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure everything this many times, alternating the TF step and ours in each round")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps of the raw and TF steps (default 20 for MobileNetV2, 60 / 40 for ResNet-8)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    logging.getLogger("stmclf").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source, train_dir = make_dataset(Path(tmp), args.images)
        for round_ in range(1, args.rounds + 1):
            for model in args.models:
                small = model != "mobilenetv2"
                tf = None if args.no_tf else tf_step_throughput(model, args.batch, args.steps or (40 if small else 20))
                for augment in args.augment:
                    for precision in args.precision:
                        run = Path(tmp) / f"fit_{model}_{augment}_{precision}_{round_}"
                        fit = fit_throughput(train_dir, run, args.epochs, args.batch, precision, model,
                                             augment == "seed")
                        raw = raw_throughput(args.batch, steps=args.steps or (60 if small else 20),
                                             precision=precision, model_name=model)
                        rows.append((round_, model, augment, precision, fit, raw, tf))
    print(f"\nbatch {args.batch}, {source}, torch threads {torch.get_num_threads()}")
    print(throughput_table(rows))
    if args.rounds > 1:
        print(f"\n{args.rounds} rounds, each measuring the TF step, then stmclf fit and the raw step:")
        print(ratio_summary(rows))


def throughput_table(rows: list) -> str:
    """One markdown row per (round, model, augmentation, precision)."""
    lines = ["| round | model | augmentation | precision | stmclf fit img/s | raw step img/s | fit / raw "
             "| TF step img/s | fit / TF step | quoted reference img/s | fit / quoted |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for round_, model, augment, precision, fit, raw, tf in rows:
        reference = REFERENCE.get((model, augment))
        tf_text = f"{tf:,.0f} | {fit / tf:.2f}" if tf else "— | —"
        ref_text = f"{reference:,} | {fit / reference:.2f}" if reference else "— | —"
        lines.append(f"| {round_} | {MODELS[model][0]} | {augment} | {precision} | {fit:,.0f} | {raw:,.0f} | "
                     f"{fit / raw:.2f} | {tf_text} | {ref_text} |")
    return "\n".join(lines)


def ratio_summary(rows: list) -> str:
    """Per (model, augmentation, precision): the median and range over the rounds of fit / TF step
    and fit / raw, each ratio taken within its round (this VM's speed drifts between rounds)."""
    groups: dict = {}
    for _, model, augment, precision, fit, raw, tf in rows:
        groups.setdefault((model, augment, precision), []).append((fit / tf if tf else None, fit / raw))
    lines = ["| model | augmentation | precision | fit / TF step: median (min–max) | fit / raw: median (min–max) |",
             "|---|---|---|---|---|"]
    for (model, augment, precision), ratios in groups.items():
        cells = []
        for values in ([r[0] for r in ratios if r[0] is not None], [r[1] for r in ratios]):
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})" if values else "—")
        lines.append(f"| {MODELS[model][0]} | {augment} | {precision} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
