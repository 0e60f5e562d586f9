"""Cross-key rules of the reference's config checker (what a type alone cannot say)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from stmclf.errors import ConfigError

if TYPE_CHECKING:
    from stmclf.config import RunConfig

TRAINING_GROUP = ("training", "chain_tqeb", "chain_tqe")
EVALUATION_GROUP = ("evaluation", "chain_tqeb", "chain_tqe", "chain_eqe", "chain_eqeb")
QUANTIZATION_GROUP = ("quantization", "chain_tqeb", "chain_tqe", "chain_eqe", "chain_qb", "chain_eqeb", "chain_qd")
BENCHMARKING_GROUP = ("benchmarking", "chain_tqeb", "chain_qb", "chain_eqeb")
DEPLOYMENT_GROUP = ("deployment", "chain_qd")
BUILTIN_DATASETS = ("cifar10", "cifar100", "emnist")


def check_split(key: str, value: float | None) -> None:
    if value is not None and not 0 < value < 1:
        raise ConfigError(key, f"the value should be > 0 and < 1 (got {value})")


def check_training(cfg: "RunConfig") -> None:
    """Rules for any mode that trains (``stmclf fit``, ``training``, ``chain_tqe(b)``)."""
    for name in ("dataset", "preprocessing", "training"):
        if getattr(cfg, name) is None:
            raise ConfigError(name, f"missing '{name}' section: training needs dataset, preprocessing and training")
    training, general, dataset = cfg.training, cfg.general, cfg.dataset
    sources = [k for k, v in (("training.model", training.model),
                              ("training.resume_training_from", training.resume_training_from),
                              ("general.model_path", general.model_path)) if v]
    if not sources:
        raise ConfigError("training.model", "expecting either training.model, training.resume_training_from "
                                            "or general.model_path")
    if len(sources) > 1:
        raise ConfigError(sources[1], f"{' and '.join(sources)} are mutually exclusive: give only one model source")
    if training.model is not None:
        for key in ("name", "input_shape"):
            if training.model.get(key) in (None, ""):
                raise ConfigError(f"training.model.{key}", "missing required key")
    if training.batch_size < 1:
        raise ConfigError("training.batch_size", f"must be a positive integer (got {training.batch_size})")
    if training.epochs < 1:
        raise ConfigError("training.epochs", f"must be a positive integer (got {training.epochs})")
    if training.dropout is not None and not 0 <= training.dropout < 1:
        raise ConfigError("training.dropout", f"must be >= 0 and < 1 (got {training.dropout})")
    if dataset.name not in BUILTIN_DATASETS and not dataset.training_path:
        raise ConfigError("dataset.training_path", "missing: training needs a training set directory")
    if cfg.data_augmentation and cfg.custom_data_augmentation:
        raise ConfigError("custom_data_augmentation",
                          "the data_augmentation and custom_data_augmentation sections are mutually exclusive")


def check_common(cfg: "RunConfig") -> None:
    dataset = cfg.dataset
    if dataset is not None:
        check_split("dataset.validation_split", dataset.validation_split)
        check_split("dataset.quantization_split", dataset.quantization_split)
        if dataset.class_names is not None and len(set(dataset.class_names)) != len(dataset.class_names):
            raise ConfigError("dataset.class_names", "class names must be unique")
    if cfg.preprocessing is not None and cfg.preprocessing.rescaling.scale == 0:
        raise ConfigError("preprocessing.rescaling.scale", "must not be 0")
