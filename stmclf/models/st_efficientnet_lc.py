"""ST EfficientNet LC v1: the reference's low-complexity EfficientNet, layer for layer.

Registered as ``name: st_efficientnet_lc, version: v1`` (square inputs, multiples of 32). Width
0.45 everywhere (``round_filters``: multiples of 8, never more than 10 % down), depth 1.0 (stage
repeats 1, 2, 2, 3, 3, 4, 1), expansion 3 (1 in the first stage), ReLU6 activations, kernels
3, 3, 5, 3, 5, 5, 3 and strides 1, 2, 2, 2, 1, 2, 1. Each MBConv block: [1×1 expand conv → BN →
ReLU6] → depthwise k×k → BN → ReLU6 → squeeze-excite (GAP → Reshape → 1×1 conv → ReLU6 ``act_j``
→ 1×1 conv → Lambda clip to [−4, 4] → sigmoid ``act2_j`` → Multiply) → 1×1 project conv → BN →
on identity blocks a stochastic-depth ``Dropout`` (whole samples) and ``Add``. Top: ``top_conv``
576 → BN → ``top_activation`` → ``avg_pool`` → ``top_dropout`` → ``output_probs`` (logits).
All convolutions have biases; unnamed layers keep Keras' automatic names of a fresh session.

Dropout: the reference builds the stochastic-depth Dropouts (rate 0.2·j/16) unconditionally, then
its ``set_dropout_rate`` sets *every* Dropout layer to ``training.dropout`` and refuses a model
with Dropout layers but no ``training.dropout``. So here ``training.dropout`` is mandatory and
is the rate of all Dropout layers, the top one included (always present). A (128, 128, 3) model
has 281 Keras layers; backbone transfer copies layers 0..276 (the top BatchNormalization), the
reference's ``end_layer_index``.
"""
from __future__ import annotations

from stmclf.errors import ConfigError
from stmclf.models.graph import GraphBuilder, KerasGraph
from stmclf.models.heads import head_units
from stmclf.models.layers import (Activation, Add, ClipLambda, Dropout, GlobalAveragePooling2D, KerasNames,
                                  Multiply, Reshape, SampleDropout, batch_norm, conv2d, dense, depthwise_conv2d)
from stmclf.models.registry import register_model

BACKBONE_END_INDEX = 276
WIDTH = 0.45
EXPANSION = 3
SE_RATIO = 0.25
SE_CLIP = 4.0
# Stages: (input filters, output filters, repeats, first stride, kernel) before width scaling.
STAGES = ((32, 16, 1, 1, 3), (16, 24, 2, 2, 3), (24, 40, 2, 2, 5), (40, 80, 3, 2, 3),
          (80, 112, 3, 1, 5), (112, 192, 4, 2, 5), (192, 320, 1, 1, 3))
STEM_FILTERS = 32
TOP_FILTERS = 1280


def round_filters(filters: int, width: float = WIDTH, divisor: int = 8) -> int:
    """EfficientNet width scaling: nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10 % below ``filters · width``."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _mbconv(g: GraphBuilder, names: KerasNames, x: str, block: int, in_filters: int, out_filters: int,
            stride: int, expansion: int, kernel: int, dropout: float) -> str:
    inputs = x
    expanded = in_filters * expansion
    if expansion != 1:
        x = g.add(names("conv2d"), conv2d(expanded, 1, padding="same"), x)
        x = g.add(names("batch_normalization"), batch_norm(), x)
        x = g.add(names("activation"), Activation("relu6"), x)
    x = g.add(names("depthwise_conv2d"), depthwise_conv2d(kernel, stride, "same"), x)
    x = g.add(names("batch_normalization"), batch_norm(), x)
    x = g.add(names("activation"), Activation("relu6"), x)
    se = g.add(names("global_average_pooling2d"), GlobalAveragePooling2D(), x)
    se = g.add(names("reshape"), Reshape((1, 1, expanded)), se)
    se = g.add(names("conv2d"), conv2d(max(1, int(in_filters * SE_RATIO)), 1, padding="same"), se)
    se = g.add(f"act_{block}", Activation("relu6"), se)
    se = g.add(names("conv2d"), conv2d(expanded, 1, padding="same"), se)
    se = g.add(names("lambda"), ClipLambda(-SE_CLIP, SE_CLIP), se)
    se = g.add(f"act2_{block}", Activation("sigmoid"), se)
    x = g.add(names("multiply"), Multiply(), [x, se])
    x = g.add(names("conv2d"), conv2d(out_filters, 1, padding="same"), x)
    x = g.add(names("batch_normalization"), batch_norm(), x)
    if stride == 1 and in_filters == out_filters:
        # Stochastic depth: reference rate 0.2·block/16 (> 0 on every identity block), which its
        # set_dropout_rate then replaces by training.dropout.
        x = g.add(names("dropout"), SampleDropout(dropout), x)
        x = g.add(names("add"), Add(), [x, inputs])
    return x


@register_model("st_efficientnet_lc", versions=("v1",), required=("name", "version", "input_shape"),
                optional=("pretrained_model_path",))
def st_efficientnet_lc(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
                       version: str, pretrained_model_path: str | None = None) -> KerasGraph:
    """ST EfficientNet LC v1 with a GAP → Dropout → Dense head."""
    height, width, _ = input_shape
    if height != width:
        raise ConfigError("training.model.input_shape", f"st_efficientnet_lc v1 needs a square input, "
                                                        f"got {input_shape}")
    if height % 32:
        raise ConfigError("training.model.input_shape", f"st_efficientnet_lc v1 needs height and width multiples "
                                                        f"of 32, got {input_shape}")
    if not dropout:
        raise ConfigError("training.dropout", "st_efficientnet_lc v1 has stochastic-depth Dropout layers: set "
                                              "training.dropout to a rate between 0 and 1 (e.g. 0.2)")
    names = KerasNames()
    g = GraphBuilder(input_shape)
    x = g.add(names("conv2d"), conv2d(round_filters(STEM_FILTERS), 3, strides=2, padding="same"), g.input())
    x = g.add(names("batch_normalization"), batch_norm(), x)
    x = g.add("stem_activation", Activation("relu6"), x)
    block = 0
    for stage, (in_filters, out_filters, repeats, stride, kernel) in enumerate(STAGES):
        in_filters, out_filters = round_filters(in_filters), round_filters(out_filters)
        expansion = 1 if stage == 0 else EXPANSION
        for i in range(repeats):
            x = _mbconv(g, names, x, block, in_filters if i == 0 else out_filters, out_filters,
                        stride if i == 0 else 1, expansion, kernel, dropout)
            block += 1
    x = g.add("top_conv", conv2d(round_filters(TOP_FILTERS), 1, padding="same"), x)
    x = g.add(names("batch_normalization"), batch_norm(), x)
    x = g.add("top_activation", Activation("relu6"), x)
    x = g.add("avg_pool", GlobalAveragePooling2D(), x)
    x = g.add("top_dropout", Dropout(dropout), x)
    x = g.add("output_probs", dense(head_units(num_classes)), x)
    return g.build(outputs=x, name="EfficientNet-STCustom", backbone_end_index=BACKBONE_END_INDEX)
