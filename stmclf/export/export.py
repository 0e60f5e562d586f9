"""``stmclf export``: a trained model → float ONNX, int8 QDQ ONNX, float TFLite, int8 TFLite.

:func:`export_run` does the work for one model — a stmclf model, or any model file the quantize
stage takes (Keras ``.h5``, float ONNX, torch files; :mod:`stmclf.models.source`), imported first —
and returns an :class:`ExportResult`. Run directories, MLflow and the ``quantization`` mode are
:mod:`stmclf.orchestration`'s; accuracies of the files are :mod:`stmclf.evaluate.artifacts`'.

Files, in ``<out_dir>/<quantization.export_dir>`` (``quantized_models`` by default):

| file | what |
|---|---|
| ``best_model.onnx`` | float, NCHW, static batch 1, rescaled input, softmax output |
| ``best_model_quant_qdq_pc.onnx`` / ``_pt.onnx`` | int8 QDQ (per-channel / per-tensor), float I/O |
| ``best_model_float32.tflite`` | float, NHWC, rescaled input, softmax output |
| ``quantized_model.tflite`` | full-integer int8, uint8 input (raw pixels) and float output by default |
| ``export_summary.json`` | source model (path, SHA-256), settings, calibration set, checks, timings per stage, accuracies |
| ``onnx2tf.log`` | the converter's console output |

Every file is checked before it is shipped: the float ONNX against torch (max |difference| ≤ 1e-3),
the float TFLite against torch (≤ 1e-3 and ≥ 99 % top-1 agreement; otherwise no TFLite file at
all); the int8 files are compared with torch on the same images (top-1 agreement, logged). The
int8 TFLite is then run on TensorFlow Lite Micro (:func:`tflm_check`, ``quantization.tflm_check_images``
images, default 32): arena, agreement with LiteRT, accuracy; a model TFLM cannot run is a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from stmclf.errors import ConfigError, UserError
from stmclf.files import PARTIAL_SUFFIX, TEMP_SUFFIX, atomic_write_text, remove_orphan_temp_files

log = logging.getLogger("stmclf.export")

FORMATS = ("onnx", "tflite")
MODEL_BASENAME = "best_model"
SUMMARY_NAME = "export_summary.json"
DEFAULT_EXPORT_DIR = "quantized_models"


def run_export_dir(run_root: Path, configured: Optional[str] = None) -> Path:
    """The folder of a run's latest export: of the configured one (``quantization.export_dir``,
    default ``quantized_models``) and the run's sub-folders that hold an ``export_summary.json``,
    the one whose summary is newest. An export given ``--quantization.export_dir`` on its command
    line is found by the commands after it, and an older export elsewhere is not taken for it."""
    run_root = Path(run_root)
    default = run_root / (configured or DEFAULT_EXPORT_DIR)
    found = [p.parent for p in run_root.glob(f"*/{SUMMARY_NAME}") if p.is_file()]
    if (default / SUMMARY_NAME).is_file():
        found.append(default)
    if not found:
        return default
    return max(found, key=lambda folder: (folder / SUMMARY_NAME).stat().st_mtime_ns)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_source(export_dir: Path, summary: Mapping) -> Optional[Path]:
    """Where the model file an export was made from is now: its path relative to the export folder
    when it was inside the run folder (a moved or copied run folder keeps its own model), else the
    recorded ``model_file``; None for an in-memory module."""
    relative, recorded = summary.get("model_file_relative"), summary.get("model_file")
    if isinstance(relative, str) and relative:
        return Path(os.path.normpath(Path(export_dir) / relative))
    return Path(recorded) if isinstance(recorded, str) and recorded else None


def outdated_export(export_dir: Path, summary: Mapping, within: Optional[Path] = None) -> Optional[Path]:
    """The model file an export (``export_dir``, its ``export_summary.json`` read as ``summary``) was
    made from, when that file's content changed since the export (a later or resumed training
    rewrote it): the export's files are outdated. None when the content is the one exported, when
    the summary predates the fingerprint (no ``model_sha256``), when the file is gone or unreadable,
    or (``within``) when it lies outside that folder."""
    recorded = summary.get("model_sha256")
    source = export_source(export_dir, summary)
    if not isinstance(recorded, str) or source is None or not source.is_file():
        return None
    if within is not None:
        try:
            if not source.resolve().is_relative_to(Path(within).resolve()):
                return None
        except (OSError, RuntimeError, ValueError):
            return None
    try:
        return None if file_sha256(source) == recorded else source
    except OSError:
        return None


def reexport_command(run_dir: Path, summary: Mapping) -> str:
    """The command that exports a run folder again as its last export did."""
    formats = summary.get("formats")
    option = (f" --format {','.join(formats)}" if isinstance(formats, list) and formats
              and sorted(formats) != sorted(FORMATS) and all(isinstance(f, str) for f in formats) else "")
    from stmclf.errors import shell_word

    return f"stmclf export --run {shell_word(run_dir)}{option}{' --int8' if summary.get('int8') is True else ''}"


def refuse_outdated_export(export_dir: Path, summary: Mapping, artifact: Path, run_dir: Path, use: str) -> None:
    """A one-line error when ``artifact``, a file of the run's export, was made from a model file
    that changed since (:func:`outdated_export`): it names the command that exports the run again,
    and ``--model`` to ``use`` the file as it is."""
    from stmclf.errors import shell_word

    changed = outdated_export(export_dir, summary)
    if changed is not None:
        raise UserError(f"{artifact}: outdated, exported before {changed} changed (a later training); export the "
                        f"run again: {reexport_command(Path(run_dir), summary)} (or give --model {shell_word(artifact)} to "
                        f"{use} that file as it is)")


DEFAULT_TFLM_CHECK_IMAGES = 32


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
    tflm_check_images: int = DEFAULT_TFLM_CHECK_IMAGES  # stmclf: int8 TFLite run on TFLM (0: no check)

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
        tflm_images = getattr(section, "tflm_check_images", DEFAULT_TFLM_CHECK_IMAGES)
        if not isinstance(tflm_images, int) or isinstance(tflm_images, bool) or tflm_images < 0:
            raise ConfigError("quantization.tflm_check_images", f"{tflm_images!r} is not allowed; give a number of "
                                                                f"images ≥ 0 (0 skips the TensorFlow Lite Micro check)")
        return cls(export_dir=section.export_dir or "quantized_models",
                   per_channel=section.granularity != "per_tensor", opset=int(section.target_opset or 17),
                   input_type=normalise_io_type(section.quantization_input_type),
                   output_type=normalise_io_type(section.quantization_output_type),
                   calib_moving_average=extra == "calib_moving_average",
                   primary="onnx" if quantizer == "onnx_quantizer" else "tflite", tflm_check_images=tflm_images)


ARTIFACT_KEYS = ("onnx", "onnx_qdq", "tflite", "tflite_int8", "summary")


@dataclass
class ExportResult(Mapping):
    """What an export wrote: the files (``None`` when not written), the checks, the timings per
    stage (seconds), and — once :func:`stmclf.evaluate.artifacts.evaluate_export` ran — the
    accuracies per artifact label. Reads as ``{artifact: Path}`` for the files written."""

    onnx: Optional[Path] = None
    onnx_qdq: Optional[Path] = None
    tflite: Optional[Path] = None
    tflite_int8: Optional[Path] = None
    summary: Optional[Path] = None
    export_dir: Optional[Path] = None
    model_file: Optional[Path] = None
    model_sha256: Optional[str] = None
    """The content of ``model_file`` when it was loaded (a later training that rewrites it makes this export outdated)."""
    model_file_relative: Optional[str] = None
    """``model_file`` relative to the export folder, when it lies inside the run folder."""
    model_kind: str = "stmclf"
    module: Any = field(default=None, repr=False)
    """The torch model every file was checked against (eval mode, CPU)."""
    settings: Optional[ExportSettings] = None
    timings: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    formats: tuple[str, ...] = ()
    int8: bool = False
    rescaling: tuple[float, float] = (1.0, 0.0)
    evaluation: Any = field(default=None, repr=False)
    """(data module, (set name, files)) of the evaluation set, or (None, None) without a dataset."""

    def __getitem__(self, key: str) -> Path:
        value = getattr(self, key) if key in ARTIFACT_KEYS else None
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Path) -> None:
        if key not in ARTIFACT_KEYS:
            raise KeyError(key)
        setattr(self, key, value)

    def __iter__(self):
        return (key for key in ARTIFACT_KEYS if getattr(self, key) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def quantized_model(self) -> Optional[Path]:
        """"The" int8 model (what a benchmark measures): the primary format's int8 file."""
        first, second = (self.onnx_qdq, self.tflite_int8) if self.settings and self.settings.primary == "onnx" \
            else (self.tflite_int8, self.onnx_qdq)
        return first or second

    def write_summary(self) -> Path:
        """``export_summary.json``: model, settings, calibration, checks, timings, accuracies."""
        module, formats, int8, rescaling = self.module, self.formats, self.int8, self.rescaling
        summary = self.export_dir / SUMMARY_NAME
        atomic_write_text(summary, json.dumps({
            "model_file": str(self.model_file) if self.model_file is not None else None,  # null: an in-memory module
            "model_sha256": self.model_sha256, "model_file_relative": self.model_file_relative,
            "model_kind": self.model_kind, "model_name": module.model_name,
            "class_names": list(module.class_names), "input_shape": list(module.hparams.input_shape),
            "rescaling": list(rescaling), "settings": asdict(self.settings), "formats": list(formats),
            "int8": int8, "notes": self.notes,
            "files": {k: str(v) for k, v in self.items() if k != "summary"}, "checks": self.checks,
            "timings": self.timings,
            "accuracy": {label: {name: {k: v for k, v in values.items() if k in ("accuracy", "loss", "count")}
                                 for name, values in res.items()} for label, res in self.results.items()},
        }, indent=1, default=str))
        self.summary = summary
        return summary


class StageTimer:
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


def load_export_model(model, cfg=None):
    """(module, path, kind) of what to export: a :class:`ClassifierModule`, or a model file of any
    kind the quantize stage accepts (stmclf, Keras .h5, float ONNX, torch files: see
    :mod:`stmclf.models.source`); anything else is a one-line error."""
    if not isinstance(model, (str, os.PathLike)):
        return model, None, "stmclf"
    from stmclf.models.source import resolve_model_source
    from stmclf.training.model_file import load_source_module

    source = resolve_model_source(model).require("quantize", "export")
    return load_source_module(source, cfg), source.path, source.kind


def export_run(cfg, model, out_dir: Path, *, formats: Sequence[str] = FORMATS, int8: bool = True,
               max_calibration: Optional[int] = 500, check_images: int = 64,
               settings: Optional[ExportSettings] = None) -> ExportResult:
    """Export ``model`` (a model file of any kind the quantize stage takes, or a module) into
    ``out_dir/<quantization.export_dir>``, each file checked against the source model; returns
    the :class:`ExportResult` (files, checks, timings). Accuracies on the evaluation set are
    :func:`stmclf.evaluate.artifacts.evaluate_export`'s job."""
    from stmclf.export.images import gather_images, rescale
    from stmclf.export.onnx_export import check_onnx, export_onnx, module_rescaling, onnx_session, reference_outputs
    from stmclf.export.onnx_qdq import qdq_file_name, quantize_qdq

    formats = parse_formats(formats)
    settings = settings or ExportSettings.from_config(cfg)
    result = ExportResult(settings=settings)
    timer = StageTimer(result.timings)
    total_start = time.perf_counter()

    with timer("load_model"):
        module, model_file, result.model_kind = load_export_model(model, cfg)
        module = module.cpu().eval()
        if model_file is not None and Path(model_file).is_file():
            result.model_sha256 = file_sha256(Path(model_file))
    result.module, result.model_file = module, model_file
    rescaling = module_rescaling(module)
    export_dir = Path(out_dir) / settings.export_dir
    result.export_dir = export_dir
    if result.model_sha256 is not None and Path(model_file).resolve().is_relative_to(Path(out_dir).resolve()):
        result.model_file_relative = os.path.relpath(Path(model_file).resolve(), export_dir.resolve())
    log.info("Export of %s (%s, input %s) to %s: %s%s", model_file or module.model_name, module.model_name,
             tuple(module.hparams.input_shape), export_dir, ", ".join(formats), " + int8" if int8 else "")

    with timer("load_images"):
        images, datamodule, evaluation = gather_images(cfg, module, int8=int8, max_calibration=max_calibration,
                                                       check_images=check_images)
    with timer("torch_reference"):
        expected = reference_outputs(module, images.check, softmax=True)
    result.checks["check_images"] = images.check_source
    export_dir.mkdir(parents=True, exist_ok=True)
    remove_orphan_temp_files(export_dir, suffixes=(TEMP_SUFFIX, PARTIAL_SUFFIX))  # an export killed half-way
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
                _warn_low_agreement("ONNX QDQ int8", agreement, images.random_calibration, settings.per_channel)
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
                _warn_low_agreement("TFLite int8", tfl.int8_agreement, images.random_calibration,
                                    settings.per_channel)
                with timer("tflm_check"):
                    tflm_check(result, tfl.int8_path, images, datamodule, evaluation, rescaling,
                               settings.tflm_check_images)

    result.evaluation, result.notes = (datamodule, evaluation), list(images.notes)
    result.timings["total"] = round(time.perf_counter() - total_start, 3)
    for stage, seconds in result.timings.items():
        log.info("Export stage %-28s %7.2f s", stage, seconds)
    result.formats, result.int8, result.rescaling = tuple(formats), int8, tuple(rescaling)
    result.write_summary()
    return result


def tflm_check(result: ExportResult, int8_path: Path, images, datamodule, evaluation, rescaling,
               count: int) -> None:
    """Run the int8 TFLite on TensorFlow Lite Micro (:mod:`stmclf.export.tflm`) on the first
    ``count`` evaluation images (else the check images), fed exactly what LiteRT is fed, and
    record in ``result.checks`` (``tflm_*``) the arena, top-1 agreement and max |difference| of the
    dequantized outputs vs LiteRT, and the accuracy when the images have labels. TFLM failing (an
    op it lacks, an arena that does not fit, a missing package) is one warning line: the
    LiteRT-checked file stays."""
    from stmclf.export.images import load_images, rescale
    from stmclf.export.tflite import TfliteModel, nhwc
    from stmclf.export.tflm import INSTALL_HINT, TflmError, TflmMissing, run_tflm_with_arena

    checks = result.checks
    if count <= 0:
        checks["tflm_check"] = "disabled"
        log.info("TFLM check: disabled (quantization.tflm_check_images: 0)")
        return
    pixels, labels = images.check, (images.check_labels if evaluation is not None else None)
    if evaluation is not None and count > len(pixels):
        pixels, labels = load_images(datamodule, evaluation[1], count)
    pixels = pixels[:count]
    labels = labels[:count] if labels is not None else None
    model = TfliteModel(int8_path)
    inputs = (model.raw_pixel_input(nhwc(pixels)) if checks.get("tflite_int8_raw_pixels")
              else model.quantize_input(nhwc(rescale(pixels, rescaling))))
    try:
        run = run_tflm_with_arena(int8_path, inputs)
    except TflmMissing:
        checks.update(tflm_check="skipped", tflm_message=f"TFLM check skipped: tflite_micro is not installed "
                                                         f"({INSTALL_HINT})")
        log.warning(checks["tflm_message"])
        return
    except TflmError as exc:
        checks.update(tflm_check="failed", tflm_message=f"TFLM check: {str(exc).removeprefix('TFLM: ')}; "
                                                        f"{int8_path.name} is kept (checked with LiteRT)")
        log.warning(checks["tflm_message"])
        return
    litert = model.run_raw(inputs)
    tflm, arena = run.outputs.reshape(len(litert), -1), run.arena
    agreement = 100.0 * float(np.mean(tflm.argmax(1) == litert.argmax(1))) if len(litert) else 100.0
    max_diff = float(np.max(np.abs(tflm - litert))) if len(litert) else 0.0
    checks.update(tflm_check="ok", tflm_images=len(litert), tflm_arena_bytes=arena.total_bytes,
                  tflm_arena_head_bytes=arena.head_bytes, tflm_arena_tail_bytes=arena.tail_bytes,
                  tflm_agreement=round(agreement, 2), tflm_max_diff=round(max_diff, 6))
    accuracy = ""
    if labels is not None and len(labels):
        checks["tflm_accuracy"] = round(100.0 * float(np.mean(tflm.argmax(1) == labels)), 2)
        checks["tflm_set"] = evaluation[0]
        accuracy = f", accuracy {checks['tflm_accuracy']:.1f} %"
    checks["tflm_message"] = (f"TFLM check: int8 model runs on TensorFlow Lite Micro — {arena.describe()}, top-1 "
                              f"agreement {agreement:.1f} % vs LiteRT, max |Δ| {max_diff:.4f}{accuracy} "
                              f"({len(litert)} images, {run.seconds:.1f} s)")
    log.info(checks["tflm_message"])
    if agreement < 99.0:  # which kernels differ: LiteRT's own reference kernels on the images that disagree
        differ = np.flatnonzero(tflm.argmax(1) != litert.argmax(1))
        reference = _litert_reference_kernels(model).run_raw(inputs[differ])
        ref_diff = float(np.max(np.abs(tflm[differ] - reference)))
        checks["tflm_litert_reference_max_diff"] = round(ref_diff, 6)
        why = (f"TFLM matches LiteRT's reference kernels (max |Δ| {ref_diff:.4f}): LiteRT's optimized int8 kernels "
               f"round differently and this model's top scores are near ties" if ref_diff <= 1e-6 else
               f"TFLM differs from LiteRT's reference kernels too (max |Δ| {ref_diff:.4f}): the MCU runtime "
               f"computes this model differently")
        log.warning("TFLM check: TensorFlow Lite Micro and LiteRT disagree on %.1f %% of the images; %s",
                    100.0 - agreement, why)


def _litert_reference_kernels(model):
    """``model`` (a :class:`~stmclf.export.tflite.TfliteModel`) with LiteRT's reference kernels
    (``BUILTIN_REF``: no XNNPACK, no optimized kernels) — what TFLM's kernels are ported from."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from stmclf.export.tflite import captured_output

    with captured_output(None):
        model.interpreter = Interpreter(model_path=str(model.path),
                                        experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        model.interpreter.allocate_tensors()
    return model


def _warn_low_agreement(label: str, agreement: float, random_calibration: bool, per_channel: bool) -> None:
    if agreement < 0.9 and not random_calibration:
        advice = "more calibration images" if per_channel else "quantization.granularity: per_channel, or more " \
                                                               "calibration images"
        log.warning("%s agrees with the float model on only %.1f %% of the check images: the quantized model "
                    "loses accuracy (try %s; `stmclf export --int8 --per-layer` shows the layers that lose it)",
                    label, 100 * agreement, advice)


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
