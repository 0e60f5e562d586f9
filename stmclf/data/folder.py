"""A config's ``dataset`` section → :class:`Splits`: the built-in CIFAR datasets
(:mod:`stmclf.data.cifar`) or folder datasets (``<root>/<class_name>/<image files>``, listed by
:mod:`stmclf.data.files`) with the reference's split rules.

A folder dataset's class names are given or inferred (:func:`~stmclf.data.files.infer_class_names`);
each path is listed and shuffled once with ``dataset.seed``; a training-only dataset is split after
that shuffle: the first ⌊N·(1 − validation_split)⌋ files train, the rest validate. The names of
:mod:`stmclf.data.files` are re-exported here.
"""
from __future__ import annotations

from stmclf.data.cifar import cifar_splits
from stmclf.data.files import (IMAGE_SUFFIXES, FileList, Splits, class_dirs, infer_class_names, list_images,
                               split_training)
from stmclf.errors import ConfigError

__all__ = ["IMAGE_SUFFIXES", "FileList", "Splits", "class_dirs", "infer_class_names", "list_images", "make_splits",
           "split_training"]


def make_splits(dataset) -> Splits:
    """Apply the reference's path/split state machine to a ``dataset`` config section."""
    builtin = (dataset.name or "").lower()
    if builtin in ("cifar10", "cifar100"):
        return cifar_splits(dataset)
    if builtin == "emnist":
        raise ConfigError("dataset.name", "emnist is not supported yet")
    seed = 123 if dataset.seed is None else dataset.seed
    split = 0.2 if dataset.validation_split is None else dataset.validation_split
    given = [("dataset.training_path", dataset.training_path),
             ("dataset.validation_path", dataset.validation_path),
             ("dataset.test_path", dataset.test_path),
             ("dataset.quantization_path", dataset.quantization_path)]
    class_names = sorted(dataset.class_names) if dataset.class_names else infer_class_names(given)
    source = None if dataset.class_names else next(key for key, path in given if path)
    out = Splits(class_names=list(class_names))
    lists = {key: list_images(path, class_names, key, seed, class_source=source) for key, path in given if path}
    training = lists.get("dataset.training_path")
    if training is not None:
        if dataset.validation_path:
            out.train, out.valid = training, lists["dataset.validation_path"]
        else:
            out.train, out.valid = split_training(training, split)
        out.quantization = training
    elif dataset.validation_path:
        out.valid = lists["dataset.validation_path"]
    out.test = lists.get("dataset.test_path")
    if dataset.quantization_path:
        out.quantization = lists["dataset.quantization_path"]
    return out
