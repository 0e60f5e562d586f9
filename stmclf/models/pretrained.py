"""Initial weights of a zoo model built from ``training.model``: ImageNet weights, a Keras ``.h5``
weights file, or the backbone of another trained model.

:func:`apply_pretrained` is called once, right after the model is built from the YAML (never when
a run resumes from a checkpoint, whose weights win). Only the backbone is loaded: Keras layer
indices ``0..model.backbone_end_index`` (the reference's ``end_layer_index``); the head keeps its
random initialisation.

``pretrained_weights: imagenet`` (MobileNet V1 / V2, ResNet50V2, EfficientNetV2) uses the Keras
Applications "no top" ``.h5`` file that Keras itself would load for the same model (MobileNet: the
same ``alpha`` and input size). ResNet50V2's and EfficientNetV2's files hold the layers of their
nested backbone (layer 1), which is loaded from them by layer name. It is looked up, in order,
in ``cache_dir`` (default ``$STMCLF_CACHE/keras-applications/``, ``$STMCLF_CACHE`` defaulting to
``~/.cache/stmclf``) and in Keras' own caches (``~/.keras/models/``, ``$KERAS_HOME/models/``), and
downloaded into ``cache_dir`` once if absent. The download base URL can be overridden with
``$STMCLF_KERAS_WEIGHTS_URL`` (a mirror holding ``mobilenet/``, ``mobilenet_v2/``, ``resnet/`` and
``efficientnet_v2/``).
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stmclf.errors import ConfigError, UserError, one_line
from stmclf.models.efficientnet_v2 import TYPES as EFFICIENTNET_V2_TYPES
from stmclf.models.graph import KerasGraph
from stmclf.models.keras_weights import load_keras_weights, read_h5_layer_weights

log = logging.getLogger("stmclf.models.pretrained")

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
"""Where Keras Applications keeps its weight files (one sub-folder per architecture)."""
URL_ENV = "STMCLF_KERAS_WEIGHTS_URL"
CACHE_ENV = "STMCLF_CACHE"
CACHE_SUBDIR = "keras-applications"
DOWNLOAD_TIMEOUT = 30.0

WEIGHTS_KEY = "training.model.pretrained_weights"
MODEL_PATH_KEY = "training.model.pretrained_model_path"

# Keras Applications: ImageNet alphas and the input sizes that have their own weight files
# (any other or non-square input gets the 224 file, as in Keras).
_IMAGENET = {
    "v1": ((0.25, 0.5, 0.75, 1.0), (128, 160, 192, 224)),
    "v2": ((0.35, 0.5, 0.75, 1.0, 1.3, 1.4), (96, 128, 160, 192, 224)),
}
_V1_ALPHA_TEXT = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class WeightsFile:
    """A Keras Applications weight file: its name and its folder under the base URL."""

    subdir: str
    file_name: str

    def url(self, base: str | None = None) -> str:
        base = base or os.environ.get(URL_ENV) or KERAS_WEIGHTS_URL
        return f"{base.rstrip('/')}/{self.subdir}/{self.file_name}"


def imagenet_weights_file(spec: Mapping[str, Any]) -> WeightsFile:
    """The Keras Applications ImageNet "no top" file for a ``training.model`` dict, named exactly as
    ``tf.keras.applications`` names it: MobileNet V1/V2 (per alpha and input size), ResNet50V2,
    EfficientNetV2 B0–B3/S (one file each, any input size)."""
    name, version = spec.get("name"), spec.get("version")
    height, width, channels = spec["input_shape"]
    if channels != 3:
        raise ConfigError("training.model.input_shape", f"ImageNet weights need 3 input channels, got {channels}")
    if name == "resnet50" and version == "v2":
        return WeightsFile("resnet", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
    if name == "efficientnet" and version == "v2":
        model_type = spec.get("type")
        if model_type not in EFFICIENTNET_V2_TYPES:
            raise ConfigError("training.model.type", f"expected one of {list(EFFICIENTNET_V2_TYPES)}, "
                                                     f"got {model_type!r}")
        return WeightsFile("efficientnet_v2", f"efficientnetv2-{model_type.lower()}_notop.h5")
    if name != "mobilenet" or version not in _IMAGENET:
        label = name if version is None else f"{name} {version}"
        raise ConfigError(WEIGHTS_KEY, f"ImageNet weights are available for mobilenet v1 and v2, resnet50 v2 and "
                                       f"efficientnet v2 only, not {label}")
    alphas, sizes = _IMAGENET[version]
    alpha = spec.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or float(alpha) not in alphas:
        raise ConfigError("training.model.alpha", f"ImageNet weights of mobilenet {version} exist for alpha in "
                                                  f"{list(alphas)}, got {alpha!r}")
    rows = height if height == width and height in sizes else 224
    if version == "v1":
        return WeightsFile("mobilenet", f"mobilenet_{_V1_ALPHA_TEXT[float(alpha)]}_{rows}_tf_no_top.h5")
    return WeightsFile("mobilenet_v2",
                       f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5")


def default_cache_dir() -> Path:
    """``$STMCLF_CACHE/keras-applications`` (``$STMCLF_CACHE`` defaults to ``~/.cache/stmclf``)."""
    root = os.environ.get(CACHE_ENV) or "~/.cache/stmclf"
    return Path(root).expanduser() / CACHE_SUBDIR


def _keras_cache_dirs() -> list[Path]:
    dirs = [Path("~/.keras/models").expanduser()]
    if os.environ.get("KERAS_HOME"):
        dirs.append(Path(os.environ["KERAS_HOME"]).expanduser() / "models")
    return dirs


def find_imagenet_weights(weights: WeightsFile, cache_dir: Path | None = None) -> Path:
    """The local path of ``weights``: from ``cache_dir`` or Keras' cache, else downloaded into
    ``cache_dir`` (atomically; concurrent processes are safe). Offline → one-line ConfigError
    telling where to put the file."""
    from stmclf.data.fetch import DownloadError, download

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for folder in (cache, *_keras_cache_dirs()):
        candidate = folder / weights.file_name
        if candidate.is_file():
            return candidate
    url = weights.url()
    hint = f"put the file in {cache}/"
    dest = cache / weights.file_name
    staging = cache / f".download-{os.getpid()}"  # one per process: concurrent ranks never collide
    log.info("downloading %s to %s", url, cache)
    try:
        os.replace(download(url, staging / weights.file_name, timeout=DOWNLOAD_TIMEOUT), dest)
    except DownloadError as exc:
        raise ConfigError(WEIGHTS_KEY, f"cannot download {weights.file_name} from {url} ({exc.reason}); "
                                       f"{hint}") from None
    except (UserError, OSError) as exc:
        raise ConfigError(WEIGHTS_KEY, f"cannot download {weights.file_name} from {url} "
                                       f"({one_line(exc, whole=True)}); {hint}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------------


def apply_pretrained(model: KerasGraph, spec: Mapping[str, Any], *, cache_dir: Path | None = None) -> str | None:
    """Load the initial weights named by the ``training.model`` dict ``spec`` into ``model``.

    * ``pretrained_weights: imagenet`` — Keras Applications ImageNet weights (see the module doc;
      ``cache_dir`` is the folder holding the ``.h5`` files), matched by layer name;
    * ``pretrained_weights: <path>`` — a Keras ``.h5`` weights or model file, matched by layer name;
    * ``pretrained_model_path: <path>`` — the backbone of another model of the same architecture,
      layer index by layer index: a stmclf checkpoint (``.ckpt``) or a Keras ``.h5`` model file.

    Only layers ``0..model.backbone_end_index`` are loaded, every weight shape is checked, and on any
    error ``model`` is left unchanged. Returns a one-line description for the log, or None when
    ``spec`` names no weights (random initialisation).
    """
    weights, model_path = spec.get("pretrained_weights"), spec.get("pretrained_model_path")
    name = str(spec.get("name", ""))
    if name.startswith("timm/"):
        from stmclf.models.timm_models import load_timm_pretrained

        return load_timm_pretrained(model, name[len("timm/"):]) if weights == "imagenet" else None
    if weights is not None and model_path is not None:
        raise ConfigError(MODEL_PATH_KEY, "pretrained_weights and pretrained_model_path are mutually exclusive")
    if weights is None and model_path is None:
        return None
    end = model.backbone_end_index
    if end is None:
        key = WEIGHTS_KEY if weights is not None else MODEL_PATH_KEY
        raise ConfigError(key, f"{model.name} has no backbone to load weights into")
    layers = f"layers 0..{end}"
    if weights is not None:
        if weights == "imagenet":
            path = find_imagenet_weights(imagenet_weights_file(spec), cache_dir)
            _load_by_name(model, path, WEIGHTS_KEY)
            return f"ImageNet weights from {path} ({layers})"
        path = _existing_file(weights, WEIGHTS_KEY, "expected 'imagenet' or a Keras .h5 weights file")
        _load_by_name(model, path, WEIGHTS_KEY)
        return f"weights from {path} ({layers})"
    path = _existing_file(model_path, MODEL_PATH_KEY, "expected a stmclf .ckpt or a Keras .h5 model")
    if _is_hdf5(path):
        _transfer_from_h5(model, path)
    else:
        _transfer_from_checkpoint(model, path)
    return f"backbone weights from {path} ({layers})"


def _existing_file(value: Any, key: str, expected: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(key, f"{expected}, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(key, f"unable to find file {value} ({expected})")
    return path


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def _read_h5(path: Path, key: str) -> dict[str, list[np.ndarray]]:
    try:
        return read_h5_layer_weights(path)
    except UserError as exc:
        raise ConfigError(key, one_line(exc, whole=True)) from None
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/... on a bad file
        raise ConfigError(key, f"{path} is not a readable Keras .h5 file ({one_line(exc, whole=True)}); "
                               "delete or replace it") from None


def _snapshot(model: KerasGraph) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_by_name(model: KerasGraph, path: Path, key: str) -> None:
    """Keras weights → backbone layers of ``model`` with the same names (all or nothing)."""
    weights = _read_h5(path, key)
    before = _snapshot(model)
    try:
        load_keras_weights(model, weights, indices=range(model.backbone_end_index + 1))
    except UserError as exc:
        model.load_state_dict(before)
        raise ConfigError(key, f"{path.name}: {one_line(exc, whole=True)}") from None


def _incompatible(detail: str) -> ConfigError:
    return ConfigError(MODEL_PATH_KEY, f"models are incompatible (backbones are different): {detail}")


def _check_length(model: KerasGraph, source_layers: int) -> None:
    end = model.backbone_end_index
    if source_layers < end + 1:
        raise _incompatible(f"the source model has {source_layers} layers, the backbone of {model.name} "
                            f"has {end + 1} (layers 0..{end})")


def _has_weights(module: torch.nn.Module | None) -> bool:
    return module is not None and bool(module.state_dict())


def _transfer_from_h5(model: KerasGraph, path: Path) -> None:
    """Index-by-index backbone copy from a Keras .h5 model (layer ``i`` of the file → layer ``i``)."""
    source = list(_read_h5(path, MODEL_PATH_KEY).items())
    _check_length(model, len(source))
    before = _snapshot(model)
    try:
        for i in range(model.backbone_end_index + 1):
            target_name = model.nodes[i].name
            source_name, arrays = source[i]
            if _has_weights(model.layer_module(i)) != bool(arrays):
                here = "without" if arrays else "with"
                there = f"with {len(arrays)} weight arrays" if arrays else "without weights"
                raise _incompatible(f"layer {i}: {target_name!r} {here} weights here, {source_name!r} {there} "
                                    "in the source")
            if not arrays:
                continue
            try:
                load_keras_weights(model, {target_name: arrays}, indices=[i])
            except UserError as exc:
                raise _incompatible(f"layer {i} ({target_name!r}, source {source_name!r}): "
                                    f"{one_line(exc, whole=True)}") from None
    except ConfigError:
        model.load_state_dict(before)
        raise


def _source_from_checkpoint(path: Path) -> KerasGraph:
    from stmclf.models.registry import build_model

    from stmclf.models.importers.base import PickledCode, load_weights_only

    try:
        checkpoint = load_weights_only(path)
    except PickledCode as exc:
        raise ConfigError(MODEL_PATH_KEY, f"{path} is neither a Keras .h5 file nor a stmclf checkpoint ({exc}; "
                                          "pickled files load only as general.model_path, with "
                                          "--trust-model-file)") from None
    except ValueError as exc:  # any failure means "not a stmclf checkpoint"
        raise ConfigError(MODEL_PATH_KEY, f"{path} is neither a Keras .h5 file nor a stmclf checkpoint "
                                          f"({exc})") from None
    from stmclf.models.checkpoint_env import resolve_env_references

    checkpoint = resolve_env_references(checkpoint, path, MODEL_PATH_KEY)  # its ${NAME} references
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, Mapping) or not isinstance(state, Mapping) or "model_spec" not in hparams \
            or not isinstance(hparams.get("class_names"), Sequence):
        raise ConfigError(MODEL_PATH_KEY, f"{path} is not a stmclf training checkpoint "
                                          "(no hyper_parameters.model_spec / class_names or state_dict)")
    from stmclf.models.model_file_entry import check_stored_spec, model_file_given, remember_source

    check_stored_spec(hparams, path, MODEL_PATH_KEY)
    remember_source(checkpoint, path)
    try:
        with model_file_given(MODEL_PATH_KEY, path):
            source = build_model(dict(hparams["model_spec"]), num_classes=len(hparams["class_names"]),
                                 dropout=hparams.get("dropout"))
    except UserError as exc:
        raise ConfigError(MODEL_PATH_KEY, f"{path}: cannot rebuild its model ({one_line(exc, whole=True)})") from None
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        source.load_state_dict(weights)
    except RuntimeError as exc:
        raise ConfigError(MODEL_PATH_KEY, f"{path}: its weights do not fit its own model_spec "
                                          f"({one_line(exc)})") from None
    return source


def _shapes(module: torch.nn.Module | None) -> dict[str, tuple[int, ...]]:
    return {} if module is None else {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _transfer_from_checkpoint(model: KerasGraph, path: Path) -> None:
    """Index-by-index backbone copy from a stmclf checkpoint (checked fully before copying)."""
    source = _source_from_checkpoint(path)
    _check_length(model, source.num_layers)
    pairs = []
    for i in range(model.backbone_end_index + 1):
        target, other = model.layer_module(i), source.layer_module(i)
        want, got = _shapes(target), _shapes(other)
        if want != got or (want and type(target) is not type(other)):
            def describe(node_name: str, module: torch.nn.Module | None, shapes: dict) -> str:
                kind = type(module).__name__ if module is not None else "InputLayer"
                return f"{node_name!r} {kind} {list(shapes.values()) if shapes else 'without weights'}"
            raise _incompatible(f"layer {i}: {describe(model.nodes[i].name, target, want)} here, "
                                f"{describe(source.nodes[i].name, other, got)} in the source")
        if want:
            pairs.append((target, other))
    with torch.no_grad():
        for target, other in pairs:
            target.load_state_dict(other.state_dict())
