"""``name: timm/<model>``: any `timm <https://github.com/huggingface/pytorch-image-models>`_ model
(stmclf extension; not in the reference)::

    training:
      model:
        name: timm/mobilenetv2_035
        input_shape: (128, 128, 3)
        drop_path_rate: 0.1          # any extra key goes to timm.create_model
      dropout: 0.2                   # timm's drop_rate (classifier dropout)

The model is ``timm.create_model(<model>, pretrained=False, num_classes=N, in_chans=C,
drop_rate=training.dropout or 0, **extra_keys)`` with ``N`` logits (2 for one or two classes),
wrapped in a :class:`~stmclf.models.custom.ModuleGraph`: its layers are the model's top-level
children (index 0 is an InputLayer placeholder), which ``training.frozen_layers`` and
``stmclf summary`` use. It has no backbone index, so ``pretrained_model_path`` is rejected.

``pretrained_weights: imagenet`` asks timm for its pretrained weights (``pretrained=True``, from the
Hugging Face hub or its local cache); where they cannot be downloaded (no network) it is a
one-line error. Keras ``.h5`` weights do not apply to timm models.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from stmclf.errors import ConfigError, one_line
from stmclf.models.custom import open_entry, wrap_module
from stmclf.models.registry import register_prefix
from stmclf.models.graph import KerasGraph
from stmclf.models.heads import head_units

PREFIX = "timm/"
RESERVED = ("pretrained", "num_classes", "in_chans", "drop_rate")


def timm_model(*, timm_name: str, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None,
               pretrained_weights: str | None = None, pretrained_model_path: str | None = None,
               **extra: Any) -> KerasGraph:
    """Build the timm model ``timm_name`` with ``num_classes`` logits for ``input_shape`` images."""
    label = PREFIX + timm_name
    try:
        import timm
    except ImportError:
        raise ConfigError("training.model.name", f"{label} needs the timm package (pip install timm)") from None
    if not timm_name or not timm.is_model(timm_name):
        raise ConfigError("training.model.name", f"unknown timm model {timm_name!r} (see timm.list_models())")
    if pretrained_model_path is not None:
        raise ConfigError("training.model.pretrained_model_path", f"not supported for {label}: timm models have no "
                                                                  "backbone index; use pretrained_weights: imagenet")
    if pretrained_weights not in (None, "imagenet"):
        raise ConfigError("training.model.pretrained_weights", f"{label} takes imagenet or None (Keras .h5 "
                                                               f"weights do not apply), got {pretrained_weights!r}")
    for key in RESERVED:
        if key in extra:
            raise ConfigError(f"training.model.{key}", f"set by stmclf for {label} (from pretrained_weights, the "
                                                       "dataset classes, input_shape and training.dropout)")
    units = head_units(num_classes)
    kwargs = dict(num_classes=units, in_chans=input_shape[2], drop_rate=dropout or 0.0, **extra)
    try:
        # Never download here: the builder also runs when a checkpoint is loaded. ImageNet
        # weights are loaded once, for a fresh run, by load_timm_pretrained.
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    except TypeError as exc:  # an extra key the model does not take
        raise ConfigError("training.model", f"{label}: {one_line(exc, typed=True)}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError("training.model", f"{label}: {one_line(exc, typed=True)}") from None
    model.stmclf_timm_kwargs = kwargs  # for load_timm_pretrained
    graph = wrap_module(model, input_shape, units, "training.model", label)
    graph.name = f"timm_{timm_name}"
    return graph


def load_timm_pretrained(graph: KerasGraph, timm_name: str) -> str:
    """Load timm's published weights (``pretrained_weights: imagenet``) into a built timm model;
    timm re-initialises the classifier when the class count differs."""
    import timm

    label = PREFIX + timm_name
    weights = timm.models.get_pretrained_cfg(timm_name)
    if weights is None or not (weights.hf_hub_id or weights.url or weights.file):
        raise ConfigError("training.model.pretrained_weights", f"timm has no pretrained weights for {label} "
                                                               "(see timm.list_pretrained())")
    try:
        source = timm.create_model(timm_name, pretrained=True, **graph.module.stmclf_timm_kwargs)
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        raise ConfigError("training.model.pretrained_weights",
                          f"the pretrained weights of {label} cannot be downloaded here ({one_line(exc, typed=True)}); "
                          "use pretrained_weights: None, or put them in the Hugging Face cache "
                          "(HF_HOME) on a machine with network access") from None
    graph.module.load_state_dict(source.state_dict())
    return f"timm pretrained weights of {timm_name}"


def _entry(name: str):
    return open_entry(name, partial(timm_model, timm_name=name[len(PREFIX):]))


register_prefix(PREFIX, _entry)
