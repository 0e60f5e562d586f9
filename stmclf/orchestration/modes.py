"""``operation_mode`` → its stages (the table is :data:`stmclf.config.modes.MODES`)."""
from __future__ import annotations

import logging
import signal
from typing import Optional

from stmclf.config import RunConfig
from stmclf.config.modes import MODES, OPERATION_MODES, OperationMode
from stmclf.errors import ConfigError, Interrupted
from stmclf.orchestration.journey import Journey
from stmclf.orchestration.stages import (benchmark_stage, checked_source, evaluate_stage, export_stage, model_label,
                                         predict_stage, train_stage)

log = logging.getLogger("stmclf")


def run_mode(cfg: RunConfig) -> None:
    """Run the stages of ``cfg.operation_mode`` in one run folder and one MLflow parent run."""
    mode, quantize = check_mode_config(cfg)
    if mode.has("train"):
        _train_then(cfg, mode, quantize)
    else:
        _from_model_file(cfg, mode, quantize)


def check_mode_config(cfg: RunConfig) -> tuple[OperationMode, Optional[tuple]]:
    """The refusals of :func:`run_mode` that need the config alone (no model file, dataset, network
    or board tool): the mode, the sections it needs, the board. Returns the mode and its
    quantization settings (None when it does not quantize)."""
    name = cfg.operation_mode
    if name is None:
        raise ConfigError("operation_mode", f"missing; one of: {', '.join(OPERATION_MODES)}")
    mode = MODES[name]
    if not mode.available:
        available = ", ".join(m for m, spec in MODES.items() if spec.available)
        raise ConfigError("operation_mode", f"{name!r} is not available in stmclf (it builds and flashes the "
                                            f"board application): `stmclf deploy-header --run RUN` (or --config FILE "
                                            f"with an int8 .tflite as general.model_path) writes the C header for "
                                            f"ST's application; available: {available}")
    _check_evaluation(cfg, mode)
    if not mode.has("train") and not cfg.general.model_path:
        from stmclf.models.source import ACCEPTS, KIND_TEXT

        accepts = ", ".join(KIND_TEXT[k] for k in ACCEPTS[_first_stage(mode)] if k not in ("torch_export", "pickled_module"))
        raise ConfigError("general.model_path", f"{mode.name} needs the model file: {accepts}")
    quantize = _quantization_settings(cfg, mode) if mode.has("quantize") else None
    if mode.has("predict") and (cfg.prediction is None or not cfg.prediction.test_files_path):
        raise ConfigError("prediction.test_files_path", "prediction needs the directory of images to classify")
    if mode.has("predict") and cfg.prediction.target not in (None, "host"):
        raise ConfigError("prediction.target", f"{cfg.prediction.target!r}: only host prediction is supported")
    if mode.has("benchmark"):
        from stmclf.benchmark.run import board_name

        board_name(cfg)  # a bad board name fails before anything runs
    return mode, quantize


def _first_stage(mode: OperationMode) -> str:
    """The stage that reads ``general.model_path`` in a mode that starts from a model file."""
    return next(s for s in mode.stages if s in ("quantize", "evaluate", "predict", "benchmark"))


def check_run_config(cfg: RunConfig) -> None:
    """What ``stmclf run --print_config`` checks before it prints: :func:`check_mode_config` and, for
    a mode that trains, the training's own (:func:`stmclf.training.fit.check_training_config`)."""
    mode, _ = check_mode_config(cfg)
    if mode.has("train"):
        from stmclf.training.fit import check_training_config

        check_training_config(cfg)


def _check_evaluation(cfg: RunConfig, mode) -> None:
    """The ``evaluation`` keys stmclf does not act on: an on-target evaluation is refused (it was
    evaluated on the host without a word), the .npy dumps are one warning."""
    section = cfg.evaluation
    if section is None or not mode.has("evaluate"):
        return
    if section.target not in (None, "host"):
        raise ConfigError("evaluation.target", f"{section.target!r}: only host evaluation is supported (on-target "
                                               "evaluation runs ST's board tools); measure the board with "
                                               "operation_mode: benchmarking")
    if section.gen_npy_input or section.gen_npy_output:
        log.warning("evaluation.gen_npy_input / gen_npy_output: not implemented, no .npy files are written")


def _quantization_settings(cfg: RunConfig, mode: OperationMode):
    from stmclf.export.export import ExportSettings, quantizer_formats

    if cfg.quantization is None:
        raise ConfigError("quantization", f"missing 'quantization' section: {mode.name} quantizes the model")
    return quantizer_formats(cfg), ExportSettings.from_config(cfg)


def _cloud_client(cfg: RunConfig, mode: OperationMode):
    """Chains that end in a benchmark log in to the cloud before the long steps (the reference's
    order; the board was checked by :func:`check_mode_config`)."""
    if not mode.has("benchmark"):
        return None
    from stmclf.benchmark.run import cloud_login_first

    return cloud_login_first(cfg, cfg.offline)


def _train_then(cfg: RunConfig, mode: OperationMode, quantize: Optional[tuple]) -> None:
    """training, chain_tqe, chain_tqeb: train → (quantize the best model → evaluate → benchmark)."""
    client = _cloud_client(cfg, mode)
    result, journey = train_stage(cfg)
    if not result.is_global_zero:
        return
    if quantize is not None:
        formats, settings = quantize
        try:
            exported = export_stage(journey, result.best_model, formats=formats, int8=True,
                                    evaluate=mode.has("evaluate"), settings=settings)
            if mode.has("benchmark"):
                benchmark_stage(journey, exported.quantized_model, client=client)
        except KeyboardInterrupt as exc:  # the trained model is whole: the rest, not the training, is to redo
            raise Interrupted(getattr(exc, "signum", signal.SIGINT), then=_rest_of_chain(journey, mode, formats)) \
                from None
    journey.finish(mode.name)


def _rest_of_chain(journey: Journey, mode: OperationMode, formats) -> str:
    """The commands that do what a chain does after its training, on its run folder."""
    from stmclf.errors import shell_word
    from stmclf.export.export import reexport_command

    rest = reexport_command(journey.root, {"formats": list(formats), "int8": True})
    if mode.has("benchmark"):
        rest += f", then stmclf benchmark --run {shell_word(journey.root)}{' --offline' if journey.cfg.offline else ''}"
    return rest


def _from_model_file(cfg: RunConfig, mode: OperationMode, quantize: Optional[tuple]) -> None:
    """Modes that start from ``general.model_path``: evaluation, quantization, prediction,
    benchmarking, chain_eqe, chain_eqeb, chain_qb. The model (here), config and board
    (:func:`check_mode_config`) are checked before the run folder is made."""
    first = _first_stage(mode)
    source = checked_source(cfg.general.model_path, first, mode.name, cfg)
    if mode.has("predict"):
        from stmclf.evaluate.predict import check_images_folder

        check_images_folder(cfg.prediction.test_files_path, "prediction.test_files_path")
    client = _cloud_client(cfg, mode)
    journey = Journey(cfg, model_name=model_label(cfg, source.path))
    log.info("operation_mode: %s", mode.name)
    log.info("Model kind : %s", source.text)  # each stage logs the file it works on
    benchmarked = source  # the checked source, its model loaded: each stage reuses it, the file is read once
    if quantize is not None:
        formats, settings = quantize
        exported = export_stage(journey, source, formats=formats, int8=True, evaluate=mode.has("evaluate"),
                                settings=settings)
        benchmarked = exported.quantized_model
    elif mode.has("evaluate"):
        evaluate_stage(journey, source)
    if mode.has("predict"):
        predict_stage(journey, source, cfg.prediction.test_files_path)
    if mode.has("benchmark"):
        benchmark_stage(journey, benchmarked, client=client)
    journey.finish(mode.name)
