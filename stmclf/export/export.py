"""``stmclf export``: a trained model → float ONNX, int8 QDQ ONNX, float TFLite, int8 TFLite.

:func:`export_run` does the work for one model file; :func:`export_mode` wraps it as an
operation (run directory, log file, MLflow run), and :func:`quantization_mode` is the reference's
``operation_mode: quantization`` (one int8 model, chosen by ``quantization.quantizer``).

Files, in ``<out_dir>/<quantization.export_dir>`` (``quantized_models`` by default):

| file | what |
|---|---|
| ``best_model.onnx`` | float, NCHW, static batch 1, rescaled input, softmax output |
| ``best_model_quant_qdq_pc.onnx`` / ``_pt.onnx`` | int8 QDQ (per-channel / per-tensor), float I/O |
| ``best_model_float32.tflite`` | float, NHWC, rescaled input, softmax output |
| ``quantized_model.tflite`` | full-integer int8, uint8 input (raw pixels) and float output by default |
| ``export_summary.json`` | settings, calibration set, checks, timings per stage, accuracies |
| ``onnx2tf.log`` | the converter's console output |

Every file is checked before it is shipped: the float ONNX against torch (max |difference| ≤ 1e-3),
the float TFLite against torch (≤ 1e-3 and ≥ 99 % top-1 agreement; otherwise no TFLite file at
all); the int8 files are compared with torch on the same images (top-1 agreement, logged). Then
every artifact is evaluated on the evaluation set (test set, else validation set) and reported
like the evaluation mode (table, confusion matrix PNG, ``results.json``, MLflow), with a float →
int8 comparison table.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from stmclf.errors import ConfigError, UserError

log = logging.getLogger("stmclf.export")

FORMATS = ("onnx", "tflite")
MODEL_BASENAME = "best_model"
SUMMARY_NAME = "export_summary.json"
FOREIGN_SUFFIXES = {".h5": "a Keras model", ".keras": "a Keras model", ".onnx": "an ONNX model",
                    ".tflite": "a TFLite model", ".pb": "a TensorFlow graph"}


@dataclass
class ExportSettings:
    """The ``quantization`` section as the export uses it (defaults when the section is absent)."""

    export_dir: str = "quantized_models"
    per_channel: bool = True
    opset: int = 17
    input_type: str = "uint8"
    output_type: str = "float"
    calib_moving_average: bool = False
    primary: str = "tflite"  # which int8 file is "the" quantized model (metric int_acc_*)

    @classmethod
    def from_config(cls, cfg) -> "ExportSettings":
        from stmclf.export.tflite import normalise_io_type

        section = getattr(cfg, "quantization", None) if cfg is not None else None
        if section is None:
            return cls()
        kind = str(section.quantization_type or "PTQ").upper()
        if kind != "PTQ":
            raise ConfigError("quantization.quantization_type",
                              f"{section.quantization_type!r} is not supported; use PTQ (post-training quantization)")
        if section.optimize:
            log.warning("quantization.optimize: the per-tensor model pre-optimisation (CLE, bias absorption) is "
                        "not implemented; the model is quantized as trained")
        extra = section.extra_options
        if extra not in (None, "", "calib_moving_average"):
            raise ConfigError("quantization.extra_options", f"{extra!r} is not supported; use calib_moving_average "
                                                            f"or leave it out")
        quantizer = str(section.quantizer or "").lower()
        return cls(export_dir=section.export_dir or "quantized_models",
                   per_channel=section.granularity != "per_tensor", opset=int(section.target_opset or 17),
                   input_type=normalise_io_type(section.quantization_input_type),
                   output_type=normalise_io_type(section.quantization_output_type),
                   calib_moving_average=extra == "calib_moving_average",
                   primary="onnx" if quantizer == "onnx_quantizer" else "tflite")


class ExportResult(dict):
    """{artifact: Path} (keys ``onnx``, ``onnx_qdq``, ``tflite``, ``tflite_int8``, ``summary``),
    plus ``timings`` (seconds per stage), ``checks`` and ``results`` (per artifact label)."""

    def __init__(self) -> None:
        super().__init__()
        self.timings: dict[str, float] = {}
        self.checks: dict[str, Any] = {}
        self.results: dict[str, dict] = {}
        self.export_dir: Optional[Path] = None


class _Timer:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - start, 3)


def parse_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise UserError(f"--format: {','.join(unknown) or '(empty)'} is not a format; use onnx, tflite or "
                        f"onnx,tflite")
    return tuple(f for f in FORMATS if f in items)


def load_model_file(path: Path):
    """The ClassifierModule of a stmclf model file; a one-line error for any other kind of file."""
    path = Path(path)
    kind = FOREIGN_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        raise UserError(f"{path}: this is {kind}; export takes a stmclf model file (best_model.pt or a .ckpt "
                        f"written by stmclf fit): give --ckpt or general.model_path")
    from stmclf.training.model_file import load_classifier

    return load_classifier(path)


def export_run(cfg, checkpoint: Path, out_dir: Path, *, formats: Sequence[str] = FORMATS, int8: bool = True,
               evaluate: bool = True, mlflow_logger=None, max_calibration: Optional[int] = 500,
               check_images: int = 64, settings: Optional[ExportSettings] = None) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir/<quantization.export_dir>``; returns {artifact: Path}
    with ``.timings`` (per stage, seconds), ``.checks`` and ``.results``."""
    from stmclf.export.images import gather_images, rescale
    from stmclf.export.onnx_export import check_onnx, export_onnx, module_rescaling, onnx_session, reference_outputs
    from stmclf.export.onnx_qdq import qdq_file_name, quantize_qdq

    formats = parse_formats(formats)
    settings = settings or ExportSettings.from_config(cfg)
    result = ExportResult()
    timer = _Timer(result.timings)
    total_start = time.perf_counter()

    with timer("load_model"):
        module = load_model_file(checkpoint).cpu().eval()
    rescaling = module_rescaling(module)
    export_dir = Path(out_dir) / settings.export_dir
    result.export_dir = export_dir
    log.info("Export of %s (%s, input %s) to %s: %s%s", checkpoint, module.model_name,
             tuple(module.hparams.input_shape), export_dir, ", ".join(formats), " + int8" if int8 else "")

    with timer("load_images"):
        images, datamodule, evaluation = gather_images(cfg, module, int8=int8, max_calibration=max_calibration,
                                                       check_images=check_images)
    with timer("torch_reference"):
        expected = reference_outputs(module, images.check, softmax=True)
    result.checks["check_images"] = images.check_source
    export_dir.mkdir(parents=True, exist_ok=True)
    if int8:
        result.checks["calibration"] = images.calibration_source
        result.checks["random_calibration"] = images.random_calibration
        log.info("Calibration set: %s", images.calibration_source)

    with tempfile.TemporaryDirectory(prefix="stmclf-export-") as tmp:
        onnx_dir = export_dir if "onnx" in formats else Path(tmp)
        float_onnx = onnx_dir / f"{MODEL_BASENAME}.onnx"
        with timer("onnx_export"):
            export_onnx(module, float_onnx, opset=settings.opset, batch_size=1, softmax=True)
        with timer("onnx_check"):
            try:
                result.checks["onnx_max_diff"] = check_onnx(module, float_onnx, images.check, expected=expected)
            except UserError:
                float_onnx.unlink(missing_ok=True)
                raise
        if "onnx" in formats:
            result["onnx"] = float_onnx
            if int8:
                qdq = export_dir / qdq_file_name(float_onnx, settings.per_channel)
                with timer("onnx_qdq"):
                    quantize_qdq(float_onnx, qdq, rescale(images.calibration, rescaling),
                                 per_channel=settings.per_channel, calib_moving_average=settings.calib_moving_average)
                with timer("onnx_qdq_check"):
                    from stmclf.export.onnx_export import run_onnx

                    got = run_onnx(onnx_session(qdq), rescale(images.check, rescaling))
                    agreement = float(np.mean(got.argmax(1) == expected.argmax(1))) if len(got) else 1.0
                result.checks["onnx_qdq_agreement"] = round(100 * agreement, 2)
                log.info("ONNX QDQ check: %s top-1 agreement with torch %.2f %% on %d images", qdq.name,
                         100 * agreement, len(got))
                _warn_low_agreement("ONNX QDQ int8", agreement, images.random_calibration)
                result["onnx_qdq"] = qdq

        if "tflite" in formats:
            from stmclf.export.tflite import convert_tflite

            tfl = convert_tflite(float_onnx, export_dir, rescaling=rescaling, check_images=images.check,
                                 expected=expected, calibration=images.calibration if int8 else None,
                                 per_channel=settings.per_channel, input_type=settings.input_type,
                                 output_type=settings.output_type,
                                 float_name=f"{MODEL_BASENAME}_float32.tflite")
            for stage, seconds in (tfl.timings or {}).items():
                result.timings[stage] = round(seconds, 3)
            result["tflite"] = tfl.float_path
            result.checks["tflite_float_max_diff"] = tfl.float_max_diff
            result.checks["tflite_float_agreement"] = round(100 * tfl.float_agreement, 2)
            if tfl.int8_path is not None:
                result["tflite_int8"] = tfl.int8_path
                result.checks["tflite_int8_agreement"] = round(100 * tfl.int8_agreement, 2)
                result.checks["tflite_int8_raw_pixels"] = tfl.int8_raw_pixels
                result.checks["tflite_int8_input"] = {"dtype": str(tfl.int8_input.dtype), "scale": tfl.int8_input.scale,
                                                      "zero_point": tfl.int8_input.zero_point}
                _warn_low_agreement("TFLite int8", tfl.int8_agreement, images.random_calibration)

    if evaluate and evaluation is not None:
        with timer("evaluation"):
            _evaluate_all(cfg, module, result, datamodule, evaluation, rescaling, settings, mlflow_logger, timer)
    elif evaluate:
        log.info("No evaluation set (dataset.test_path, validation_path or training_path): accuracies not measured")

    result.timings["total"] = round(time.perf_counter() - total_start, 3)
    for stage, seconds in result.timings.items():
        log.info("Export stage %-28s %7.2f s", stage, seconds)
    summary = export_dir / SUMMARY_NAME
    summary.write_text(json.dumps({
        "model_file": str(checkpoint), "model_name": module.model_name, "class_names": list(module.class_names),
        "input_shape": list(module.hparams.input_shape), "rescaling": list(rescaling),
        "settings": asdict(settings), "formats": list(formats), "int8": int8, "notes": images.notes,
        "files": {k: str(v) for k, v in result.items()}, "checks": result.checks, "timings": result.timings,
        "accuracy": {label: {name: {k: v for k, v in values.items() if k in ("accuracy", "loss", "count")}
                             for name, values in res.items()} for label, res in result.results.items()},
    }, indent=1, default=str))
    result["summary"] = summary
    return result


def _warn_low_agreement(label: str, agreement: float, random_calibration: bool) -> None:
    if agreement < 0.9 and not random_calibration:
        log.warning("%s agrees with the float model on only %.1f %% of the check images: the quantized model "
                    "loses accuracy (try granularity per_channel, or more calibration images)", label,
                    100 * agreement)


def _evaluate_all(cfg, module, result: ExportResult, datamodule, evaluation, rescaling, settings: ExportSettings,
                  mlflow_logger, timer: Optional[_Timer] = None) -> None:
    """Evaluate torch and every exported file on the evaluation set and report them."""
    from stmclf.evaluate.results import report_results
    from stmclf.export.evaluate_artifacts import comparison_rows, evaluate_artifact, print_comparison

    name, files = evaluation
    threads = getattr(getattr(cfg, "general", None), "num_threads_tflite", None)
    class_names = list(module.class_names)
    run_root = result.export_dir.parent
    primary_int = "tflite_int8" if settings.primary == "tflite" and "tflite_int8" in result else \
        ("onnx_qdq" if "onnx_qdq" in result else "tflite_int8")
    artifacts = [("Float model", "float", module)]
    labels = {"onnx": ("ONNX float", "onnx_float"), "tflite": ("TFLite float", "tflite_float"),
              "onnx_qdq": ("ONNX QDQ int8", "onnx_int"), "tflite_int8": ("TFLite int8", "tflite_int")}
    for key, (label, kind) in labels.items():
        if key in result:
            artifacts.append((label, "int" if key == primary_int else kind, result[key]))
    loader = datamodule.loader_for(files)  # one loader (and its workers) for every artifact
    for label, kind, artifact in artifacts:
        with timer("evaluate_" + label.lower().replace(" ", "_")) if timer else nullcontext():
            results = evaluate_artifact(artifact, [(name, loader)], rescaling=rescaling,
                                        label=label, keep_predictions=True, threads=threads)
        result.results[label] = results
        report_results(results, class_names, run_root, kind=kind, model_label=label, mlflow_logger=mlflow_logger)
    reference = result.results["Float model"]
    rows = comparison_rows(reference, {k: v for k, v in result.results.items() if k != "Float model"})
    if rows:
        print_comparison(rows)
    result.checks["comparison"] = rows


def export_mode(cfg, model_path: Optional[str | Path] = None, *, formats: Optional[Sequence[str]] = None,
                int8: Optional[bool] = None, operation_mode: str = "export") -> ExportResult:
    """``stmclf export``: run directory + log file + MLflow run around :func:`export_run`.

    ``formats`` defaults to both; ``int8=None`` means "int8 too when the config has a
    ``quantization`` section" (the CLI's ``--int8`` passes True)."""
    from stmclf.training.run_dir import create_run_dir
    from stmclf.training.tracking import finish_mlflow_run, start_mlflow_run

    model_path = model_path or cfg.general.model_path
    if not model_path:
        raise ConfigError("general.model_path", "export needs the model to export: a stmclf best_model.pt or .ckpt "
                                                "(--ckpt PATH or general.model_path)")
    formats = parse_formats(formats or FORMATS)
    int8 = cfg.quantization is not None if int8 is None else bool(int8)
    settings = ExportSettings.from_config(cfg)  # config errors before any file is written
    run = create_run_dir(cfg)
    log.info("operation_mode: %s", operation_mode)
    log.info("Model file : %s", model_path)
    mlflow_logger = start_mlflow_run(cfg, run, operation_mode, extra_params={"model_path": str(model_path)})
    result = export_run(cfg, Path(model_path), run.root, formats=formats, int8=int8, mlflow_logger=mlflow_logger,
                        settings=settings)
    if mlflow_logger is not None:
        mlflow_logger.log_metrics({f"export_time_{k}": v for k, v in result.timings.items()})
    for key, path in result.items():
        log.info("Exported %s: %s", key, path)
    log.info("operation finished: %s", operation_mode)
    finish_mlflow_run(mlflow_logger, run)
    return result


def quantizer_formats(cfg) -> tuple[str, ...]:
    """The format ``quantization.quantizer`` asks for: ``TFlite_converter`` → TFLite,
    ``onnx_quantizer`` → QDQ ONNX."""
    if cfg.quantization is None:
        raise ConfigError("quantization", "missing 'quantization' section: the quantization mode needs it")
    quantizer = str(cfg.quantization.quantizer or "").lower()
    if quantizer not in ("tflite_converter", "onnx_quantizer"):
        raise ConfigError("quantization.quantizer", f"{cfg.quantization.quantizer!r}: use TFlite_converter or "
                                                    f"onnx_quantizer")
    return ("onnx",) if quantizer == "onnx_quantizer" else ("tflite",)


def quantization_mode(cfg, operation_mode: str = "quantization") -> ExportResult:
    """``operation_mode: quantization`` (and ``chain_eqe``: the float model is evaluated too):
    the int8 model of ``quantization.quantizer`` (``quantized_model.tflite`` or the QDQ ONNX),
    evaluated on the test set, else the validation set."""
    return export_mode(cfg, formats=quantizer_formats(cfg), int8=True, operation_mode=operation_mode)


