"""frozen_layers: the reference's index/slice syntax over Keras layer indices."""
from __future__ import annotations

import pytest
import torch

from stmclf.errors import ConfigError
from stmclf.models import build_model
from stmclf.models.frozen import frozen_indices
from stmclf.training.module import ClassifierModule


@pytest.mark.parametrize("spec, expected", [
    ("(0:-1)", list(range(0, 9))),
    ("(2:5)", [2, 3, 4]),
    ("(7:)", [7, 8, 9]),
    ("(1, 3:5, -1)", [1, 3, 4, 9]),
    ("(0, -1)", [0, 9]),  # what the code does (ST's README text says "all but the last")
    ([0, -1], [0, 9]),
    (2, [2]),
    ("( 4 : 8 )", [4, 5, 6, 7]),
    ("(::3)", [0, 3, 6, 9]),
    ("None", []),
    (None, []),
])
def test_syntax(spec, expected):
    assert frozen_indices(spec, 10) == expected


@pytest.mark.parametrize("spec, message", [
    ("(0;-1)", "invalid syntax"), ("(a:b)", "invalid syntax"), ("(12)", "out of range"), (True, "invalid"),
    ("(::0)", "step cannot be zero"), ("()", "invalid syntax"),
])
def test_bad_syntax(spec, message):
    with pytest.raises(ConfigError, match=f"training.frozen_layers: .*{message}"):
        frozen_indices(spec, 10)


def test_module_freezes_all_but_the_head():
    spec = {"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (32, 32, 3)}
    module = ClassifierModule(spec, ["a", "b", "c"], [32, 32, 3], (1 / 127.5, -1.0), "Adam", frozen_layers="(0:-1)")
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("layers.predictions.") for n in trainable)
    optimizer = module.configure_optimizers()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in module.model.layers["predictions"].parameters())
    module.train()
    bn = module.model.layers["bn_Conv1"]
    assert not bn.training  # frozen BatchNorm stays in inference mode
    before = bn.running_mean.clone()
    module(module.preprocess(torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)))
    assert torch.equal(before, bn.running_mean)
    assert build_model(spec, 3, None).num_layers == module.model.num_layers
