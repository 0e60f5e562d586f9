"""The reference service's input pipeline, measured on this machine: TensorFlow ``tf.data``.

    .venv/bin/python benchmarks/reference_loader.py FOLDER --size 128 [--batch 64] [--channels 3]

What the reference's ``image_dataset_from_directory`` loader does per file, as tf.data ops with
``AUTOTUNE`` parallelism: ``read_file`` → ``decode_image(channels, expand_animations=False)`` →
``tf.image.resize`` (bilinear, float32) → ``batch`` → ``prefetch``. Files are listed in Python
(class folders sorted, as the reference does); one pass over every file, cold (TensorFlow caches
nothing between runs), timed from the first batch on (start-up left out, as our epoch-1 figure
"after the first batch"). Prints one JSON line: ``{"images": N, "seconds": s, "img_per_s": r}``.

Runs in its own process (``benchmarks/data_throughput.py`` calls it): TensorFlow and torch are
not imported into one interpreter here. TensorFlow's inter-op pool follows the CPU affinity, so
``taskset -c 0,1`` pins both loaders to the same two cores.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def list_files(folder: str) -> list[str]:
    root = Path(folder)
    return [str(path) for cls in sorted(p for p in root.iterdir() if p.is_dir())
            for path in sorted(cls.iterdir()) if path.is_file()]


def measure(paths: list[str], size: int, channels: int, batch: int) -> dict:
    import tensorflow as tf

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        return tf.image.resize(image, (size, size), method="bilinear")

    dataset = (tf.data.Dataset.from_tensor_slices(paths)
               .map(load, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch).prefetch(tf.data.AUTOTUNE))
    iterator = iter(dataset)
    first = next(iterator)
    start, images = time.perf_counter(), 0
    for batch_images in iterator:
        images += int(batch_images.shape[0])
    seconds = time.perf_counter() - start
    assert first.shape[1:] == (size, size, channels)
    return {"images": images, "seconds": round(seconds, 3), "img_per_s": round(images / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # stmclf
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    paths = list_files(args.folder)
    if len(paths) <= args.batch:
        raise SystemExit(f"{args.folder}: {len(paths)} files; need more than one batch of {args.batch}")
    print(json.dumps(measure(paths, args.size, args.channels, args.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
