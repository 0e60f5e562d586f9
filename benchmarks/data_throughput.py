"""Data pipeline throughput: the real loader against the reference's loader and the train step.

    .venv/bin/python benchmarks/data_throughput.py [--images 2000] [--epochs 3] [--device cpu]

Issue "data never the bottleneck". Workloads (batch 64, 128×128 RGB, bilinear fit):

- ``jpeg224``: 224×224 JPEGs (quality 90) of real-looking content: Fashion-MNIST items (Debian's
  dataset-fashion-mnist, read with ``stmclf.data.fetch.read_idx``) upscaled, colourised and laid
  over crops of scikit-learn's two sample photographs (smooth synthetic pictures when either is
  missing);
- ``png28``: Fashion-MNIST's own 28×28 grayscale PNGs (``stmclf data fetch fashion-mnist``),
  decoded as RGB and upscaled to 128.

Tables:

1. one core, per image: decode, resize, and both (what epoch 1 does per file): the seed's
   implementation (PIL reading the path, dense ``einsum`` resize), today's per-file functions
   (``decode_image``, ``resize_image``, ``load_image``) and the batch path that epoch 1's loader
   workers run, 64 files at a time (``decode_for_resize``: grey sources stay one channel;
   ``resize_into``: exact bilinear resizes through OpenCV, else same-size exact resizes as two
   GEMMs per batch; ``load_images``: both); how
   many images differ from the seed's, and between the batch path and ``load_image`` (must be 0);
2. the real ``ImageDataModule`` train loader (default worker count, image cache on in a temporary
   ``$STMCLF_CACHE``, a fresh cache and a fresh process per row): epoch 1 (worker start, decode, resize, cache fill)
   and the later epochs (cache filled). Rows without augmentation count uint8 batches arriving on
   ``--device``; "+ seed augmentation" rows also do what training does on each batch
   (channels_last, ``float()·scale + offset``, the seed's six functions). The first two rows are
   the baselines for epoch 1: the same loader decoding file by file (``FileList.load``, as before
   the batch path) with the seed's ``load_image`` patched in, then with today's. Once every image
   is cached, the loader reads whole batches in the main process on CPU-only machines. Epoch 1
   is also given after its first batch (worker start-up, ~0.1–0.2 s, left out: a steady rate, as
   the reference's), and CPU-bound: cores × images / CPU seconds of the main process and its
   workers, what the epoch reaches with the cores to itself (the figure that survives a shared,
   busy machine);
3. each seed augmentation kernel on a 64×3×128×128 batch;
4. the MobileNetV2-0.35 @128 fp32 channels_last train step (``train_throughput.raw_throughput``
   on CPU, the same step on a CUDA device), which table 2's last column divides by.

The reference's loader is measured in this run on the same files (``reference_loader.py``:
TensorFlow tf.data, read → decode → bilinear resize → batch, AUTOTUNE, in its own process; best
of ``--reference-runs``): table 2's "/ ref" columns divide by it. performance_targets.md quotes
9,173 img/s (224-px JPEG → 128) and 18,071 img/s (28-px PNG → 128) on 2 cores of another CPU
(``--reference quoted`` uses those). Pin 2 cores to compare (``taskset -c 0,1``): the worker
count, torch's and TensorFlow's threads follow the CPU affinity. Every ratio compares numbers
measured in this run. ``--alternate N`` adds table 2b: N rounds per data kind, each the reference
loader's pass then the default loader's epochs (fresh process, fresh cache), with each round's
ratio, the ratio of the means and the median ratio: on a machine whose speed drifts over minutes
(a shared VM), only ratios taken within a round compare like with like.

Memory state. Epoch 1 writes the cache: 12 new 4 KiB pages per 128×128 RGB image (4 for a grey
source). On a VM whose host backs guest memory on first touch and takes free memory back
(virtio-balloon free page reporting, e.g. Firecracker), a page the host must back again costs
7–11 µs, against ~1.4 µs for memory freed moments ago: epoch 1 then depends on what the machine
did before (this is what made "the second data kind slower" in earlier runs). Each row deletes
its cache when it ends, so by default the next row reuses those pages (warm, as on a machine
whose memory is backed: a desktop, most cloud VMs). ``--settle S`` waits S seconds after that
before the reference and before each row, so that the host has taken the freed memory back
(~75 s here): every row then meets the cold memory of a fresh VM's first epoch. tf.data keeps
no cache; its transient buffers are reused from one batch to the next.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stmclf.augment import build_augmentation  # noqa: E402
from stmclf.augment.bench import SEED_PIPELINE  # noqa: E402
from stmclf.config.sections import Dataset as DatasetSection  # noqa: E402
from stmclf.data import files as data_files  # noqa: E402
from stmclf.data.datamodule import ImageDataModule, ImageFormat, load_image  # noqa: E402
from stmclf.data.decode import PIL_MODES, decode_for_resize, decode_image, read_file  # noqa: E402
from stmclf.data.files import load_images  # noqa: E402
from stmclf.data.resize import resize_image, resize_into, resize_matrix  # noqa: E402
from stmclf.training.allocator import keep_freed_memory  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
QUOTED_REFERENCE = {"jpeg224": 9173, "png28": 18071}  # img/s, performance_targets.md, 2 cores of another CPU
SCALE, OFFSET = 1 / 127.5, -1.0
BATCH = 64


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------
def _fashion(n: int) -> tuple[np.ndarray, np.ndarray]:
    from stmclf.data.fetch import read_idx

    images = read_idx(FMNIST / "train-images-idx3-ubyte.gz")[:n]
    labels = read_idx(FMNIST / "train-labels-idx1-ubyte.gz")[:n]
    if len(images) < n:
        raise SystemExit(f"{FMNIST} holds only {len(images)} training images; use --images {len(images)}")
    return images, labels


def _backgrounds() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images

        return [np.asarray(p) for p in load_sample_images().images]
    except Exception:  # scikit-learn missing: smooth colour fields with some structure
        rng = np.random.default_rng(3)
        yy, xx = np.mgrid[0:427, 0:640] / 60.0
        out = []
        for _ in range(2):
            f = rng.uniform(0.3, 1.5, (3, 2))
            out.append(np.stack([127 + 120 * np.sin(f[c, 0] * xx + f[c, 1] * yy + c) for c in range(3)], -1)
                       .astype(np.uint8))
        return out


def make_jpeg_folder(root: Path, n: int, size: int = 224, quality: int = 90) -> str:
    rng = np.random.default_rng(0)
    if FMNIST.is_dir():
        items, labels = _fashion(n)
    else:  # blobs as "items"
        yy, xx = np.mgrid[0:28, 0:28]
        items = np.stack([(255 * np.exp(-((xx - rng.uniform(8, 20)) ** 2 + (yy - rng.uniform(8, 20)) ** 2)
                                        / rng.uniform(20, 80))).astype(np.uint8) for _ in range(n)])
        labels = rng.integers(0, 10, n)
    photos = _backgrounds()
    for i, (item, label) in enumerate(zip(items, labels)):
        folder = root / f"class_{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        background = photo[y:y + size, x:x + size].astype(np.float32)
        alpha = np.asarray(Image.fromarray(item).resize((size, size), Image.BICUBIC), np.float32)[..., None] / 255
        colour = rng.uniform(40, 255, 3).astype(np.float32)
        pixels = np.clip(background * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=quality)
    return str(root)


def make_png_folder(root: Path, n: int) -> str:
    if FMNIST.is_dir():
        from stmclf.data.fetch import fetch_dataset

        fetch_dataset("fashion-mnist", root, source=FMNIST, max_per_split=n)
        return str(root / "train")
    rng = np.random.default_rng(1)
    for i in range(n):
        folder = root / "train" / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        blur = np.asarray(Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8)).resize((28, 28), Image.BICUBIC))
        Image.fromarray(blur).save(folder / f"{i:05d}.png", compress_level=1)
    return str(root / "train")


def folder_stats(root: str) -> tuple[int, float]:
    files = [p for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith(".")]
    return len(files), float(np.mean([p.stat().st_size for p in files]))


# ---------------------------------------------------------------------------------------------
# 1. one core, per image
# ---------------------------------------------------------------------------------------------
def seed_decode(path: str, color_mode: str) -> np.ndarray:
    """The seed's decoder (before this issue): PIL from the path, always ``convert``."""
    with Image.open(path) as image:
        image.seek(0)
        array = np.asarray(image.convert(PIL_MODES[color_mode]))
    return array[:, :, None] if array.ndim == 2 else array


def seed_resize(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """The seed's resize (before this issue): dense weight matrices through ``np.einsum``."""
    src = image.astype(np.float32)
    out = np.einsum("oh,hwc->owc", resize_matrix(src.shape[0], height, method), src, optimize=True)
    out = np.einsum("ow,hwc->hoc", resize_matrix(src.shape[1], width, method), out, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def seed_load_image(path: str, fmt: ImageFormat) -> np.ndarray:
    """The seed's ``load_image`` (``fit`` only)."""
    return seed_resize(seed_decode(path, fmt.color_mode), fmt.height, fmt.width, fmt.interpolation)


def per_image_us(fn: Callable[[object], object], items: list, repeats: int) -> float:
    fn(items[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def per_batch_us(fn: Callable[[list], object], items: list, repeats: int) -> float:
    """Like :func:`per_image_us`, with ``fn`` called on batches of :data:`BATCH` items."""
    batches = [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
    fn(batches[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def stage_table(folders: dict[str, str], fmt: ImageFormat, count: int, repeats: int) -> list[tuple]:
    """Per data kind and stage: (data, stage, seed µs, per-item µs, batch path µs) per image, and
    the counts of images differing from the seed's and between the two paths of today."""
    from threadpoolctl import threadpool_limits

    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker's setting
    out = np.empty((BATCH, fmt.height, fmt.width, fmt.channels), np.uint8)
    try:
        with threadpool_limits(1):
            for name, root in folders.items():
                paths = sorted(str(p) for p in Path(root).rglob("*.*") if not p.name.startswith("."))[:count]
                images = [decode_image(p, fmt.color_mode) for p in paths]
                kept = [decode_for_resize(read_file(p), fmt.color_mode, p) for p in paths]  # grey kept grey
                size = (fmt.height, fmt.width, fmt.interpolation)
                for stage, seed_fn, item_fn, batch_fn, items, batch_items in (
                        ("decode", lambda p: seed_decode(p, fmt.color_mode), lambda p: decode_image(p, fmt.color_mode),
                         lambda ps: [decode_for_resize(read_file(p), fmt.color_mode, p) for p in ps], paths, paths),
                        ("resize", lambda a: seed_resize(a, *size), lambda a: resize_image(a, *size),
                         lambda batch: resize_into(batch, out[:len(batch)], fmt.interpolation), images, kept),
                        ("decode + resize (epoch 1's work per file)", lambda p: seed_load_image(p, fmt),
                         lambda p: load_image(p, fmt), lambda ps: load_images(ps, fmt, out[:len(ps)]), paths, paths)):
                    rows.append((name, stage, per_image_us(seed_fn, items, repeats),
                                 per_image_us(item_fn, items, repeats), per_batch_us(batch_fn, batch_items, repeats)))
                batched = np.empty((len(paths), *out.shape[1:]), np.uint8)
                for i in range(0, len(paths), BATCH):
                    load_images(paths[i:i + BATCH], fmt, batched[i:i + BATCH])
                per_item = [load_image(p, fmt) for p in paths]
                seed = sum(not np.array_equal(a, seed_load_image(p, fmt)) for a, p in zip(per_item, paths))
                paths_differ = sum(not np.array_equal(a, b) for a, b in zip(per_item, batched))
                rows.append((name, f"images differing from the seed's ({len(paths)})", seed, None, None))
                rows.append((name, f"images differing between the batch path and load_image ({len(paths)})",
                             paths_differ, None, None))
    finally:
        torch.set_num_threads(threads)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. the real loader
# ---------------------------------------------------------------------------------------------
def loader_epochs(train_dir: str, fmt: ImageFormat, epochs: int, augment: bool, device: torch.device,
                  mode: str = "batch") -> "LoaderRun":
    """Each epoch of the train loader (fresh cache): uint8 batches moved to ``device``; with
    ``augment``, then also converted and augmented as training does (channels_last,
    float·scale + offset, the seed pipeline). ``mode``: ``batch`` (the loader as it is), ``per-item``
    (the dataset decodes file by file with ``load_image``, the path before the batch one), ``seed``
    (file by file with the seed's ``load_image``)."""
    section = DatasetSection(training_path=train_dir, validation_path=train_dir)
    module = ImageDataModule(section, fmt, BATCH)
    module.setup("fit")
    # Workers fork from this process on the first epoch: they inherit the patches.
    load_many = data_files.FileList.load_many
    if mode in ("seed", "per-item"):
        data_files.FileList.load_many = None  # the dataset falls back to one source.load per file
    if mode == "seed":
        data_files.load_image = seed_load_image
    try:
        return _epochs(module.train_dataloader(), epochs, augment, device)
    finally:
        data_files.FileList.load_many = load_many
        data_files.load_image = load_image


@dataclass
class LoaderRun:
    rates: list[float]  # img/s of each epoch, wall clock
    workers: int
    steady: float  # epoch 1's img/s after its first batch (worker start-up left out)
    cpu_bound: float  # epoch 1's img/s if the cores were ours: cores × images / CPU seconds (main + workers)


def loader_row(train_dir: str, epochs: int, augment: bool, device: str, mode: str) -> LoaderRun:
    """:func:`loader_epochs` in a fresh process (this script with ``--row``), as ``stmclf fit``
    starts its loader: workers fork from a small process. Run in this process one row after the
    other, each later row's workers inherit a larger heap (the earlier rows' batches and
    augmentation temporaries, kept by ``keep_freed_memory``) and pay its copy-on-write faults:
    measured, the second data kind's epoch 1 lost up to 60 % that way, whichever kind came second."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--row", json.dumps(
        {"train_dir": train_dir, "epochs": epochs, "augment": augment, "device": device, "mode": mode})],
        capture_output=True, text=True, env=os.environ)
    if done.returncode:
        raise SystemExit(f"loader row {mode} on {train_dir} failed:\n{done.stderr[-3000:]}")
    return LoaderRun(**json.loads(done.stdout.strip().splitlines()[-1]))


def _row_main(spec: str) -> None:
    import dataclasses
    import json

    row = json.loads(spec)
    logging.getLogger("stmclf").setLevel(logging.WARNING)
    keep_freed_memory()  # as `stmclf fit` does before its loaders start: the workers inherit it
    fmt = ImageFormat(128, 128, "rgb", "bilinear", "fit")
    run = loader_epochs(row["train_dir"], fmt, row["epochs"], row["augment"], torch.device(row["device"]), row["mode"])
    print(json.dumps(dataclasses.asdict(run)))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux's /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _epochs(loader, epochs: int, augment: bool, device: torch.device) -> LoaderRun:
    aug = build_augmentation(SEED_PIPELINE, (OFFSET, 255 * SCALE + OFFSET), channels=3) if augment else None
    rates, steady, cpu_bound = [], 0.0, 0.0
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        count, first = 0, None
        start, cpu = time.perf_counter(), time.process_time()
        for images, labels in loader:
            x = images.to(device, non_blocking=True)
            if aug is not None:  # what ClassifierModule.on_after_batch_transfer does in training
                x = x.to(memory_format=torch.channels_last).float().mul_(SCALE).add_(OFFSET)
                x = aug(x, epoch=epoch)
            count += int(labels.shape[0])
            if first is None:
                first = (time.perf_counter(), count)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        rates.append(count / (end - start))
        if epoch == 0:
            steady = (count - first[1]) / max(end - first[0], 1e-9)
            workers = getattr(getattr(loader, "_iterator", None), "_workers", [])  # persistent: still alive
            used = time.process_time() - cpu + sum(_cpu_seconds(w.pid) for w in workers)
            cpu_bound = len(os.sched_getaffinity(0)) * count / used
    if getattr(loader, "_iterator", None) is not None:
        loader._iterator._shutdown_workers()
    return LoaderRun(rates, loader.num_workers, steady, cpu_bound)


# ---------------------------------------------------------------------------------------------
# 3. augmentation kernels, 4. train step
# ---------------------------------------------------------------------------------------------
def kernel_table(device: torch.device, repeats: int) -> list[tuple[str, float]]:
    x = (torch.rand(BATCH, 3, 128, 128, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last)
    rows = []
    for name, args in list(SEED_PIPELINE.items()) + [("seed pipeline (all six)", None)]:
        section = SEED_PIPELINE if args is None else {name: args}
        aug = build_augmentation(section, (OFFSET, 255 * SCALE + OFFSET), channels=3)
        rows.append((name, BATCH / timed(lambda: aug(x), device, repeats)))
    return rows


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best seconds per call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def train_step_rate(device: torch.device, steps: int) -> float:
    if device.type == "cpu":
        from train_throughput import raw_throughput

        return raw_throughput(BATCH, steps=steps, precision=None)
    from stmclf.models import build_model  # the same step as raw_throughput, on the device

    model = build_model({"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (128, 128, 3)},
                        num_classes=10, dropout=None).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    images = torch.randint(0, 256, (BATCH, 3, 128, 128), dtype=torch.uint8, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images.float().mul_(SCALE).add_(OFFSET)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    return steps * BATCH / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    global FMNIST
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="files per dataset")
    parser.add_argument("--epochs", type=int, default=3, help="loader epochs per configuration (≥ 2)")
    parser.add_argument("--device", default="cpu", help="where batches go and augmentation/train step run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stage-images", type=int, default=300, help="files timed per stage in table 1")
    parser.add_argument("--only", nargs="*", default=["jpeg224", "png28"])
    parser.add_argument("--fashion-mnist", type=Path, default=FMNIST,
                        help="folder of Fashion-MNIST's IDX files (synthetic images when it is missing)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["stages", "loader", "kernels", "step"])
    parser.add_argument("--reference", choices=["measure", "quoted"], default="measure",
                        help="the reference loader's img/s: measured here on the same files (TensorFlow) or "
                             "performance_targets.md's")
    parser.add_argument("--reference-runs", type=int, default=2)
    parser.add_argument("--alternate", type=int, default=0, metavar="N",
                        help="also N rounds per data kind of the reference loader then the default loader's epoch 1, "
                             "each in a fresh process and cache, with each round's ratio (a machine whose speed "
                             "drifts: compare only within a round)")
    parser.add_argument("--settle", type=_seconds, default=0.0,
                        help="seconds to wait before the reference and each row, the previous row's cache deleted "
                             "(cold memory on a VM whose host reclaims free pages; see the module docstring)")
    args = parser.parse_args()
    FMNIST = args.fashion_mnist
    logging.getLogger("stmclf").setLevel(logging.WARNING)
    keep_freed_memory()  # as `stmclf fit` does before its loaders start: the workers inherit it
    device = torch.device(args.device)
    fmt = ImageFormat(128, 128, "rgb", "bilinear", "fit")
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STMCLF_CACHE"] = str(Path(tmp) / "cache")
        folders = {}
        if "jpeg224" in args.only:
            folders["jpeg224"] = make_jpeg_folder(Path(tmp) / "jpeg224", args.images)
        if "png28" in args.only:
            folders["png28"] = make_png_folder(Path(tmp) / "fmnist", args.images)
        desc = {name: folder_stats(root) for name, root in folders.items()}
        print(f"\n{cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}, "
              f"batch {BATCH}, 128×128 RGB bilinear fit; "
              + "; ".join(f"{k}: {n} files, {size / 1024:.1f} KiB average" for k, (n, size) in desc.items()), flush=True)

        if "stages" not in args.skip:
            rows = stage_table(folders, fmt, args.stage_images, args.repeats)
            print("\n### 1. One core, per image (µs, best of %d; seed = PIL from path + dense einsum; batch path = "
                  "what epoch 1's loader workers run, %d files at a time)\n" % (args.repeats, BATCH))
            print(table(["data", "stage", "seed µs", "per file µs", "batch path µs", "seed / batch path"],
                        [(n, s, f"{b:.1f}", f"{i:.1f}", f"{a:.1f}", f"{b / a:.2f}×") if a is not None
                         else (n, s, b, "", "", "") for n, s, b, i, a in rows]), flush=True)

        results: dict[tuple[str, str], LoaderRun] = {}
        if "loader" in args.skip:
            folders_for_loader = {}
        else:
            folders_for_loader = folders
        reference = dict(QUOTED_REFERENCE)
        for name, root in folders_for_loader.items():
            if args.reference == "measure":
                reference[name] = reference_rate(root, fmt, args.reference_runs, args.settle)
                print(f"  {name:8s} {'reference loader (TensorFlow tf.data, this run)':64s} {reference[name]:8.0f}",
                      flush=True)
            variants = [("default loader, the seed's decode + resize per file (before)", False, "seed"),
                        ("default loader, today's decode + resize per file", False, "per-item"),
                        ("default loader (batch path)", False, "batch"),
                        ("default loader + seed augmentation", True, "batch")]
            for label, augment, mode in variants:
                with _fresh_cache(tmp, f"{name}-{label}", args.settle):
                    run = results[(name, label)] = loader_row(root, max(2, args.epochs), augment, args.device, mode)
                print(f"  {name:8s} {label:64s} {run.workers} workers " + " ".join(f"{r:8.0f}" for r in run.rates)
                      + f"  (epoch 1 after its first batch {run.steady:,.0f}, CPU-bound {run.cpu_bound:,.0f})",
                      flush=True)

        alternated = {name: alternate_rounds(name, root, fmt, args.alternate, args.epochs, args.device, tmp, args.settle)
                      for name, root in folders.items()} if args.alternate > 0 else {}

        kernels = [] if "kernels" in args.skip else kernel_table(device, args.repeats)
        step = None if "step" in args.skip else train_step_rate(device, steps=10 if device.type == "cpu" else 50)

        if results:
            print("\n### 2. Train loader (ImageDataModule train loader, image cache on), img/s\n")
            rows = []
            for (name, label), run in results.items():
                e2, ref = min(run.rates[1:]), reference[name]
                rows.append((name, label, run.workers, f"{run.rates[0]:,.0f}", f"{run.steady:,.0f}",
                             f"{run.cpu_bound:,.0f}", " / ".join(f"{r:,.0f}" for r in run.rates[1:]), f"{ref:,}",
                             f"{run.rates[0] / ref:.2f}", f"{run.steady / ref:.2f}", f"{run.cpu_bound / ref:.2f}",
                             f"{e2 / ref:.2f}", f"{e2 / step:.1f}" if step else "—"))
            print(table(["data", "loader", "workers", "epoch 1", "epoch 1 after its first batch",
                         f"epoch 1 CPU-bound ({cores} cores / CPU s)", "epochs 2, 3, ...",
                         f"reference loader ({args.reference})",
                         "epoch 1 / ref", "after first batch / ref", "CPU-bound / ref", "epoch 2+ (slowest) / ref",
                         "epoch 2+ (slowest) / train step"], rows))
        if alternated:
            print("\n### 2b. Epoch 1 alternated with the reference loader (each run a fresh process and cache), img/s\n")
            print(alternation_table(alternated))
        if kernels:
            print(f"\n### 3. Seed augmentation kernels, {BATCH}×3×128×128 float channels_last on {device}\n")
            print(table(["function", "img/s", "ms / batch", "kernel / train step"],
                        [(n, f"{r:,.0f}", f"{BATCH / r * 1e3:.2f}", f"{r / step:.1f}" if step else "—")
                         for n, r in kernels]))
        if step:
            print(f"\n### 4. MobileNetV2-0.35 @128 fp32 channels_last train step on {device}: {step:,.0f} img/s "
                  f"(batch {BATCH}; reference's performance_targets.md: 269 img/s raw PyTorch step on 2 cores)")


def alternate_rounds(name: str, root: str, fmt: ImageFormat, rounds: int, epochs: int, device: str, tmp: str,
                     settle: float) -> list[tuple[float, LoaderRun]]:
    """``rounds`` × (the reference loader's pass, then the default loader's epochs on a fresh cache)."""
    results = []
    for index in range(rounds):
        reference = reference_rate(root, fmt, 1, settle)
        with _fresh_cache(tmp, f"alternate-{name}-{index}", settle):
            run = loader_row(root, max(2, epochs), False, device, "batch")
        print(f"  {name:8s} round {index + 1}: reference {reference:8.0f}, default loader epoch 1 "
              f"{run.rates[0]:8.0f} ({run.rates[0] / reference:.2f}×)", flush=True)
        results.append((reference, run))
    return results


def alternation_table(alternated: dict[str, list[tuple[float, LoaderRun]]]) -> str:
    """One row per data kind: every round's pair and ratio, the means' ratio, the median ratio."""
    rows = []
    for name, pairs in alternated.items():
        refs, ours = [r for r, _ in pairs], [run.rates[0] for _, run in pairs]
        ratios = [o / r for o, r in zip(ours, refs)]
        steady = [run.steady / r for r, run in pairs]
        rows.append((name, " · ".join(f"{r:,.0f}" for r in refs), " · ".join(f"{o:,.0f}" for o in ours),
                     " · ".join(f"{x:.2f}" for x in ratios),
                     f"{statistics.mean(ours) / statistics.mean(refs):.2f}×",
                     f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})",
                     f"{statistics.median(steady):.2f}×"))
    return table(["data", "reference loader per round", "default loader epoch 1 per round", "ratio per round",
                  "ratio of the means", "median ratio (min–max)", "median, epoch 1 after its first batch"], rows)


def reference_rate(folder: str, fmt: ImageFormat, runs: int, settle: float = 0.0) -> float:
    """The reference's tf.data loader on ``folder`` (``reference_loader.py`` in a child process):
    the best img/s of ``runs`` cold passes."""
    from child_json import run_child_json

    best = 0.0
    for _ in range(runs):
        _settle(settle)  # as each of our rows starts (_fresh_cache)
        result = run_child_json("reference_loader.py", folder, "--size", str(fmt.height), "--channels",
                                str(fmt.channels), "--batch", str(BATCH))
        best = max(best, result["img_per_s"])
    return best


def _settle(seconds: float) -> None:
    """No dirty pages left behind (written back now, not during the next measurement), then wait
    ``seconds`` (``--settle``: freed memory handed back to the host)."""
    os.sync()
    time.sleep(seconds)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expecting seconds >= 0, got {text!r}")
    return value


@contextlib.contextmanager
def _fresh_cache(tmp: str, label: str, settle: float = 0.0):
    """Each loader configuration fills its own cache (epoch 1 always decodes), starting with no
    dirty pages left by the rows before it (``os.sync``: the previous configuration's cache file,
    ~0.5 GB per 10,000 images, is otherwise written back to disk during the next row's epoch 1),
    after ``settle`` seconds; the cache is deleted when the row ends (its memory freed)."""
    _settle(settle)
    previous = os.environ.get("STMCLF_CACHE")
    folder = Path(tmp) / "cache" / label.replace(" ", "_").replace("(", "").replace(")", "")
    os.environ["STMCLF_CACHE"] = str(folder)
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is not None:
            os.environ["STMCLF_CACHE"] = previous


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--row":  # one loader configuration (loader_row)
        _row_main(sys.argv[2])
    else:
        main()
