"""stmclf model files: training checkpoints (``*.ckpt``) and weights-only models (``best_model.pt``).

Both are ``torch.save`` dictionaries of tensors and plain values, read with
``torch.load(weights_only=True)`` — nothing in them is unpickled as code. Both hold
``hyper_parameters`` (model spec, class names, input shape, rescaling, augmentation, optimizer)
and ``state_dict``, so either rebuilds the trained :class:`ClassifierModule`. The weights-only
file drops the optimizer, loop and callback states: it is what evaluation and export take.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stmclf.errors import ConfigError

MODEL_FORMAT = "stmclf-model/1"
BEST_MODEL_NAME = "best_model.pt"


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """Load a stmclf checkpoint or model file without unpickling arbitrary objects."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, f"unable to find file {path}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a stmclf file"
        raise ConfigError(key, f"{path} is not a stmclf checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise ConfigError(key, f"{path} is not a stmclf checkpoint (expecting a file written by stmclf fit: "
                               f"last_augmented_model.ckpt, best_augmented_model.ckpt or {BEST_MODEL_NAME})")
    return checkpoint


def write_model_file(checkpoint_path: Path, out: Path) -> Path:
    """The weights-only model of a training checkpoint."""
    from stmclf.training.checkpoint_io import atomic_torch_save

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    atomic_torch_save({"format": MODEL_FORMAT, "epoch": checkpoint.get("epoch"),
                       "hyper_parameters": checkpoint["hyper_parameters"],
                       "state_dict": checkpoint["state_dict"]}, out)
    return out


def load_classifier(path: str | Path, key: str = "general.model_path"):
    """The trained :class:`ClassifierModule` stored in ``path`` (eval mode, CPU)."""
    from stmclf.training.module import ClassifierModule

    checkpoint = read_checkpoint(path, key)
    module = ClassifierModule(**checkpoint["hyper_parameters"])
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(key, f"{path} does not match the model it describes "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return module.eval()
