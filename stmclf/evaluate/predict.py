"""Prediction: class label and score for every image of a folder, with any trained artifact.

``operation_mode: prediction`` (the reference's mode, §7.5 of the reference inventory) and
``stmclf predict --model ARTIFACT --images DIR [--config x.yaml] [--out DIR]`` both end in
:func:`predict_folder`:

- the model is a stmclf model file (``best_model.pt`` or a ``.ckpt``), a float or QDQ int8
  ``.onnx`` or a float or int8 ``.tflite`` (:func:`stmclf.evaluate.artifacts.load_predictor`);
- the images are the files directly in the folder (not recursive) with an image suffix (JPEG,
  PNG, BMP, GIF; any letter case); other files, and files that fail to decode, are skipped with a
  note. Each image is decoded and resized exactly as in training
  (:func:`stmclf.data.datamodule.load_image`), then fed to the artifact as evaluation does
  (rescaled NCHW for ONNX, rescaled NHWC quantized to the input type for TFLite);
- label = class name of the top output; score = its softmax probability (0..1; the softmax is
  applied when the artifact outputs logits: torch models);
- outputs, in ``<run_dir>/predictions/`` (the reference's folder): one annotated PNG per image
  (``<image stem>.png``: the image, enlarged when small, with ``label (score)`` drawn at the top
  left), and ``predictions.csv`` (file, label, class index, score, then the probability of each
  class); a Rich table of file, label and score is printed.

Settings come from the config when there is one, else from the artifact itself:

- rescaling: ``preprocessing.rescaling`` (a stmclf ``.pt``/``.ckpt`` or ONNX keeps its own; a
  difference is logged); without config: stmclf model files (hyper-parameters), ONNX files
  written by stmclf (metadata), a TFLite file listed in the ``export_summary.json`` beside it;
- colour mode: ``preprocessing.color_mode``; without config: from the input channels (1
  grayscale, 3 rgb, 4 rgba);
- resizing: ``preprocessing.resizing``; without config: bilinear, aspect ratio ``fit``;
- class names: ``dataset.class_names`` (sorted, as training orders them); else the names stored
  in the artifact; else the class folders of the config's dataset (``dataset.training_path``, as
  training orders them); else ``class_0``, ``class_1``, ... (warning).

When a model carries class names and the config gives others, the run stops (the labels would
be wrong). A file that does not record its rescaling needs ``--config`` (one-line error): a TFLite
file without an export summary, an ONNX file without stmclf's metadata, an imported Keras ``.h5``
or torch file.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from stmclf.errors import ConfigError, UserError, printable_path

log = logging.getLogger("stmclf.evaluate")

PREDICTIONS_DIR = "predictions"
CSV_NAME = "predictions.csv"
COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
MAX_TABLE_ROWS = 200
ANNOTATED_MIN_SIDE = 256
ANNOTATED_MAX_SIDE = 2048


@dataclass
class ModelInfo:
    """What prediction needs to know about an artifact before running it."""

    path: Path
    input_shape: tuple[int, int, int]  # (H, W, C)
    class_names: Optional[list[str]] = None
    rescaling: Optional[tuple[float, float]] = None
    module: Any = None  # the ClassifierModule of a stmclf model file
    source: str = ""  # where class names / rescaling came from


@dataclass
class Prediction:
    file: str
    label: str
    index: int
    score: float
    probabilities: np.ndarray
    image: Optional[Path] = None


@dataclass
class PredictionResult:
    rows: list[Prediction]
    out_dir: Path
    csv: Path
    class_names: list[str]
    model_label: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


# -- the artifact ----------------------------------------------------------------------------

def inspect_model(path: str | Path, cfg=None) -> ModelInfo:
    """Input shape, stored class names and rescaling of any model source (nothing run yet)."""
    from stmclf.models.source import resolve_model_source

    source = resolve_model_source(path)
    source.require("predict", "prediction")
    path = source.path
    if not source.is_artifact:  # ONNX and TFLite files run in their own runtimes
        from stmclf.training.model_file import load_source_module

        module = load_source_module(source, cfg)
        scale, offset = module.hparams.rescaling
        # an imported file (Keras .h5, foreign ONNX, torch) does not record its rescaling: the config's
        recorded = source.kind == "stmclf" or getattr(cfg, "preprocessing", None) is not None
        origin = "the stmclf model file" if source.kind == "stmclf" else "the config (imported model)"
        return ModelInfo(path, tuple(int(v) for v in module.hparams.input_shape), list(module.class_names),
                         (float(scale), float(offset)) if recorded else None, module, origin)
    suffix = ".onnx" if source.kind.startswith("onnx") else ".tflite"
    if suffix == ".onnx":
        from stmclf.export.onnx_export import input_shape_of, read_metadata

        meta = read_metadata(path)
        shape = meta.get("input_shape")
        if not shape:
            dims = input_shape_of(path)
            if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
                raise UserError(f"{path}: input shape {dims} is not an NCHW image shape")
            shape = [dims[2], dims[3], dims[1]]
        rescaling = meta.get("rescaling")
        return ModelInfo(path, tuple(int(v) for v in shape), meta.get("class_names"),
                         tuple(float(v) for v in rescaling) if rescaling else None,
                         source="the ONNX metadata" if meta else "")
    if suffix == ".tflite":
        from stmclf.export.tflite import TfliteModel

        shape = TfliteModel(path).input.shape
        if len(shape) != 4:
            raise UserError(f"{path}: input shape {shape} is not an NHWC image shape")
        summary = _export_summary(path)
        rescaling = summary.get("rescaling")
        return ModelInfo(path, (int(shape[1]), int(shape[2]), int(shape[3])), summary.get("class_names"),
                         tuple(float(v) for v in rescaling) if rescaling else None,
                         source=f"{path.parent / 'export_summary.json'}" if summary else "")
    raise UserError(f"{path}: {source.text}: not a model to predict with")


def _export_summary(path: Path) -> dict:
    """The ``export_summary.json`` beside an exported file, if it lists that file."""
    from stmclf.export.export import SUMMARY_NAME

    summary = path.parent / SUMMARY_NAME
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return {}
    files = {Path(str(v)).name for v in (data.get("files") or {}).values()}
    return data if path.name in files else {}


def resolve_class_names(info: ModelInfo, cfg=None) -> list[str]:
    given = getattr(getattr(cfg, "dataset", None), "class_names", None)
    stored = list(info.class_names) if info.class_names else None
    if given:
        names = sorted(given)  # training's order (stmclf.data.folder)
        if stored is not None and names != stored:
            raise ConfigError("dataset.class_names", f"the model was trained on classes {stored}, the config "
                                                     f"gives {names}")
        return names
    if stored is not None:
        return stored
    from stmclf.training.model_file import dataset_class_names

    return dataset_class_names(cfg) or []  # the dataset's class folders (dataset.training_path, ...)


def resolve_format(info: ModelInfo, cfg=None):
    """The ImageFormat of training: from ``preprocessing`` when given, else from the input shape."""
    from stmclf.data.datamodule import ImageFormat

    height, width, channels = info.input_shape
    preprocessing = getattr(cfg, "preprocessing", None)
    if preprocessing is not None:
        return ImageFormat.from_config(preprocessing, info.input_shape)
    if channels not in COLOR_MODES:
        raise UserError(f"{info.path}: {channels} input channels; give --config with preprocessing.color_mode")
    log.info("No preprocessing section: %s colour mode (from %d input channel(s)), bilinear resizing, aspect "
             "ratio fit", COLOR_MODES[channels], channels)
    return ImageFormat(height, width, COLOR_MODES[channels])


def resolve_rescaling(info: ModelInfo, cfg=None) -> tuple[float, float]:
    preprocessing = getattr(cfg, "preprocessing", None)
    configured = None
    if preprocessing is not None and preprocessing.rescaling is not None:
        configured = preprocessing.scale_offset()
    if info.rescaling is not None and (info.module is not None or info.path.suffix.lower() == ".onnx"):
        # the model's own rescaling is what it was trained with (evaluation and export use it too)
        return preprocessing.model_rescaling(info.rescaling) if preprocessing is not None else info.rescaling
    if configured is not None:
        return configured
    if info.rescaling is not None:
        return info.rescaling
    raise _unknown_rescaling(info.path)


def _unknown_rescaling(path) -> UserError:
    return UserError(f"{path}: the file does not record its rescaling; give --config with a preprocessing "
                     f"section (preprocessing.rescaling)")


def require_known_rescaling(source, cfg=None) -> None:
    """Refuse, before the model is loaded or anything is written, a model file that records no
    rescaling (a Keras .h5 or torch file: imported, not exported by stmclf) when there is no
    ``preprocessing`` section to take it from (``cfg`` None: no config)."""
    if source.is_imported and not source.is_artifact and getattr(cfg, "preprocessing", None) is None:
        raise _unknown_rescaling(source.path)


# -- images ------------------------------------------------------------------------------------

def list_image_files(folder: str | Path, key: str = "") -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files, [(skipped file, why)]) directly in ``folder``, sorted by name; a missing
    folder, or a file, is one line under ``key`` (the option or config key that named it)."""
    from stmclf.data.folder import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise ConfigError(key, f"{printable_path(folder)}: {what}; expected the folder of the images to classify")
    images, skipped = [], []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        if entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            skipped.append((str(entry), "not an image file (JPEG, PNG, BMP or GIF)"))
    return images, skipped


def check_images_folder(folder: str | Path, key: str) -> None:
    """The folder of images to classify, checked before a command or mode makes its run folder: one
    line under ``key`` when it is missing, not a folder, or holds no image file directly in it (a
    dataset's class folders are not read: the prediction would be an empty table, reported as a
    success, over the run's earlier ``predictions.csv``)."""
    images, _ = list_image_files(folder, key)
    if images:
        return
    folders = sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
    hint = ""
    if folders:
        shown = ", ".join(printable_path(name) for name in folders[:5]) + (", ..." if len(folders) > 5 else "")
        hint = f"; its sub-folders ({shown}) are not read: give the folder that holds the images"
    raise ConfigError(key, f"{printable_path(folder)}: no image file (JPEG, PNG, BMP or GIF) directly in the "
                           f"folder{hint}")


def to_probabilities(scores: np.ndarray, outputs: str) -> np.ndarray:
    """Class probabilities of raw artifact outputs (softmax of logits; a single output is a
    sigmoid unit: [1 − p, p])."""
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if scores.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-scores[:, 0])) if outputs == "logits" else scores[:, 0]
        return np.stack([1.0 - p, p], axis=1)
    if outputs == "logits":
        shifted = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)
    return scores


# -- the run -------------------------------------------------------------------------------------

def predict_folder(model_path: str | Path, images_dir: str | Path, out_dir: str | Path, *, cfg=None,
                   batch_size: int = 32, annotate: bool = True, print_table: bool = True,
                   threads: Optional[int] = None) -> PredictionResult:
    """Predict every image of ``images_dir`` with ``model_path``; PNGs and CSV go to
    ``out_dir/predictions``. ``cfg``: a RunConfig (preprocessing, dataset.class_names) or None."""
    from stmclf.data.datamodule import load_image
    from stmclf.evaluate.artifacts import load_predictor

    info = inspect_model(model_path, cfg)
    fmt = resolve_format(info, cfg)
    rescaling = resolve_rescaling(info, cfg)
    class_names = resolve_class_names(info, cfg)
    if threads is None and cfg is not None:
        threads = getattr(cfg.general, "num_threads_tflite", None)
    predictor = load_predictor(info.module if info.module is not None else info.path, rescaling=rescaling,
                               threads=threads)
    outputs = max(int(predictor.num_classes or 0), 0)
    if not class_names:
        count = outputs or 2
        class_names = [f"class_{i}" for i in range(count)]
        log.warning("%s records no class names and the config gives none (dataset.class_names): labels are "
                    "class_0 .. class_%d", info.path, count - 1)
    elif outputs and max(len(class_names), 2) != outputs:
        raise ConfigError("dataset.class_names", f"{len(class_names)} class names for a model with {outputs} "
                                                 f"outputs")
    files, skipped = list_image_files(images_dir)
    out = Path(out_dir) / PREDICTIONS_DIR
    out.mkdir(parents=True, exist_ok=True)
    log.info("Prediction: %s (%s) on %d image(s) of %s; input %dx%dx%d %s, rescaling %s", info.path,
             predictor.label, len(files), images_dir, fmt.height, fmt.width, fmt.channels, fmt.color_mode,
             tuple(rescaling))

    rows: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        batch, names = [], []
        for file in files[start:start + batch_size]:
            try:
                image = load_image(str(file), fmt)
            except UserError as exc:
                skipped.append((str(file), str(exc)))
                continue
            batch.append(np.ascontiguousarray(image.transpose(2, 0, 1)))
            names.append(file)
        if not batch:
            continue
        probabilities = to_probabilities(predictor.predict(np.stack(batch)), predictor.outputs)
        for file, probs in zip(names, probabilities):
            index = int(np.argmax(probs))
            label = class_names[index] if index < len(class_names) else str(index)
            rows.append(Prediction(str(file), label, index, float(probs[index]), probs))
    for file, why in skipped:
        log.warning("skipped %s: %s", file, why)

    if annotate:
        used: set[str] = set()
        for row in rows:
            row.image = annotate_image(Path(row.file), f"{row.label} ({row.score:.2f})", out, used)
    csv_path = write_csv(rows, class_names, out / CSV_NAME)
    if print_table:
        print_predictions(rows, title=f"Predictions of {info.path.name} ({predictor.label})")
    log.info("Predictions: %d image(s), %d skipped; annotated images and %s in %s", len(rows), len(skipped),
             CSV_NAME, out)
    return PredictionResult(rows, out, csv_path, list(class_names), predictor.label, skipped)


def write_csv(rows: Sequence[Prediction], class_names: Sequence[str], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "class_index", "score", *[f"prob_{name}" for name in class_names]])
        for row in rows:
            probs = list(row.probabilities) + [math.nan] * (len(class_names) - len(row.probabilities))
            writer.writerow([printable_path(row.file), row.label, row.index, f"{row.score:.6f}",
                             *[f"{p:.6f}" for p in probs[:len(class_names)]]])
    return path


def print_predictions(rows: Sequence[Prediction], title: str = "Predictions") -> None:
    from rich.table import Table

    from stmclf.console import data_console

    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("file")
    table.add_column("label")
    table.add_column("score", justify="right")
    for i, row in enumerate(rows[:MAX_TABLE_ROWS], start=1):
        table.add_row(str(i), printable_path(Path(row.file).name), row.label, f"{row.score:.4f}")
    if len(rows) > MAX_TABLE_ROWS:
        table.caption = f"{len(rows) - MAX_TABLE_ROWS} more rows in {CSV_NAME}"
    data_console().print(table)


def annotate_image(file: Path, text: str, out_dir: Path, used: Optional[set[str]] = None) -> Path:
    """``file`` with ``text`` drawn at the top left, saved as ``out_dir/<stem>.png``
    (``<stem>_<suffix>.png`` when the stem is taken; a name too long for the file system is cut
    and given a short hash). The copy's shorter side is enlarged to at least 256 px, its longer
    side kept to at most 2,048 px (a 1×20,000 strip would otherwise become 256×5,120,000)."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(file) as source:
        source.seek(0)
        image = source.convert("RGB")
    factor = min(max(1.0, ANNOTATED_MIN_SIDE / max(1, min(image.size))), ANNOTATED_MAX_SIDE / max(image.size))
    if factor != 1.0:
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        image = image.resize(size, Image.NEAREST if factor >= 4 else Image.BILINEAR)
    font_size = max(12, min(image.size) // 14)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    margin = max(2, font_size // 4)
    left, top, right, bottom = draw.textbbox((margin, margin), text, font=font)
    draw.rectangle((0, 0, right + margin, bottom + margin), fill=(0, 0, 0))
    draw.text((margin, margin), text, fill=(255, 255, 0), font=font)
    name = _fitting_name(file.stem)
    if used is not None:
        if name in used:
            name = _fitting_name(f"{file.stem}_{file.suffix.lstrip('.').lower()}")
            n = 1
            while name in used:
                n += 1
                name = _fitting_name(f"{file.stem}_{n}")
        used.add(name)
    path = out_dir / f"{name}.png"
    image.save(path)
    return path


def _fitting_name(name: str, limit: int = 250) -> str:
    """``name``, or its start and a hash of it when ``name.png`` would pass the file systems'
    255-byte limit on a file name."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:10]
    return os.fsdecode(raw[:limit - 11]) + "_" + digest
