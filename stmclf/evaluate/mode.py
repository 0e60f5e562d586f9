"""Evaluation of any model source on the test set, else the validation set (the ``evaluate`` stage).

Run directories and MLflow runs are :mod:`stmclf.orchestration`'s: this module measures and
reports into a given run directory.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from stmclf.config import RunConfig
from stmclf.errors import ConfigError

log = logging.getLogger("stmclf.evaluate")


def evaluation_set(splits, key: str = "dataset"):
    """The reference's rule: the test set if given, else the validation set."""
    if splits.test is not None:
        return "test_set", splits.test
    if splits.valid is not None:
        return "validation_set", splits.valid
    raise ConfigError(key, "evaluation needs dataset.test_path, dataset.validation_path or dataset.training_path")


def artifact_input_shape(predictor) -> list[int]:
    """(H, W, C) of an exported ONNX (NCHW) or TFLite (NHWC) model."""
    if hasattr(predictor, "session"):
        shape = predictor.session.get_inputs()[0].shape
        return [int(shape[2]), int(shape[3]), int(shape[1])]
    shape = predictor.model.input.shape
    return [int(shape[1]), int(shape[2]), int(shape[3])]


def _evaluation_data(cfg: RunConfig, input_shape):
    """The data module (images at the model's input shape) and its splits."""
    from stmclf.data.datamodule import ImageDataModule, ImageFormat

    fmt = ImageFormat.from_config(cfg.preprocessing, input_shape)
    datamodule = ImageDataModule(cfg.dataset, fmt, batch_size=(cfg.training.batch_size if cfg.training else None) or 32,
                                 num_workers=cfg.dataset.num_workers)
    return datamodule, datamodule.prepare_splits()


def evaluate_model(cfg: RunConfig, model, run_root: Path, *, mlflow_logger=None,
                   title: Optional[str] = None) -> dict[str, float]:
    """Accuracy of ``model`` (a model file of any kind, :mod:`stmclf.models.source`, or a
    :class:`ClassifierModule`) on the evaluation set, reported into ``run_root`` (table, confusion
    matrix, ``results.json``) and to ``mlflow_logger``."""
    from stmclf.evaluate.accuracy import evaluate_module
    from stmclf.evaluate.artifacts import evaluate_artifact, load_predictor
    from stmclf.evaluate.results import report_results

    for section in ("dataset", "preprocessing"):
        if getattr(cfg, section) is None:
            raise ConfigError(section, f"missing '{section}' section: evaluation needs dataset and preprocessing")
    rescaling = cfg.preprocessing.scale_offset()
    predictor = load_predictor(model, rescaling=rescaling, cfg=cfg)
    module = getattr(predictor, "module", None)
    if module is not None:
        datamodule, splits = _evaluation_data(cfg, module.hparams.input_shape)
        if list(module.class_names) != list(splits.class_names):
            raise ConfigError("dataset.class_names", f"the model was trained on classes {module.class_names}, "
                                                     f"the dataset has {splits.class_names}")
        cfg.preprocessing.model_rescaling(module.hparams.rescaling)
        name, files = evaluation_set(splits)
        log.info("Dataset : %s, %s: %d images", cfg.dataset.name, name.replace("_", " "), len(files))
        results = evaluate_module(module, [(name, datamodule.loader_for(files))])
        return report_results(results, splits.class_names, run_root, mlflow_logger=mlflow_logger,
                              model_file=_file_of(model), **({"title": title} if title else {}))
    datamodule, splits = _evaluation_data(cfg, artifact_input_shape(predictor))
    if predictor.num_classes and max(len(splits.class_names), 2) != predictor.num_classes:
        raise ConfigError("dataset.class_names", f"the model has {predictor.num_classes} outputs, the dataset "
                                                 f"{len(splits.class_names)} classes")
    name, files = evaluation_set(splits)
    log.info("Dataset : %s, %s: %d images", cfg.dataset.name, name.replace("_", " "), len(files))
    results = evaluate_artifact(predictor, [(name, datamodule.loader_for(files))], rescaling=rescaling,
                                num_classes=len(splits.class_names))
    return report_results(results, splits.class_names, run_root, mlflow_logger=mlflow_logger, kind=predictor.kind,
                          model_label=predictor.label, model_file=_file_of(model))


def _file_of(model) -> Optional[Path]:
    return Path(model) if isinstance(model, (str, os.PathLike)) and Path(model).is_file() else None


def evaluate_trained(result, run_root: Path, *, mlflow_logger=None) -> dict[str, float]:
    """The best model of a training run (a :class:`~stmclf.training.fit.TrainResult`) on its
    validation set and test set (when given)."""
    from stmclf.evaluate.accuracy import evaluate_module
    from stmclf.evaluate.results import report_results

    splits, datamodule = result.splits, result.datamodule
    sets = [("validation_set", splits.valid), ("test_set", splits.test)]
    results = evaluate_module(result.module, [(name, datamodule.loader_for(files)) for name, files in sets if files])
    report_results(results, splits.class_names, run_root, mlflow_logger=mlflow_logger,
                   title="Best model (max val_accuracy)", model_file=_file_of(result.best_model))
    if splits.test is None:
        log.info("No test set given: only results on the validation set are available")
    result.accuracies = {name: values["accuracy"] for name, values in results.items()}
    return result.accuracies
