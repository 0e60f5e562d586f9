"""Per-tensor int8 SNR report of a QDQ ONNX against its float ONNX (``stmclf export --int8 --per-layer``)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import COLORS, config_text, write_image_folder

CLASSES = sorted(COLORS)
RESCALING = (1 / 127.5, -1.0)
SPEC = {"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}


def _train(train_dir: Path, steps: int = 40):
    from stmclf.data.datamodule import ImageFormat, load_image
    from stmclf.training.module import ClassifierModule

    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # denormals make CPU training crawl (as in stmclf fit)
    module = ClassifierModule(model_spec=dict(SPEC), class_names=CLASSES, input_shape=[32, 32, 3],
                              rescaling=RESCALING, optimizer="Adam")
    files = sorted(train_dir.rglob("*.png"))
    images = torch.from_numpy(np.stack([load_image(str(f), ImageFormat(32, 32)).transpose(2, 0, 1) for f in files]))
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    optimizer = torch.optim.Adam(module.parameters(), lr=0.005)
    module.train()
    for step in range(steps):
        index = torch.randperm(len(images), generator=torch.Generator().manual_seed(step))[:16]
        loss = F.cross_entropy(module(module.preprocess(images[index])), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval(), images.numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from stmclf.export.images import pin_input_range, rescale
    from stmclf.export.onnx_export import export_onnx
    from stmclf.export.onnx_qdq import quantize_qdq
    from stmclf.training.model_file import MODEL_FORMAT

    tmp = tmp_path_factory.mktemp("per_layer")
    train_dir = write_image_folder(tmp / "train", per_class=12)
    module, images = _train(train_dir)
    model_file = tmp / "best_model.pt"
    torch.save({"format": MODEL_FORMAT, "epoch": 0, "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict()}, model_file)
    onnx = export_onnx(module, tmp / "best_model.onnx", batch_size=1)
    qdq = quantize_qdq(onnx, tmp / "best_model_quant_qdq_pc.onnx", rescale(pin_input_range(images), RESCALING))
    return {"tmp": tmp, "onnx": onnx, "qdq": qdq, "images": images, "train_dir": train_dir, "pt": model_file}


def test_tensor_pairs_name_float_tensors(exported):
    import onnx

    from stmclf.export.per_layer import tensor_pairs

    float_model = onnx.load(str(exported["onnx"]))
    produced = {o for n in float_model.graph.node for o in n.output}
    weights = {i.name for i in float_model.graph.initializer}
    pairs = tensor_pairs(onnx.load(str(exported["qdq"])))
    kinds = {p.kind for p in pairs}
    assert kinds == {"input", "activation", "output", "weight"}
    for pair in pairs:
        if pair.kind == "weight":
            assert pair.float_name in weights
        elif pair.kind == "input":
            assert pair.float_name == "input"
        else:
            assert pair.float_name in produced, pair
    assert [p.float_name for p in pairs if p.kind == "output"] == ["probabilities"]
    # one weight per convolution / dense layer (7 + 2 projection convs + dense), no int32 bias
    assert sum(p.kind == "weight" for p in pairs) == 10


def test_per_layer_report_sorted_finite_and_csv(exported, tmp_path, capsys):
    from stmclf.export.per_layer import CSV_NAME, per_layer_report

    rows, path = per_layer_report(exported["onnx"], exported["qdq"], exported["images"][:6], tmp_path)
    assert path == tmp_path / CSV_NAME and path.is_file()
    assert len(rows) >= 20
    values = [r.snr_db for r in rows]
    assert not any(math.isnan(v) for v in values)
    finite = [v for v in values if math.isfinite(v)]
    assert len(finite) >= len(values) - 1 and all(v > 0 for v in finite)
    assert values == sorted(values)  # worst first
    # an int8 activation is a few tens of dB from its float tensor; weights (per-channel int8) better still
    assert 10 < np.median(finite) < 80
    layers = {r.layer for r in rows if r.kind == "activation"}
    assert {"activation", "conv2d_5", "dense"} <= layers
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    assert [int(r["rank"]) for r in table] == list(range(1, len(rows) + 1))
    assert table[0]["tensor"] == rows[0].tensor and float(table[0]["snr_db"]) == pytest.approx(rows[0].snr_db,
                                                                                                abs=0.01)
    assert "worst first" in capsys.readouterr().out


def test_snr_definition():
    from stmclf.export.per_layer import _Accumulator, snr_db

    acc = _Accumulator()
    reference = np.array([3.0, 4.0])
    acc.add(reference, reference + np.array([0.3, -0.4]))  # noise energy = 1% of the signal's
    assert acc.snr_db() == pytest.approx(20.0)
    assert snr_db(1.0, 0.0) == math.inf and math.isnan(snr_db(0.0, 0.0))


def test_export_cli_per_layer(exported, tmp_path):
    from stmclf.cli.main import main

    config = tmp_path / "c.yaml"
    config.write_text(config_text(exported["train_dir"], tmp_path / "run", tmp_path / "mlruns"))
    assert main(["export", "--config", str(config), "--ckpt", str(exported["pt"]), "--int8", "--format", "onnx",
                 "--per-layer"]) == 0
    csv_path = tmp_path / "run" / "quantized_models" / "per_layer_snr.csv"
    with open(csv_path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) >= 20
    # the QDQ model is needed: one-line errors before any export work
    assert main(["export", "--config", str(config), "--ckpt", str(exported["pt"]), "--int8", "--format", "tflite",
                 "--per-layer"]) == 2
    assert main(["export", "--config", str(config), "--ckpt", str(exported["pt"]), "--no_int8", "--format", "onnx",
                 "--per-layer"]) == 2


def test_per_layer_report_names_layers_as_keras_does(exported, keras, tmp_path, capsys):
    """A .h5 whose layer names torch cannot use as module keys (a '.': a nested model named like
    Keras Applications' ``mobilenetv2_0.35_96``, a Dense ``head.fc``): the report's layers are the
    Keras names (a nested model's layers as outer/inner), not the sanitised keys."""
    from stmclf.cli.main import main

    L = keras.layers
    inner_in = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="c1")(inner_in))
    inner = keras.Model(inner_in, L.GlobalAveragePooling2D(name="gap")(L.ReLU(name="r")(x)), name="bb_0.5_8")
    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, L.Dense(len(CLASSES), name="head.fc")(inner(inputs, training=False))).save(tmp_path / "dot.h5")
    config = tmp_path / "c.yaml"
    config.write_text(config_text(exported["train_dir"], tmp_path / "run", tmp_path / "mlruns"))
    assert main(["export", "--config", str(config), "--ckpt", str(tmp_path / "dot.h5"), "--int8", "--format", "onnx",
                 "--per-layer"]) == 0
    with open(tmp_path / "run" / "quantized_models" / "per_layer_snr.csv", newline="") as handle:
        layers = {row["layer"] for row in csv.DictReader(handle)}
    assert {"bb_0.5_8/c1", "bb_0.5_8/r", "head.fc"} <= layers, layers
    assert not any("bb_0_5_8" in name or "head_fc" in name for name in layers), layers
    assert "head.fc" in capsys.readouterr().out
