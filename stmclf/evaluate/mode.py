"""The ``evaluation`` operation mode: a trained model on the test set, else the validation set."""
from __future__ import annotations

import logging
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


ARTIFACT_SUFFIXES = (".onnx", ".tflite")


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
    datamodule = ImageDataModule(cfg.dataset, fmt, batch_size=cfg.training.batch_size if cfg.training else 32,
                                 num_workers=cfg.dataset.num_workers)
    return datamodule, datamodule.prepare_splits()


def _run_evaluation(cfg: RunConfig, model_path: str, model_name: str, datamodule, splits, evaluate_on,
                    **report_args) -> dict[str, float]:
    """The mode's run: run directory, summary log lines, MLflow run, ``evaluate_on([(set, loader)])``
    on the evaluation set, the results reported."""
    from stmclf.evaluate.results import report_results
    from stmclf.training.run_dir import create_run_dir
    from stmclf.training.tracking import finish_mlflow_run, start_mlflow_run

    name, files = evaluation_set(splits)
    run = create_run_dir(cfg)
    log.info("operation_mode: evaluation")
    log.info("Model file : %s (%s)", model_path, model_name)
    log.info("Dataset : %s, %s: %d images", cfg.dataset.name, name.replace("_", " "), len(files))
    mlflow_logger = start_mlflow_run(cfg, run, "evaluation", extra_params={"model_path": str(model_path)})
    results = evaluate_on([(name, datamodule.loader_for(files))])
    metrics = report_results(results, splits.class_names, run.root, mlflow_logger=mlflow_logger, **report_args)
    log.info("operation finished: evaluation")
    finish_mlflow_run(mlflow_logger, run)
    return metrics


def evaluate_exported(cfg: RunConfig, model_path: str) -> dict[str, float]:
    """Evaluation of an exported model (float or int8 ONNX / TFLite) on the test set, else the
    validation set; preprocessing from the config (the exported models exclude rescaling)."""
    from stmclf.export.evaluate_artifacts import evaluate_artifact, load_predictor

    rescaling = (cfg.preprocessing.rescaling.scale, cfg.preprocessing.rescaling.offset)
    predictor = load_predictor(model_path, rescaling=rescaling)
    datamodule, splits = _evaluation_data(cfg, artifact_input_shape(predictor))
    if predictor.num_classes and max(len(splits.class_names), 2) != predictor.num_classes:
        raise ConfigError("dataset.class_names", f"the model has {predictor.num_classes} outputs, the dataset "
                                                 f"{len(splits.class_names)} classes")
    return _run_evaluation(
        cfg, model_path, predictor.label, datamodule, splits,
        lambda loaders: evaluate_artifact(predictor, loaders, rescaling=rescaling, num_classes=len(splits.class_names)),
        kind=predictor.kind, model_label=predictor.label)


def evaluate(cfg: RunConfig, model_path: Optional[str] = None) -> dict[str, float]:
    from stmclf.evaluate.accuracy import evaluate_module
    from stmclf.training.model_file import load_classifier

    model_path = model_path or cfg.general.model_path
    if not model_path:
        raise ConfigError("general.model_path", "evaluation needs the model to evaluate (a stmclf .ckpt or .pt file)")
    for section in ("dataset", "preprocessing"):
        if getattr(cfg, section) is None:
            raise ConfigError(section, f"missing '{section}' section: evaluation needs dataset and preprocessing")
    if str(model_path).lower().endswith(ARTIFACT_SUFFIXES):
        return evaluate_exported(cfg, model_path)
    module = load_classifier(model_path)
    datamodule, splits = _evaluation_data(cfg, module.hparams.input_shape)
    if list(module.class_names) != list(splits.class_names):
        raise ConfigError("dataset.class_names", f"the model was trained on classes {module.class_names}, "
                                                 f"the dataset has {splits.class_names}")
    rescaling = (cfg.preprocessing.rescaling.scale, cfg.preprocessing.rescaling.offset)
    if tuple(module.hparams.rescaling) != rescaling:
        log.warning("preprocessing.rescaling %s differs from the model's %s: using the model's", rescaling,
                    tuple(module.hparams.rescaling))
    return _run_evaluation(cfg, model_path, module.model_name, datamodule, splits,
                           lambda loaders: evaluate_module(module, loaders))
