"""SqueezeNet v1.0 and v1.1, layer for layer as the reference builds them (names, order).

Registered as ``name: squeezenet`` with ``version: v11`` (the reference's registered model) and
``version: v10`` (the reference ships its builder, ``models/squeezenetv10.py``, and documents it,
but does not register it). Convolutions have biases.

* v1.1: ``conv1`` 64 3×3/2 valid → ``relu_conv1`` → ``pool1`` (max 3/2) → fire2, fire3 → ``pool3``
  → fire4, fire5 → ``pool5`` → fire6..fire9 → [``drop9``] → ``conv10`` 1×1 → ``relu_conv10`` →
  GAP → ``loss``. A fire module is ``fireN/squeeze1x1`` → ``fireN/relu_squeeze1x1`` →
  ``fireN/expand1x1`` and ``fireN/expand3x3`` (same) → their ReLUs → ``fireN/concat``; no BN.
  Backbone transfer copies layers 0..58 (up to ``fire9/expand3x3``), the reference's value.
* v1.0: ``conv1`` 96 7×7/2 valid → ``relu_conv1`` → ``pool1`` → fire2..fire4 → ``pool4`` →
  fire5..fire7 → ``pool8`` → fire9 → [``dropout``] → ``conv10`` → ``relu_conv10`` → ``bn`` →
  ``average_pool10`` → ``softmax``. Its fire module is ``fireN_squeeze`` (ReLU inside the
  convolution) → ``fireN_squeeze_bn`` → ``fireN_expand_1x1`` / ``fireN_expand_3x3`` (ReLU inside)
  → ``fireN_expand_merge``: v1.0 *does* have BatchNormalization, as in the reference file. The
  reference has no end_layer_index for it; we copy the whole backbone, layers 0..40 (up to
  ``fireN_expand_merge`` of fire9).

The final softmax ``Activation`` (``loss`` / ``softmax``) is kept for the layer indices as an
identity (:class:`~stmclf.models.layers.SoftmaxLogits`): the models output logits, which are
non-negative here (a ReLU before the average pool, as in the reference).
"""
from __future__ import annotations

from stmclf.errors import ConfigError
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import head_units
from stmclf.models.layers import (Activation, Concatenate, Dropout, GlobalAveragePooling2D, SoftmaxLogits,
                                  batch_norm, conv2d, max_pooling2d)
from stmclf.models.registry import register_model

BACKBONE_END_INDEX = {"v11": 58, "v10": 40}


def _fire_v11(g: GraphBuilder, x: str, fire_id: int, squeeze: int, expand: int) -> str:
    p = f"fire{fire_id}/"
    x = g.add(p + "squeeze1x1", conv2d(squeeze, 1), x)
    x = g.add(p + "relu_squeeze1x1", Activation("relu"), x)
    left = g.add(p + "expand1x1", conv2d(expand, 1), x)
    right = g.add(p + "expand3x3", conv2d(expand, 3, padding="same"), x)
    left = g.add(p + "relu_expand1x1", Activation("relu"), left)
    right = g.add(p + "relu_expand3x3", Activation("relu"), right)
    return g.add(p + "concat", Concatenate(), [left, right])


def _fire_v10(g: GraphBuilder, x: str, fire_id: int, squeeze: int, expand: int) -> str:
    p = f"fire{fire_id}_"
    x = g.add(p + "squeeze", conv2d(squeeze, 1, activation="relu"), x)
    x = g.add(p + "squeeze_bn", batch_norm(), x)
    left = g.add(p + "expand_1x1", conv2d(expand, 1, padding="same", activation="relu"), x)
    right = g.add(p + "expand_3x3", conv2d(expand, 3, padding="same", activation="relu"), x)
    return g.add(p + "expand_merge", Concatenate(), [left, right])


def _v11(g: GraphBuilder, units: int, dropout: float | None) -> str:
    x = g.add("conv1", conv2d(64, 3, strides=2), g.input())
    x = g.add("relu_conv1", Activation("relu"), x)
    x = g.add("pool1", max_pooling2d(3, 2), x)
    x = _fire_v11(g, x, 2, 16, 64)
    x = _fire_v11(g, x, 3, 16, 64)
    x = g.add("pool3", max_pooling2d(3, 2), x)
    x = _fire_v11(g, x, 4, 32, 128)
    x = _fire_v11(g, x, 5, 32, 128)
    x = g.add("pool5", max_pooling2d(3, 2), x)
    x = _fire_v11(g, x, 6, 48, 192)
    x = _fire_v11(g, x, 7, 48, 192)
    x = _fire_v11(g, x, 8, 64, 256)
    x = _fire_v11(g, x, 9, 64, 256)
    if dropout:
        x = g.add("drop9", Dropout(dropout), x)
    x = g.add("conv10", conv2d(units, 1), x)
    x = g.add("relu_conv10", Activation("relu"), x)
    x = g.add("global_average_pooling2d", GlobalAveragePooling2D(), x)
    return g.add("loss", SoftmaxLogits(), x)


def _v10(g: GraphBuilder, units: int, dropout: float | None) -> str:
    x = g.add("conv1", conv2d(96, 7, strides=2), g.input())
    x = g.add("relu_conv1", Activation("relu"), x)
    x = g.add("pool1", max_pooling2d(3, 2), x)
    x = _fire_v10(g, x, 2, 16, 64)
    x = _fire_v10(g, x, 3, 16, 64)
    x = _fire_v10(g, x, 4, 32, 128)
    x = g.add("pool4", max_pooling2d(3, 2), x)
    x = _fire_v10(g, x, 5, 32, 128)
    x = _fire_v10(g, x, 6, 48, 192)
    x = _fire_v10(g, x, 7, 48, 192)
    x = g.add("pool8", max_pooling2d(3, 2), x)
    x = _fire_v10(g, x, 9, 64, 256)
    if dropout:
        x = g.add("dropout", Dropout(dropout), x)
    x = g.add("conv10", conv2d(units, 1), x)
    x = g.add("relu_conv10", Activation("relu"), x)
    x = g.add("bn", batch_norm(), x)
    x = g.add("average_pool10", GlobalAveragePooling2D(), x)
    return g.add("softmax", SoftmaxLogits(), x)


@register_model("squeezenet", versions=("v10", "v11"), required=("name", "version", "input_shape"),
                optional=("pretrained_model_path",))
def squeezenet(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
               version: str, pretrained_model_path: str | None = None) -> KerasGraph:
    """SqueezeNet ``version`` v10 or v11 with a [Dropout] → Conv 1×1 → ReLU → GAP head."""
    g = GraphBuilder(input_shape)
    build = _v11 if version == "v11" else _v10
    try:
        x = build(g, head_units(num_classes), dropout)
    except ValueError as exc:  # a valid convolution or pooling without any output pixel
        raise ConfigError("training.model.input_shape", f"{input_shape} is too small for squeezenet {version} "
                                                        f"({exc})") from None
    name = "SqueezeNet_v1.1" if version == "v11" else "SqueezeNet_v1.0"
    return g.build(outputs=x, name=name, backbone_end_index=BACKBONE_END_INDEX[version])
