"""Models: Keras-indexed layer graphs, one registry, one file per architecture.

Importing this package registers every architecture (add new architecture modules below).
"""
from stmclf.models import mobilenet_v2  # noqa: F401  (registers "mobilenet" v2)
from stmclf.models import mobilenet_v1  # noqa: F401  (registers "mobilenet" v1)
from stmclf.models import fdmobilenet  # noqa: F401  (registers "fdmobilenet", "st_fdmobilenet" v1)
from stmclf.models import resnet  # noqa: F401  (registers "resnet" v1)
from stmclf.models import squeezenet  # noqa: F401  (registers "squeezenet" v10, v11)
from stmclf.models import st_efficientnet_lc  # noqa: F401  (registers "st_efficientnet_lc" v1)
from stmclf.models import resnet50_v2  # noqa: F401  (registers "resnet50" v2)
from stmclf.models import efficientnet_v2  # noqa: F401  (registers "efficientnet" v2)
from stmclf.models import stmnist  # noqa: F401  (registers "stmnist")
from stmclf.models import custom  # noqa: F401  (registers "custom")
from stmclf.models import timm_models  # noqa: F401  (resolves "timm/<model>")
from stmclf.models import model_file_entry  # noqa: F401  (registers "model_file": general.model_path files)
from stmclf.models.graph import GraphBuilder, KerasGraph, LayerRow
from stmclf.models.registry import build_model, register_model, registered_models

__all__ = ["GraphBuilder", "KerasGraph", "LayerRow", "build_model", "register_model", "registered_models"]
