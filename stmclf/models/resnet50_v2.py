"""ResNet50V2 (``name: resnet50, version: v2``): Keras Applications' ``ResNet50V2(include_top=False,
pooling="avg")``, layer for layer, wrapped as the reference wraps it (:func:`nested_backbone_model`):
``input_1`` → ``resnet50v2`` (the whole backbone, ONE nested layer: index 1) → [``dropout``] →
``dense`` (logits).

The backbone is pre-activation ResNet-50 as Keras builds it: ``conv1_pad`` (3 pixels) →
``conv1_conv`` 7×7/2 64 filters with bias → ``pool1_pad`` → ``pool1_pool`` 3×3/2 max; four stages of
3, 4, 6, 3 bottleneck blocks (64, 128, 256, 512 filters, ×4 out) → ``post_bn`` → ``post_relu`` →
``avg_pool``. A block: ``_preact_bn`` → ``_preact_relu`` → 1×1 (no bias) → BN → ReLU → ``_2_pad``
(1 pixel) → 3×3 (no bias, the block's stride) → BN → ReLU → 1×1 ×4 with bias, added to the
shortcut: a 1×1 projection with bias of the pre-activation (``_0_conv``, first block of a stage),
the input (identity), or a ``MaxPooling2D(1, 2)`` of the input where the block strides. As in
Keras, the stride is in the LAST block of stages 1–3 (``conv2_block3``, ``conv3_block4``,
``conv4_block6``); stage 4 does not stride. BatchNormalization: epsilon 1.001e-5, momentum 0.99;
kernels glorot-uniform. 23,564,800 Keras parameters (23,519,360 trainable) whatever the input
size, plus the head.

``pretrained_weights: imagenet`` loads Keras' ``resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5``
(:mod:`stmclf.models.pretrained`) and, as the reference calls ``backbone(inputs, training=False)``
whenever it starts from pretrained weights, the backbone then always runs in inference mode
(:class:`~stmclf.models.graph.NestedModel`).
"""
from __future__ import annotations

from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import check_keras_application_input, nested_backbone_model
from stmclf.models.layers import (Activation, Add, GlobalAveragePooling2D, KerasNames, LayerFn, ZeroPadding2D,
                                  batch_norm, conv2d, max_pooling2d)
from stmclf.models.registry import register_model

BACKBONE_NAME = "resnet50v2"
# Stages: (name, bottleneck filters, blocks, stride of the last block).
STAGES = (("conv2", 64, 3, 2), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 1))


def _bn() -> LayerFn:
    return batch_norm(epsilon=1.001e-5)


def _block(g: GraphBuilder, names: KerasNames, x: str, prefix: str, filters: int, stride: int,
           conv_shortcut: bool) -> str:
    preact = g.add(prefix + "_preact_bn", _bn(), x)
    preact = g.add(prefix + "_preact_relu", Activation("relu"), preact)
    h = g.add(prefix + "_1_conv", conv2d(filters, 1, use_bias=False), preact)
    h = g.add(prefix + "_1_bn", _bn(), h)
    h = g.add(prefix + "_1_relu", Activation("relu"), h)
    h = g.add(prefix + "_2_pad", ZeroPadding2D(((1, 1), (1, 1))), h)
    h = g.add(prefix + "_2_conv", conv2d(filters, 3, strides=stride, use_bias=False), h)
    h = g.add(prefix + "_2_bn", _bn(), h)
    h = g.add(prefix + "_2_relu", Activation("relu"), h)
    # Keras lists the shortcut layer here, just before the block's last convolution.
    if conv_shortcut:
        shortcut = g.add(prefix + "_0_conv", conv2d(4 * filters, 1, strides=stride), preact)
    elif stride > 1:
        shortcut = g.add(names("max_pooling2d"), max_pooling2d(1, strides=stride), x)
    else:
        shortcut = x
    h = g.add(prefix + "_3_conv", conv2d(4 * filters, 1), h)
    return g.add(prefix + "_out", Add(), [shortcut, h])


def resnet50v2_backbone(input_shape: tuple[int, int, int], input_name: str = "input_2") -> KerasGraph:
    """Keras' ``ResNet50V2(include_top=False, pooling="avg", weights=None)`` (191 layers)."""
    names = KerasNames()
    g = GraphBuilder(input_shape, input_name=input_name)
    x = g.add("conv1_pad", ZeroPadding2D(((3, 3), (3, 3))), g.input())
    x = g.add("conv1_conv", conv2d(64, 7, strides=2), x)
    x = g.add("pool1_pad", ZeroPadding2D(((1, 1), (1, 1))), x)
    x = g.add("pool1_pool", max_pooling2d(3, strides=2), x)
    for stage, filters, blocks, last_stride in STAGES:
        for block in range(1, blocks + 1):
            x = _block(g, names, x, f"{stage}_block{block}", filters, last_stride if block == blocks else 1,
                       conv_shortcut=block == 1)
    x = g.add("post_bn", _bn(), x)
    x = g.add("post_relu", Activation("relu"), x)
    x = g.add("avg_pool", GlobalAveragePooling2D(), x)
    return g.build(outputs=x, name=BACKBONE_NAME)


@register_model("resnet50", versions=("v2",), required=("name", "version", "input_shape"),
                optional=("pretrained_weights", "pretrained_model_path"))
def resnet50_v2(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None, version: str,
                pretrained_weights: str | None = None, pretrained_model_path: str | None = None) -> KerasGraph:
    """ResNet50V2 backbone as one nested layer → [Dropout] → Dense. The weight sources are loaded by
    the caller; pretrained weights put the backbone in inference mode, as in the reference."""
    check_keras_application_input("ResNet50V2", input_shape, pretrained_weights)
    return nested_backbone_model(resnet50v2_backbone(input_shape), num_classes=num_classes, dropout=dropout,
                                 name="resnet50_v2", inference_only=bool(pretrained_weights))
