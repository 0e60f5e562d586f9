"""The reference's train → quantize → evaluate chain, rebuilt on TensorFlow and timed on this machine.

    .venv/bin/python benchmarks/reference_chain.py TRAIN_DIR TEST_DIR [--epochs 15] [--batch 128]
        [--seed 1] [--out reference_chain.json]

What ST's service does for ``benchmarks/chain_accuracy.py``'s ResNet-8 Fashion-MNIST chain, with
the same Keras APIs (tf_keras, as the service uses): ``image_dataset_from_directory`` (RGB, 32×32
bilinear, batch 128, 20 % validation split of the training folder, shuffled with the seed), a
``Rescaling(1/127.5, -1)`` input layer, ResNet v1 depth 8 (He-normal, L2 1e-4 on every convolution;
the architecture of ``benchmarks/reference_train.py``), ``fit`` with Adam 1e-3 for ``--epochs``
epochs keeping the best ``val_accuracy`` weights (ModelCheckpoint), the float model evaluated on
the validation and test sets, then post-training quantization with ``TFLiteConverter`` (per-channel,
uint8 input, float output, 5 % of the training images as representative data) and the int8 model
evaluated on the test set through ``tf.lite.Interpreter`` one image at a time, as the service does.

It is not the service itself (no Hydra, MLflow or report), so it is a lower bound on the service's
wall time. Runs in its own process (TensorFlow only). Prints the stage times and one JSON line.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_train import resnet8  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # stmclf
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_dir")
    parser.add_argument("test_dir")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calibration", type=float, default=0.05, help="fraction of the training images")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    seconds: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 1)
        print(f"{name:<22} {seconds[name]:8.1f} s", flush=True)
        return now

    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(args.seed)
    t = stage("import_tensorflow", start)
    common = dict(labels="inferred", label_mode="int", color_mode="rgb", batch_size=args.batch, image_size=(32, 32),
                  interpolation="bilinear", seed=args.seed)
    train = keras.utils.image_dataset_from_directory(args.train_dir, validation_split=0.2, subset="training",
                                                     shuffle=True, **common)
    val = keras.utils.image_dataset_from_directory(args.train_dir, validation_split=0.2, subset="validation",
                                                   shuffle=True, **common)
    test = keras.utils.image_dataset_from_directory(args.test_dir, shuffle=False, **common)
    train, val, test = (d.prefetch(tf.data.AUTOTUNE) for d in (train, val, test))
    t = stage("list_datasets", t)

    body = resnet8(keras, 10, l2=1e-4)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, body(keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    work = Path(tempfile.mkdtemp(prefix="reference_chain_"))
    best = work / "best_model.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(str(best), monitor="val_accuracy", mode="max",
                                                 save_best_only=True)
    model.fit(train, validation_data=val, epochs=args.epochs, callbacks=[checkpoint], verbose=2)
    t = stage("training", t)

    model = keras.models.load_model(best)
    float_val = model.evaluate(val, verbose=0)[1] * 100
    float_test = model.evaluate(test, verbose=0)[1] * 100
    t = stage("evaluate_float", t)

    count = sum(int(b[1].shape[0]) for b in train)  # one more pass, as the service's split helper does
    calibration = train.unbatch().take(max(1, int(args.calibration * count))).batch(1)

    def representative():
        for image, _ in calibration:
            yield [tf.cast(image, tf.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    tflite = converter.convert()
    (work / "quantized_model.tflite").write_bytes(tflite)
    t = stage("quantization", t)

    interpreter = tf.lite.Interpreter(model_content=tflite, num_threads=len(os.sched_getaffinity(0)))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    correct = total = 0
    for images, labels in test:
        for image, label in zip(images.numpy(), labels.numpy()):
            # the float model's input is raw pixels (Rescaling inside): quantize them with the input's parameters
            q = np.clip(np.round(image / scale + zero), 0, 255).astype(np.uint8)[None]
            interpreter.set_tensor(inp["index"], q)
            interpreter.invoke()
            correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == label)
            total += 1
    int8_test = 100 * correct / total
    t = stage("evaluate_int8", t)
    wall = round(time.perf_counter() - start, 1)
    row = {"seed": args.seed, "epochs": args.epochs, "float_val": round(float_val, 2), "float": round(float_test, 2),
           "int8": round(int8_test, 2), "tflite_bytes": len(tflite), "wall_s": wall, "seconds": seconds}
    print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
