"""The model registry: training.model validation and the logits head rule."""
from __future__ import annotations

from typing import Any

import pytest

from stmclf.errors import ConfigError
from stmclf.models import build_model, register_model, registered_models
from stmclf.models import registry
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import gap_dense_head

MNV2 = {"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (32, 32, 3)}


def _spec(**changes: Any) -> dict[str, Any]:
    spec = dict(MNV2, **changes)
    return {k: v for k, v in spec.items() if v != "<drop>"}


@pytest.mark.parametrize("spec,dropout,key,message", [
    (_spec(name="mobilenetv9"), None, "training.model.name", r"Supported model names are \[.*'mobilenet'"),
    (_spec(name="<drop>"), None, "training.model.name", "missing model name"),
    (_spec(version="<drop>"), None, "training.model.version", r"Supported versions for mobilenet are \[.*'v2'"),
    (_spec(version="v3"), None, "training.model.version", "unsupported version 'v3'"),
    (_spec(depth=8), None, "training.model.depth", r"Allowed attributes are \['name', 'version', 'alpha'"),
    (_spec(alpha=None), None, "training.model.alpha", "missing required attribute of mobilenet v2"),
    (_spec(alpha="big"), None, "training.model.alpha", "positive number"),
    (_spec(input_shape=(32, 32)), None, "training.model.input_shape", "height, width, channels"),
    (_spec(input_shape="(32, 32, 3)"), None, "training.model.input_shape", "height, width, channels"),
    (_spec(input_shape=(16, 64, 3)), None, "training.model.input_shape", ">= 32"),
    (_spec(pretrained_weights="imagenet", pretrained_model_path="a.h5"), None,
     "training.model.pretrained_model_path", "mutually exclusive"),
    (_spec(pretrained_weights="cifar"), None, "training.model.pretrained_weights",
     "'imagenet', None or the path of a Keras .h5"),
    (_spec(pretrained_weights="imagenet", alpha=0.25), None, "training.model.alpha", "ImageNet weights"),
    (_spec(pretrained_weights="imagenet", input_shape=(32, 32, 1)), None, "training.model.input_shape",
     "3 input channels"),
    (_spec(), 1.5, "training.dropout", "between 0 and 1"),
])
def test_config_errors(spec: dict[str, Any], dropout: float | None, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_model(spec, num_classes=5, dropout=dropout)
    assert info.value.key == key and str(info.value).startswith(f"{key}: ")


def test_accepted_weight_keys_and_head_rule() -> None:
    model = build_model(_spec(pretrained_weights="imagenet", pretrained_model_path=None), 2, None)
    assert model.nodes[-1].output_shape == (2,)  # binary tasks: 2 logits, not one sigmoid unit
    model = build_model(_spec(pretrained_weights=None, pretrained_model_path="x.h5"), 1, 0.0)
    assert model.nodes[-1].output_shape == (2,) and "dropout" not in model.layers  # dropout 0.0: no layer
    assert registered_models()["mobilenet"] == ("v1", "v2")


def test_unversioned_model_rejects_a_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model("tiny", optional=("pretrained_model_path",))
    def tiny(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
             pretrained_model_path: str | None = None) -> KerasGraph:
        g = GraphBuilder(input_shape)
        return g.build(outputs=gap_dense_head(g, g.input(), num_classes=num_classes, dropout=dropout), name="tiny")

    model = build_model({"name": "tiny", "input_shape": [8, 8, 1]}, num_classes=4, dropout=0.5)
    assert [n.keras_type for n in model.nodes] == ["InputLayer", "GlobalAveragePooling2D", "Dropout", "Dense"]
    assert registered_models()["tiny"] is None
    with pytest.raises(ConfigError, match="not applicable"):
        build_model({"name": "tiny", "version": "v1", "input_shape": (8, 8, 1)}, num_classes=4, dropout=None)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tiny")(tiny)
    with pytest.raises(ValueError, match="required keys"):
        register_model("other", versions=("v1",), required=("name", "input_shape"))
