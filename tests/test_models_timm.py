"""name: timm/<model> — any timm model as a layer view (its top-level children)."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from stmclf.errors import ConfigError
from stmclf.models import build_model, registered_models
from stmclf.models.custom import ModuleGraph

pytest.importorskip("timm")


def _timm(name: str = "mobilenetv2_035", num_classes: int = 5, dropout: float | None = None,
          input_shape: tuple = (64, 64, 3), **keys: Any):
    return build_model({"name": f"timm/{name}", "input_shape": input_shape, **keys}, num_classes, dropout)


def test_builds_as_a_layer_view() -> None:
    model = _timm(dropout=0.2)
    assert isinstance(model, ModuleGraph) and model.name == "timm_mobilenetv2_035"
    names = [n.name for n in model.nodes]
    assert names[0] == "input_1" and names[1] == "conv_stem" and names[-1] == "classifier"
    assert model.nodes[1].output_shape == (32, 32, 16) and model.nodes[-1].output_shape == (5,)
    assert model.module.drop_rate == 0.2
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert model.keras_param_count() == params + stats
    assert sum(row.params for row in model.layer_table()) == model.keras_param_count()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert not any(name.startswith("timm/") for name in registered_models())


def test_trains_one_step_and_freezes() -> None:
    torch.manual_seed(0)
    model = _timm(num_classes=2, input_shape=(32, 32, 1), drop_path_rate=0.1)
    assert model.module.conv_stem.in_channels == 1 and model.nodes[-1].output_shape == (2,)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and model.module.conv_stem.weight.grad is not None

    model.set_frozen(range(model.num_layers - 1))  # everything but the classifier
    model.train()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"module.classifier.weight", "module.classifier.bias"}


def test_pretrained_weights_offline_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    monkeypatch.setenv("HF_HOME", "/nonexistent-stmclf-test-hf-home")
    from stmclf.models.pretrained import apply_pretrained

    spec = {"name": "timm/mobilenetv2_050", "input_shape": (64, 64, 3), "pretrained_weights": "imagenet"}
    graph = _timm("mobilenetv2_050", pretrained_weights="imagenet")  # building never downloads
    with pytest.raises(ConfigError, match="pretrained weights of timm/mobilenetv2_050 cannot be downloaded") as info:
        apply_pretrained(graph, spec)
    assert info.value.key == "training.model.pretrained_weights" and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="timm has no pretrained weights for timm/mobilenetv2_035"):
        apply_pretrained(_timm(pretrained_weights="imagenet"), {**spec, "name": "timm/mobilenetv2_035"})


@pytest.mark.parametrize("name,keys,key,message", [
    ("no_such_net", {}, "training.model.name", "unknown timm model 'no_such_net'"),
    ("", {}, "training.model.name", "unknown timm model ''"),
    ("mobilenetv2_035", {"in_chans": 3}, "training.model.in_chans", "set by stmclf"),
    ("mobilenetv2_035", {"bogus_key": 1}, "training.model", "bogus_key"),
    ("mobilenetv2_035", {"pretrained_model_path": "x.ckpt"}, "training.model.pretrained_model_path", "not supported"),
    ("mobilenetv2_035", {"pretrained_weights": "w.h5"}, "training.model.pretrained_weights", "imagenet or None"),
    ("mobilenetv2_035", {"version": "v1"}, "training.model.version", "not applicable"),
])
def test_errors(name: str, keys: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _timm(name, **keys)
    assert info.value.key == key and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["num_classes", "dropout"])
def test_keys_stmclf_sets_are_rejected(key: str) -> None:
    spec = {"name": "timm/mobilenetv2_035", "input_shape": (32, 32, 3), key: 3}
    with pytest.raises(ConfigError, match="unexpected attribute") as info:
        build_model(spec, 5, None)
    assert info.value.key == f"training.model.{key}"
    with pytest.raises(ConfigError, match="unexpected attribute"):
        build_model({"name": "custom", "input_shape": (32, 32, 3), "custom_model": "x.py:f", key: 3}, 5, None)
