"""GPU readiness check: MobileNetV2-0.35 @224 training speed, loader speed, GPU use and accuracy.

    bash benchmarks/gpu_check.sh [--epochs 5] [--batch-size 256] [--img-size 224] [--out gpu_check.json]
    bash benchmarks/gpu_check.sh --smoke          # CPU, 32×32, 320 images, 2 epochs (the test's run)

One run of ``stmclf fit``'s real path (``stmclf.training.fit.train`` in-process, as
``benchmarks/train_throughput.py`` calls it) on scikit-learn's handwritten digits (offline:
``stmclf data fetch digits``), decoded as RGB and resized by the loader to the model's input size:

- data: the 1,797 digits split once (seed 0) into 80 % training / 20 % validation; the training
  images are hard-linked ``--train-images / 1,437`` times into one class folder tree, so an epoch
  is long enough for a steady img/s, while the validation images stay held out (never copied);
- model and recipe: MobileNetV2-0.35, Adam, batch ``--batch-size`` (256), the seed augmentation
  block of ``train_throughput.SEED_AUGMENTATION`` run on the training device, channels_last (the
  module's default), ``bf16-mixed`` on GPUs that support bfloat16 else ``16-mixed`` (on CPU,
  stmclf's default), cuDNN autotuning on, ``dataset.num_workers`` = cores − 2 (fewer if /dev/shm
  is too small for the loader's prefetched batches);
- measured: training img/s over the training batches of every epoch after the first (the device
  synchronised at each epoch's start and end; validation excluded), the train DataLoader of
  stmclf's ``ImageDataModule`` alone (batches moved to the device, no model; epoch 1 decodes and
  fills the image cache, later epochs read the cache, as training does), GPU utilisation and
  memory sampled every 0.5 s by ``nvidia-smi`` (else pynvml) during the measured epochs, and the
  held-out validation accuracy of the same run, with a sanity threshold: the best epoch's accuracy
  must exceed 50 % (chance is 10 %; the same recipe at 32×32 on CPU reached 69 % after one epoch
  and 83 % after two). ``--smoke`` is too short to learn: its threshold is 0, it checks the path and the report.

Prints a table, writes the figures as JSON to ``--out`` (default ``gpu_check.json``, or
``$OUT/gpu_check.json`` when ``$OUT`` is set; with both, the JSON goes to both). Exit status: 0,
or 3 when the accuracy sanity check fails. The img/s goal (``--goal``, 5,000 on one H100/H200) is
reported, not enforced. The whole GPU run takes a few minutes; ``trainer.max_time`` stops the fit
after ``--max-fit-minutes`` (6) whatever happens.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from data_throughput import _epochs as loader_epoch_rates  # noqa: E402
from train_throughput import TrainBatchTimer, bench_config_text  # noqa: E402

from stmclf.config import load_config  # noqa: E402
from stmclf.data.datamodule import ImageDataModule, ImageFormat  # noqa: E402
from stmclf.training.fit import train  # noqa: E402

MODEL = "mobilenetv2"  # MobileNetV2-0.35 (train_throughput.MODELS)
SEED = 123
SPLIT_SEED = 0
PREFETCH = 4  # ImageDataModule's prefetch_factor


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def make_digits(root: Path, train_images: int, val_fraction: float = 0.2) -> tuple[Path, Path, int, int, int]:
    """``root/train/<digit>/`` (the training split, replicated by hard links to about
    ``train_images`` files, or a subset when fewer) and ``root/val/<digit>/`` (held out)."""
    from stmclf.data.fetch import fetch_digits

    source = fetch_digits(root / "digits")
    files = sorted(p for p in source.rglob("*.png"))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    n_val = int(round(len(files) * val_fraction))
    val_files = [files[i] for i in order[:n_val]]
    train_files = [files[i] for i in order[n_val:]]
    if train_images < len(train_files):
        train_files = train_files[:train_images]
    copies = max(1, math.ceil(train_images / len(train_files)))
    train_dir, val_dir = root / "train", root / "val"
    for file in val_files:
        _link(file, val_dir / file.parent.name / file.name)
    for k in range(copies):
        for file in train_files:
            _link(file, train_dir / file.parent.name / f"{file.stem}_r{k:03d}{file.suffix}")
    return train_dir, val_dir, copies * len(train_files), len(val_files), copies


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def loader_workers(requested: Optional[int], batch: int, size: int) -> tuple[int, str]:
    """Cores − 2 (the training process and the pin-memory thread keep theirs), fewer when
    /dev/shm cannot hold every worker's prefetched uint8 batches twice over."""
    cores = len(os.sched_getaffinity(0))
    if requested is not None:
        return requested, f"--workers {requested}"
    workers = max(1, cores - 2)
    note = f"{cores} cores − 2"
    try:
        shm_free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return workers, note
    per_worker = 2 * PREFETCH * batch * size * size * 3
    fit = int(shm_free // per_worker)
    if fit < workers:
        workers = fit
        note += f", limited by /dev/shm ({shm_free / 2**30:.1f} GiB free)"
    return workers, note


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GpuCheckTimer(TrainBatchTimer):
    """train_throughput's timer (images and seconds of the training batches of epochs ≥ 2), with
    the device synchronised at the edges of each epoch, per-epoch rates and time windows, what the
    run really used (precision, device, layout, augmentation) and the validation accuracies."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_rates: list[float] = []
        self.windows: list[tuple[float, float]] = []
        self.val_accuracy: list[float] = []
        self.used: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.used = {"precision": str(trainer.precision), "device": str(pl_module.device),
                     "channels_last": pl_module.memory_format == torch.channels_last,
                     "augmentation": pl_module.augment is not None}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "batch_device" not in self.used:  # after on_after_batch_transfer: rescaled and augmented
            images = batch[0]
            self.used.update(batch_device=str(images.device), batch_dtype=str(images.dtype).replace("torch.", ""),
                             batch_channels_last=images.is_contiguous(memory_format=torch.channels_last))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = batch_idx == trainer.num_training_batches - 1
        if last:
            _sync(pl_module.device)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if last:
            end = time.perf_counter()
            self.epoch_rates.append(self._count / (end - self._start))
            self.windows.append((self._start, end))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "val_accuracy" in trainer.callback_metrics:
            self.val_accuracy.append(float(trainer.callback_metrics["val_accuracy"]))
            epoch = len(self.val_accuracy)
            rate = self.epoch_rates[-1] if self.epoch_rates else float("nan")
            print(f"  epoch {epoch}: {rate:,.0f} img/s (training batches), val_accuracy "
                  f"{self.val_accuracy[-1]:.3f}", flush=True)


class UtilSampler(threading.Thread):
    """GPU utilisation (%) and memory used (MiB) every ``interval`` s: ``nvidia-smi``, else pynvml."""

    def __init__(self, index: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.index, self.interval = index, interval
        self.samples: list[tuple[float, float, float]] = []
        self._stop_event = threading.Event()
        self.source = self._pick_source()

    def _pick_source(self) -> Optional[str]:
        if shutil.which("nvidia-smi") and self._smi() is not None:
            return "nvidia-smi"
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return "pynvml"
        except Exception:
            return None

    def _smi(self) -> Optional[tuple[float, float]]:
        try:
            out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            util, mem = out.stdout.strip().splitlines()[0].split(",")
            return float(util), float(mem)
        except Exception:
            return None

    def _read(self) -> Optional[tuple[float, float]]:
        if self.source == "nvidia-smi":
            return self._smi()
        import pynvml

        return (float(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu),
                pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)

    def run(self) -> None:
        while not self._stop_event.is_set():
            reading = self._read()
            if reading is not None:
                self.samples.append((time.perf_counter(), *reading))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def summary(self, windows: list[tuple[float, float]]) -> dict:
        inside = [s for s in self.samples if any(a <= s[0] <= b for a, b in windows)]
        scope = "steady-state epochs"
        if not inside:
            inside, scope = self.samples, "whole fit"
        if not inside:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_mem_max_mib": None, "gpu_util_samples": 0,
                    "gpu_util_scope": None}
        util = [s[1] for s in inside]
        return {"gpu_util_mean": float(np.mean(util)), "gpu_util_max": float(max(util)),
                "gpu_mem_max_mib": float(max(s[2] for s in self.samples)), "gpu_util_samples": len(inside),
                "gpu_util_scope": scope}


def cuda_index() -> int:
    """The physical index of cuda:0, for nvidia-smi (CUDA_VISIBLE_DEVICES may remap it)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def write_config(work: Path, train_dir: Path, val_dir: Path, args, workers: int, on_gpu: bool) -> Path:
    trainer = {"enable_progress_bar": False, "enable_model_summary": False, "devices": 1,
               "accelerator": "gpu" if on_gpu else "cpu", "num_sanity_val_steps": 0}
    if on_gpu:
        trainer["benchmark"] = True  # cuDNN autotuning for the fixed input size
    if args.max_fit_minutes:
        minutes = int(args.max_fit_minutes)
        trainer["max_time"] = f"00:{minutes // 60:02d}:{minutes % 60:02d}:00"
    config = work / "gpu_check.yaml"
    config.write_text(bench_config_text(
        dataset={"name": "digits", "training_path": train_dir, "validation_path": val_dir, "num_workers": workers},
        model=MODEL, size=args.img_size, batch=args.batch_size, epochs=args.epochs, run_root=work, lr=args.lr,
        general={"project_name": "gpu_check", "global_seed": SEED}, trainer=trainer, augment=True))
    return config


def measure_loader(argv: list[str], epochs: int, device: torch.device) -> list[float]:
    """img/s of each epoch of the training run's train DataLoader (same dataset section, format,
    batch and workers, hence the same image cache), batches moved to ``device``, no model."""
    cfg = load_config(argv)
    fmt = ImageFormat.from_config(cfg.preprocessing, cfg.training.model["input_shape"])
    module = ImageDataModule(cfg.dataset, fmt, cfg.training.batch_size, cfg.dataset.num_workers, shuffle_seed=SEED)
    rates = loader_epoch_rates(module.train_dataloader(), epochs, False, device).rates
    return rates


def steady(rates: list[float]) -> Optional[float]:
    """Images/seconds over equal-sized epochs = the harmonic mean of their rates."""
    return len(rates) / sum(1 / r for r in rates) if rates else None


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _fmt(value, spec: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def table(r: dict) -> str:
    rows = [
        ("device", f"{r['device']} ({r['device_name']})"),
        ("model", f"{r['model']} @{r['img_size']}×{r['img_size']}×3, batch {r['batch_size']}"),
        ("precision / layout", f"{r['precision']} / {'channels_last' if r['channels_last'] else 'NCHW'}"),
        ("augmentation", f"{r['augmentation']} on {r['augmentation_device']}"),
        ("data", f"digits (RGB): {r['train_images']:,} training (×{r['train_copies']}), "
                 f"{r['val_images']:,} held-out validation images"),
        ("loader workers", f"{r['num_workers']} ({r['num_workers_note']})"),
        ("training img/s", f"{_fmt(r['train_img_per_s'])}  (epochs 2–{r['epochs_run']}: "
                           + (" / ".join(f"{v:,.0f}" for v in r["train_img_per_s_epochs"][1:]) or "none") + ")"
                           + (f", stopped by --max-fit-minutes after {r['epochs_run']} of {r['epochs']} epochs"
                              if r["epochs_run"] < r["epochs"] else "")),
        ("goal", "n/a" if r["goal_met"] is None else
         f"≥ {r['goal_img_per_s']:,} img/s: {'met' if r['goal_met'] else 'NOT met'}"),
        ("loader img/s", f"{_fmt(r['loader_img_per_s'])}  (cached epochs; epoch 1 decoding: "
                         f"{_fmt(r['loader_first_epoch_img_per_s'])})"),
        ("loader / training", _fmt(r["loader_over_train"], ".1f", "×")),
        ("GPU utilisation", "n/a" if r["gpu_util_mean"] is None else
         f"mean {r['gpu_util_mean']:.0f} %, max {r['gpu_util_max']:.0f} % ({r['gpu_util_source']}, "
         f"{r['gpu_util_samples']} samples, {r['gpu_util_scope']})"),
        ("GPU memory used", _fmt(r["gpu_mem_max_mib"], ",.0f", " MiB (max)")),
        ("val accuracy", f"best {_fmt(r['best_val_accuracy'], '.3f')}, last {_fmt(r['val_accuracy'], '.3f')} "
                         f"(" + " / ".join(f"{v:.3f}" for v in r["val_accuracy_epochs"]) + ")"),
        ("accuracy sanity", f"{'PASS' if r['accuracy_ok'] else 'FAIL'}: best > {r['accuracy_threshold']:.2f} "
                            f"after {r['epochs_run']} epochs (chance 0.10)"),
        ("wall time", f"{r['seconds_total']:.0f} s (data {r['seconds_data']:.0f} s, loader "
                      f"{r['seconds_loader']:.0f} s, fit {r['seconds_fit']:.0f} s)"),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    title = f"gpu_check ({r['mode']}): stmclf fit, MobileNetV2-0.35 + seed augmentation"
    return "\n".join([title, line] + [f"{k:<{width}} | {v}" for k, v in rows] + [line])


# ---------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CPU run (32×32, 320 images, 2 epochs, batch 32): same path, report and "
                             "JSON keys")
    parser.add_argument("--epochs", type=int, help="training epochs, ≥ 2 (default 5; smoke 2)")
    parser.add_argument("--batch-size", type=int, help="default 256 (smoke 32)")
    parser.add_argument("--img-size", type=int, help="square input size (default 224; smoke 32)")
    parser.add_argument("--train-images", type=int, help="training images per epoch (default 24,000; smoke 320)")
    parser.add_argument("--loader-epochs", type=int, default=3, help="loader-only epochs (the first decodes)")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate")
    parser.add_argument("--precision", help="default: bf16-mixed on GPUs with bf16, else 16-mixed; "
                                            "on CPU stmclf's default")
    parser.add_argument("--workers", type=int, help="dataset.num_workers (default cores − 2)")
    parser.add_argument("--accuracy-threshold", type=float, help="best val accuracy must exceed it "
                                                                 "(default 0.5; smoke 0)")
    parser.add_argument("--goal", type=int, default=5000, help="training img/s goal on the GPU (reported)")
    parser.add_argument("--max-fit-minutes", type=int, help="trainer.max_time in minutes (default 6; smoke none)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's; smoke 1: a 2-thread run "
                                                    "on a busy 2-core machine was 30× slower)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--out", help="JSON report path (default gpu_check.json, or $OUT/gpu_check.json)")
    parser.add_argument("--workdir", help="where the dataset, cache and run go (default a temporary folder, "
                                          "removed afterwards)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {"epochs": 2 if smoke else 5, "batch_size": 32 if smoke else 256, "img_size": 32 if smoke else 224,
                "train_images": 320 if smoke else 24000, "accuracy_threshold": 0.0 if smoke else 0.5,
                "max_fit_minutes": None if smoke else 6}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if smoke:
        args.cpu = True
        args.threads = args.threads or 1
        args.loader_epochs = min(args.loader_epochs, 2)
    if args.epochs < 2:
        parser.error("--epochs must be ≥ 2 (the first epoch is not timed)")
    if args.loader_epochs < 2:
        parser.error("--loader-epochs must be ≥ 2 (the first decodes)")
    return args


def output_paths(args) -> list[Path]:
    out_dir = os.environ.get("OUT")
    paths = [Path(args.out)] if args.out else []
    if out_dir:
        paths.append(Path(out_dir) / "gpu_check.json")
    if not paths:
        paths.append(Path("gpu_check.json"))
    unique: list[Path] = []
    for p in paths:
        if p.resolve() not in [u.resolve() for u in unique]:
            unique.append(p)
    return unique


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # the work folder is removed on the way out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.threads:
        torch.set_num_threads(args.threads)
    outputs = output_paths(args)
    logging.getLogger("stmclf").setLevel(logging.WARNING)
    on_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    precision = args.precision
    if precision is None and on_gpu:
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    started = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="stmclf-gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["STMCLF_CACHE"] = str(work / "cache")  # a fresh image cache: the loader's epoch 1 decodes
    device_name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or platform.machine())
    print(f"gpu_check: {'smoke, ' if args.smoke else ''}device {device} ({device_name}), torch {torch.__version__}, "
          f"work folder {work}", flush=True)
    try:
        train_dir, val_dir, n_train, n_val, copies = make_digits(work / "data", args.train_images)
        workers, workers_note = loader_workers(args.workers, args.batch_size, args.img_size)
        config = write_config(work, train_dir, val_dir, args, workers, on_gpu)
        argv_cfg = ["--config", str(config)] + (["--trainer.precision", precision] if precision else [])
        t_data = time.perf_counter()
        print(f"data: {n_train:,} training, {n_val:,} validation images in {t_data - started:.1f} s; "
              f"loader ({workers} workers) ...", flush=True)

        loader_rates = measure_loader(argv_cfg, args.loader_epochs, device)
        t_loader = time.perf_counter()
        print("  loader epochs: " + " / ".join(f"{r:,.0f}" for r in loader_rates) + " img/s", flush=True)

        timer = GpuCheckTimer()
        sampler = UtilSampler(cuda_index()) if on_gpu else None
        if sampler is not None and sampler.source is None:
            sampler = None
        if sampler is not None:
            sampler.start()
        print(f"fit: {args.epochs} epochs ...", flush=True)
        try:
            result = train(load_config(argv_cfg), callbacks=[timer])
        finally:
            if sampler is not None:
                sampler.stop()
        t_fit = time.perf_counter()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    train_rate = timer.images / timer.seconds if timer.seconds else None
    loader_rate = steady(loader_rates[1:])
    accuracies = getattr(result, "accuracies", None) or {}
    best = max(timer.val_accuracy) if timer.val_accuracy else accuracies.get("validation_set")
    used = timer.used
    report = {
        "mode": "smoke" if args.smoke else "full",
        "device": device.type,
        "device_name": device_name,
        "model": "MobileNetV2-0.35",
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "precision": used.get("precision", precision),
        "channels_last": bool(used.get("channels_last")) and bool(used.get("batch_channels_last", True)),
        "augmentation": "seed" if used.get("augmentation") else "off",
        "augmentation_device": used.get("batch_device"),
        "num_workers": workers,
        "num_workers_note": workers_note,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "train_images": n_train,
        "train_copies": copies,
        "val_images": n_val,
        "epochs": args.epochs,
        "epochs_run": len(timer.epoch_rates),  # complete training epochs (max_time may stop the fit)
        "train_img_per_s": train_rate,
        "train_img_per_s_epochs": timer.epoch_rates,
        "goal_img_per_s": args.goal,
        "goal_met": None if device.type != "cuda" or train_rate is None else bool(train_rate >= args.goal),
        "loader_img_per_s": loader_rate,
        "loader_first_epoch_img_per_s": loader_rates[0] if loader_rates else None,
        "loader_img_per_s_epochs": loader_rates,
        "loader_over_train": loader_rate / train_rate if loader_rate and train_rate else None,
        "gpu_util_source": sampler.source if sampler is not None else None,
        **(sampler.summary(timer.windows[1:]) if sampler is not None else
           {"gpu_util_mean": None, "gpu_util_max": None, "gpu_mem_max_mib": None, "gpu_util_samples": 0,
            "gpu_util_scope": None}),
        "val_accuracy": timer.val_accuracy[-1] if timer.val_accuracy else None,
        "best_val_accuracy": best,
        "val_accuracy_epochs": timer.val_accuracy,
        "final_evaluation_accuracy": accuracies.get("validation_set"),
        "accuracy_threshold": args.accuracy_threshold,
        "accuracy_ok": best is not None and best > args.accuracy_threshold,
        "seconds_total": time.perf_counter() - started,
        "seconds_data": t_data - started,
        "seconds_loader": t_loader - t_data,
        "seconds_fit": t_fit - t_loader,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": __import__("lightning").__version__,
        "python": platform.python_version(),
    }
    print("\n" + table(report), flush=True)
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}", flush=True)
    return 0 if report["accuracy_ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
