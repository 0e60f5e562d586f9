"""Models: Keras-indexed layer graphs, one registry, one file per architecture.

Importing this package registers every architecture (add new architecture modules below).
"""
from stmclf.models import mobilenet_v2  # noqa: F401  (registers "mobilenet" v2)
from stmclf.models.graph import GraphBuilder, KerasGraph, LayerRow
from stmclf.models.registry import build_model, register_model, registered_models

__all__ = ["GraphBuilder", "KerasGraph", "LayerRow", "build_model", "register_model", "registered_models"]
