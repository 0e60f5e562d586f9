"""The reference service's training step, measured on this machine: tf_keras ``model.fit``.

    .venv/bin/python benchmarks/reference_train.py resnet8|mobilenetv2 [--batch 64] [--steps 60]

The reference trains with ``tf_keras`` ``Model.fit`` (Adam 1e-3, sparse categorical cross-entropy,
accuracy metric) on batches its tf.data pipeline has already rescaled. This script builds the
same architecture as the model zoo's (ResNet v1 depth 8 @32: a 16-filter stem, one basic block per
stage at 16/32/64 filters, 1×1 projection shortcuts, He-normal kernels with L2 1e-4, 8×8 average
pooling, softmax dense;
MobileNetV2 α0.35 @128: ``tf_keras.applications.MobileNetV2`` without top, global average pooling,
softmax dense), feeds in-memory float batches already rescaled to [-1, 1] (no input pipeline,
no augmentation) and times ``fit`` from the second epoch on, so graph tracing is left out. It is
the "raw TF step" column of ``shared/spec/performance_targets.md``, measured in the same run as
``benchmarks/train_throughput.py``'s PyTorch figures (which call it with ``--reference``).

Runs in its own process: TensorFlow and torch are not imported into one interpreter here.
TensorFlow's thread pools follow the CPU affinity, so ``taskset -c 0,1`` pins both to the same
two cores. Prints one JSON line: ``{"model": m, "batch": b, "images": n, "seconds": s, "img_per_s": r}``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SIZES = {"resnet8": 32, "mobilenetv2": 128}


def resnet8(keras, classes: int, l2: float = 1e-4):
    layers = keras.layers

    def conv(x, filters, strides=1, kernel=3):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal",
                             kernel_regularizer=keras.regularizers.l2(l2) if l2 else None)(x)

    inputs = keras.Input((32, 32, 3))
    x = layers.Activation("relu")(layers.BatchNormalization()(conv(inputs, 16)))
    for stage, filters in enumerate((16, 32, 64)):
        strides = 1 if stage == 0 else 2
        y = layers.Activation("relu")(layers.BatchNormalization()(conv(x, filters, strides)))
        y = layers.BatchNormalization()(conv(y, filters))
        if stage:
            x = conv(x, filters, strides, kernel=1)
        x = layers.Activation("relu")(layers.add([x, y]))
    x = layers.Flatten()(layers.AveragePooling2D(8)(x))
    return keras.Model(inputs, layers.Dense(classes, activation="softmax")(x))


def mobilenetv2(keras, classes: int):
    base = keras.applications.MobileNetV2(input_shape=(128, 128, 3), alpha=0.35, include_top=False, weights=None)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    return keras.Model(base.input, keras.layers.Dense(classes, activation="softmax")(x))


def measure(model_name: str, batch: int, steps: int, classes: int = 10) -> dict:
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    tf.keras.utils.set_random_seed(0)
    model = (resnet8 if model_name == "resnet8" else mobilenetv2)(keras, classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    size = SIZES[model_name]
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 256, (batch * steps, size, size, 3)).astype("float32") / 127.5 - 1.0)
    labels = rng.integers(0, classes, batch * steps)
    times: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(images, labels, batch_size=batch, epochs=3, shuffle=False, verbose=0, callbacks=[EpochTimer()])
    seconds = min(times[1:])
    return {"model": model_name, "batch": batch, "images": batch * steps, "seconds": round(seconds, 3),
            "img_per_s": round(batch * steps / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # stmclf
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="training steps per timed epoch")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.batch, args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
