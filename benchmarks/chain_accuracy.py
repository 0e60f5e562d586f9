"""The ResNet-8 Fashion-MNIST chain, per precision and seed: accuracy, int8 drop and wall time.

    .venv/bin/python benchmarks/chain_accuracy.py [--precision 32 bf16-mixed default] [--seeds 1 2 3]
        [--mode chain_tqe|training] [--jobs 1] [--epochs 15] [--device cpu|cuda] [--out chain.json]

The workload of performance_targets.md: full Fashion-MNIST (Debian's ``dataset-fashion-mnist``,
60,000 training PNGs, the 10,000 test PNGs as ``test_path``), ResNet-8 @32 RGB, 15 epochs, batch
128, Adam 1e-3, no augmentation, then (``chain_tqe``) int8 PTQ (per-channel, uint8 in / float
out) and the evaluation of every artifact. The reference: float test 89.15 %, int8 89.35 %, int8
TFLite 97,128 bytes, 8–9 minutes wall on 2 cores. Each (precision, seed) is one real
``stmclf run`` in its own process and run folder; ``--jobs`` of them run at once (each with
``cores / jobs`` threads), so a many-core machine or a GPU can run many seeds.

Prints one row per run (float and int8 test accuracy, TFLite size, wall and training seconds) and
one per precision (mean ± standard deviation, the difference of the means to fp32's).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
REFERENCE = {"float": 89.15, "int8": 89.35, "tflite_bytes": 97128, "wall_s": (480, 540)}

CONFIG = """general: {{project_name: chain_accuracy, global_seed: {seed}}}
operation_mode: {mode}
dataset:
  name: fashion_mnist
  training_path: {train}
  test_path: {test}
  seed: {seed}
preprocessing:
  rescaling: {{scale: 1/127.5, offset: -1}}
  resizing: {{aspect_ratio: fit, interpolation: bilinear}}
  color_mode: rgb
training:
  model:
    name: resnet
    version: v1
    depth: 8
    input_shape: (32, 32, 3)
  batch_size: 128
  epochs: {epochs}
  optimizer: {{Adam: {{learning_rate: 0.001}}}}
quantization:
  quantizer: TFlite_converter
  quantization_type: PTQ
  quantization_input_type: uint8
  quantization_output_type: float
  granularity: per_channel
  export_dir: quantized_models
mlflow: {{uri: {root}/mlruns}}
hydra: {{run: {{dir: {root}/run}}}}
trainer: {{enable_progress_bar: false, enable_model_summary: false, accelerator: {accelerator}}}
"""


def _dataset(work: Path, source: Path, max_per_split) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from stmclf.data.fetch import fetch_fashion_mnist

    out = fetch_fashion_mnist(work / "fashion_mnist", source=source, max_per_split=max_per_split)
    return out / "train", out / "test"


def _accuracy(run: Path, kind: str) -> float | None:
    path = run / "results.json"
    records = json.loads(path.read_text()) if path.exists() else []
    found = [r["accuracy"] for r in records if r["kind"] == kind and r["set"] == "test_set"]
    return found[-1] if found else None


def _tflite_bytes(run: Path) -> int | None:
    path = run / "quantized_models" / "quantized_model.tflite"
    return path.stat().st_size if path.exists() else None


def _stage_seconds(run: Path) -> dict[str, float]:
    """Training (stmclf.log's runtime line) and the export's own timings (export_summary.json)."""
    seconds: dict[str, float] = {}
    log = run / "stmclf.log"
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        match = re.search(r"Training runtime : ([0-9.]+) s", line)
        if match:
            seconds["training"] = float(match.group(1))
    summary = run / "quantized_models" / "export_summary.json"
    if summary.exists():
        seconds.update(json.loads(summary.read_text()).get("timings", {}))
    return seconds


def one_run(args, work: Path, train: Path, test: Path, precision: str, seed: int, threads: int) -> dict:
    root = work / f"{precision}_seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    config.write_text(CONFIG.format(seed=seed, mode=args.mode, train=train, test=test, epochs=args.epochs,
                                    root=root, accelerator="gpu" if args.device == "cuda" else "cpu"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), STMCLF_CACHE=str(root / "cache"),
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "stmclf.cli.main", "run", "--config", str(config), "--offline"]
    if precision != "default":  # "default": stmclf chooses (bf16-mixed where the CPU/GPU has bf16, else 32)
        command += ["--trainer.precision", precision]
    if args.no_mlflow:  # training only, through train() as the speed scripts call it
        command = [sys.executable, __file__, "--train-only", str(config), precision]
    start = time.perf_counter()
    with open(root / "stdout.log", "w") as log:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    run = root / "run"
    row = {"precision": precision, "seed": seed, "exit": code, "wall_s": round(wall, 1),
           "float": _accuracy(run, "float"), "int8": _accuracy(run, "int"), "tflite_bytes": _tflite_bytes(run),
           "seconds": _stage_seconds(run)}
    print(json.dumps(row), flush=True)
    return row


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def train_only(config: str, precision: str) -> None:
    """``--no-mlflow``: train and evaluate the best model without a journey (machines without MLflow)."""
    sys.path.insert(0, str(ROOT))
    from stmclf.config import load_config
    from stmclf.evaluate.mode import evaluate_trained
    from stmclf.training.fit import train

    argv = ["--config", config] + ([] if precision == "default" else ["--trainer.precision", precision])
    result = train(load_config(argv))
    evaluate_trained(result, result.run_dir.root)


def main() -> None:
    if sys.argv[1:2] == ["--train-only"]:
        return train_only(*sys.argv[2:4])
    sys.path.insert(0, str(ROOT))
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["32", "bf16-mixed"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--mode", default="chain_tqe", choices=["chain_tqe", "training"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--fashion-mnist", type=Path, default=FMNIST, help="folder of the four IDX files")
    parser.add_argument("--work", type=Path, default=None, help="where datasets and runs go (default: a temp dir)")
    parser.add_argument("--no-mlflow", action="store_true", help="training mode only, without MLflow")
    parser.add_argument("--max-per-split", type=int, default=None, help="fewer images (smoke runs)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if not args.fashion_mnist.is_dir():
        raise SystemExit(f"{args.fashion_mnist}: no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist, "
                         "or --fashion-mnist DIR)")
    work = args.work or Path(tempfile.mkdtemp(prefix="chain_accuracy_"))
    train, test = _dataset(work, args.fashion_mnist, args.max_per_split)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // args.jobs)
    jobs = [(p, s) for s in args.seeds for p in args.precision]
    print(f"{len(jobs)} runs, {args.jobs} at once, {threads} threads each, {cores} cores, device {args.device}, "
          f"mode {args.mode}, {args.epochs} epochs; work dir {work}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: one_run(args, work, train, test, *job, threads), jobs))

    print("\n| precision | seed | float test % | int8 test % | int8 − float | int8 TFLite bytes | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        drop = f"{r['int8'] - r['float']:+.2f}" if r["int8"] is not None and r["float"] is not None else "—"
        print(f"| {r['precision']} | {r['seed']} | {r['float'] if r['float'] is not None else 'failed'} | "
              f"{r['int8'] if r['int8'] is not None else '—'} | {drop} | {r['tflite_bytes'] or '—'} | {r['wall_s']} |")
    print("\n| precision | runs | float test % (mean ± sd) | Δ mean vs fp32 | int8 test % | mean wall s |")
    print("|---|---|---|---|---|---|")
    floats = {p: [r["float"] for r in rows if r["precision"] == p and r["float"] is not None] for p in args.precision}
    base = statistics.mean(floats["32"]) if floats.get("32") else None
    for p in args.precision:
        ints = [r["int8"] for r in rows if r["precision"] == p and r["int8"] is not None]
        walls = [r["wall_s"] for r in rows if r["precision"] == p]
        delta = f"{statistics.mean(floats[p]) - base:+.2f}" if base is not None and floats[p] else "—"
        print(f"| {p} | {len(floats[p])} | {_mean_std(floats[p])} | {delta} | {_mean_std(ints)} | "
              f"{statistics.mean(walls):.0f} |")
    stages = sorted({k for r in rows for k in r["seconds"]}, key=lambda k: (k != "training", k == "total"))
    if stages:
        print("\nWhere the time goes (mean seconds over the runs; export stages from export_summary.json):\n")
        print("| stage | " + " | ".join(args.precision) + " |")
        print("|---|" + "---|" * len(args.precision))
        for stage in stages:
            cells = []
            for p in args.precision:
                values = [r["seconds"][stage] for r in rows if r["precision"] == p and stage in r["seconds"]]
                cells.append(f"{statistics.mean(values):.1f}" if values else "—")
            print(f"| {stage} | " + " | ".join(cells) + " |")
    print(f"\nreference: float {REFERENCE['float']} %, int8 {REFERENCE['int8']} %, int8 TFLite "
          f"{REFERENCE['tflite_bytes']:,} bytes, wall {REFERENCE['wall_s'][0]}–{REFERENCE['wall_s'][1]} s (2 cores)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
