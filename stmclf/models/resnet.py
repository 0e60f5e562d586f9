"""ResNet v1 for CIFAR-size inputs (the Keras CIFAR-10 example ResNet), layer for layer as the
reference builds it.

Registered as ``name: resnet, version: v1`` with ``depth`` ∈ {8, 20, 32} (6n + 2: n residual
blocks per stack, 3 stacks of 16/32/64 filters). Each convolution is 3×3 (1×1 for the stride-2
projection shortcuts), TF "same" padding, with bias, He-normal initialised; layers keep Keras'
automatic names of a fresh session (``conv2d``, ``batch_normalization``, ``activation``,
``add``, ..., numbered in the order the reference creates them) and Keras' ``model.layers`` order
(a block's projection shortcut comes before its second BatchNormalization). Head:
``AveragePooling2D(8)`` → ``Flatten`` → [``Dropout``] → ``Dense`` (logits).

As in the reference, the average pool has a fixed 8×8 window (stride 8): a 32×32 input ends on an
8×8 map and a 1×1 pool; larger inputs give a larger pooled map (and a wider Dense); inputs whose
last map (H/4) is smaller than 8 are rejected. Every convolution carries the reference's L2 kernel
regularizer (1e-4), which training adds to the loss as Keras does
(:mod:`stmclf.models.regularization`). Depth 8 on (32, 32, 3) has 30
Keras layers and 78,666 Keras parameters for 10 classes. Backbone transfer copies layers 0..24,
the reference's ``end_layer_index`` for every depth.
"""
from __future__ import annotations

import math

from torch import nn

from stmclf.errors import ConfigError
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import head_units
from stmclf.models.layers import (Activation, Add, Conv2D, Dense, Dropout, Flatten, KerasNames,
                                  average_pooling2d, batch_norm)
from stmclf.models.registry import register_model
from stmclf.models.regularization import set_kernel_regularizer

DEPTHS = (8, 20, 32)
BACKBONE_END_INDEX = 24  # the reference's end_layer_index for resnet v1 (any depth)
POOL_SIZE = 8
L2 = 1e-4  # the reference's kernel_regularizer=l2(1e-4) on every convolution


def he_normal_(weight: nn.Parameter) -> None:
    """Keras ``he_normal``: truncated normal (±2 std) with std sqrt(2 / fan_in) / 0.8796."""
    fan_in = weight.shape[1] * math.prod(weight.shape[2:])
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _conv(filters: int, kernel: int, strides: int):
    def make(in_shape):
        layer = Conv2D(in_shape, filters, kernel, strides, padding="same", use_bias=True)
        he_normal_(layer.weight)
        return set_kernel_regularizer(layer, l2=L2)
    return make


@register_model("resnet", versions=("v1",), required=("name", "version", "depth", "input_shape"),
                optional=("pretrained_model_path",))
def resnet_v1(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
              version: str, depth: int, pretrained_model_path: str | None = None) -> KerasGraph:
    """ResNet v1 of ``depth`` 8, 20 or 32 with an AvgPool(8) → Flatten → [Dropout] → Dense head."""
    if isinstance(depth, bool) or depth not in DEPTHS:
        raise ConfigError("training.model.depth", f"expected one of {list(DEPTHS)}, got {depth!r}")
    height, width, _ = input_shape
    last = tuple(math.ceil(math.ceil(size / 2) / 2) for size in (height, width))  # two stride-2 convs
    if min(last) < POOL_SIZE:
        raise ConfigError("training.model.input_shape", f"ResNet v1 needs height and width >= 29: its last "
                                                        f"{last[0]}x{last[1]} feature map feeds AveragePooling2D(8), "
                                                        f"got {input_shape}")
    names = KerasNames()
    g = GraphBuilder(input_shape)
    x = g.add(names("conv2d"), _conv(16, 3, 1), g.input())
    x = g.add(names("batch_normalization"), batch_norm(), x)
    x = g.add(names("activation"), Activation("relu"), x)
    blocks = (depth - 2) // 6
    filters = 16
    for stack in range(3):
        for block in range(blocks):
            strides = 2 if stack > 0 and block == 0 else 1
            y = g.add(names("conv2d"), _conv(filters, 3, strides), x)
            y = g.add(names("batch_normalization"), batch_norm(), y)
            y = g.add(names("activation"), Activation("relu"), y)
            y = g.add(names("conv2d"), _conv(filters, 3, 1), y)
            bn_name = names("batch_normalization")  # created before the projection, listed after it
            if strides == 2:
                x = g.add(names("conv2d"), _conv(filters, 1, strides), x)
            y = g.add(bn_name, batch_norm(), y)
            x = g.add(names("add"), Add(), [x, y])
            x = g.add(names("activation"), Activation("relu"), x)
        filters *= 2
    x = g.add(names("average_pooling2d"), average_pooling2d(POOL_SIZE), x)
    x = g.add(names("flatten"), Flatten(), x)
    if dropout:
        x = g.add(names("dropout"), Dropout(dropout), x)

    def head(in_shape):
        layer = Dense(in_shape, head_units(num_classes))
        if num_classes > 2:  # the reference's softmax head is he_normal, its sigmoid one glorot
            he_normal_(layer.weight)
        return layer
    x = g.add(names("dense"), head, x)
    return g.build(outputs=x, name=f"resnet_v1_depth_{depth}", backbone_end_index=BACKBONE_END_INDEX)
