"""stmclf summary: the Keras-style layer table and totals of the config's training.model."""
from __future__ import annotations

from conftest import error_of

from pathlib import Path

import pytest
import torch

from stmclf.cli.main import main
from stmclf.models import build_model
from stmclf.models.summary import render_summary, summary_totals

TRAINING = """
  batch_size: 8
  epochs: 1
  optimizer:
    Adam:
      learning_rate: 0.001
"""


def _config(tmp_path: Path, model: str, extra_training: str = "", dataset: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"{dataset}\ntraining:\n  model:\n{model}{extra_training}{TRAINING}")
    return path


MNV1 = """    name: mobilenet
    version: v1
    alpha: 0.25
    input_shape: (96, 96, 3)
"""
TEN_CLASSES = "dataset:\n  class_names: [a, b, c, d, e, f, g, h, i, j]\n"


def test_reference_totals_and_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--config", str(_config(tmp_path, MNV1, dataset=TEN_CLASSES))]) == 0
    out = capsys.readouterr().out
    assert "Total params: 221,114" in out and "Trainable params: 215,642" in out
    assert "Non-trainable params: 5,472" in out
    assert "Layers: 88 (indices 0..87); backbone transfer copies layers 0..84" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 7}
    assert "conv_pw_13_bn" in rows["84"] and "BatchNormalization" in rows["84"] and "1,024" in rows["84"]
    assert "conv_pad_2" in rows["10"] and "(None, 49, 49, 16)" in rows["10"]
    assert "predictions" in rows["87"] and "(None, 10)" in rows["87"] and "2,570" in rows["87"]


def test_frozen_layers_dropout_and_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("cat", "dog", "owl"):
        (tmp_path / "data" / name).mkdir(parents=True)
    dataset = f"dataset:\n  training_path: {tmp_path / 'data'}\n"
    config = _config(tmp_path, MNV1, "  dropout: 0.2\n  frozen_layers: (0:-1)\n", dataset)
    assert main(["summary", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Trainable params: 771" in out  # the 256 x 3 Dense only
    assert "Layers: 89" in out and "dropout" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 7}
    assert "│ no " in rows["84"] and "│ yes " in rows["88"]
    assert main(["summary", "--config", str(config), "--num_classes", "4"]) == 0
    assert "Trainable params: 1,028" in capsys.readouterr().out


def test_timm_model_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    model = "    name: timm/mobilenetv2_035\n    input_shape: (64, 64, 3)\n"
    assert main(["summary", "--config", str(_config(tmp_path, model)), "--num_classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "conv_stem" in out and "classifier" in out and "Total params: 416,613" in out


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--config", str(_config(tmp_path, MNV1))]) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith("stmclf: error: dataset") and "\n" not in err
    bad = MNV1.replace("alpha: 0.25", "alpha: 0.25\n    depth: 8")
    assert main(["summary", "--config", str(_config(tmp_path, bad, dataset=TEN_CLASSES))]) == 2
    assert "training.model.depth: unexpected attribute" in capsys.readouterr().err
    # a model file with only its input size in training.model: the file is named, not training.model.name
    file_config = _config(tmp_path, "    input_shape: (32, 32, 3)\n", dataset=TEN_CLASSES)
    assert main(["summary", "--config", str(file_config), "--general.model_path", "model.pt"]) == 2
    assert capsys.readouterr().err == ("stmclf: error: general.model_path: stmclf summary shows the layers of a "
                                       "training.model (name, version, ...), not of a model file\n")


def test_render_summary_totals(capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model({"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}, 10, None)
    assert summary_totals(model) == (78_666, 78_186, 480)
    render_summary(model)
    out = capsys.readouterr().out
    assert "Model: resnet_v1_depth_8" in out and "Total params: 78,666" in out and "AveragePooling2D" in out


def test_lightning_summary_counts_the_models_flops_per_image() -> None:
    """Lightning's model summary runs the module's example image (uint8, rescaled on the way in
    like a batch): layer sizes and FLOPs per image, not "Total FLOPs: 0"."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from stmclf.training.module import ClassifierModule

    module = ClassifierModule({"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)},
                              [str(i) for i in range(10)], [32, 32, 3], (1 / 127.5, -1.0), {"Adam": {}})
    expected = []

    def count(layer, inputs, output):  # 2 × multiply-accumulates of each convolution and dense layer
        if isinstance(layer, torch.nn.Conv2d):
            kh, kw = layer.kernel_size
            expected.append(2 * output.numel() * layer.in_channels // layer.groups * kh * kw)
        elif isinstance(layer, torch.nn.Linear):
            expected.append(2 * layer.in_features * layer.out_features)

    hooks = [m.register_forward_hook(count) for m in module.model.modules()]
    with torch.no_grad():
        module.eval()(module.preprocess(module.example_input_array))
    for hook in hooks:
        hook.remove()
    summary = ModelSummary(module.train(), max_depth=1)
    assert len(expected) == 10 and summary.total_flops == sum(expected) > 20_000_000
    assert summary.in_sizes[0] == [1, 3, 32, 32] and summary.out_sizes[0] == [1, 10]


def test_model_file_beside_training_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config with both training.model and general.model_path (two model sources, refused by fit)
    is refused by summary too, instead of showing training.model as if the file were not there."""
    config = _config(tmp_path, MNV1, dataset=TEN_CLASSES)
    assert main(["summary", "--config", str(config), "--general.model_path", "model.pt"]) == 2
    assert capsys.readouterr().err == ("stmclf: error: general.model_path: stmclf summary shows the layers of a "
                                       "training.model (name, version, ...), not of a model file\n")
