"""MobileNet V2, layer for layer as Keras Applications builds it (names, order, padding).

Registered as ``name: mobilenet, version: v2``. With ``alpha`` 0.35 and a (128, 128, 3) input the
model has 156 Keras layers (157 with head dropout) and 416,613 Keras parameters for 5 classes.
"""
from __future__ import annotations

from stmclf.models.constraints import check_mobilenet_args
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import gap_dense_head
from stmclf.models.layers import (Add, LayerFn, ReLU, ZeroPadding2D, batch_norm, conv2d, correct_pad,
                                  depthwise_conv2d)
from stmclf.models.registry import register_model

IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
BACKBONE_END_INDEX = 152  # the reference's end_layer_index for mobilenet v2 (layer "Conv_1_bn")
# Inverted residual blocks: (expansion t, output channels c, stride s), block ids 0..16.
BLOCKS = ((1, 16, 1),
          (6, 24, 2), (6, 24, 1),
          (6, 32, 2), (6, 32, 1), (6, 32, 1),
          (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
          (6, 96, 1), (6, 96, 1), (6, 96, 1),
          (6, 160, 2), (6, 160, 1), (6, 160, 1),
          (6, 320, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10 % down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _bn() -> LayerFn:
    return batch_norm(epsilon=1e-3, momentum=0.9)


def _inverted_residual(g: GraphBuilder, x: str, block_id: int, expansion: int, filters: int,
                       stride: int) -> str:
    in_channels = g.shape(x)[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    h = x
    if block_id:
        h = g.add(prefix + "expand", conv2d(expansion * in_channels, 1, padding="same", use_bias=False), h)
        h = g.add(prefix + "expand_BN", _bn(), h)
        h = g.add(prefix + "expand_relu", ReLU(6.0), h)
    if stride == 2:
        h = g.add(prefix + "pad", ZeroPadding2D(correct_pad(g.shape(h)[:2], 3)), h)
    h = g.add(prefix + "depthwise", depthwise_conv2d(3, stride, "same" if stride == 1 else "valid",
                                                     use_bias=False), h)
    h = g.add(prefix + "depthwise_BN", _bn(), h)
    h = g.add(prefix + "depthwise_relu", ReLU(6.0), h)
    h = g.add(prefix + "project", conv2d(filters, 1, padding="same", use_bias=False), h)
    h = g.add(prefix + "project_BN", _bn(), h)
    if stride == 1 and in_channels == filters:
        h = g.add(prefix + "add", Add(), [x, h])
    return h


@register_model("mobilenet", versions=("v2",), required=("name", "version", "alpha", "input_shape"),
                optional=("pretrained_weights", "pretrained_model_path"))
def mobilenet_v2(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
                 version: str, alpha: float, pretrained_weights: str | None = None,
                 pretrained_model_path: str | None = None) -> KerasGraph:
    """MobileNet V2 with width multiplier ``alpha`` and a GAP → [Dropout] → Dense head. The weight
    sources (``pretrained_*``) are loaded by the caller; only their constraints are checked here."""
    check_mobilenet_args("MobileNet V2", alpha, input_shape, pretrained_weights, IMAGENET_ALPHAS)

    g = GraphBuilder(input_shape)
    x = g.add("Conv1", conv2d(make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False), g.input())
    x = g.add("bn_Conv1", _bn(), x)
    x = g.add("Conv1_relu", ReLU(6.0), x)
    for block_id, (expansion, channels_out, stride) in enumerate(BLOCKS):
        x = _inverted_residual(g, x, block_id, expansion, make_divisible(int(channels_out * alpha)), stride)
    x = g.add("Conv_1", conv2d(make_divisible(1280 * alpha) if alpha > 1.0 else 1280, 1, use_bias=False), x)
    x = g.add("Conv_1_bn", _bn(), x)
    x = g.add("out_relu", ReLU(6.0), x)
    x = gap_dense_head(g, x, num_classes=num_classes, dropout=dropout)
    return g.build(outputs=x, name=f"mobilenet_v2_alpha_{alpha}", backbone_end_index=BACKBONE_END_INDEX)
