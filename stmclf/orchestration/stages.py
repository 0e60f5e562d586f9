"""The stages of a journey, each in its own MLflow child run: train, export/quantize, evaluate,
benchmark, predict. Modes (:mod:`.modes`) and commands (:mod:`.commands`) chain them."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from stmclf.config import RunConfig
from stmclf.errors import UserError
from stmclf.orchestration.journey import Journey, resume_run_dir
from stmclf.training.tracking import end_stage_run

log = logging.getLogger("stmclf")


def model_label(cfg: RunConfig, model: Optional[str | Path] = None) -> str:
    """A short name of the journey's model for the MLflow parent run."""
    if cfg.training is not None and cfg.training.resume_training_from and model is None:
        model = cfg.training.resume_training_from
    if model is None and cfg.training is not None and cfg.training.model and cfg.training.model.get("name"):
        spec = cfg.training.model
        alpha = spec.get("alpha")
        return f"{spec.get('name')}" + (f" α{alpha}" if alpha is not None else "")
    model = model or cfg.general.model_path
    return Path(model).name if model else ""


def checked_source(model, stage: str, mode: str, cfg: RunConfig, key: str = "general.model_path"):
    """The :class:`~stmclf.models.source.ModelSource` of ``model`` once ``stage`` can use it and, when
    it becomes a torch model, once it loads: a one-line error under ``key`` otherwise, before any run
    folder or MLflow run is made (a truncated or unsupported .h5, a pickled file without
    --trust-model-file)."""
    from stmclf.models.source import resolve_model_source

    source = resolve_model_source(model, key).require(stage, mode)
    if source.is_torch:
        from stmclf.training.model_file import load_source_module

        load_source_module(source, cfg)
    return source


def train_stage(cfg: RunConfig, *, callbacks: Sequence = (), journey: Optional[Journey] = None):
    """Train, then evaluate the best model on the validation (and test) set: the ``training`` mode.
    The run folder and MLflow run open once the config, data and model are checked. Returns
    (TrainResult, Journey)."""
    from stmclf.evaluate.mode import evaluate_trained
    from stmclf.training.fit import train

    opened: dict = {}

    def open_run():
        opened["journey"] = journey or Journey(cfg, resume_run_dir(cfg), model_name=model_label(cfg))
        opened["mlflow"] = opened["journey"].start_stage("train")
        return opened["journey"].run, opened["mlflow"]

    try:
        result = train(cfg, callbacks, open_run=open_run)
        if result.is_global_zero and result.module is not None:
            evaluate_trained(result, opened["journey"].root, mlflow_logger=opened.get("mlflow"))
    except BaseException as exc:
        end_stage_run(opened.get("mlflow"), exc)
        raise
    opened["journey"].end_stage("train", opened.get("mlflow"))
    return result, opened["journey"]


def export_stage(journey: Journey, model, *, formats: Sequence[str], int8: bool, evaluate: bool = True,
                 settings=None):
    """Export (float and, with ``int8``, quantized files, each checked against the source model),
    then — with ``evaluate`` — the accuracy of the source model and of every file."""
    from stmclf.export.export import export_run

    with journey.stage("export", extra_params={"model_path": str(model) if isinstance(model, (str, os.PathLike))
                                               else getattr(model, "model_name", "")}) as mlflow_logger:
        result = export_run(journey.cfg, model, journey.root, formats=formats, int8=int8, settings=settings)
        if mlflow_logger is not None:
            mlflow_logger.log_metrics({f"export_time_{k}": v for k, v in result.timings.items()})
            mlflow_logger.log_metrics({k: float(v) for k, v in result.checks.items()
                                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
            tflm = {k: v for k, v in result.checks.items() if k in ("tflm_check", "tflm_message")}
            if tflm:  # the TensorFlow Lite Micro check: ok / failed (why) / skipped / disabled
                mlflow_logger.log_hyperparams(tflm)
        for key, path in result.items():
            log.info("Exported %s: %s", key, path)
    if evaluate:
        from stmclf.evaluate.artifacts import evaluate_export

        with journey.stage("evaluate") as mlflow_logger:
            evaluate_export(journey.cfg, result, journey.root, mlflow_logger=mlflow_logger)
    return result


def evaluate_stage(journey: Journey, model) -> dict[str, float]:
    from stmclf.evaluate.mode import evaluate_model

    log.info("Model file : %s", model)
    with journey.stage("evaluate", extra_params={"model_path": str(model)}) as mlflow_logger:
        return evaluate_model(journey.cfg, model, journey.root, mlflow_logger=mlflow_logger)


def benchmarkable(journey: Journey, model) -> Path:
    """``model`` when it is an ONNX/TFLite file; else (a Keras .h5, a stmclf or torch model) its
    float ONNX export, written to ``<run>/benchmark_models/`` and checked against the model."""
    from stmclf.models.source import resolve_model_source

    source = resolve_model_source(model).require("benchmark", "benchmarking")
    if source.is_artifact:
        return source.path
    from stmclf.export.onnx_export import check_onnx, export_onnx
    from stmclf.export.images import random_images
    from stmclf.training.model_file import load_source_module

    module = load_source_module(source, journey.cfg).cpu().eval()
    out = journey.root / "benchmark_models" / f"{source.path.stem}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(module, out, batch_size=1, softmax=True)
    h, w, c = (int(v) for v in module.hparams.input_shape)
    check_onnx(module, out, random_images(8, (c, h, w)))
    log.info("Benchmarking %s (%s) as its float ONNX export %s", source.path, source.text, out)
    return out


def benchmark_stage(journey: Journey, model: Optional[Path], *, board: Optional[str] = None, client=None):
    from stmclf.benchmark.run import benchmark_artifact

    if model is None:
        raise UserError("benchmark: the export wrote no int8 model to benchmark (see the log above)")
    model = benchmarkable(journey, model)
    with journey.stage("benchmark", extra_params={"model_path": str(model)}) as mlflow_logger:
        return benchmark_artifact(journey.cfg, Path(model), journey.root, board=board, offline=journey.cfg.offline,
                                  client=client, mlflow_logger=mlflow_logger)


def predict_stage(journey: Journey, model, images_dir, *, use_config: bool = True):
    from stmclf.evaluate.predict import predict_folder

    log.info("Model file : %s", model)
    with journey.stage("predict", extra_params={"model_path": str(model)}) as mlflow_logger:
        result = predict_folder(model, images_dir, journey.root, cfg=journey.cfg if use_config else None)
        if mlflow_logger is not None:
            mlflow_logger.log_metrics({"predicted_images": float(len(result.rows)),
                                       "skipped_files": float(len(result.skipped))})
    return result
