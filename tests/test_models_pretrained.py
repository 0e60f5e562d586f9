"""Initial weights: ImageNet (Keras Applications files, cache, download, offline), a Keras .h5 path,
and backbone transfer from a stmclf checkpoint or a Keras .h5 model. No network: downloads go to a
local HTTP server or to a closed port."""
from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_offline_weights_error, closed_port_url, keras_download_request
from stmclf.errors import ConfigError
from stmclf.models import build_model
from stmclf.models.graph import KerasGraph
from stmclf.models.layers import BatchNormalization
from stmclf.models.pretrained import (CACHE_SUBDIR, URL_ENV, WeightsFile, apply_pretrained, default_cache_dir,
                                      imagenet_weights_file)

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

V2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
SHAPE = (96, 96, 3)


def _spec(**keys: Any) -> dict[str, Any]:
    return {"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": SHAPE, **keys}


def _ours(num_classes: int = 5, dropout: float | None = None, **keys: Any) -> KerasGraph:
    return build_model(_spec(**keys), num_classes, dropout).eval()


pytestmark = pytest.mark.usefixtures("no_weight_downloads")


@pytest.fixture(scope="module")
def keras_files(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random no-top Keras MobileNetV2 (0.35, 96) saved under its Keras Applications file name,
    and the same backbone with a 10-class head saved as a full .h5 model."""
    folder = tmp_path_factory.mktemp("keras")
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=SHAPE)
    rng = np.random.default_rng(0)
    for layer in base.layers:  # random BN scale/offset; moving statistics of a batch (below)
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, var])
            layer.momentum = 0.0
    base(rng.uniform(-1, 1, (8, *SHAPE)).astype(np.float32), training=True)
    base.save_weights(folder / V2_FILE)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(base.output)
    x = keras.layers.Dense(10, name="predictions")(x)
    full = keras.Model(base.input, x)
    full.save(folder / "full.h5")
    images = rng.uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    features = base(images, training=False).numpy()
    assert features.std(axis=0).mean() > 0.01
    short = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c1"),
                              keras.layers.BatchNormalization(name="bn1")])
    short.save(folder / "short.h5")
    return {"folder": folder, "weights": folder / V2_FILE, "full": folder / "full.h5", "short": folder / "short.h5",
            "images": images, "features": features}


def _features(model: KerasGraph, images: np.ndarray) -> np.ndarray:
    """Our output of layer ``out_relu`` (NHWC) for NHWC images."""
    captured = {}
    handle = model.layers["out_relu"].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.no_grad():
            model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    finally:
        handle.remove()
    return captured["out"].permute(0, 2, 3, 1).numpy()


def _assert_matches_keras(model: KerasGraph, keras_files: dict[str, Any]) -> None:
    """Backbone features equal Keras': after global average pooling within 1e-4; at ``out_relu``
    (values up to 6, 150 layers of float32 rounding) within 1e-4 + 1e-4 relative."""
    ours, expected = _features(model, keras_files["images"]), keras_files["features"]
    assert np.abs(ours.mean(axis=(1, 2)) - expected.mean(axis=(1, 2))).max() <= 1e-4
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def _state(model: KerasGraph) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: KerasGraph, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------------------------------------
# File names and URLs, checked against tf_keras' own choice (its download is intercepted).

@pytest.mark.parametrize("version,alpha,shape", [
    ("v2", 0.35, (96, 96, 3)), ("v2", 1, (224, 224, 3)), ("v2", 0.5, (100, 100, 3)), ("v2", 1.3, (128, 128, 3)),
    ("v2", 0.75, (128, 96, 3)), ("v1", 0.25, (128, 128, 3)), ("v1", 0.75, (96, 96, 3)), ("v1", 1.0, (192, 192, 3)),
    ("v1", 0.5, (160, 160, 3)),
])
def test_imagenet_file_matches_keras(keras: Any, monkeypatch: pytest.MonkeyPatch, version: str, alpha: float,
                                     shape: tuple[int, int, int]) -> None:
    monkeypatch.delenv(URL_ENV)
    app = keras.applications.MobileNetV2 if version == "v2" else keras.applications.MobileNet
    keras.backend.clear_session()
    asked = keras_download_request(monkeypatch, lambda: app(include_top=False, weights="imagenet", alpha=alpha,
                                                              input_shape=shape))
    ours = imagenet_weights_file({"name": "mobilenet", "version": version, "alpha": alpha, "input_shape": shape})
    assert (ours.file_name, ours.url(), asked["subdir"]) == (asked["fname"], asked["origin"], "models")


def test_imagenet_file_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"name": "mobilenet", "version": "v1", "alpha": 0.25, "input_shape": (128, 128, 3)}
    assert imagenet_weights_file(spec) == WeightsFile("mobilenet", "mobilenet_2_5_128_tf_no_top.h5")
    assert imagenet_weights_file(_spec(alpha=1.4, input_shape=(224, 224, 3))).file_name == \
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.4_224_no_top.h5"
    monkeypatch.setenv(URL_ENV, "http://mirror.local/keras/")
    assert WeightsFile("mobilenet_v2", "f.h5").url() == "http://mirror.local/keras/mobilenet_v2/f.h5"
    monkeypatch.delenv(URL_ENV)
    assert WeightsFile("mobilenet", "f.h5").url() == \
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/f.h5"
    assert default_cache_dir() == Path(os.environ["STMCLF_CACHE"]) / CACHE_SUBDIR
    monkeypatch.delenv("STMCLF_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "stmclf" / CACHE_SUBDIR
    with pytest.raises(ConfigError, match=r"^training.model.input_shape: .*3 input channels"):
        imagenet_weights_file(_spec(input_shape=(96, 96, 1)))
    with pytest.raises(ConfigError, match=r"^training.model.alpha: .*got 0.3"):
        imagenet_weights_file(_spec(alpha=0.3))
    with pytest.raises(ConfigError, match=r"^training.model.alpha: .*v1"):
        imagenet_weights_file({**spec, "alpha": 0.35})
    with pytest.raises(ConfigError, match=r"^training.model.pretrained_weights: .*efficientnet v2 only, not resnet v1"):
        imagenet_weights_file({"name": "resnet", "version": "v1", "input_shape": (32, 32, 3)})


# ---------------------------------------------------------------------------------------------
# pretrained_weights

def test_imagenet_from_cache_matches_keras(keras_files: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / V2_FILE).write_bytes(keras_files["weights"].read_bytes())
    model = _ours(num_classes=5)
    head = model.layers["predictions"].weight.clone()
    text = apply_pretrained(model, _spec(pretrained_weights="imagenet"), cache_dir=cache)
    assert text == f"ImageNet weights from {cache / V2_FILE} (layers 0..152)"
    _assert_matches_keras(model, keras_files)
    assert torch.equal(model.layers["predictions"].weight, head)
    assert apply_pretrained(_ours(), _spec()) is None
    assert apply_pretrained(_ours(), _spec(pretrained_weights=None, pretrained_model_path=None)) is None


def test_imagenet_from_keras_cache_and_default_cache(keras_files: dict[str, Any], tmp_path: Path) -> None:
    keras_cache = tmp_path / "home" / ".keras" / "models"
    keras_cache.mkdir(parents=True)
    (keras_cache / V2_FILE).symlink_to(keras_files["weights"])
    model = _ours()
    text = apply_pretrained(model, _spec(pretrained_weights="imagenet"))  # $STMCLF_CACHE is empty: Keras' cache
    assert text is not None and str(keras_cache / V2_FILE) in text
    _assert_matches_keras(model, keras_files)
    (keras_cache / V2_FILE).unlink()
    default = tmp_path / "stmclf-cache" / CACHE_SUBDIR
    default.mkdir(parents=True)
    (default / V2_FILE).symlink_to(keras_files["weights"])
    assert str(default / V2_FILE) in apply_pretrained(_ours(), _spec(pretrained_weights="imagenet"))


@pytest.fixture
def http_mirror(keras_files: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "mirror"
    (root / "mobilenet_v2").mkdir(parents=True)
    (root / "mobilenet_v2" / V2_FILE).symlink_to(keras_files["weights"])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_imagenet_downloads_once(keras_files: dict[str, Any], http_mirror: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, http_mirror)
    cache = tmp_path / "dl-cache"
    model = _ours()
    apply_pretrained(model, _spec(pretrained_weights="imagenet"), cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == [V2_FILE]  # no temporary file left
    assert (cache / V2_FILE).read_bytes() == keras_files["weights"].read_bytes()
    _assert_matches_keras(model, keras_files)
    monkeypatch.setenv(URL_ENV, closed_port_url())  # offline now: the cached file is used
    assert apply_pretrained(_ours(), _spec(pretrained_weights="imagenet"), cache_dir=cache) is not None


def test_imagenet_offline_error_is_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    model = _ours()
    assert_offline_weights_error(model, _spec(pretrained_weights="imagenet"), cache, f"mobilenet_v2/{V2_FILE}")
    assert not cache.exists() or not any(cache.iterdir())
    with pytest.raises(ConfigError, match=f"put the file in {tmp_path / 'stmclf-cache' / CACHE_SUBDIR}/$"):
        apply_pretrained(model, _spec(pretrained_weights="imagenet"))


def test_corrupt_cached_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / V2_FILE).write_text("<html>captive portal</html>")
    with pytest.raises(ConfigError, match=r"^training.model.pretrained_weights: .*not a readable Keras .h5 file"):
        apply_pretrained(_ours(), _spec(pretrained_weights="imagenet"), cache_dir=cache)


def test_weights_path(keras_files: dict[str, Any], tmp_path: Path) -> None:
    model = _ours(num_classes=3)
    path = str(keras_files["weights"])
    assert apply_pretrained(model, _spec(pretrained_weights=path)) == f"weights from {path} (layers 0..152)"
    _assert_matches_keras(model, keras_files)
    # A full Keras model file works too (matched by name; its 10-class head is not loaded).
    model = _ours(num_classes=3)
    apply_pretrained(model, _spec(pretrained_weights=str(keras_files["full"])))
    _assert_matches_keras(model, keras_files)

    with pytest.raises(ConfigError, match=r"^training.model.pretrained_weights: unable to find file .*nope.h5"):
        apply_pretrained(model, _spec(pretrained_weights=str(tmp_path / "nope.h5")))
    other = _ours(alpha=0.5)  # the first layers fit, a later one does not: nothing is kept
    before = _state(other)
    with pytest.raises(ConfigError, match=rf"^training.model.pretrained_weights: {V2_FILE}: layer 'block_1_project'"):
        apply_pretrained(other, _spec(alpha=0.5, pretrained_weights=path))
    _assert_unchanged(other, before)


def test_both_sources_rejected() -> None:
    with pytest.raises(ConfigError, match="mutually exclusive"):
        apply_pretrained(_ours(), _spec(pretrained_weights="imagenet", pretrained_model_path="x.ckpt"))


# ---------------------------------------------------------------------------------------------
# pretrained_model_path

def _checkpoint(tmp_path: Path, alpha: float = 0.35, name: str = "source.ckpt") -> tuple[Path, KerasGraph]:
    torch.manual_seed(1)
    spec = _spec(alpha=alpha, input_shape=(64, 64, 3))
    source = build_model(spec, 10, 0.2)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, BatchNormalization):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    checkpoint = {"epoch": 3, "hyper_parameters": {"model_spec": spec, "class_names": [str(i) for i in range(10)],
                                                   "input_shape": [64, 64, 3], "dropout": 0.2},
                  "state_dict": {"model." + k: v for k, v in source.state_dict().items()}}
    checkpoint["state_dict"]["train_acc.tp"] = torch.zeros(1)  # other module state is ignored
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path, source


def test_transfer_from_checkpoint(tmp_path: Path) -> None:
    path, source = _checkpoint(tmp_path)
    model = _ours(num_classes=3)  # other input size, classes and dropout: the backbone still fits
    head = {k: v.clone() for k, v in model.layers["predictions"].state_dict().items()}
    text = apply_pretrained(model, _spec(pretrained_model_path=str(path)))
    assert text == f"backbone weights from {path} (layers 0..152)"
    copied = 0
    for i in range(1, model.backbone_end_index + 1):
        ours, theirs = model.layer_module(i).state_dict(), source.layer_module(i).state_dict()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (i, key)
            copied += 1
    assert copied > 200
    for key, value in model.layers["predictions"].state_dict().items():
        assert torch.equal(value, head[key])
    x = np.random.default_rng(3).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(_features(model, x), _features(source, x), rtol=0, atol=1e-5)


def test_transfer_from_incompatible_checkpoint(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path, alpha=0.5)
    model = _ours()
    before = _state(model)
    with pytest.raises(ConfigError, match=r"^training.model.pretrained_model_path: models are incompatible "
                                          r"\(backbones are different\): layer 16: 'block_1_project' Conv2D "
                                          r"\[\(8, 48, 1, 1\)\] here, "
                                          r"'block_1_project' Conv2D \[\(16, 48, 1, 1\)\] in the source$"):
        apply_pretrained(model, _spec(pretrained_model_path=str(path)))
    _assert_unchanged(model, before)


def test_transfer_source_errors(tmp_path: Path) -> None:
    model = _ours()
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(ConfigError, match=rf"^training.model.pretrained_model_path: unable to find file {missing}"):
        apply_pretrained(model, _spec(pretrained_model_path=str(missing)))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="neither a Keras .h5 file nor a stmclf checkpoint"):
        apply_pretrained(model, _spec(pretrained_model_path=str(junk)))
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ConfigError, match="not a stmclf training checkpoint"):
        apply_pretrained(model, _spec(pretrained_model_path=str(tmp_path / "bare.ckpt")))


def test_transfer_from_keras_h5(keras_files: dict[str, Any], tmp_path: Path) -> None:
    model = _ours(num_classes=3)
    head = model.layers["predictions"].weight.clone()
    apply_pretrained(model, _spec(pretrained_model_path=str(keras_files["full"])))
    _assert_matches_keras(model, keras_files)
    assert torch.equal(model.layers["predictions"].weight, head)

    # Index by index, not by name: a renamed source layer still lands in layer 1.
    renamed = tmp_path / "renamed.h5"
    renamed.write_bytes(keras_files["full"].read_bytes())
    with h5py.File(renamed, "r+") as f:
        root = f["model_weights"]
        root.move("Conv1", "some_conv")
        names = [n.decode() if isinstance(n, bytes) else n for n in root.attrs["layer_names"]]
        root.attrs["layer_names"] = [("some_conv" if n == "Conv1" else n).encode() for n in names]
    model = _ours(num_classes=3)
    apply_pretrained(model, _spec(pretrained_model_path=str(renamed)))
    _assert_matches_keras(model, keras_files)

    before = _state(model)
    # A Sequential model's .h5 lists no InputLayer (like its model.layers): 2 layers.
    with pytest.raises(ConfigError, match=r"backbones are different\): the source model has 2 layers"):
        apply_pretrained(model, _spec(pretrained_model_path=str(keras_files["short"])))
    other = _ours(alpha=0.5)  # layers 1..15 fit and are copied first, then restored
    other_before = _state(other)
    with pytest.raises(ConfigError, match=r"backbones are different\): layer 16 \('block_1_project', source "
                                          r"'block_1_project'\): layer 'block_1_project'"):
        apply_pretrained(other, _spec(alpha=0.5, pretrained_model_path=str(keras_files["full"])))
    _assert_unchanged(model, before)
    _assert_unchanged(other, other_before)
