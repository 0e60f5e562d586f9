"""Classifier heads shared by the zoo architectures."""
from __future__ import annotations

from stmclf.errors import ConfigError
from stmclf.models.graph import GraphBuilder, KerasGraph, NestedModel
from stmclf.models.layers import Dropout, GlobalAveragePooling2D, dense

KERAS_APPLICATIONS_MIN_SIZE = 32
"""Keras Applications refuse inputs smaller than 32×32."""


def head_units(num_classes: int) -> int:
    """Logits per image: ``num_classes``, but 2 for binary tasks (never a single sigmoid unit)."""
    return max(num_classes, 2)


def gap_dense_head(g: GraphBuilder, x: str, *, num_classes: int, dropout: float | None) -> str:
    """GlobalAveragePooling2D → Dropout (only if ``dropout``) → Dense logits, Keras-named."""
    x = g.add("global_average_pooling2d", GlobalAveragePooling2D(), x)
    if dropout:
        x = g.add("dropout", Dropout(dropout), x)
    return g.add("predictions", dense(head_units(num_classes)), x)


def check_keras_application_input(label: str, input_shape: tuple[int, int, int],
                                  pretrained_weights: str | None) -> None:
    """Keras Applications' input rules: height and width >= 32; 3 channels for ImageNet weights."""
    height, width, channels = input_shape
    if min(height, width) < KERAS_APPLICATIONS_MIN_SIZE:
        raise ConfigError("training.model.input_shape", f"{label} needs height and width >= "
                                                        f"{KERAS_APPLICATIONS_MIN_SIZE}, got {input_shape}")
    if pretrained_weights == "imagenet" and channels != 3:
        raise ConfigError("training.model.input_shape", f"ImageNet weights need 3 input channels, got {channels}")


def nested_backbone_model(backbone: KerasGraph, *, num_classes: int, dropout: float | None, name: str,
                          inference_only: bool) -> KerasGraph:
    """A Keras Applications backbone (``include_top=False, pooling="avg"``) wrapped as the reference
    wraps it: ``input_1`` → the backbone as ONE nested layer (index 1, the backbone transfer's
    ``end_layer_index``) → [``dropout``] → ``dense`` logits. ``inference_only`` is the reference's
    ``backbone(inputs, training=False)`` when it starts from pretrained weights."""
    g = GraphBuilder(backbone.input_shape, input_name="input_1")
    x = g.add(backbone.name, NestedModel(backbone, inference_only=inference_only), g.input())
    if dropout:
        x = g.add("dropout", Dropout(dropout), x)
    x = g.add("dense", dense(head_units(num_classes)), x)
    return g.build(outputs=x, name=name, backbone_end_index=1)
