"""MobileNet V1, layer for layer as Keras Applications ``MobileNet`` builds it (names, order, padding).

Registered as ``name: mobilenet, version: v1``. The reference's scratch model has the same layers
in the same order (its ImageNet weights are copied index by index); we use the Keras Applications
layer names (``conv1``, ``conv1_bn``, ``conv1_relu``, ``conv_pad_2``, ``conv_dw_2``, ...), so that
ImageNet ``.h5`` files load by name. With ``alpha`` 0.25 and a (96, 96, 3) input the model has 88
Keras layers and 221,114 Keras parameters for 10 classes. Backbone transfer copies layers 0..84
(``conv_pw_13_bn``), the reference's ``end_layer_index``.
"""
from __future__ import annotations

from stmclf.errors import ConfigError
from stmclf.models.constraints import check_mobilenet_args
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import gap_dense_head
from stmclf.models.layers import ReLU, ZeroPadding2D, batch_norm, conv2d, depthwise_conv2d
from stmclf.models.registry import register_model

IMAGENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)
BACKBONE_END_INDEX = 84  # the reference's end_layer_index for mobilenet v1 (layer "conv_pw_13_bn")
# Depthwise-separable blocks 1..13: (pointwise filters before alpha, depthwise stride).
BLOCKS = ((64, 1),
          (128, 2), (128, 1),
          (256, 2), (256, 1),
          (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
          (1024, 2), (1024, 1))


def _separable_block(g: GraphBuilder, x: str, block_id: int, filters: int, stride: int) -> str:
    if stride == 2:
        x = g.add(f"conv_pad_{block_id}", ZeroPadding2D(((0, 1), (0, 1))), x)
    x = g.add(f"conv_dw_{block_id}", depthwise_conv2d(3, stride, "same" if stride == 1 else "valid",
                                                      use_bias=False), x)
    x = g.add(f"conv_dw_{block_id}_bn", batch_norm(), x)
    x = g.add(f"conv_dw_{block_id}_relu", ReLU(6.0), x)
    x = g.add(f"conv_pw_{block_id}", conv2d(filters, 1, padding="same", use_bias=False), x)
    x = g.add(f"conv_pw_{block_id}_bn", batch_norm(), x)
    return g.add(f"conv_pw_{block_id}_relu", ReLU(6.0), x)


@register_model("mobilenet", versions=("v1",), required=("name", "version", "alpha", "input_shape"),
                optional=("pretrained_weights", "pretrained_model_path"))
def mobilenet_v1(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
                 version: str, alpha: float, pretrained_weights: str | None = None,
                 pretrained_model_path: str | None = None) -> KerasGraph:
    """MobileNet V1 with width multiplier ``alpha`` and a GAP → [Dropout] → Dense head. The weight
    sources (``pretrained_*``) are loaded by the caller; only their constraints are checked here."""
    check_mobilenet_args("MobileNet V1", alpha, input_shape, pretrained_weights, IMAGENET_ALPHAS)
    if int(32 * alpha) < 1 or int(64 * alpha) < 1:
        raise ConfigError("training.model.alpha", f"alpha {alpha} leaves a layer without filters")

    g = GraphBuilder(input_shape)
    x = g.add("conv1", conv2d(int(32 * alpha), 3, strides=2, padding="same", use_bias=False), g.input())
    x = g.add("conv1_bn", batch_norm(), x)
    x = g.add("conv1_relu", ReLU(6.0), x)
    for block_id, (filters, stride) in enumerate(BLOCKS, start=1):
        x = _separable_block(g, x, block_id, int(filters * alpha), stride)
    x = gap_dense_head(g, x, num_classes=num_classes, dropout=dropout)
    return g.build(outputs=x, name=f"mobilenet_v1_alpha_{alpha}", backbone_end_index=BACKBONE_END_INDEX)
