"""The commands of one journey — ``stmclf fit | export | benchmark | predict | deploy-header`` —
each writing into one run folder: ``--run RUN_DIR``, else the run folder that holds the model
file given (``--ckpt``/``--model`` inside ``<run>/saved_models/`` or ``<run>/quantized_models/``),
else a new one from ``hydra.run.dir``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from stmclf.config import RunConfig
from stmclf.errors import ConfigError
from stmclf.orchestration.journey import Journey, resolve_run_dir
from stmclf.orchestration.stages import (benchmark_stage, checked_source, export_stage, model_label, predict_stage,
                                         train_stage)

log = logging.getLogger("stmclf")


def fit_command(cfg: RunConfig, callbacks: Sequence = ()):
    """``stmclf fit``: the training stage (train, then the best model's accuracy)."""
    result, journey = train_stage(cfg, callbacks=callbacks)
    if result.is_global_zero:
        journey.finish("training")
    return result


def run_model(run_root: Optional[Path], cfg: RunConfig) -> Optional[Path]:
    """The trained model of a run folder: ``<run>/<saved_models>/best_model.pt``."""
    from stmclf.training.model_file import BEST_MODEL_NAME

    if run_root is None:
        return None
    path = Path(run_root) / cfg.general.saved_models_dir / BEST_MODEL_NAME
    return path if path.is_file() else None


def _run_export(run_root: Optional[Path], cfg: RunConfig) -> tuple[Optional[Path], dict]:
    """(folder, ``export_summary.json``) of a run folder's latest export ((None, {}) without one)."""
    from stmclf.export.export import SUMMARY_NAME, run_export_dir

    if run_root is None:
        return None, {}
    export_dir = run_export_dir(Path(run_root), cfg.quantization.export_dir if cfg.quantization else None)
    try:
        summary = json.loads((export_dir / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None, {}
    return (export_dir, summary) if isinstance(summary, dict) else (None, {})


def _export_summary(run_root: Optional[Path], cfg: RunConfig) -> dict:
    """The ``export_summary.json`` of a run folder's latest export ({} without one)."""
    return _run_export(run_root, cfg)[1]


def run_exported_model(run_root: Optional[Path], cfg: RunConfig) -> Optional[Path]:
    """The model file the run folder's latest export came from (a run started from a model file)."""
    source = _export_summary(run_root, cfg).get("model_file")
    return Path(source) if isinstance(source, str) and Path(source).is_file() else None


def run_quantized_model(run_root: Optional[Path], cfg: RunConfig) -> Optional[Path]:
    """The int8 model an export wrote into a run folder (from its ``export_summary.json``); an
    export made from a model file that changed since (a later training) is a one-line error."""
    from stmclf.export.export import refuse_outdated_export

    export_dir, summary = _run_export(run_root, cfg)
    files = summary.get("files") or {}
    primary = ("onnx_qdq", "tflite_int8") if cfg.quantization is not None and \
        str(cfg.quantization.quantizer or "").lower() == "onnx_quantizer" else ("tflite_int8", "onnx_qdq")
    for key in (*primary, "tflite", "onnx"):
        if files.get(key) and Path(files[key]).is_file():
            refuse_outdated_export(export_dir, summary, Path(files[key]), Path(run_root), "benchmark")
            return Path(files[key])
    return None


def command_model(cfg: RunConfig, given: Optional[str], option: str, run: Optional[str], root: Optional[Path],
                  *own) -> tuple[Optional[str | Path], str]:
    """(model, the key that names it) of ``stmclf export | benchmark | predict``: the file given on
    the command line (``option``: ``--ckpt``/``--model``; the CLI also records it as the run's
    ``general.model_path``); else, with ``--run``, the run's own model (the first of ``own``, each
    ``f(root, cfg)``, that the run has); else ``general.model_path`` (a run without a model of its
    own, e.g. an evaluation of a user's file)."""
    if given:
        return given, option
    if run is not None:
        for find in own:
            found = find(root, cfg)
            if found is not None:
                return found, "--run"
    return cfg.general.model_path, "general.model_path"


def export_command(cfg: RunConfig, ckpt: Optional[str] = None, *, run: Optional[str] = None,
                   formats: Sequence[str] = ("onnx", "tflite"), int8: Optional[bool] = None, option: str = "--ckpt"):
    """``stmclf export``: float (and int8) files of a model into ``<run>/quantized_models``,
    checked, then evaluated. ``option``: the spelling of the model option the user typed (errors
    about ``ckpt`` name it)."""
    from stmclf.export.export import ExportSettings, parse_formats

    root = resolve_run_dir(run, ckpt, cfg)
    model, key = command_model(cfg, ckpt, option, run, root, run_model, run_exported_model)
    if not model:
        raise ConfigError("general.model_path", "export needs the model to export: --ckpt PATH, "
                                                "general.model_path, or --run RUN_DIR of a training run")
    formats = parse_formats(formats)
    int8 = cfg.quantization is not None if int8 is None else bool(int8)
    settings = ExportSettings.from_config(cfg)  # config errors before any file is written
    model = checked_source(model, "quantize", "export", cfg, key=key)
    journey = Journey(cfg, root, model_name=model_label(cfg, model))
    log.info("operation_mode: export")
    result = export_stage(journey, model, formats=formats, int8=int8, evaluate=True, settings=settings)
    journey.finish("export")
    return result, journey


def benchmark_command(cfg: RunConfig, model: Optional[str] = None, *, run: Optional[str] = None,
                      board: Optional[str] = None, option: str = "--model"):
    """``stmclf benchmark``: footprint of a model on a board, into its run folder's ``benchmark.json``."""
    from stmclf.benchmark.run import board_name, cloud_login_first

    root = resolve_run_dir(run, model or cfg.general.model_path, cfg)
    model, key = command_model(cfg, model, option, run, root, run_quantized_model, run_model, run_exported_model)
    if key == "--run" and cfg.quantization is not None and Path(model) == run_model(root, cfg):
        log.warning("benchmark --run %s: the run has no exported model (no export was made, or it did not finish); "
                    "benchmarking its float %s instead. For the int8 figures: stmclf export --run %s --int8, then "
                    "benchmark again", root, Path(model).name, root)
    if not model:
        raise ConfigError("general.model_path", "benchmarking needs a .tflite or .onnx model (--model, "
                                                "general.model_path, or --run RUN_DIR of an exported run)")
    model = checked_source(model, "benchmark", "benchmarking", cfg, key=key)
    board_name(cfg, board)  # a bad board name fails before anything is written
    client = cloud_login_first(cfg, cfg.offline)
    journey = Journey(cfg, root, model_name=model_label(cfg, model))
    log.info("operation_mode: benchmarking")
    footprint = benchmark_stage(journey, model, board=board, client=client)
    journey.finish("benchmarking")
    return footprint


def predict_command(cfg: RunConfig, model: Optional[str] = None, images: Optional[str] = None, *,
                    run: Optional[str] = None, use_config: bool = True, option: str = "--model"):
    """``stmclf predict``: every image of a folder → ``<run>/predictions/``."""
    root = resolve_run_dir(run, model, cfg)
    model, key = command_model(cfg, model, option, run, root, run_model, run_exported_model)
    if not model:
        raise ConfigError("general.model_path", "prediction needs a model (a stmclf .pt/.ckpt, Keras .h5, .onnx "
                                                "or .tflite)")
    from stmclf.evaluate.predict import require_known_rescaling
    from stmclf.models.source import resolve_model_source

    model = resolve_model_source(model, key)
    require_known_rescaling(model, cfg if use_config else None)
    model = checked_source(model, "predict", "prediction", cfg, key=key)
    images_key = "--images"
    if images is None:
        if cfg.prediction is None or not cfg.prediction.test_files_path:
            raise ConfigError("prediction.test_files_path", "prediction needs the directory of images to classify")
        images, images_key = cfg.prediction.test_files_path, "prediction.test_files_path"
    if use_config and cfg.prediction is not None and cfg.prediction.target not in (None, "host"):
        raise ConfigError("prediction.target", f"{cfg.prediction.target!r}: only host prediction is supported")
    from stmclf.evaluate.predict import check_images_folder

    check_images_folder(images, images_key)  # before the run's MLflow stage: a typo is one line, nothing made
    journey = Journey(cfg, root, model_name=model_label(cfg, model))
    log.info("operation_mode: prediction")
    result = predict_stage(journey, model, images, use_config=use_config)
    journey.finish("prediction")
    return result


def deploy_header_command(cfg: RunConfig, model: Optional[str] = None, *, run: Optional[str] = None,
                          out: Optional[str] = None, option: str = "--model") -> Path:
    """``stmclf deploy-header``: ``<run>/generated/ai_model_config.h`` for a full-integer TFLite
    model — ``--model``; else, with ``--run``, the run's int8 export (an error when it has none:
    the run's ``general.model_path`` is what it was trained from, not what it deploys); else
    ``general.model_path`` (an ST deployment config) — recorded in the run's MLflow parent run as
    the ``deploy`` stage."""
    from stmclf.benchmark.deploy_header import build_deploy_header, header_path

    root = resolve_run_dir(run, model, cfg)
    if not model and run is not None:
        model, key = None, "--run"  # the run's int8 export (build_deploy_header finds it)
    else:
        model, key = command_model(cfg, model, option, None, root)
        if not model:
            raise ConfigError("general.model_path", "the deployment header needs a full-integer (int8) .tflite "
                                                    "model: --model, general.model_path, or --run RUN_DIR of an "
                                                    "exported run")
    header = build_deploy_header(root, cfg=cfg.to_dict(), model=model, key=key)  # its refusals before any folder
    journey = Journey(cfg, root, model_name=model_label(cfg, header.model))
    with journey.stage("deploy", extra_params={"model_path": str(header.model)},
                       artifacts=[Path(out)] if out else ()):
        path = header.write(Path(out) if out else header_path(journey.root))
    journey.finish("deploy-header")
    return path
