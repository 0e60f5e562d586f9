"""FD-MobileNet and ST FD-MobileNet v1, layer for layer as the reference builds them.

Registered as ``name: fdmobilenet`` (no version; ``alpha`` ∈ {0.25, 0.5, 0.75, 1.0}) and
``name: st_fdmobilenet, version: v1`` (fixed per-block widths). Topology: ``conv1`` 3×3 stride 2
(no bias) → ``conv1_bn`` → ``conv1_relu``; 11 blocks of ``conv_dw_i`` (3×3 depthwise, TF "same",
**with** bias, no BN / activation) → ``conv_pw_i`` (1×1, no bias) → ``conv_pw_i_bn`` →
``conv_pw_i_relu``; total stride 32. Head (layer names of the reference)::

    global_average_pooling2d → reshape_1 (1, 1, C) → [dropout] → conv_preds (1×1, bias)
        → act_softmax → reshape_2 (classes,)

``act_softmax`` is the reference's softmax ``Activation`` layer; here it is kept with the same
name, Keras type and index, but as an identity (:class:`~stmclf.models.layers.SoftmaxLogits`):
our models output logits. With ``alpha`` 0.25 and a (128, 128, 3) input fdmobilenet has 53 Keras
layers and 128,813 Keras parameters for 5 classes. Backbone transfer copies layers 0..46
(``conv_pw_11_bn``), the reference's ``end_layer_index`` for both models.

ST FD-MobileNet v1 always has its ``dropout`` layer (the reference builds it unconditionally and
then requires ``training.dropout``), so ``training.dropout`` is mandatory for it.
"""
from __future__ import annotations

from collections.abc import Sequence

from stmclf.errors import ConfigError
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import head_units
from stmclf.models.layers import (Activation, Dropout, GlobalAveragePooling2D, Reshape, SoftmaxLogits,
                                  batch_norm, conv2d, depthwise_conv2d)
from stmclf.models.registry import register_model

ALPHAS = (0.25, 0.5, 0.75, 1.0)
BACKBONE_END_INDEX = 46  # the reference's end_layer_index (layer "conv_pw_11_bn")
CONV1_FILTERS = 32
# Depthwise blocks 1..11: (pointwise filters before alpha, depthwise stride).
BLOCKS = ((64, 2),
          (128, 2), (128, 1),
          (256, 2), (256, 1),
          (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (1024, 1))
# ST FD-MobileNet v1: the width multiplier of conv1 and of each of the 11 blocks.
ST_ALPHAS = (0.5, 0.75, 0.625, 0.5, 0.375, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25)


def _check_input(input_shape: tuple[int, int, int], label: str) -> None:
    height, width, _ = input_shape
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise ConfigError("training.model.input_shape", f"{label} needs height and width >= 32 and multiples "
                                                        f"of 32, got {input_shape}")


def _fd_mobilenet(input_shape: tuple[int, int, int], alphas: Sequence[float], num_classes: int,
                  dropout: float | None, name: str) -> KerasGraph:
    g = GraphBuilder(input_shape)
    x = g.add("conv1", conv2d(int(CONV1_FILTERS * alphas[0]), 3, strides=2, padding="same", use_bias=False),
              g.input())
    x = g.add("conv1_bn", batch_norm(), x)
    x = g.add("conv1_relu", Activation("relu"), x)
    for block_id, ((filters, stride), alpha) in enumerate(zip(BLOCKS, alphas[1:]), start=1):
        x = g.add(f"conv_dw_{block_id}", depthwise_conv2d(3, stride, "same", use_bias=True), x)
        x = g.add(f"conv_pw_{block_id}", conv2d(int(filters * alpha), 1, padding="same", use_bias=False), x)
        x = g.add(f"conv_pw_{block_id}_bn", batch_norm(), x)
        x = g.add(f"conv_pw_{block_id}_relu", Activation("relu"), x)
    units = head_units(num_classes)
    x = g.add("global_average_pooling2d", GlobalAveragePooling2D(), x)
    x = g.add("reshape_1", Reshape((1, 1, g.shape(x)[0])), x)
    if dropout:
        x = g.add("dropout", Dropout(dropout), x)
    x = g.add("conv_preds", conv2d(units, 1, padding="same"), x)
    x = g.add("act_softmax", SoftmaxLogits(), x)
    x = g.add("reshape_2", Reshape((units,)), x)
    return g.build(outputs=x, name=name, backbone_end_index=BACKBONE_END_INDEX)


@register_model("fdmobilenet", required=("name", "alpha", "input_shape"), optional=("pretrained_model_path",))
def fdmobilenet(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
                alpha: float, pretrained_model_path: str | None = None) -> KerasGraph:
    """FD-MobileNet with width multiplier ``alpha`` (one of 0.25, 0.5, 0.75, 1.0)."""
    if isinstance(alpha, bool) or alpha not in ALPHAS:
        raise ConfigError("training.model.alpha", f"expected one of {list(ALPHAS)}, got {alpha!r}")
    _check_input(input_shape, "fdmobilenet")
    return _fd_mobilenet(input_shape, [alpha] * (len(BLOCKS) + 1), num_classes, dropout,
                         name=f"fd_mobilenet_{alpha:.2f}")


@register_model("st_fdmobilenet", versions=("v1",), required=("name", "version", "input_shape"),
                optional=("pretrained_model_path",))
def st_fdmobilenet(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
                   version: str, pretrained_model_path: str | None = None) -> KerasGraph:
    """ST FD-MobileNet v1: FD-MobileNet with per-block widths and an always-present Dropout."""
    _check_input(input_shape, "st_fdmobilenet v1")
    if not dropout:
        raise ConfigError("training.dropout", "st_fdmobilenet v1 always has a Dropout layer: set training.dropout "
                                              "to a rate between 0 and 1 (e.g. 0.2)")
    return _fd_mobilenet(input_shape, ST_ALPHAS, num_classes, dropout, name="st_fdmobilenet_v1")
