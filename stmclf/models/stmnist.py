"""ST MNIST: the reference's small network for MNIST-type datasets, layer for layer.

Registered as ``name: stmnist`` (no version; only ``name`` and ``input_shape``: the reference
rejects ``pretrained_model_path`` for it). Five Conv/DepthwiseConv (with bias, TF "same"
padding) + BatchNormalization + ReLU stages — conv 16 3×3/2, depthwise 3×3, conv 32 3×3,
depthwise 3×3/2, conv 64 1×1 — then ``GlobalAveragePooling2D`` → [``dropout``] → ``Dense``
(logits). Layers keep Keras' automatic names of a fresh session (``conv2d``,
``batch_normalization``, ``re_lu``, ...). The reference's end_layer_index is 14 (the last
BatchNormalization).
"""
from __future__ import annotations

from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import head_units
from stmclf.models.layers import (Dropout, GlobalAveragePooling2D, KerasNames, ReLU, batch_norm, conv2d, dense,
                                  depthwise_conv2d)
from stmclf.models.registry import register_model

BACKBONE_END_INDEX = 14


@register_model("stmnist", required=("name", "input_shape"))
def stmnist(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None) -> KerasGraph:
    """ST MNIST with a GAP → [Dropout] → Dense head."""
    names = KerasNames()
    g = GraphBuilder(input_shape)
    stages = (("conv2d", conv2d(16, 3, strides=2, padding="same")),
              ("depthwise_conv2d", depthwise_conv2d(3, 1, "same")),
              ("conv2d", conv2d(32, 3, strides=1, padding="same")),
              ("depthwise_conv2d", depthwise_conv2d(3, 2, "same")),
              ("conv2d", conv2d(64, 1)))
    x = g.input()
    for base, layer in stages:
        x = g.add(names(base), layer, x)
        x = g.add(names("batch_normalization"), batch_norm(), x)
        x = g.add(names("re_lu"), ReLU(), x)
    x = g.add(names("global_average_pooling2d"), GlobalAveragePooling2D(), x)
    if dropout:
        x = g.add("dropout", Dropout(dropout), x)
    x = g.add(names("dense"), dense(head_units(num_classes)), x)
    return g.build(outputs=x, name="stmnist", backbone_end_index=BACKBONE_END_INDEX)
