"""Where bfloat16 autocast loses precision in a training step, layer group by layer group.

    .venv/bin/python benchmarks/bf16_error.py [--batches 8] [--warmup-steps 300] [--batch 128]

The workload of ``chain_accuracy.py``: ResNet-8 @32 RGB (the reference's, with its L2 1e-4
kernel penalty), real Fashion-MNIST images (Debian's IDX files; 28 → 32 bilinear, grey → RGB,
``x/127.5 − 1``), batch 128, cross-entropy on fp32 logits as ``ClassifierModule`` computes it.
Each row runs the same batches through one way of computing the step and compares it with the same
step in float64: the relative error of the loss, of the whole gradient and of each parameter
group's gradient (the stem convolution, the other convolutions, the BatchNorm scales and shifts, the
Dense head), and of the step's update of the BatchNorm running variances. Rows:

- ``fp32``: the floor (fp32 against fp64);
- ``bf16-mixed``: ``torch.autocast("cpu", bfloat16)`` as Lightning's ``bf16-mixed`` runs it (the
  convolutions and the Dense layer compute in bf16; BatchNorm, ReLU and the residual adds then run
  on the bf16 tensors they receive);
- ``… + fp32 X``: the same, with the layers X computed in fp32 (their inputs cast up, autocast
  off inside them) to measure what bf16 costs there.

Measured twice: at initialisation and after ``--warmup-steps`` fp32 Adam steps (a partly trained
network, where gradients are small and rounding matters more). The last column is the step's time
against fp32 (forward + backward, median of repeats), the price of each remedy. The last row is
the scale to read the errors against: how far one batch's exact gradient lies from the mean
gradient over ``--batches`` batches (the noise of minibatch sampling, which SGD already absorbs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stmclf.data.fetch import read_idx  # noqa: E402
from stmclf.models import build_model  # noqa: E402
from stmclf.models.regularization import kernel_regularization_terms, regularization_loss  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SPEC = {"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}
GROUPS = ("stem", "convs", "batchnorm", "head")
VARIANTS = {  # name → the layer kinds computed in fp32 inside bf16 autocast (None: no autocast)
    "fp32": None,
    "bf16-mixed": (),
    "bf16-mixed + fp32 stem": ("stem",),
    "bf16-mixed + fp32 head": ("head",),
    "bf16-mixed + fp32 BatchNorm": ("batchnorm",),
    "bf16-mixed + fp32 stem, head": ("stem", "head"),
    "bf16-mixed + fp32 stem, head, BatchNorm": ("stem", "head", "batchnorm"),
}


def fashion_mnist(count: int, source: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(source / "train-images-idx3-ubyte.gz")[:count, None]
    labels = read_idx(source / "train-labels-idx1-ubyte.gz")[:count]
    x = F.interpolate(torch.from_numpy(images.copy()).float(), size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).div(127.5).sub(1).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


def kind_of(name: str, module: torch.nn.Module, stem: str) -> str | None:
    kind = type(module).__name__
    if kind == "Conv2D":
        return "stem" if name == stem else "convs"
    if kind == "BatchNormalization":
        return "batchnorm"
    if kind == "Dense":
        return "head"
    return None


def groups_of(model: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    modules = [(n, m) for n, m in model.named_modules() if kind_of(n, m, "") is not None]
    stem = next(n for n, m in modules if type(m).__name__ == "Conv2D")
    out: dict[str, list[torch.nn.Module]] = {g: [] for g in GROUPS}
    for name, module in modules:
        out[kind_of(name, module, stem)].append(module)
    return out


@contextmanager
def fp32_inside(modules: list[torch.nn.Module]):
    """Run these modules in fp32 (inputs cast up, autocast off) while the rest stays in autocast."""
    originals = []
    for module in modules:
        forward = module.forward

        def wrapped(*args, _forward=forward, **kwargs):
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            with torch.autocast("cpu", enabled=False):
                return _forward(*args, **kwargs)
        originals.append((module, forward))
        module.forward = wrapped
    try:
        yield
    finally:
        for module, forward in originals:
            module.forward = forward


def step(model, x, y, regularized, variant, groups, dtype=torch.float32):
    """Loss, gradients and BN running variances of one training-mode step."""
    model.zero_grad(set_to_none=True)
    before = torch.cat([m.running_var.flatten().double() for m in groups["batchnorm"]])
    fp32_kinds = VARIANTS.get(variant)
    modules = [m for kind in (fp32_kinds or ()) for m in groups[kind]]
    with fp32_inside(modules), torch.autocast("cpu", dtype=torch.bfloat16, enabled=fp32_kinds is not None):
        logits = model(x.to(dtype))
    loss = F.cross_entropy(logits.to(dtype), y)
    penalty = regularization_loss(regularized)
    if penalty is not None:
        loss = loss + penalty
    loss.backward()
    grads = {kind: torch.cat([p.grad.flatten().double() for m in groups[kind] for p in m.parameters()])
             for kind in GROUPS}
    # the step's update of the running variances (momentum × (batch variance − old value))
    running = torch.cat([m.running_var.flatten().double() for m in groups["batchnorm"]]) - before
    return float(loss.detach()), grads, running


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def step_from(state: dict, xb: torch.Tensor, yb: torch.Tensor, variant: str, dtype: torch.dtype):
    """:func:`step` of a fresh model in ``dtype`` holding ``state``."""
    model = build_model(dict(SPEC), num_classes=10, dropout=None).to(dtype)
    model.load_state_dict(state)
    model.train()
    return step(model, xb, yb, kernel_regularization_terms(model), variant, groups_of(model), dtype)


def measure(state: dict, x: torch.Tensor, y: torch.Tensor, batches: int, batch: int, repeats: int) -> list[dict]:
    rows = []
    slices = [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(batches)]
    exact = [step_from(state, xb, yb, "fp32", torch.float64) for xb, yb in slices]  # the same for every variant
    for variant in VARIANTS:
        errors: dict[str, list[float]] = {k: [] for k in ("loss", "all", "running_var", *GROUPS)}
        for (xb, yb), (loss64, grads64, running64) in zip(slices, exact):
            loss, grads, running = step_from(state, xb, yb, variant, torch.float32)
            errors["loss"].append(abs(loss - loss64) / abs(loss64))
            errors["all"].append(relative(torch.cat(list(grads.values())), torch.cat(list(grads64.values()))))
            errors["running_var"].append(relative(running, running64))
            for kind in GROUPS:
                errors[kind].append(relative(grads[kind], grads64[kind]))
        rows.append({"variant": variant, **{k: statistics.mean(v) for k, v in errors.items()},
                     "seconds": step_seconds(state, x[:batch], y[:batch], variant, repeats)})
    # What the step's gradient is an estimate of: each batch's exact gradient against the mean over
    # the batches (minibatch sampling noise, the error SGD already lives with).
    exact = [grads64 for _, grads64, _ in exact]
    mean = {kind: sum(g[kind] for g in exact) / len(exact) for kind in GROUPS}
    noise = {kind: statistics.mean(relative(g[kind], mean[kind]) for g in exact) for kind in GROUPS}
    noise["all"] = statistics.mean(relative(torch.cat([g[k] for k in GROUPS]), torch.cat([mean[k] for k in GROUPS]))
                                   for g in exact)
    rows.append({"variant": f"sampling noise of one batch of {batch} (fp64)", "loss": float("nan"),
                 "running_var": float("nan"), "seconds": float("nan"), **noise})
    return rows


def step_seconds(state, x, y, variant, repeats) -> float:
    model = build_model(dict(SPEC), num_classes=10, dropout=None).to(memory_format=torch.channels_last)
    model.load_state_dict(state)
    model.train()
    groups, regularized = groups_of(model), kernel_regularization_terms(model)
    x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        step(model, x, y, regularized, variant, groups)
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])


def warm(state: dict, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int) -> dict:
    """``steps`` fp32 Adam 1e-3 steps from ``state`` (a partly trained network)."""
    torch.manual_seed(seed)
    model = build_model(dict(SPEC), num_classes=10, dropout=None)
    model.load_state_dict(state)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    regularized = kernel_regularization_terms(model)
    for i in range(steps):
        index = torch.randint(0, x.shape[0], (batch,))
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[index]), y[index]) + regularization_loss(regularized)
        loss.backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def print_table(title: str, rows: list[dict]) -> None:
    base = next(r["seconds"] for r in rows if r["variant"] == "fp32")
    print(f"\n{title}\n")
    print("| computation | loss | gradient | stem | other convs | BatchNorm γ/β | head | BN running var | "
          "step ms | time / fp32 |")
    print("|---|" + "---:|" * 9)
    for r in rows:
        if r["variant"].startswith("sampling"):
            print(f"| {r['variant']} | | {r['all']:.1e} | {r['stem']:.1e} | {r['convs']:.1e} | "
                  f"{r['batchnorm']:.1e} | {r['head']:.1e} | | | |")
            continue
        print(f"| {r['variant']} | {r['loss']:.1e} | {r['all']:.1e} | {r['stem']:.1e} | {r['convs']:.1e} | "
              f"{r['batchnorm']:.1e} | {r['head']:.1e} | {r['running_var']:.1e} | {1000 * r['seconds']:.1f} | "
              f"{r['seconds'] / base:.2f} |")


def main() -> None:
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8, help="batches the errors are averaged over")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=300, help="fp32 steps before the second table")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per row")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fashion-mnist", type=Path, default=FMNIST, help="folder of the IDX files")
    args = parser.parse_args()
    if not (args.fashion_mnist / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"{args.fashion_mnist}: no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: "
          f"{torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()}")
    x, y = fashion_mnist(max(20_000, args.batches * args.batch), args.fashion_mnist)
    torch.manual_seed(args.seed)
    state = {k: v.clone() for k, v in build_model(dict(SPEC), num_classes=10, dropout=None).state_dict().items()}
    held_out = slice(x.shape[0] - args.batches * args.batch, None)  # error batches never trained on
    print_table("At initialisation (relative errors against the same step in float64):",
                measure(state, x[held_out], y[held_out], args.batches, args.batch, args.repeats))
    trained = warm(state, x[:held_out.start], y[:held_out.start], args.warmup_steps, args.batch, args.seed)
    print_table(f"After {args.warmup_steps} fp32 Adam steps:",
                measure(trained, x[held_out], y[held_out], args.batches, args.batch, args.repeats))


if __name__ == "__main__":
    main()
