"""Quantization-aware training (``training.qat``): fake quantizers, where they go, the callback
in a real fit, and export of the result."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import config_text
from stmclf.errors import ConfigError

RESNET8 = """\
  model:
    name: resnet
    version: v1
    depth: 8
    input_shape: (32, 32, 3)
"""
SPEC = {"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}


def _module(spec=SPEC):
    from stmclf.training.module import ClassifierModule

    torch.manual_seed(0)
    return ClassifierModule(model_spec=dict(spec), class_names=["a", "b", "c"], input_shape=list(spec["input_shape"]),
                            rescaling=(1 / 127.5, -1.0), optimizer="Adam")


def test_settings_parse_and_errors():
    from stmclf.training.qat import QatSettings

    assert QatSettings.parse(None) is None
    assert QatSettings.parse({}) == QatSettings()
    settings = QatSettings.parse({"start_epoch": 3, "freeze_bn_epoch": 5})
    assert (settings.start_epoch, settings.freeze_bn_epoch, settings.per_channel) == (3, 5, True)

    class PerTensor:
        granularity = "per_tensor"
    assert QatSettings.parse({"start_epoch": 1}, PerTensor()).per_channel is False
    for bad, key in (({"start": 1}, "training.qat.start"), ({"start_epoch": -1}, "training.qat.start_epoch"),
                     ({"freeze_bn_epoch": 1.5}, "training.qat.freeze_bn_epoch"),
                     ({"averaging_constant": 0}, "training.qat.averaging_constant"),
                     ({"activations": "yes"}, "training.qat.activations"), ([1], "training.qat")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            QatSettings.parse(bad)


def test_plan_matches_the_int8_graph():
    """Activation quantizers where the QDQ/TFLite graph has int8 tensors; BN folded into its conv."""
    from stmclf.training.qat import plan_model

    plan = plan_model(_module().model)
    assert [name for name, _ in plan.activations] == [
        "activation", "activation_1", "batch_normalization_2", "activation_2", "activation_3", "conv2d_5",
        "batch_normalization_4", "activation_4", "activation_5", "conv2d_8", "batch_normalization_6",
        "activation_6", "dense"]
    folded = {name: bn is not None for name, _, bn in plan.weights}
    assert len(folded) == 10 and not folded["conv2d_5"] and not folded["conv2d_8"] and not folded["dense"]
    assert sum(folded.values()) == 7


def test_weight_fake_quant_is_int8_symmetric_and_folds_bn():
    from stmclf.training.qat import fake_quantize_weight

    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    q = fake_quantize_weight(w)
    absmax = w.abs().flatten(1).amax(1)
    levels = q.flatten(1) / (absmax / 127)[:, None]
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    assert torch.allclose(q.abs().flatten(1).amax(1), absmax)
    s = torch.rand(8) + 0.1
    s[0] = -s[0]
    # per channel: quantizing the BN-folded weight and unfolding equals quantizing w
    assert torch.allclose(fake_quantize_weight(w, True, s), q, atol=1e-6)
    # per tensor: the folded weight is what is quantized
    folded = fake_quantize_weight(w, False, s) * s.view(-1, 1, 1, 1)
    grid = (w * s.view(-1, 1, 1, 1)).abs().max() / 127
    assert torch.allclose(folded / grid, (folded / grid).round(), atol=1e-3)
    w.requires_grad_(True)
    fake_quantize_weight(w, True, s).sum().backward()
    assert torch.allclose(w.grad, torch.ones_like(w))  # straight-through


def test_activation_fake_quant_matches_onnxruntime_parameters():
    from stmclf.training.qat import ActivationFakeQuant, activation_qparams

    scale, zero = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0))
    assert float(scale) == pytest.approx(4 / 255) and int(zero) == round(-128 + 1 / (4 / 255))
    scale, zero = activation_qparams(torch.tensor(0.5), torch.tensor(2.0))  # range extended to 0
    assert float(scale) == pytest.approx(2 / 255) and int(zero) == -128
    fq = ActivationFakeQuant(averaging_constant=0.5)
    x = torch.linspace(-1, 3, 101)
    y = fq(x)
    assert bool(fq.initialized) and float(fq.min_val) == -1 and float(fq.max_val) == 3
    scale, zero = activation_qparams(fq.min_val, fq.max_val)
    codes = y / scale + zero
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    fq(torch.tensor([-3.0, 5.0]))  # moving average: halfway
    assert float(fq.min_val) == pytest.approx(-2.0) and float(fq.max_val) == pytest.approx(4.0)
    before = (float(fq.min_val), float(fq.max_val))
    fq(torch.tensor([-100.0, 100.0]), observe=False)
    assert (float(fq.min_val), float(fq.max_val)) == before


@pytest.mark.parametrize("spec", [SPEC, {"name": "mobilenet", "version": "v2", "alpha": 0.35,
                                         "input_shape": (32, 32, 3)}], ids=["resnet8", "mobilenet_v2"])
def test_attach_detach_keeps_the_float_model(spec):
    from stmclf.training.qat import FakeQuantizer, QatSettings

    module = _module(spec)
    keys = list(module.state_dict())
    x = module.preprocess(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    quantizer = FakeQuantizer(module.model, QatSettings())
    quantizer.attach()
    module.train()
    module(x).sum().backward()
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    assert list(module.state_dict()) == keys
    assert all(o.initialized for o in quantizer.observers.values())
    module.eval()
    with torch.no_grad():
        simulated = module(x)
        quantizer.detach()
        after = module(x)
        float_copy = _module(spec)
        float_copy.load_state_dict(module.state_dict())
        assert torch.equal(after, float_copy.eval()(x))  # detach restores the float model exactly
        assert not torch.equal(simulated, after)  # the int8 simulation differs from float
        quantizer.attach()  # observers keep their ranges in evaluation
        assert torch.equal(module(x), simulated)
        quantizer.detach()


def test_callback_state_round_trip():
    from stmclf.training.qat import QatCallback, QatSettings

    callback = QatCallback(QatSettings(start_epoch=1))
    callback.load_state_dict({"observers": {"activation": {"min": -1.0, "max": 2.0, "initialized": True}},
                              "started": True})
    state = callback.state_dict()
    assert state == {"observers": {"activation": {"min": -1.0, "max": 2.0, "initialized": True}}, "started": True}


def test_fit_with_qat_then_load_and_export(tmp_path, image_folder):
    from stmclf.config import load_config
    from stmclf.export import export_run
    from stmclf.training.fit import train
    from stmclf.training.model_file import load_classifier

    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=2, model=RESNET8)
    text = text.replace("  batch_size: 8\n", "  batch_size: 8\n  qat:\n    start_epoch: 1\n    freeze_bn_epoch: 1\n")
    path = tmp_path / "qat.yaml"
    path.write_text(text)
    cfg = load_config(["--config", str(path)])
    assert cfg.training.qat == {"start_epoch": 1, "freeze_bn_epoch": 1}
    result = train(cfg)
    assert result.epochs_run == 2
    log = (result.run_dir.log_file).read_text()
    assert "QAT: int8 fake quantization from epoch 2" in log and "BatchNorm statistics frozen" in log

    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert best["epoch"] == 1  # the best-model selection restarted with QAT: never a float epoch
    observers = best["callbacks"]["QatCallback"]["observers"]
    assert len(observers) == 13 and all(o["initialized"] for o in observers.values())
    for file in (result.best_checkpoint, result.last_checkpoint, result.best_model):
        module = load_classifier(file)
        assert list(module.state_dict()) == list(_module().state_dict())

    exported = export_run(cfg, result.best_model, tmp_path / "export", formats=("onnx",), int8=True)
    assert Path(exported["onnx"]).is_file() and Path(exported["onnx_qdq"]).is_file()
    assert exported.checks["onnx_max_diff"] < 1e-3
