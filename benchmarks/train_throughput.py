"""Training throughput: `stmclf fit` against a raw PyTorch train step on in-memory tensors.

    .venv/bin/python benchmarks/train_throughput.py [--images 1920] [--epochs 3]

Workload (issue #2): MobileNetV2-0.35 at 128×128, batch 64, from a PNG class folder
(Fashion-MNIST 28×28 PNGs when Debian's dataset-fashion-mnist is installed, else synthetic
128×128 PNGs). `stmclf fit` is measured in-process through its real pipeline (loader workers,
on-device rescaling, channels_last, the training step, callbacks) from the second epoch on,
training batches only (validation excluded). The raw step is the same model, optimizer and
loss on uint8 tensors already in memory. The ratio is fit / raw.
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
from lightning.pytorch.callbacks import Callback
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stmclf.config import load_config  # noqa: E402
from stmclf.models import build_model  # noqa: E402
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


def fit_throughput(train_dir: str, run_root: Path, epochs: int, batch: int, precision: str | None) -> float:
    run_root.mkdir(parents=True, exist_ok=True)
    config = run_root / "bench.yaml"
    config.write_text(f"""
general: {{project_name: bench}}
operation_mode: training
dataset: {{training_path: {train_dir}, validation_split: 0.05}}
preprocessing:
  rescaling: {{scale: 1/127.5, offset: -1}}
  resizing: {{aspect_ratio: fit, interpolation: bilinear}}
  color_mode: rgb
training:
  model:
    name: mobilenet
    version: v2
    alpha: 0.35
    input_shape: (128, 128, 3)
  batch_size: {batch}
  epochs: {epochs}
  optimizer: {{Adam: {{learning_rate: 0.001}}}}
mlflow: {{uri: {run_root / 'mlruns'}}}
hydra: {{run: {{dir: {run_root / 'run'}}}}}
trainer: {{enable_progress_bar: false, enable_model_summary: false}}
""")
    argv = ["--config", str(config)] + (["--trainer.precision", precision] if precision else [])
    timer = TrainBatchTimer()
    train(load_config(argv), callbacks=[timer])
    return timer.images / timer.seconds


def raw_throughput(batch: int, steps: int, precision: str | None, classes: int = 10) -> float:
    model = build_model({"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (128, 128, 3)},
                        num_classes=classes, dropout=None).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    images = torch.randint(0, 256, (batch, 3, 128, 128), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch,))
    model.train()

    def step() -> None:
        x = images.float().mul_(1 / 127.5).sub_(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1920, help="training images (per epoch)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", nargs="*", default=["32"], help="e.g. 32 bf16-mixed")
    args = parser.parse_args()
    logging.getLogger("stmclf").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source, train_dir = make_dataset(Path(tmp), args.images)
        for precision in args.precision:
            p = None if precision == "32" else precision
            fit = fit_throughput(train_dir, Path(tmp) / f"fit_{precision}", args.epochs, args.batch, p)
            raw = raw_throughput(args.batch, steps=20, precision=p)
            rows.append((precision, fit, raw))
    print(f"\nMobileNetV2-0.35 @128×128, batch {args.batch}, {source}, torch threads {torch.get_num_threads()}")
    print("| precision | stmclf fit img/s | raw train step img/s | fit / raw |")
    print("|---|---|---|---|")
    for precision, fit, raw in rows:
        print(f"| {precision} | {fit:,.0f} | {raw:,.0f} | {fit / raw:.2f} |")


if __name__ == "__main__":
    main()
