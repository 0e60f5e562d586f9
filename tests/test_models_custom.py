"""name: custom — the reference's default network, and custom_model functions from a file or a
module returning an nn.Module (wrapped as a layer view) or a KerasGraph."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from stmclf.errors import ConfigError
from stmclf.models import build_model
from stmclf.models.custom import ModuleGraph
from stmclf.models.graph import KerasGraph
from stmclf.models.pretrained import apply_pretrained
from stmclf.trust import trusting_code

USER_FILE = '''
import torch
from torch import nn

from stmclf.models import GraphBuilder
from stmclf.models.heads import gap_dense_head
from stmclf.models.layers import batch_norm, conv2d


class Net(nn.Module):
    def __init__(self, num_classes, channels, width, dropout):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout or 0.0)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.drop(self.pool(self.stem(x)).flatten(1)))


def get_custom_model(num_classes, input_shape, dropout, width=8):
    return Net(num_classes, input_shape[2], width, dropout)


def get_graph(num_classes, input_shape, dropout):
    g = GraphBuilder(input_shape)
    x = g.add("conv", conv2d(4, 3, padding="same"), g.input())
    x = g.add("bn", batch_norm(), x)
    return g.build(gap_dense_head(g, x, num_classes=num_classes, dropout=dropout), name="mine",
                   backbone_end_index=2)


def broken(num_classes, input_shape, dropout):
    raise RuntimeError("boom")


def wrong_size(num_classes, input_shape, dropout):
    return Net(num_classes + 1, input_shape[2], 4, dropout)


def not_a_model(num_classes, input_shape, dropout):
    return "model"
'''


@pytest.fixture()
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The user's model file in the current directory, imported as with ``--trust-code``."""
    (tmp_path / "my_models.py").write_text(USER_FILE)
    monkeypatch.chdir(tmp_path)
    with trusting_code():
        yield tmp_path


def _custom(num_classes: int = 3, dropout: float | None = None, input_shape: tuple = (32, 32, 3), **keys: Any):
    return build_model({"name": "custom", "input_shape": input_shape, **keys}, num_classes, dropout)


def test_default_model() -> None:
    model = _custom(num_classes=5)
    assert model.num_layers == 15 and model.name == "custom_model"
    assert model.backbone_end_index == 10 and model.nodes[10].name == "batch_normalization_2"
    assert [n.keras_type for n in model.nodes[1:5]] == ["Conv2D", "BatchNormalization", "Activation", "MaxPooling2D"]
    assert [n.name for n in model.nodes[-2:]] == ["global_average_pooling2d", "dense"]
    assert model.nodes[12].output_shape == (2, 2, 64)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert _custom(dropout=0.3).nodes[-2].name == "dropout"
    with pytest.raises(ConfigError, match="too small") as info:
        _custom(input_shape=(8, 8, 3))
    assert info.value.key == "training.model.input_shape"


def test_module_from_a_file_is_a_layer_view(user_dir: Path) -> None:
    model = _custom(num_classes=3, dropout=0.1, custom_model="my_models.py:get_custom_model")
    assert isinstance(model, ModuleGraph) and model.num_layers == 5
    assert [(n.name, n.keras_type, n.output_shape) for n in model.nodes] == [
        ("input_1", "InputLayer", (32, 32, 3)), ("stem", "Sequential", (32, 32, 8)),
        ("pool", "AdaptiveAvgPool2d", (1, 1, 8)), ("drop", "Dropout", (8,)), ("head", "Linear", (3,))]
    assert model.module.drop.p == 0.1
    # Keras-style counts: conv 224, BN 16 + 16 moving statistics, head 27
    assert (model.keras_param_count(), model.keras_trainable_count()) == (283, 267)
    assert [row.params for row in model.layer_table()] == [0, 256, 0, 0, 27]
    assert model.layer_module(-1) is model.module.head and model.layer_module(0) is None
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 3)
    rebuilt = _custom(num_classes=3, dropout=0.1, custom_model="my_models.py:get_custom_model")
    rebuilt.load_state_dict(model.state_dict())  # checkpoints restore into a fresh build


def test_frozen_layers_on_the_module_view(user_dir: Path) -> None:
    model = _custom(num_classes=3, custom_model="my_models.py:get_custom_model")
    model.set_frozen(range(0, 4))  # all but the head
    model.train()
    assert model.keras_trainable_count() == 27 and not model.module.stem[1].training
    assert [row.trainable for row in model.layer_table()] == [False, False, False, False, True]
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"module.head.weight", "module.head.bias"}  # BN statistics frozen too


def test_extra_keys_module_form_and_graphs(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _custom(num_classes=2, custom_model="my_models.py:get_custom_model", width=4)
    assert model.nodes[1].output_shape == (32, 32, 4) and model.nodes[-1].output_shape == (2,)
    assert _custom(num_classes=1, custom_model="my_models.py:get_custom_model").nodes[-1].output_shape == (2,)
    monkeypatch.syspath_prepend(str(user_dir))
    model = _custom(num_classes=4, custom_model="my_models:get_custom_model")
    assert isinstance(model, ModuleGraph) and model.nodes[-1].output_shape == (4,)
    graph = _custom(num_classes=4, dropout=0.2, custom_model=str(user_dir / "my_models.py") + ":get_graph")
    assert type(graph) is KerasGraph and graph.name == "mine" and graph.backbone_end_index == 2
    assert [n.name for n in graph.nodes] == ["input_1", "conv", "bn", "global_average_pooling2d", "dropout",
                                             "predictions"]


@pytest.mark.parametrize("keys,key,message", [
    ({"custom_model": "missing.py:f"}, "training.model.custom_model", "unable to find the file missing.py"),
    ({"custom_model": "my_models.py"}, "training.model.custom_model", "FILE.py:FUNCTION or MODULE:FUNCTION"),
    ({"custom_model": "my_models.py:nope"}, "training.model.custom_model", "has no function 'nope'"),
    ({"custom_model": "no_such_module_xyz:f"}, "training.model.custom_model", "cannot import module"),
    ({"custom_model": "my_models.py:broken"}, "training.model.custom_model",
     r"failed: RuntimeError: boom \(my_models.py:\d+\)"),
    ({"custom_model": "my_models.py:wrong_size"}, "training.model.custom_model", r"outputs \(4,\) per image, expected"),
    ({"custom_model": "my_models.py:not_a_model"}, "training.model.custom_model", "returned str"),
    ({"custom_model": "my_models.py:get_custom_model", "depth": 3}, "training.model.custom_model",
     "unexpected keyword argument 'depth'"),
    ({"width": 4}, "training.model.width", "custom_model function, which is not given"),
])
def test_errors(user_dir: Path, keys: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _custom(**keys)
    assert info.value.key == key and "\n" not in str(info.value)


def test_pretrained_model_path_needs_a_backbone_index(user_dir: Path) -> None:
    spec = {"name": "custom", "input_shape": (32, 32, 3), "custom_model": "my_models.py:get_custom_model",
            "pretrained_model_path": "other.ckpt"}
    model = build_model(spec, 3, None)
    with pytest.raises(ConfigError, match="has no backbone"):
        apply_pretrained(model, spec)


@pytest.mark.parametrize("target, kind", [("my_models.py:get_custom_model", "file"),
                                          ("my_models:get_custom_model", "module")])
def test_custom_model_needs_trust_code(user_dir: Path, monkeypatch: pytest.MonkeyPatch, target: str,
                                       kind: str) -> None:
    (user_dir / "my_models.py").write_text(f"open({str(user_dir / 'ran')!r}, 'w').close()\n" + USER_FILE)
    monkeypatch.syspath_prepend(str(user_dir))
    with trusting_code(False), pytest.raises(ConfigError) as info:
        _custom(custom_model=target)
    assert str(info.value) == (f"training.model.custom_model: {target} runs Python code from a {kind} named by "
                               "the config; pass --trust-code if you trust it")
    assert not (user_dir / "ran").exists()
