"""Where a training step's time goes: each layer of the model timed alone, by kind, against the step.

    .venv/bin/python benchmarks/step_breakdown.py [--model resnet8] [--batch 128] [--precision bf16-mixed]

The model, optimizer and loss of ``train_throughput.raw_step`` (channels_last, Adam fused,
uint8 batch rescaled on the fly, ``torch.autocast`` for ``bf16-mixed``). One forward pass records
what every leaf layer receives (shape, dtype, memory format, whether it needs a gradient); each
layer is then run alone on inputs like those, forward and forward + backward (its weight
gradients included), best of ``--repeats`` rounds. The table sums the layers by kind, with the
convolutions' arithmetic rate, and sets the sum against the whole step (forward, backward,
optimizer step) at this batch and at a batch of 2: what is left is what the layers do not
account for (the autograd engine, casts, the optimizer, Python), and the batch-2 step shows the
part of it that does not grow with the batch. A bfloat16 and a float32 matrix product give the
machine's reachable arithmetic rate for comparison. Pin the cores to compare runs
(``taskset -c 0,1``).
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stmclf.training.allocator import keep_freed_memory  # noqa: E402
from train_throughput import MODELS, raw_step  # noqa: E402

KINDS = {"Conv2D": "convolution", "DepthwiseConv2D": "convolution", "BatchNormalization": "BatchNorm",
         "Activation": "activation", "ReLU": "activation", "Add": "add", "Dense": "dense"}


def best_seconds(fn: Callable[[], object], repeats: int, rounds: int = 5) -> float:
    """The fastest of ``rounds`` means over ``repeats`` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def make_step(model_name: str, batch: int, precision: str):
    """The raw train step of ``train_throughput.raw_step``, its weights and batch seeded."""
    torch.manual_seed(0)
    return raw_step(batch, precision, model_name=model_name)


def record_inputs(model: torch.nn.Module, images: torch.Tensor, precision: str) -> list[tuple]:
    """(name, module, inputs) of every leaf layer, in call order, from one forward pass."""
    calls, handles = [], []
    for name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: calls.append((name, m, list(args)))))
    x = images.float().mul_(1 / 127.5).sub_(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        model(x)
    for handle in handles:
        handle.remove()
    # An input that needed a gradient in the step (an activation, not the images) needs one here.
    return [(name, module, [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                            for a in args]) for name, module, args in calls]


def conv_flops(module: torch.nn.Module, out: torch.Tensor) -> float:
    """Forward multiply-adds × 2 of a convolution producing ``out``."""
    c_in = module.in_channels // module.groups
    return 2.0 * out.numel() * c_in * module.kernel_size[0] * module.kernel_size[1]


def layer_times(calls: list[tuple], precision: str, repeats: int,
                each: bool = False) -> dict[str, list[float]]:
    """kind → [layers, forward s, backward s, convolution forward flops]; with ``each``, every
    layer's own line is printed too."""
    table: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for name, module, args in calls:
        kind = KINDS.get(type(module).__name__, "other")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            out = module(*args)

            def forward(module=module, args=args):
                return module(*args)

            grads = torch.randn_like(out)
            wants = ([a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
                     + [p for p in module.parameters() if p.requires_grad])
            forward_s = best_seconds(forward, repeats)
            if wants and out.requires_grad:
                both = best_seconds(lambda: torch.autograd.grad(forward(), wants, grads), repeats)
            else:
                both = forward_s
        if each:
            shapes = " + ".join("×".join(map(str, a.shape)) + f" {str(a.dtype)[6:]}" for a in args
                                if isinstance(a, torch.Tensor))
            print(f"  {name:24s} {type(module).__name__:20s} {shapes:32s} forward {forward_s * 1e6:7.0f} µs  "
                  f"backward {max(both - forward_s, 0.0) * 1e6:7.0f} µs")
        row = table[kind]
        row[0] += 1
        row[1] += forward_s
        row[2] += max(both - forward_s, 0.0)
        if kind == "convolution":
            row[3] += conv_flops(module, out)
    return table


def matmul_rate(dtype: torch.dtype, n: int = 2048) -> tuple[float, int]:
    """(FLOP/s, side) of a square matrix product of side ``n``, or of the first side from 256 up
    whose product takes over 0.1 s: a CPU without native bfloat16 emulates it at about 1 GFLOP/s,
    where 18 products of 2048² took over 5 minutes (seen on an AVX2 EPYC)."""
    side = 256
    while side < n:
        a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
        start = time.perf_counter()
        a @ b
        if time.perf_counter() - start > 0.1:
            break
        side *= 2
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    return 2.0 * side ** 3 / best_seconds(lambda: a @ b, 3), side


def main() -> None:
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet8", choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32"])
    parser.add_argument("--repeats", type=int, default=10, help="calls per timed round")
    parser.add_argument("--layers", action="store_true", help="also print every layer's times")
    args = parser.parse_args()
    keep_freed_memory()  # as `stmclf fit` does: steps reuse freed memory instead of faulting it in
    model, images, step = make_step(args.model, args.batch, args.precision)
    step_s = best_seconds(step, args.repeats)
    _, _, small_step = make_step(args.model, 2, args.precision)
    small_s = best_seconds(small_step, args.repeats)
    table = layer_times(record_inputs(model, images, args.precision), args.precision, args.repeats, args.layers)

    print(f"\n{MODELS[args.model][0]}, batch {args.batch}, {args.precision}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads: step {step_s * 1e3:.2f} ms ({args.batch / step_s:,.0f} img/s); "
          f"batch-2 step {small_s * 1e3:.2f} ms")
    rates = {name: matmul_rate(dtype) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    print("matrix product: " + ", ".join(f"{name} {rate / 1e9:,.0f} GFLOP/s ({side}²)"
                                         for name, (rate, side) in rates.items()) + "\n")
    print("| layers | count | forward ms | backward ms | total ms | share of step | rate |")
    print("|---|---:|---:|---:|---:|---:|---|")
    accounted = 0.0
    for kind, (count, forward_s, backward_s, flops) in sorted(table.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
        total = forward_s + backward_s
        accounted += total
        rate = (f"forward {flops / forward_s / 1e9:,.0f} GFLOP/s, backward {2 * flops / backward_s / 1e9:,.0f}"
                if flops and backward_s else "")
        print(f"| {kind} | {count:.0f} | {forward_s * 1e3:.2f} | {backward_s * 1e3:.2f} | {total * 1e3:.2f} | "
              f"{total / step_s:.0%} | {rate} |")
    rest = step_s - accounted
    print(f"| not in the layers (autograd, casts, loss, optimizer, Python) | | | | {rest * 1e3:.2f} | "
          f"{rest / step_s:.0%} | batch-2 step {small_s * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
