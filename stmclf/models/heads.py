"""Classifier heads shared by the zoo architectures."""
from __future__ import annotations

from stmclf.models.graph import GraphBuilder
from stmclf.models.layers import Dropout, GlobalAveragePooling2D, dense


def head_units(num_classes: int) -> int:
    """Logits per image: ``num_classes``, but 2 for binary tasks (never a single sigmoid unit)."""
    return max(num_classes, 2)


def gap_dense_head(g: GraphBuilder, x: str, *, num_classes: int, dropout: float | None) -> str:
    """GlobalAveragePooling2D → Dropout (only if ``dropout``) → Dense logits, Keras-named."""
    x = g.add("global_average_pooling2d", GlobalAveragePooling2D(), x)
    if dropout:
        x = g.add("dropout", Dropout(dropout), x)
    return g.add("predictions", dense(head_units(num_classes)), x)
