"""stmclf's opt-in training keys: label smoothing, class weights, EMA, MixUp/CutMix, precision,
gradient clipping and accumulation."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import config_text
from stmclf.cli.main import main
from stmclf.config import load_config
from stmclf.training.fit import class_weights, train
from stmclf.training.module import ClassifierModule

SPEC = {"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (32, 32, 3)}


def test_balanced_class_weights():
    weights = class_weights("balanced", [0, 0, 0, 1], 2)
    assert weights == pytest.approx([4 / 6, 2.0])
    assert class_weights([1, 2], [0, 1], 2) == [1.0, 2.0]
    with pytest.raises(Exception, match="training.class_weights: expecting 'balanced' or 3"):
        class_weights([1, 2], [0], 3)


def test_loss_uses_smoothing_and_weights():
    module = ClassifierModule(SPEC, ["a", "b"], [32, 32, 3], (1 / 255, 0.0), "Adam", label_smoothing=0.1,
                              class_weights=[1.0, 3.0])
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]), label_smoothing=0.1)
    module.forward = lambda images: logits  # the loss, not the network, is under test
    loss, batch_size = module._loss((torch.zeros(2, 3, 32, 32), labels), module.train_acc, training=True)
    assert torch.allclose(loss, expected) and batch_size == 2
    plain, _ = module._loss((torch.zeros(2, 3, 32, 32), labels), module.val_acc, training=False)
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(logits, labels))


def test_mixup_makes_soft_targets():
    module = ClassifierModule(SPEC, ["a", "b", "c"], [32, 32, 3], (1 / 255, 0.0), "Adam", mixup=0.4, cutmix=1.0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    mixed, soft = module.mix(images, labels)
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    assert mixed.shape == images.shape


@pytest.mark.slow
def test_extras_train_end_to_end(tmp_path, image_folder):
    extras = ("  label_smoothing: 0.1\n  class_weights: balanced\n  ema: 0.9\n  mixup: 0.2\n"
              "  precision: bf16-mixed\n  gradient_clip_val: 1.0\n  accumulate_grad_batches: 2\n")
    text = config_text(image_folder, tmp_path / "run", tmp_path / "ml").replace("  batch_size: 8\n",
                                                                              "  batch_size: 8\n" + extras)
    (tmp_path / "c.yaml").write_text(text)
    result = train(load_config(["--config", str(tmp_path / "c.yaml")]))
    checkpoint = torch.load(result.last_checkpoint, weights_only=True)
    assert "current_model_state" in checkpoint  # EMA weights saved as the model, raw weights kept for resume
    assert checkpoint["hyper_parameters"]["mixup"] == 0.2
    assert checkpoint["global_step"] == 4  # 27 images, batch 8 → 4 batches per epoch, 2 per step, 2 epochs


def test_conflicting_precision_is_an_error(tmp_path, image_folder, capsys):
    text = config_text(image_folder, tmp_path / "run", tmp_path / "ml").replace(
        "  batch_size: 8\n", "  batch_size: 8\n  precision: bf16-mixed\n").replace(
        "trainer:\n", "trainer:\n  precision: 32-true\n")
    (tmp_path / "c.yaml").write_text(text)
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "training.precision: conflicts with trainer.precision" in capsys.readouterr().err


def test_cpu_default_precision_is_bf16_where_native(tmp_path, image_folder):
    from stmclf.training.fit import _trainer_options
    from stmclf.training.precision import cpu_has_native_bf16, default_precision

    (tmp_path / "c.yaml").write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml"))
    native = cpu_has_native_bf16()
    assert default_precision({"accelerator": "cpu"}) == ("bf16-mixed" if native else None)
    assert default_precision({"accelerator": "cuda"}) is None
    options = _trainer_options(load_config(["--config", str(tmp_path / "c.yaml"), "--trainer.accelerator", "cpu"]))
    assert options.get("precision") == ("bf16-mixed" if native else None)
    explicit = _trainer_options(load_config(["--config", str(tmp_path / "c.yaml"), "--training.precision", "32"]))
    assert explicit["precision"] == "32"


def test_optimizers_use_fused_kernels_unless_clipping():
    from stmclf.training.optimizers import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer("Adam", params).defaults["fused"] is True
    assert build_optimizer({"SGD": {"momentum": 0.9}}, params).defaults["fused"] is True
    assert not build_optimizer("Adam", params, allow_fused=False).defaults.get("fused")
    assert "fused" not in build_optimizer("RMSprop", params).defaults or \
        not build_optimizer("RMSprop", params).defaults["fused"]


def test_epoch_loss_is_the_image_weighted_mean_of_the_batches(tmp_path, image_folder):
    from lightning.pytorch.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.batches, self.epochs = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.batches.append((float(outputs["loss"]), int(batch[1].shape[0]), trainer.current_epoch))

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs.append((float(trainer.callback_metrics["loss"]), float(trainer.callback_metrics["accuracy"])))

    (tmp_path / "c.yaml").write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml"))
    record = Record()
    train(load_config(["--config", str(tmp_path / "c.yaml"), "--training.precision", "32"]), callbacks=[record])
    assert len(record.epochs) == 2
    for epoch, (loss, accuracy) in enumerate(record.epochs):
        rows = [(value, n) for value, n, e in record.batches if e == epoch]
        assert len(rows) > 1
        assert loss == pytest.approx(sum(v * n for v, n in rows) / sum(n for _, n in rows), rel=1e-5)
        assert 0.0 <= accuracy <= 1.0


def test_freed_memory_is_kept_on_glibc():
    import platform

    from stmclf.training.allocator import keep_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected
    assert keep_freed_memory() is expected  # idempotent


def test_nvml_probe_is_skipped_only_where_nvml_is_missing(monkeypatch):
    from stmclf.training.cuda_probe import skip_absent_nvml

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # what importing Lightning sets
    available = torch.cuda.is_available()
    missing = torch.cuda._device_count_nvml() < 0
    assert skip_absent_nvml() is missing
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == ("0" if missing else "1")
    assert torch.cuda.is_available() is available  # the same answer either way
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "0")
    assert skip_absent_nvml() is False  # not set by Lightning: left alone


def test_batch_seeding_draws_what_torch_manual_seed_draws():
    """The per-batch re-seed (exact resume) seeds Python, NumPy and torch's CPU generator as
    ``torch.manual_seed`` and ``seed_everything`` would, without its per-call CUDA probing."""
    import random

    import numpy as np

    from stmclf.training.progress import _seed_all, batch_seed

    seed = batch_seed(7, 2, 5)
    _seed_all(seed)
    ours = (random.random(), np.random.rand(), torch.rand(3), torch.randint(0, 9, (4,)))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    theirs = (random.random(), np.random.rand(), torch.rand(3), torch.randint(0, 9, (4,)))
    assert ours[:2] == theirs[:2] and torch.equal(ours[2], theirs[2]) and torch.equal(ours[3], theirs[3])
    _seed_all(seed + 1)
    assert not torch.equal(torch.rand(3), theirs[2])


@pytest.mark.parametrize("text", ["32", "'32'", "bf16-mixed"])
def test_precision_given_as_number_or_text(tmp_path, image_folder, text):
    from stmclf.training.fit import _trainer_options

    config = config_text(image_folder, tmp_path / "run", tmp_path / "ml").replace(
        "  batch_size: 8\n", f"  batch_size: 8\n  precision: {text}\n")
    (tmp_path / "c.yaml").write_text(config)
    options = _trainer_options(load_config(["--config", str(tmp_path / "c.yaml"), "--trainer.precision",
                                            text.strip("'")]))
    assert options["precision"] == text.strip("'")
