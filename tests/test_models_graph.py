"""KerasGraph, GraphBuilder and the Keras-like layers (no TensorFlow needed)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.layers import (Add, BatchNormalization, Dropout, Flatten, GlobalAveragePooling2D, ReLU,
                                  Reshape, ZeroPadding2D, batch_norm, conv2d, correct_pad, dense,
                                  depthwise_conv2d, same_padding)


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (128, 3, 2, (0, 1)), (127, 3, 2, (1, 1)), (75, 3, 2, (1, 1)), (8, 3, 1, (1, 1)), (8, 1, 1, (0, 0)),
    (8, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (4, 1, 2, (0, 0)),
])
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_correct_pad() -> None:
    assert correct_pad((64, 64), 3) == ((0, 1), (0, 1))
    assert correct_pad((65, 64), 3) == ((1, 1), (0, 1))


def _small_graph(input_shape: tuple[int, int, int] = (9, 8, 2), dropout: float | None = None) -> KerasGraph:
    g = GraphBuilder(input_shape)
    x = g.add("conv", conv2d(4, 3, strides=2, padding="same", use_bias=False), g.input())
    x = g.add("bn", batch_norm(), x)
    skip = g.add("relu", ReLU(6.0), x)
    x = g.add("pad", ZeroPadding2D(((1, 1), (1, 1))), skip)
    x = g.add("dw", depthwise_conv2d(3, strides=1, padding="valid", use_bias=True), x)
    x = g.add("dw_bn", batch_norm(momentum=0.9), x)
    x = g.add("add", Add(), [skip, x])
    x = g.add("gap", GlobalAveragePooling2D(), x)
    if dropout:
        x = g.add("dropout", Dropout(dropout), x)
    x = g.add("logits", dense(3), x)
    return g.build(outputs=x, name="small", backbone_end_index=7)


def _reference_forward(model: KerasGraph, x: torch.Tensor) -> torch.Tensor:
    """The small graph computed by hand with torch.nn.functional (eval mode)."""
    L = model.layers
    h = F.conv2d(F.pad(x, (0, 1, 1, 1)), L["conv"].weight, stride=2)  # 9x8, k3 s2: H pads (1, 1), W (0, 1)
    bn = L["bn"]
    h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    skip = torch.clamp(h, 0, 6)
    h = F.conv2d(F.pad(skip, (1, 1, 1, 1)), L["dw"].weight, L["dw"].bias, groups=4)
    bn = L["dw_bn"]
    h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.linear((skip + h).mean((2, 3)), L["logits"].weight, L["logits"].bias)


def _randomize_bn(model: KerasGraph) -> None:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, BatchNormalization):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def test_forward_matches_hand_computation_and_channels_last() -> None:
    torch.manual_seed(0)
    model = _small_graph().eval()
    _randomize_bn(model)
    x = torch.randn(4, 2, 9, 8)
    out = model(x)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, _reference_forward(model, x), rtol=1e-5, atol=1e-5)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl_model(x.to(memory_format=torch.channels_last)), out, rtol=1e-5, atol=1e-5)


def test_nodes_shapes_and_layer_table() -> None:
    model = _small_graph(dropout=0.3)
    assert model.num_layers == 11 and model.input_shape == (9, 8, 2)
    assert [n.name for n in model.nodes][:3] == ["input_1", "conv", "bn"]
    assert model.nodes[7].inputs == ("relu", "dw_bn")
    assert model.layer_index("add") == 7 and model.layer_module(0) is None
    assert model.layer_module(7) is model.layers["add"]
    table = model.layer_table()
    assert [(r.index, r.keras_type, r.output_shape) for r in table] == [
        (0, "InputLayer", (9, 8, 2)), (1, "Conv2D", (5, 4, 4)), (2, "BatchNormalization", (5, 4, 4)),
        (3, "ReLU", (5, 4, 4)), (4, "ZeroPadding2D", (7, 6, 4)), (5, "DepthwiseConv2D", (5, 4, 4)),
        (6, "BatchNormalization", (5, 4, 4)), (7, "Add", (5, 4, 4)), (8, "GlobalAveragePooling2D", (4,)),
        (9, "Dropout", (4,)), (10, "Dense", (3,)),
    ]
    # conv 3*3*2*4 = 72; BN 4*4 (gamma, beta, moving mean, moving var); dw 9*4 + 4; dense 4*3 + 3
    assert [r.params for r in table] == [0, 72, 16, 0, 0, 40, 16, 0, 0, 0, 15]
    assert model.keras_param_count() == 159
    assert model.keras_trainable_count() == 159 - 16  # moving statistics are not trainable
    with pytest.raises(KeyError):
        model.layer_index("nope")


def test_add_rejects_inputs_of_different_shapes() -> None:
    g = GraphBuilder((8, 8, 2))
    a = g.add("a", conv2d(4, 1), g.input())
    b = g.add("b", conv2d(4, 3), a)
    with pytest.raises(ValueError, match="same shape"):
        g.add("sum", Add(), [a, b])


def test_set_frozen_keeps_frozen_batch_norm_in_inference_mode() -> None:
    model = _small_graph((10, 10, 2))
    model.set_frozen(range(0, 3))  # input, conv, bn
    assert not any(p.requires_grad for p in model.layers["conv"].parameters())
    assert not any(p.requires_grad for p in model.layers["bn"].parameters())
    assert all(p.requires_grad for p in model.layers["dw_bn"].parameters())
    assert model.keras_trainable_count() == model.keras_param_count() - 8 - 72 - 8 - 8
    assert [r.trainable for r in model.layer_table()][:5] == [False, False, False, True, True]
    model.train()
    assert not model.layers["bn"].training and model.layers["dw_bn"].training
    stats = model.layers["bn"].running_mean.clone()
    model(torch.randn(2, 2, 10, 10)).sum().backward()
    torch.testing.assert_close(model.layers["bn"].running_mean, stats)
    assert model.layers["conv"].weight.grad is None and model.layers["dw"].weight.grad is not None
    model.set_frozen([-1])  # resets: only the last layer frozen
    assert model.frozen_indices == {9} and model.layers["bn"].training
    assert all(p.requires_grad for p in model.layers["conv"].parameters())
    with pytest.raises(IndexError):
        model.set_frozen([10])


def test_flatten_and_reshape_use_keras_element_order() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # NCHW, C=3, H=4, W=5
    torch.testing.assert_close(Flatten()(x), x.permute(0, 2, 3, 1).reshape(2, -1))
    assert Flatten().compute_output_shape((4, 5, 3)) == (60,)
    v = torch.randn(2, 7)
    as_map = Reshape((1, 1, 7))(v)
    assert as_map.shape == (2, 7, 1, 1) and torch.equal(as_map[:, :, 0, 0], v)
    torch.testing.assert_close(Reshape((7,))(as_map), v)


def test_layers_misc() -> None:
    x = torch.linspace(-3, 9, 13)
    assert torch.equal(ReLU()(x), x.clamp(min=0))
    assert torch.equal(ReLU(6.0)(x), x.clamp(0, 6))
    assert torch.equal(ReLU(4.0)(x), x.clamp(0, 4))
    assert GlobalAveragePooling2D(keepdims=True)(torch.ones(1, 3, 2, 2)).shape == (1, 3, 1, 1)
    bn = BatchNormalization((4, 4, 8), momentum=0.999)
    assert bn.momentum == pytest.approx(0.001) and bn.eps == 1e-3
    assert BatchNormalization((8,))(torch.randn(4, 8)).shape == (4, 8)  # BN after Dense
    d = dense(5)((7,))
    assert torch.count_nonzero(d.bias) == 0 and d.weight.abs().max() <= (6 / 12) ** 0.5
    with pytest.raises(ValueError):
        conv2d(4, 3)((2, 2, 1))  # a valid 3x3 conv does not fit a 2x2 map


def test_builder_rejects_malformed_graphs() -> None:
    g = GraphBuilder((8, 8, 1))
    x = g.add("a", ReLU(), g.input())
    with pytest.raises(ValueError, match="duplicate"):
        g.add("a", ReLU(), x)
    with pytest.raises(ValueError, match="unknown input"):
        g.add("b", ReLU(), "nope")
    with pytest.raises(ValueError, match="without a name"):
        g.add("", ReLU(), x)
    with pytest.raises(ValueError, match="exactly one input"):
        g.add("b", conv2d(2, 1), [x, x])
    g.add("dead_end", ReLU(), x)
    y = g.add("b", ReLU(), x)
    with pytest.raises(ValueError, match="last layer"):
        g.build(outputs=x, name="m")
    with pytest.raises(ValueError, match="not connected"):
        g.build(outputs=y, name="m")


def test_layer_names_torch_cannot_key() -> None:
    """Keras names with a '.' (Keras Applications' ``mobilenetv2_0.35_96``) or naming a module
    attribute get a sanitised module key, unused by any other layer; the graph keeps the Keras
    names (nodes, layer table, :meth:`KerasGraph.layer`) and ordinary names keep their keys."""
    g = GraphBuilder((4, 4, 2))
    x = g.add("a.b", conv2d(3, 1), g.input())
    x = g.add("training", ReLU(), x)
    x = g.add("a_b", batch_norm(), x)
    x = g.add("gap", GlobalAveragePooling2D(), x)
    model = g.build(outputs=g.add("head.fc", dense(2), x), name="dots")
    assert [n.name for n in model.nodes] == ["input_1", "a.b", "training", "a_b", "gap", "head.fc"]
    assert list(model.layers) == ["a_b_", "training_", "a_b", "gap", "head_fc"]
    assert model.layer("a.b") is model.layer_module(1) and model.layer("a_b") is model.layers["a_b"]
    assert isinstance(model.layer("a_b"), BatchNormalization) and model.layer("head.fc").weight.shape == (2, 3)
    assert [row.name for row in model.layer_table()][1:] == ["a.b", "training", "a_b", "gap", "head.fc"]
    assert model.layer_table()[1].params == 9 and model.training
    model.set_frozen([1, -1])
    assert not model.layer("a.b").weight.requires_grad and model.layer("a_b").weight.requires_grad
    assert model.eval()(torch.randn(2, 2, 4, 4)).shape == (2, 2)
    assert "layers.head_fc.weight" in model.state_dict()
