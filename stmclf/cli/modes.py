"""``operation_mode`` → the function that runs it (the reference's stm32ai_main dispatch)."""
from __future__ import annotations

from typing import Callable

from stmclf.config import RunConfig
from stmclf.config.sections import OPERATION_MODES
from stmclf.errors import ConfigError


def _training(cfg: RunConfig) -> None:
    from stmclf.training.fit import train

    train(cfg)


def _evaluation(cfg: RunConfig) -> None:
    from stmclf.evaluate.mode import evaluate

    evaluate(cfg)


def _quantization(cfg: RunConfig) -> None:
    from stmclf.export import quantization_mode

    quantization_mode(cfg)


def _chain_tqe(cfg: RunConfig) -> None:
    """Train → quantize the best model → evaluate the quantized model, in one run directory and
    one MLflow run."""
    from stmclf.export.export import ExportSettings, export_run, quantizer_formats
    from stmclf.training.fit import train
    from stmclf.training.tracking import finish_mlflow_run, is_global_zero, make_mlflow_logger

    if cfg.quantization is None:
        raise ConfigError("quantization", "missing 'quantization' section: chain_tqe quantizes the trained model")
    formats, settings = quantizer_formats(cfg), ExportSettings.from_config(cfg)  # errors before training
    result = train(cfg)
    if not is_global_zero():
        return
    mlflow_logger = make_mlflow_logger(cfg.mlflow.uri, cfg.general.project_name, result.run_dir.root.name,
                                       run_id=result.mlflow_run_id)
    export_run(cfg, result.best_model, result.run_dir.root, formats=formats, int8=True, mlflow_logger=mlflow_logger,
               settings=settings)
    finish_mlflow_run(mlflow_logger, result.run_dir)


def _chain_eqe(cfg: RunConfig) -> None:
    """Evaluate the float model → quantize → evaluate the quantized model."""
    from stmclf.export import quantization_mode

    quantization_mode(cfg, operation_mode="chain_eqe")


def _prediction(cfg: RunConfig) -> None:
    from stmclf.evaluate.predict import prediction_mode

    prediction_mode(cfg)


MODES: dict[str, Callable[[RunConfig], None]] = {
    "chain_tqe": _chain_tqe,
    "chain_eqe": _chain_eqe,
    "quantization": _quantization,
    "training": _training,
    "evaluation": _evaluation,
    "prediction": _prediction,
}


def run_mode(cfg: RunConfig) -> None:
    mode = cfg.operation_mode
    if mode is None:
        raise ConfigError("operation_mode", f"missing; one of: {', '.join(OPERATION_MODES)}")
    handler = MODES.get(mode)
    if handler is None:
        raise ConfigError("operation_mode", f"{mode!r} is not available in this version of stmclf yet; "
                                            f"available: {', '.join(MODES)}")
    handler(cfg)
