"""ResNet50V2 and EfficientNetV2 B0–B3/S (Keras Applications backbones wrapped as ONE nested layer,
as the reference does): Keras parameter counts and layer lists, outputs equal to tf_keras' with the
same weights, ImageNet files (names, loading, offline), ``training=False`` with pretrained weights,
``frozen_layers`` index 1, ``.h5`` files holding the nested backbone (import, backbone transfer),
QAT planning inside the backbone, a fit from ImageNet weights; st_resnet_8_hybrid refused."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_offline_weights_error, config_text, keras_download_request, write_image_folder
from stmclf.errors import ConfigError, UserError
from stmclf.models import build_model
from stmclf.models.frozen import frozen_indices
from stmclf.models.graph import KerasGraph, NestedModel
from stmclf.models.importers import load_model_file
from stmclf.models.keras_weights import load_keras_weights, read_h5_layer_weights
from stmclf.models.layers import BatchNormalization, SampleDropout
from stmclf.models.pretrained import URL_ENV, apply_pretrained, imagenet_weights_file

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

# Keras' own figures for the include_top=False, pooling="avg" backbones (any input size):
# len(model.layers), count_params(), trainable weights. Measured with tf_keras 2.21.
KERAS_BACKBONES = {
    "resnet50v2": (191, 23_564_800, 23_519_360),
    "efficientnetv2-b0": (269, 5_919_312, 5_858_704),
    "efficientnetv2-b1": (333, 6_931_124, 6_860_052),
    "efficientnetv2-b2": (348, 8_769_374, 8_687_086),
    "efficientnetv2-b3": (408, 12_930_622, 12_821_406),
    "efficientnetv2-s": (513, 20_331_360, 20_177_488),
}
B0_FILE = "efficientnetv2-b0_notop.h5"
SHAPE = (32, 32, 3)


def _spec(name: str, model_type: str | None = None, input_shape: tuple = SHAPE, **keys: Any) -> dict[str, Any]:
    spec = {"name": name, "version": "v2", "input_shape": input_shape, **keys}
    if model_type is not None:
        spec["type"] = model_type
    return spec


def _b0(**keys: Any) -> dict[str, Any]:
    return _spec("efficientnet", "B0", **keys)


def _nhwc(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """float32 through ~200-500 layers of random weights: within 5e-4 of the largest value."""
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=5e-4 * max(1.0, float(np.abs(expected).max())))


pytestmark = pytest.mark.usefixtures("no_weight_downloads")


def _keras_backbone(keras: Any, model_type: str | None, shape: tuple = SHAPE) -> Any:
    if model_type is None:
        return keras.applications.ResNet50V2(include_top=False, weights=None, pooling="avg", input_shape=shape)
    app = getattr(keras.applications, f"EfficientNetV2{model_type}")
    return app(include_top=False, weights=None, pooling="avg", input_shape=shape, include_preprocessing=False)


def _keras_model(keras: Any, model_type: str | None, classes: int, dropout: float | None, *, training: bool = False,
                 activation: str | None = None, shape: tuple = SHAPE) -> tuple[Any, Any]:
    """The reference's wrapping in a fresh session: Input ``input_1`` → backbone(training=...) →
    [Dropout "dropout"] → Dense (logits unless ``activation``). Random BN scale/offset and the
    backbone's moving statistics of a random batch, so that outputs depend on every layer."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    backbone = _keras_backbone(keras, model_type, shape)
    x = backbone(inputs, training=training)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation=activation)(x))
    rng = np.random.default_rng(0)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, var])
            layer.momentum = 0.0
    backbone(rng.uniform(-1, 1, (64, *shape)).astype(np.float32), training=True)  # 1×1 last maps: a large batch
    return model, backbone


# ---------------------------------------------------------------------------------------------
# Architecture

@pytest.mark.parametrize("name,model_type,backbone", [
    ("resnet50", None, "resnet50v2"), ("efficientnet", "B0", "efficientnetv2-b0"),
    ("efficientnet", "B1", "efficientnetv2-b1"), ("efficientnet", "B2", "efficientnetv2-b2"),
    ("efficientnet", "B3", "efficientnetv2-b3"), ("efficientnet", "S", "efficientnetv2-s"),
])
def test_counts_match_keras_applications(name: str, model_type: str | None, backbone: str) -> None:
    layers, params, trainable = KERAS_BACKBONES[backbone]
    model = build_model(_spec(name, model_type), num_classes=5, dropout=0.2)
    assert [(n.name, n.keras_type) for n in model.nodes] == [
        ("input_1", "InputLayer"), (backbone, "Functional"), ("dropout", "Dropout"), ("dense", "Dense")]
    inner = model.layers[backbone]
    assert isinstance(inner, NestedModel) and not inner.inference_only
    assert (inner.graph.num_layers, inner.graph.keras_param_count(), inner.graph.keras_trainable_count()) == \
        (layers, params, trainable)
    width = model.nodes[1].output_shape[0]
    head = width * 5 + 5
    assert (model.keras_param_count(), model.keras_trainable_count()) == (params + head, trainable + head)
    assert model.backbone_end_index == 1 and model.layer_table()[1].params == params
    if name == "resnet50":
        binary = build_model(_spec(name, model_type), num_classes=2, dropout=None)
        assert [n.name for n in binary.nodes] == ["input_1", backbone, "dense"] and binary.nodes[-1].output_shape == (2,)


@pytest.mark.parametrize("model_type", [None, "S"], ids=["resnet50v2", "efficientnetv2-s"])  # B0: the .h5 tests
def test_matches_keras(keras: Any, model_type: str | None) -> None:
    """Same layers (names, types, output shapes) inside and outside the backbone, same counts, the
    same stochastic-depth rates, and the same logits once the Keras weights are copied in."""
    kmodel, kbackbone = _keras_model(keras, model_type, classes=4, dropout=0.3)
    model = build_model(_spec("resnet50" if model_type is None else "efficientnet", model_type), 4, 0.3).eval()
    assert [(n.name, n.keras_type) for n in model.nodes] == [(l.name, type(l).__name__) for l in kmodel.layers]
    inner = model.layers[kbackbone.name].graph
    assert [(n.name, n.keras_type, n.output_shape) for n in inner.nodes[1:]] == [
        (l.name, type(l).__name__, tuple(l.output_shape[1:])) for l in kbackbone.layers[1:]]
    assert model.keras_param_count() == kmodel.count_params()
    assert model.keras_trainable_count() == sum(int(np.prod(w.shape)) for w in kmodel.trainable_weights)
    rates = [(l.name, l.rate) for l in kbackbone.layers if isinstance(l, keras.layers.Dropout)]
    ours = [(name, m.p) for name, m in inner.layers.items() if isinstance(m, SampleDropout)]
    assert [n for n, _ in ours] == [n for n, _ in rates] and np.allclose([r for _, r in ours], [r for _, r in rates])
    assert bool(rates) == (model_type is not None)
    loaded = load_keras_weights(model, kmodel)
    assert f"{kbackbone.name}/top_conv" in loaded or f"{kbackbone.name}/post_bn" in loaded
    x = np.random.default_rng(1).uniform(-1, 1, (3, *SHAPE)).astype(np.float32)
    expected = kmodel(x, training=False).numpy()
    assert expected.std(axis=0).max() > 1e-2
    _assert_close(_nhwc(model, x), expected)


def test_stride_in_the_last_block_of_stages_1_to_3() -> None:
    """Keras' ResNet50V2 strides in conv2_block3, conv3_block4 and conv4_block6 (3×3 conv, shortcut
    MaxPooling2D(1, 2)); conv5 keeps its size."""
    inner = build_model(_spec("resnet50", input_shape=(64, 64, 3)), 3, None).layers["resnet50v2"].graph
    shapes = {n.name: n.output_shape[:2] for n in inner.nodes}
    assert [shapes[f"conv{s}_block1_out"] for s in (2, 3, 4, 5)] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [shapes[f"conv{s}_out"] for s in ("2_block3", "3_block4", "4_block6", "5_block3")] == \
        [(8, 8), (4, 4), (2, 2), (2, 2)]
    assert [inner.layers[n].stride for n in ("conv2_block3_2_conv", "conv3_block4_2_conv", "conv5_block3_2_conv")] == \
        [(2, 2), (2, 2), (1, 1)]
    pools = [n for n in inner.nodes if n.name.startswith("max_pooling2d")]
    assert [(n.name, n.inputs) for n in pools] == [("max_pooling2d", ("conv2_block2_out",)),
                                                    ("max_pooling2d_1", ("conv3_block3_out",)),
                                                    ("max_pooling2d_2", ("conv4_block5_out",))]


def test_config_errors_and_the_hybrid_model_refusal() -> None:
    def error(spec: dict, dropout: float | None = None) -> str:
        with pytest.raises(ConfigError) as info:
            build_model(spec, 3, dropout)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert error({"name": "st_resnet_8_hybrid", "version": "v1", "input_shape": SHAPE}) == (
        "training.model.name: st_resnet_8_hybrid is a Larq binary/QAT model (binary weights and activations) "
        "that stmclf does not support; use name: resnet, version: v1, depth: 8 instead")
    assert error(_spec("efficientnet")).startswith("training.model.type: missing required attribute of efficientnet v2")
    assert error(_spec("efficientnet", "B4")) == "training.model.type: expected one of ['B0', 'B1', 'B2', 'B3', 'S'], " \
                                                 "got 'B4'"
    assert error(_spec("resnet50", input_shape=(31, 64, 3))).startswith(
        "training.model.input_shape: ResNet50V2 needs height and width >= 32")
    assert error(_b0(input_shape=(32, 32, 1), pretrained_weights="imagenet")) == \
        "training.model.input_shape: ImageNet weights need 3 input channels, got 1"
    assert error(_spec("resnet50", alpha=1.0)).startswith("training.model.alpha: unexpected attribute for resnet50 v2")
    assert error({"name": "resnet50", "input_shape": SHAPE}).startswith("training.model.version: missing version")


# ---------------------------------------------------------------------------------------------
# Layer index 1: the whole backbone

def _batch_norm_stats(graph: KerasGraph) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in graph.modules() if isinstance(m, BatchNormalization)]


def test_frozen_layer_1_is_the_whole_backbone() -> None:
    model = build_model(_spec("resnet50"), 3, 0.2)
    model.set_frozen(frozen_indices("(1)", model.num_layers))
    model.train()
    assert model.keras_trainable_count() == 2048 * 3 + 3
    assert [row.trainable for row in model.layer_table()] == [True, False, True, True]
    backbone = model.layers["resnet50v2"].graph
    bns = [m for m in backbone.modules() if isinstance(m, BatchNormalization)]
    assert len(bns) == 49 and not any(m.training for m in bns)  # Keras runs a frozen model's BN in inference
    before = copy.deepcopy(backbone.state_dict())
    model(torch.randn(4, 3, *SHAPE[:2])).sum().backward()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("weights", [None, "imagenet"])
def test_pretrained_weights_run_the_backbone_in_inference_mode(weights: str | None) -> None:
    """The reference calls backbone(inputs, training=False) when it starts from pretrained weights:
    BatchNorm moving statistics stay, stochastic depth is off, the weights still train."""
    model = build_model(_b0(pretrained_weights=weights), 3, None).train()
    backbone = model.layers["efficientnetv2-b0"]
    assert backbone.inference_only == (weights is not None)
    stats = _batch_norm_stats(backbone.graph)
    x = torch.randn(4, 3, *SHAPE[:2])
    out = model(x)
    changed = any(not torch.equal(a, b) for a, b in zip(stats, _batch_norm_stats(backbone.graph)))
    assert changed == (weights is None)
    if weights is not None:
        assert torch.equal(out, model(x)) and torch.equal(out, model.eval()(x))  # no stochastic depth
        model.train()
        out.sum().backward()
        assert backbone.graph.layers["stem_conv"].weight.grad is not None


# ---------------------------------------------------------------------------------------------
# ImageNet weights and .h5 files holding the nested backbone (EfficientNetV2B0, tf_keras)

@pytest.fixture(scope="module")
def b0_files(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random EfficientNetV2B0 backbone saved as Keras' ImageNet file would be (``save_weights`` of
    the backbone, under its name), the reference's whole model (backbone called with
    training=False, Dense softmax head) saved with ``model.save``, its features and outputs."""
    folder = tmp_path_factory.mktemp("b0")
    kmodel, backbone = _keras_model(keras, "B0", classes=3, dropout=0.2, activation="softmax")
    backbone.save_weights(folder / B0_FILE)
    kmodel.save(folder / "efficientnet_v2B0.h5")
    images = np.random.default_rng(2).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    features = backbone(images, training=False).numpy()
    assert features.std(axis=0).mean() > 0.01
    return {"folder": folder, "weights": folder / B0_FILE, "model": folder / "efficientnet_v2B0.h5",
            "images": images, "features": features, "outputs": kmodel(images, training=False).numpy()}


def _features(model: KerasGraph, images: np.ndarray) -> np.ndarray:
    return _nhwc(model.layers["efficientnetv2-b0"].eval(), images)


def test_imagenet_file_names_match_keras(keras: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV)
    for spec, app in ((_spec("resnet50"), keras.applications.ResNet50V2),
                      (_b0(), keras.applications.EfficientNetV2B0)):
        keras.backend.clear_session()
        asked = keras_download_request(monkeypatch, lambda: app(include_top=False, weights="imagenet", pooling="avg",
                                                                  input_shape=SHAPE))
        ours = imagenet_weights_file(spec)
        assert (ours.file_name, ours.url(), asked["subdir"]) == (asked["fname"], asked["origin"], "models")
    names = [imagenet_weights_file(_spec("efficientnet", t)).file_name for t in ("B1", "B2", "B3", "S")]
    assert names == [f"{n}_notop.h5" for n in ("efficientnetv2-b1", "efficientnetv2-b2", "efficientnetv2-b3",
                                               "efficientnetv2-s")]


def test_imagenet_weights_from_the_cache(b0_files: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / B0_FILE).symlink_to(b0_files["weights"])
    model = build_model(_b0(pretrained_weights="imagenet"), 5, 0.2)
    head = model.layers["dense"].weight.clone()
    text = apply_pretrained(model, _b0(pretrained_weights="imagenet"), cache_dir=cache)
    assert text == f"ImageNet weights from {cache / B0_FILE} (layers 0..1)"
    _assert_close(_features(model, b0_files["images"]), b0_files["features"])
    assert torch.equal(model.layers["dense"].weight, head)


def test_imagenet_weights_offline_is_one_line(tmp_path: Path) -> None:
    spec = _b0(pretrained_weights="imagenet")
    assert_offline_weights_error(build_model(spec, 5, None), spec, tmp_path / "empty", f"efficientnet_v2/{B0_FILE}")


def test_h5_model_with_a_nested_backbone_imports(b0_files: dict[str, Any]) -> None:
    """The reference's .h5 (backbone as one Functional layer called with training=False): imported
    with the same layers, its softmax removed, its backbone in inference mode, the same outputs."""
    with h5py.File(b0_files["model"]) as f:  # what Keras 2 writes for a nested model
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        assert layers[1]["class_name"] == "Functional" and layers[2]["inbound_nodes"][0][0][:2] == \
            ["efficientnetv2-b0", 1]
    imported = load_model_file(b0_files["model"])
    graph = imported.graph
    assert [(n.name, n.keras_type) for n in graph.nodes] == [
        ("input_1", "InputLayer"), ("efficientnetv2-b0", "Functional"), ("dropout", "Dropout"), ("dense", "Dense")]
    assert imported.output_is_softmax and imported.has_dropout and graph.layers["efficientnetv2-b0"].inference_only
    assert graph.keras_param_count() == build_model(_b0(), 3, 0.2).keras_param_count()
    probabilities = torch.softmax(torch.from_numpy(_nhwc(graph.eval(), b0_files["images"])), 1).numpy()
    _assert_close(probabilities, b0_files["outputs"])


def test_weights_of_a_nested_h5_by_layer_name(b0_files: dict[str, Any]) -> None:
    """``pretrained_weights: <file>`` accepts the whole model's .h5 (nested entry) and the
    backbone's own weights file (top-level layer names); a file naming no layer is refused."""
    for path in (b0_files["model"], b0_files["weights"]):
        model = build_model(_b0(pretrained_weights=str(path)), 7, None)
        assert apply_pretrained(model, _b0(pretrained_weights=str(path))) == f"weights from {path} (layers 0..1)"
        _assert_close(_features(model, b0_files["images"]), b0_files["features"])
    resnet = build_model(_spec("resnet50"), 3, None)
    with pytest.raises(ConfigError, match=rf"^training.model.pretrained_weights: {B0_FILE}: layer 'conv1_conv' "
                                          r"\(index 2\) is missing"):
        apply_pretrained(resnet, _spec("resnet50", pretrained_weights=str(b0_files["weights"])))
    weights = read_h5_layer_weights(b0_files["model"])
    flat = {"efficientnetv2-b0": list(weights["efficientnetv2-b0"])}  # arrays without their names
    with pytest.raises(UserError, match="do not name its layers"):
        load_keras_weights(build_model(_b0(), 3, None), flat)


def test_backbone_transfer_from_a_nested_h5(b0_files: dict[str, Any], tmp_path: Path) -> None:
    """``pretrained_model_path``: layers 0..1 (the whole backbone) of the reference's .h5, then of a
    stmclf checkpoint (another input size); the head stays; a model of another architecture is
    refused and left unchanged."""
    path = str(b0_files["model"])
    model = build_model(_b0(pretrained_model_path=path), 10, 0.5)
    head = model.layers["dense"].weight.clone()
    assert apply_pretrained(model, _b0(pretrained_model_path=path)) == f"backbone weights from {path} (layers 0..1)"
    assert not model.layers["efficientnetv2-b0"].inference_only  # as the reference: only pretrained_weights
    _assert_close(_features(model, b0_files["images"]), b0_files["features"])
    assert torch.equal(model.layers["dense"].weight, head)
    checkpoint = {"hyper_parameters": {"model_spec": _b0(), "class_names": [str(i) for i in range(10)]},
                  "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}
    torch.save(checkpoint, tmp_path / "source.ckpt")
    again = build_model(_b0(input_shape=(48, 40, 3)), 2, None)
    apply_pretrained(again, _b0(pretrained_model_path=str(tmp_path / "source.ckpt")))
    for key, value in model.layers["efficientnetv2-b0"].state_dict().items():
        assert torch.equal(again.layers["efficientnetv2-b0"].state_dict()[key], value), key
    other = build_model(_spec("efficientnet", "B1"), 3, None)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ConfigError, match=r"^training.model.pretrained_model_path: models are incompatible"):
        apply_pretrained(other, _spec("efficientnet", "B1", pretrained_model_path=path))
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_fit_from_imagenet_weights_with_the_backbone_frozen(b0_files: dict[str, Any], tmp_path: Path) -> None:
    """``stmclf fit``: efficientnet v2 B0 from (fake) ImageNet weights in the cache, frozen_layers
    (1): the trained model's backbone is the file's, its head trained."""
    from stmclf.cli.main import main
    from stmclf.training.model_file import load_classifier

    cache = Path(os.environ["STMCLF_CACHE"]) / "keras-applications"
    cache.mkdir(parents=True)
    (cache / B0_FILE).symlink_to(b0_files["weights"])
    data = write_image_folder(tmp_path / "data", per_class=4)
    model = ("  model:\n    name: efficientnet\n    version: v2\n    type: B0\n    input_shape: (32, 32, 3)\n"
             "    pretrained_weights: imagenet\n  frozen_layers: (1)\n  dropout: 0.2\n")
    config = tmp_path / "c.yaml"
    config.write_text(config_text(data, tmp_path / "run", tmp_path / "ml", epochs=1, model=model))
    assert main(["fit", "--config", str(config)]) == 0
    trained = load_classifier(tmp_path / "run/saved_models/best_model.pt").model
    _assert_close(_features(trained, b0_files["images"]), b0_files["features"])
    assert "ImageNet weights from" in (tmp_path / "run/stmclf.log").read_text()


def test_h5_with_larq_layers_is_refused(tmp_path: Path) -> None:
    """ST's st_resnet_8_hybrid .h5 files hold Larq quantized layers: one line saying so."""
    from test_keras_h5_malformed import GAP, _dense, _input, _sequential, _write

    larq = {"class_name": "QuantConv2D", "config": {"name": "quant_conv2d", "filters": 4, "kernel_size": [3, 3]}}
    path = _write(tmp_path / "hybrid.h5", _sequential(_input([8, 8, 3]), larq, GAP, _dense(2)))
    with pytest.raises(UserError) as info:
        load_model_file(path)
    assert str(info.value) == (f"general.model_path: {path}: unsupported Keras layer QuantConv2D 'quant_conv2d': a "
                               "Larq quantized layer; Larq binary/QAT models (ST's st_resnet_8_hybrid) are not supported")


def test_lightning_warning_about_modules_in_eval_mode_is_hidden() -> None:
    """A pretrained backbone (and frozen BatchNorm) is in eval mode on purpose: Lightning's warning
    about it at the start of training is not shown."""
    import warnings

    from stmclf.cli.main import _quiet_libraries

    message = "Found 270 module(s) in eval mode at the start of training. This may lead to unexpected behavior"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _quiet_libraries()
        warnings.warn_explicit(message, UserWarning, "fit_loop.py", 538, module="lightning.pytorch.loops.fit_loop")
        warnings.warn_explicit(message, UserWarning, "mine.py", 1, module="my_project.train")
    assert [w.filename for w in caught] == ["mine.py"]


# ---------------------------------------------------------------------------------------------

def test_qat_plan_enters_the_backbone() -> None:
    from stmclf.training.qat import plan_model

    plan = plan_model(build_model(_spec("resnet50"), 3, None))
    folded = {name: bn is not None for name, _, bn in plan.weights}
    assert len(folded) == 1 + 16 * 3 + 4 + 1  # conv1, 3 per block, 4 projections, the head
    assert folded["resnet50v2/conv2_block1_1_conv"] and not folded["resnet50v2/conv2_block1_3_conv"]
    names = [name for name, _ in plan.activations]
    assert names[0] == "resnet50v2/conv1_conv" and names[-1] == "dense" and "resnet50v2/post_relu" in names
