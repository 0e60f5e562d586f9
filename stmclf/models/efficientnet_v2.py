"""EfficientNetV2 B0–B3 and S (``name: efficientnet, version: v2, type: B0|B1|B2|B3|S``): Keras
Applications' ``EfficientNetV2<type>(include_top=False, pooling="avg", include_preprocessing=False)``,
layer for layer, wrapped as the reference wraps it (:func:`nested_backbone_model`): ``input_1`` →
``efficientnetv2-b0`` (the whole backbone, ONE nested layer: index 1) → [``dropout``] → ``dense``
(logits). Without the preprocessing layer, inputs are expected in [−1, 1] as in Keras.

The backbone as Keras builds it: ``stem_conv`` 3×3/2 → ``stem_bn`` → ``stem_activation`` (swish), six
stages of blocks ``block{stage}{a, b, ...}_``, ``top_conv`` 1×1 → ``top_bn`` → ``top_activation``
→ ``avg_pool``. Fused-MBConv blocks (stages 1–3): [k×k expand conv with the block's stride → BN →
swish] → project conv (1×1, or k×k with the stride when there is no expansion) → BN [→ swish when
there is no expansion]. MBConv blocks (stages 4–6): [1×1 expand conv → BN → swish] → depthwise
k×k (``dwconv2``) → BN → swish → squeeze-excite (``se_squeeze`` GAP → ``se_reshape`` →
``se_reduce`` 1×1 swish, max(1, int(block input filters × 0.25)) filters → ``se_expand`` 1×1
sigmoid → ``se_excite`` multiply) → 1×1 project → BN. Blocks with stride 1 and as many output as
input filters add their input (``_add``) after a stochastic-depth ``_drop`` (whole-sample
Dropout, rate 0.2·b/n for the b-th block, n the stage repeats before depth scaling; absent for
b = 0). All convolutions "same"-padded, without bias except squeeze-excite's, kernels truncated
normal (He, fan-out); BatchNormalization epsilon 1e-3, momentum 0.9. Width and depth scaling:
filters rounded to multiples of 8, repeats rounded up.

``pretrained_weights: imagenet`` loads Keras' ``efficientnetv2-<type>_notop.h5``
(:mod:`stmclf.models.pretrained`) and, as the reference calls ``backbone(inputs, training=False)``
whenever it starts from pretrained weights, the backbone then always runs in inference mode
(BatchNorm moving statistics, no stochastic depth; :class:`~stmclf.models.graph.NestedModel`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from stmclf.errors import ConfigError
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import check_keras_application_input, nested_backbone_model
from stmclf.models.layers import (Activation, Add, Conv2D, DepthwiseConv2D, GlobalAveragePooling2D, LayerFn,
                                  Multiply, Reshape, SampleDropout, batch_norm)
from stmclf.models.registry import register_model


class Stage(NamedTuple):
    fused: bool
    expansion: int
    in_filters: int
    out_filters: int
    repeats: int
    kernel: int
    stride: int
    se_ratio: float


_B = (Stage(True, 1, 32, 16, 1, 3, 1, 0.0), Stage(True, 4, 16, 32, 2, 3, 2, 0.0), Stage(True, 4, 32, 48, 2, 3, 2, 0.0),
      Stage(False, 4, 48, 96, 3, 3, 2, 0.25), Stage(False, 6, 96, 112, 5, 3, 1, 0.25),
      Stage(False, 6, 112, 192, 8, 3, 2, 0.25))
_S = (Stage(True, 1, 24, 24, 2, 3, 1, 0.0), Stage(True, 4, 24, 48, 4, 3, 2, 0.0), Stage(True, 4, 48, 64, 4, 3, 2, 0.0),
      Stage(False, 4, 64, 128, 6, 3, 2, 0.25), Stage(False, 6, 128, 160, 9, 3, 1, 0.25),
      Stage(False, 6, 160, 256, 15, 3, 2, 0.25))
# type → (width coefficient, depth coefficient, stages)
TYPES = {"B0": (1.0, 1.0, _B), "B1": (1.0, 1.1, _B), "B2": (1.1, 1.2, _B), "B3": (1.2, 1.4, _B), "S": (1.0, 1.0, _S)}
DROP_CONNECT_RATE = 0.2
TOP_FILTERS = 1280


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Keras EfficientNetV2 width scaling: the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(filters * width + divisor / 2) // divisor * divisor)


def _fan_out_init(layer: nn.Conv2d) -> nn.Conv2d:
    """Keras ``VarianceScaling(2.0, "fan_out", "truncated_normal")``; a depthwise kernel's fan-out
    is its window (Keras counts the depth multiplier, 1)."""
    out_per_group = layer.out_channels // layer.groups
    fan_out = out_per_group * layer.kernel_size[0] * layer.kernel_size[1]
    std = math.sqrt(2.0 / fan_out) / 0.87962566103423978
    # A normal truncated at ±2 std by its inverse CDF (torch's trunc_normal_ rejection-samples:
    # seconds for EfficientNetV2-S).
    bound = math.erf(2.0 / math.sqrt(2.0))
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound).erfinv_().mul_(std * math.sqrt(2.0)).clamp_(-2 * std, 2 * std)
    return layer


def _conv(filters: int, kernel: int, strides: int = 1, use_bias: bool = False, activation: str | None = None) -> LayerFn:
    return lambda s: _fan_out_init(Conv2D(s, filters, kernel, strides, "same", use_bias, activation))


def _depthwise(kernel: int, strides: int) -> LayerFn:
    return lambda s: _fan_out_init(DepthwiseConv2D(s, kernel, strides, "same", use_bias=False))


def _bn() -> LayerFn:
    return batch_norm(epsilon=1e-3, momentum=0.9)


def _block(g: GraphBuilder, x: str, name: str, stage: Stage, in_filters: int, stride: int, rate: float) -> str:
    inputs, out_filters, k = x, stage.out_filters, stage.kernel
    filters = in_filters * stage.expansion
    if stage.expansion != 1:
        x = g.add(name + "expand_conv", _conv(filters, k if stage.fused else 1, stride if stage.fused else 1), x)
        x = g.add(name + "expand_bn", _bn(), x)
        x = g.add(name + "expand_activation", Activation("swish"), x)
    if not stage.fused:
        x = g.add(name + "dwconv2", _depthwise(k, stride), x)
        x = g.add(name + "bn", _bn(), x)
        x = g.add(name + "activation", Activation("swish"), x)
    if 0 < stage.se_ratio <= 1:
        se = g.add(name + "se_squeeze", GlobalAveragePooling2D(), x)
        se = g.add(name + "se_reshape", Reshape((1, 1, filters)), se)
        se = g.add(name + "se_reduce", _conv(max(1, int(in_filters * stage.se_ratio)), 1, use_bias=True,
                                             activation="swish"), se)
        se = g.add(name + "se_expand", _conv(filters, 1, use_bias=True, activation="sigmoid"), se)
        x = g.add(name + "se_excite", Multiply(), [x, se])
    no_expansion = stage.fused and stage.expansion == 1
    x = g.add(name + "project_conv", _conv(out_filters, k if no_expansion else 1, stride if no_expansion else 1), x)
    x = g.add(name + "project_bn", _bn(), x)
    if no_expansion:
        x = g.add(name + "project_activation", Activation("swish"), x)
    if stride == 1 and in_filters == out_filters:
        if rate:
            x = g.add(name + "drop", SampleDropout(rate), x)
        x = g.add(name + "add", Add(), [x, inputs])
    return x


def efficientnetv2_backbone(model_type: str, input_shape: tuple[int, int, int],
                            input_name: str = "input_2") -> KerasGraph:
    """Keras' ``EfficientNetV2<type>(include_top=False, pooling="avg", include_preprocessing=False,
    weights=None)`` (B0: 269 layers)."""
    width, depth, stages = TYPES[model_type]
    g = GraphBuilder(input_shape, input_name=input_name)
    x = g.add("stem_conv", _conv(round_filters(stages[0].in_filters, width), 3, 2), g.input())
    x = g.add("stem_bn", _bn(), x)
    x = g.add("stem_activation", Activation("swish"), x)
    total = float(sum(stage.repeats for stage in stages))  # before depth scaling, as Keras counts
    b = 0
    for i, stage in enumerate(stages):
        stage = stage._replace(in_filters=round_filters(stage.in_filters, width),
                               out_filters=round_filters(stage.out_filters, width))
        for j in range(int(math.ceil(depth * stage.repeats))):
            x = _block(g, x, f"block{i + 1}{chr(j + 97)}_", stage, stage.in_filters if j == 0 else stage.out_filters,
                       stage.stride if j == 0 else 1, DROP_CONNECT_RATE * b / total)
            b += 1
    x = g.add("top_conv", _conv(round_filters(TOP_FILTERS, width), 1), x)
    x = g.add("top_bn", _bn(), x)
    x = g.add("top_activation", Activation("swish"), x)
    x = g.add("avg_pool", GlobalAveragePooling2D(), x)
    return g.build(outputs=x, name=f"efficientnetv2-{model_type.lower()}")


@register_model("efficientnet", versions=("v2",), required=("name", "version", "type", "input_shape"),
                optional=("pretrained_weights", "pretrained_model_path"))
def efficientnet_v2(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None, version: str,
                    type: str, pretrained_weights: str | None = None,
                    pretrained_model_path: str | None = None) -> KerasGraph:
    """EfficientNetV2 ``type`` backbone as one nested layer → [Dropout] → Dense. The weight sources
    are loaded by the caller; pretrained weights put the backbone in inference mode, as in the
    reference."""
    if not isinstance(type, str) or type not in TYPES:
        raise ConfigError("training.model.type", f"expected one of {list(TYPES)}, got {type!r}")
    check_keras_application_input(f"EfficientNetV2{type}", input_shape, pretrained_weights)
    return nested_backbone_model(efficientnetv2_backbone(type, input_shape), num_classes=num_classes,
                                 dropout=dropout, name=f"efficientnet_v2{type}", inference_only=bool(pretrained_weights))
