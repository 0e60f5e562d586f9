"""Micro-benchmark of the augmentation kernels: ``python -m stmclf.augment.bench``.

Times every registered function (its demo arguments, ``change_rate`` forced to 1.0 and, with
``--mixed``, 0.5) and the seed training pipeline on one device, and optionally checks that no
kernel synchronises a CUDA device (``--sync-check``; ``random_jpeg_quality`` is exempt: it
encodes on the CPU by design).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from stmclf.augment import build_augmentation, example_section, kernel_names
from stmclf.errors import one_line

SEED_PIPELINE = {
    "random_contrast": {"factor": 0.4},
    "random_brightness": {"factor": 0.2},
    "random_flip": {"mode": "horizontal"},
    "random_translation": {"width_factor": 0.1, "height_factor": 0.1},
    "random_rotation": {"factor": 0.05},
    "random_zoom": {"width_factor": 0.1},
}
HOST_BOUND = {"random_jpeg_quality"}


def _timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    def run(fn: Callable[[], object], repeats: int) -> float:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / repeats * 1e3

    return run


def sync_check(x: torch.Tensor, names: list[str]) -> list[str]:
    """Names of the functions that synchronised the CUDA device (empty list: none did)."""
    bad = []
    for name in names:
        if name in HOST_BOUND:
            continue
        aug = build_augmentation({name: dict(example_section(name), **_rate(name, 0.5))}, (-1.0, 1.0))
        aug(x)  # warm-up outside the check (lazy CUDA initialisations)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            aug(x)
        except RuntimeError as exc:
            bad.append(f"{name}: {one_line(exc, 160, whole=True)}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return bad


def _rate(name: str, rate: float) -> dict:
    from stmclf.augment import AUGMENTATIONS

    return {"change_rate": rate} if AUGMENTATIONS[name].has_change_rate else {}


def main(argv: Optional[list[str]] = None) -> int:
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--mixed", action="store_true", help="also time change_rate 0.5")
    parser.add_argument("--sync-check", action="store_true")
    parser.add_argument("--names", nargs="*", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    names = args.names or kernel_names()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    timed = _timer(device)
    print(f"device={device} batch={args.batch} size={args.size} channels_last={args.channels_last}")
    print(f"{'function':28s} {'ms/batch':>9s} {'img/s':>10s}" + (f" {'ms@0.5':>8s}" if args.mixed else ""))
    for name in names:
        aug = build_augmentation({name: dict(example_section(name), **_rate(name, 1.0))}, (-1.0, 1.0))
        ms = timed(lambda: aug(x), args.repeats)
        line = f"{name:28s} {ms:9.3f} {args.batch / ms * 1e3:10.0f}"
        if args.mixed and _rate(name, 0.5):
            half = build_augmentation({name: dict(example_section(name), **_rate(name, 0.5))}, (-1.0, 1.0))
            line += f" {timed(lambda: half(x), args.repeats):8.3f}"
        print(line, flush=True)
    seed = build_augmentation(SEED_PIPELINE, (-1.0, 1.0))
    ms = timed(lambda: seed(x), args.repeats)
    print(f"{'seed pipeline (6 functions)':28s} {ms:9.3f} {args.batch / ms * 1e3:10.0f}")
    if args.sync_check:
        if device.type != "cuda":
            print("sync check: skipped (not a CUDA device)")
        else:
            bad = sync_check(x, names)
            print("sync check: " + ("no kernel synchronises the device" if not bad else "; ".join(bad)))
            return 1 if bad else 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
