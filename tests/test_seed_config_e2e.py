"""ST's own training_config.yaml example, unchanged except for its paths, trains and resumes."""
from __future__ import annotations

import csv

import pytest
import torch

from conftest import write_image_folder
from stmclf.cli.main import main
from test_config import SEED_EXAMPLE

FLOWERS = {"daisy": (240, 240, 240), "dandelion": (240, 220, 0), "roses": (200, 0, 30),
           "sunflowers": (250, 180, 0), "tulips": (230, 60, 140)}


@pytest.fixture
def keras_imagenet_file(tmp_path, monkeypatch):
    """A Keras MobileNetV2-0.35@224 no-top weights file under the name Keras downloads, in the cache."""
    import torchvision.io  # noqa: F401  (load torch's native libraries before TensorFlow's)
    import tf_keras

    cache = tmp_path / "cache"
    monkeypatch.setenv("STMCLF_CACHE", str(cache))
    model = tf_keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(224, 224, 3))
    target = cache / "keras-applications"
    target.mkdir(parents=True)
    model.save_weights(target / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    return target


@pytest.mark.slow
def test_seed_training_config_trains_and_resumes(tmp_path, keras_imagenet_file, monkeypatch):
    data = write_image_folder(tmp_path / "flower_photos", per_class=8, size=(60, 80), fmt="jpg", classes=FLOWERS)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "training_config.yaml"
    config.write_text(SEED_EXAMPLE.format(train=data).replace("pretrained_weights: None", "pretrained_weights: imagenet")
                      .replace("   frozen_layers: (0:-1)\n", ""))
    assert main(["fit", "--config", str(config), "--training.epochs", "1", "--trainer.enable_progress_bar", "false"]) == 0
    runs = sorted((tmp_path / "experiments_outputs").glob("20*"))
    assert len(runs) == 1
    run = runs[0]
    log = (run / "stmclf.log").read_text()
    assert "Pretrained weights : ImageNet weights from" in log
    last = run / "saved_models" / "last_augmented_model.ckpt"
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert list(hparams["data_augmentation"]) == ["random_contrast", "random_flip"]
    assert hparams["class_names"] == sorted(FLOWERS)

    resume = tmp_path / "resume.yaml"
    text = config.read_text().replace("      name: mobilenet\n      version: v2\n      alpha: 0.35\n"
                                      "      pretrained_weights: imagenet\n      input_shape: (224, 224, 3)\n", "")
    text = text.replace("   model:\n", f"   resume_training_from: {last}\n")
    text = text.replace("dir: ./experiments_outputs/${now:%Y_%m_%d_%H_%M_%S}", "dir: ./experiments_outputs/resumed")
    resume.write_text(text)
    assert main(["run", "--config", str(resume), "--training.epochs", "2",
                 "--trainer.enable_progress_bar", "false"]) == 0
    with open(tmp_path / "experiments_outputs/resumed/logs/metrics/train_metrics.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["2"]
