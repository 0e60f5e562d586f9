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


def _quantized_artifact(result) -> str:
    return result.get("tflite_int8") or result.get("onnx_qdq")


def _train_quantize(cfg: RunConfig, mode: str, benchmark: bool) -> None:
    """chain_tqe(b): train → quantize the best model → evaluate the quantized model (→ benchmark
    it), in one run directory and one MLflow run. The cloud login happens before training."""
    from stmclf.benchmark.run import benchmark_artifact, cloud_login_first
    from stmclf.export.export import ExportSettings, export_run, quantizer_formats
    from stmclf.training.fit import train
    from stmclf.training.tracking import finish_mlflow_run, is_global_zero, make_mlflow_logger

    if cfg.quantization is None:
        raise ConfigError("quantization", f"missing 'quantization' section: {mode} quantizes the trained model")
    formats, settings = quantizer_formats(cfg), ExportSettings.from_config(cfg)  # errors before training
    client = cloud_login_first(cfg, cfg.offline) if benchmark else None
    result = train(cfg)
    if not is_global_zero():
        return
    mlflow_logger = make_mlflow_logger(cfg.mlflow.uri, cfg.general.project_name, result.run_dir.root.name,
                                       run_id=result.mlflow_run_id)
    exported = export_run(cfg, result.best_model, result.run_dir.root, formats=formats, int8=True,
                          mlflow_logger=mlflow_logger, settings=settings)
    if benchmark:
        benchmark_artifact(cfg, _quantized_artifact(exported), result.run_dir.root, offline=cfg.offline,
                           client=client, mlflow_logger=mlflow_logger)
    finish_mlflow_run(mlflow_logger, result.run_dir)


def _quantize_benchmark(cfg: RunConfig, mode: str, evaluate: bool) -> None:
    """chain_qb / chain_eqeb: (evaluate the float model →) quantize (→ evaluate) → benchmark."""
    from stmclf.benchmark.run import benchmark_artifact, cloud_login_first
    from stmclf.export.export import ExportSettings, export_run, quantizer_formats
    from stmclf.training.run_dir import create_run_dir
    from stmclf.training.tracking import finish_mlflow_run, start_mlflow_run

    if cfg.quantization is None:
        raise ConfigError("quantization", f"missing 'quantization' section: {mode} quantizes the model")
    if not cfg.general.model_path:
        raise ConfigError("general.model_path", f"{mode} needs the trained model (a stmclf best_model.pt)")
    formats, settings = quantizer_formats(cfg), ExportSettings.from_config(cfg)
    client = cloud_login_first(cfg, cfg.offline)
    run = create_run_dir(cfg)
    mlflow_logger = start_mlflow_run(cfg, run, mode, extra_params={"model_path": str(cfg.general.model_path)})
    exported = export_run(cfg, cfg.general.model_path, run.root, formats=formats, int8=True, evaluate=evaluate,
                          mlflow_logger=mlflow_logger, settings=settings)
    benchmark_artifact(cfg, _quantized_artifact(exported), run.root, offline=cfg.offline, client=client,
                       mlflow_logger=mlflow_logger)
    finish_mlflow_run(mlflow_logger, run)


def _benchmarking(cfg: RunConfig) -> None:
    from stmclf.benchmark.run import benchmark_mode

    benchmark_mode(cfg, offline=cfg.offline)


def _chain_eqe(cfg: RunConfig) -> None:
    """Evaluate the float model → quantize → evaluate the quantized model."""
    from stmclf.export import quantization_mode

    quantization_mode(cfg, operation_mode="chain_eqe")


def _prediction(cfg: RunConfig) -> None:
    from stmclf.evaluate.predict import prediction_mode

    prediction_mode(cfg)


MODES: dict[str, Callable[[RunConfig], None]] = {
    "benchmarking": _benchmarking,
    "chain_tqeb": lambda cfg: _train_quantize(cfg, "chain_tqeb", benchmark=True),
    "chain_eqeb": lambda cfg: _quantize_benchmark(cfg, "chain_eqeb", evaluate=True),
    "chain_qb": lambda cfg: _quantize_benchmark(cfg, "chain_qb", evaluate=False),
    "chain_tqe": lambda cfg: _train_quantize(cfg, "chain_tqe", benchmark=False),
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
