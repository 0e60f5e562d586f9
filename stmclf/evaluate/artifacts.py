"""Accuracy of any exported artifact on labelled sets, in the shape ``evaluate_module`` returns.

Artifacts: a :class:`ClassifierModule` (or a ``.ckpt``/``.pt`` file), a float or QDQ ``.onnx``, a
float or int8 ``.tflite``. Every loader yields uint8 NCHW batches; each artifact gets them the
way the reference feeds it (§7.4): rescaled float NCHW for ONNX, rescaled float NHWC for TFLite,
quantized ``q = clip(round(x/scale) + zero_point)`` for an int8/uint8 TFLite input. The results —
``{set: {accuracy (%, 2 decimals), loss (float models; None for int8), count, confusion}}`` — go
straight to ``stmclf.evaluate.results.report_results``; :func:`comparison_rows` and
:func:`print_comparison` give the float → int8 table (accuracy delta and top-1 agreement).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from stmclf.errors import UserError
from stmclf.evaluate.accuracy import clipped_cross_entropy

log = logging.getLogger("stmclf.evaluate")



class Predictor:
    """uint8 NCHW images → class scores; ``kind`` is ``float`` or ``int``; ``outputs`` says whether
    the scores are ``probabilities`` or ``logits``."""

    label = "model"
    kind = "float"
    outputs = "logits"
    num_classes: Optional[int] = None

    def predict(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TorchPredictor(Predictor):
    def __init__(self, module, label: str = "Float model") -> None:
        self.module, self.label = module.eval(), label
        self.num_classes = max(module.num_classes, 2)

    def predict(self, images: np.ndarray) -> np.ndarray:
        import torch

        device = next(self.module.parameters()).device
        with torch.no_grad():
            x = self.module.preprocess(torch.from_numpy(np.ascontiguousarray(images)).to(device))
            return self.module(x).float().cpu().numpy()


class OnnxPredictor(Predictor):
    def __init__(self, path: Path, rescaling: Optional[Sequence[float]] = None, label: Optional[str] = None,
                 threads: Optional[int] = None) -> None:
        from stmclf.export.onnx_export import onnx_session, read_metadata
        from stmclf.export.onnx_qdq import is_quantized_onnx

        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        meta = read_metadata(self.path)
        self.contract = meta.get("input", "rescaled")
        self.rescaling = tuple(rescaling) if rescaling is not None else tuple(meta.get("rescaling") or ())
        if self.contract == "rescaled" and len(self.rescaling) != 2:
            raise UserError(f"{path}: no stmclf metadata in this ONNX file; give the rescaling "
                            f"(preprocessing.rescaling) to evaluate it")
        self.kind = "int" if is_quantized_onnx(self.path) else "float"
        out = self.session.get_outputs()[0]
        self.outputs = meta.get("output") or ("probabilities" if "prob" in out.name.lower() else "logits")
        self.label = label or ("ONNX QDQ int8" if self.kind == "int" else "ONNX float")
        shape = out.shape
        self.num_classes = shape[-1] if shape and isinstance(shape[-1], int) else None

    def predict(self, images: np.ndarray) -> np.ndarray:
        from stmclf.export.onnx_export import onnx_inputs, run_onnx

        return run_onnx(self.session, onnx_inputs(images, self.rescaling, self.contract))


class TflitePredictor(Predictor):
    def __init__(self, path: Path, rescaling: Sequence[float], label: Optional[str] = None,
                 threads: Optional[int] = None, outputs: str = "probabilities") -> None:
        from stmclf.export.tflite import TfliteModel

        if rescaling is None or len(rescaling) != 2:
            raise UserError(f"{path}: give the rescaling (preprocessing.rescaling) to evaluate a TFLite model")
        self.path = Path(path)
        self.model = TfliteModel(self.path, threads)
        self.rescaling = (float(rescaling[0]), float(rescaling[1]))
        self.kind = "int" if self.model.quantized else "float"
        self.outputs = outputs
        self.label = label or ("TFLite int8" if self.kind == "int" else "TFLite float")
        self.num_classes = int(np.prod(self.model.output.shape[1:]))
        # An integer input whose quantization is the rescaling takes the raw pixels, as the board
        # does: quantizing the rescaled floats instead rounds half of them one step off when the
        # zero point is the nearest integer to -offset/scale (127 for 127.5).
        self.raw_pixels = self.model.quantized and self.model.takes_raw_pixels(self.rescaling)

    def predict(self, images: np.ndarray) -> np.ndarray:
        from stmclf.export.images import rescale
        from stmclf.export.tflite import nhwc

        if self.raw_pixels and images.dtype == np.uint8:
            return self.model.run_raw(self.model.raw_pixel_input(nhwc(images)))
        return self.model.predict(nhwc(rescale(images, self.rescaling)))


def load_predictor(artifact: Any, *, rescaling: Optional[Sequence[float]] = None, label: Optional[str] = None,
                   threads: Optional[int] = None, cfg=None) -> Predictor:
    """A :class:`Predictor` for a module, a Predictor, or a model file of any kind
    (:mod:`stmclf.models.source`: torch-readable files become a :class:`TorchPredictor`; ``cfg``
    gives an imported model its class names and rescaling)."""
    if isinstance(artifact, Predictor):
        return artifact
    if hasattr(artifact, "preprocess") and hasattr(artifact, "model"):
        return TorchPredictor(artifact, label or "Float model")
    from stmclf.models.source import resolve_model_source

    source = resolve_model_source(artifact).require("evaluate", "evaluation")
    if not source.is_artifact:  # a float ONNX runs in onnxruntime, as deployed (imported only to train/export)
        from stmclf.training.model_file import load_source_module

        return TorchPredictor(load_source_module(source, cfg), label or "Float model")
    if source.kind.startswith("onnx"):
        return OnnxPredictor(source.path, rescaling, label, threads)
    if source.kind.startswith("tflite"):
        return TflitePredictor(source.path, rescaling, label, threads)
    raise UserError(f"{source.path}: {source.text}; expecting a stmclf model, a Keras .h5, an ONNX or a TFLite "
                    f"model")


def _loss(scores: np.ndarray, labels: np.ndarray, outputs: str) -> float:
    """Summed cross-entropy of the softmax (of logits, for a file that outputs them), clipped as
    Keras does: the same loss as the float model's (:func:`evaluate_module`)."""
    if outputs != "probabilities":
        shifted = scores - scores.max(axis=1, keepdims=True)
        scores = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return clipped_cross_entropy(scores, labels)


def evaluate_artifact(artifact: Any, loaders: Iterable[tuple[str, Iterable]], *,
                      rescaling: Optional[Sequence[float]] = None, label: Optional[str] = None,
                      num_classes: Optional[int] = None, keep_predictions: bool = False,
                      threads: Optional[int] = None) -> dict[str, dict]:
    """Per (name, loader): accuracy (%, 2 decimals), loss (float models, else None), count and
    confusion matrix (rows = true class) — ``evaluate_module``'s shape. ``keep_predictions`` adds
    the predicted classes (``predictions``) for agreement tables."""
    predictor = load_predictor(artifact, rescaling=rescaling, label=label, threads=threads)
    results = {}
    for name, loader in loaders:
        confusion = None
        loss_sum = 0.0
        predictions = []
        for images, labels in loader:
            labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels, dtype=np.int64)
            if labels.size == 0:
                continue
            images = np.asarray(images.numpy() if hasattr(images, "numpy") else images)
            scores = predictor.predict(images).reshape(len(labels), -1)
            classes = max(num_classes or predictor.num_classes or scores.shape[1], scores.shape[1], 2)
            if confusion is None:
                confusion = np.zeros((classes, classes), np.int64)
            predicted = scores.argmax(axis=1)
            np.add.at(confusion, (labels, predicted), 1)
            if predictor.kind == "float":
                loss_sum += _loss(scores.astype(np.float64), labels, predictor.outputs)
            if keep_predictions:
                predictions.append(predicted)
        total = int(confusion.sum()) if confusion is not None else 0
        if total:
            results[name] = {"accuracy": round(100.0 * int(np.trace(confusion)) / total, 2),
                             "loss": loss_sum / total if predictor.kind == "float" else None,
                             "count": total, "confusion": confusion}
            if keep_predictions:
                results[name]["predictions"] = np.concatenate(predictions)
    return results


def comparison_rows(reference: dict[str, dict], others: dict[str, dict[str, dict]],
                    reference_label: str = "Float model") -> list[dict]:
    """One row per (model, set): reference accuracy, model accuracy, delta (points) and top-1
    agreement (%) when both results kept their predictions."""
    rows = []
    for label, results in others.items():
        for name, values in results.items():
            base = reference.get(name)
            if base is None:
                continue
            row = {"model": label, "set": name, "reference": reference_label, "reference_accuracy": base["accuracy"],
                   "accuracy": values["accuracy"], "delta": round(values["accuracy"] - base["accuracy"], 2),
                   "agreement": None, "count": values["count"]}
            a, b = base.get("predictions"), values.get("predictions")
            if a is not None and b is not None and len(a) == len(b) and len(a):
                row["agreement"] = round(100.0 * float(np.mean(a == b)), 2)
            rows.append(row)
    return rows


def print_comparison(rows: list[dict], title: str = "Float vs exported models") -> None:
    from rich.table import Table

    from stmclf.console import data_console

    table = Table(title=title)
    for column, justify in (("model", "left"), ("set", "left"), ("images", "right"), ("float (%)", "right"),
                            ("model (%)", "right"), ("delta", "right"), ("top-1 agreement (%)", "right")):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(row["model"], row["set"].replace("_", " "), str(row["count"]),
                      f"{row['reference_accuracy']:.2f}", f"{row['accuracy']:.2f}", f"{row['delta']:+.2f}",
                      "" if row["agreement"] is None else f"{row['agreement']:.2f}")
    data_console().print(table)
    for row in rows:
        log.info("%s %s accuracy %.2f %% (float %.2f %%, delta %+.2f%s)", row["model"], row["set"].replace("_", " "),
                 row["accuracy"], row["reference_accuracy"], row["delta"],
                 "" if row["agreement"] is None else f", top-1 agreement {row['agreement']:.2f} %")


ARTIFACT_LABELS = {"onnx": ("ONNX float", "onnx_float"), "tflite": ("TFLite float", "tflite_float"),
                   "onnx_qdq": ("ONNX QDQ int8", "onnx_int"), "tflite_int8": ("TFLite int8", "tflite_int")}


TFLM_LABEL = "TFLite int8 on TFLM"


def _record_tflm(result, reference: dict[str, dict], class_names: Sequence[str], run_root: Path) -> None:
    """The export's TensorFlow Lite Micro accuracy (``tflm_*`` checks, see
    :func:`stmclf.export.export.tflm_check`) as a ``results.json`` record: on the evaluation set
    when it ran on all of it, else on the set ``<set>_first_<N>`` (no float baseline to compare)."""
    from stmclf.evaluate.results import record_results

    checks = result.checks
    name, count, accuracy = checks.get("tflm_set"), checks.get("tflm_images"), checks.get("tflm_accuracy")
    if name is None or accuracy is None or not count:
        return
    if reference.get(name, {}).get("count") != count:
        name = f"{name}_first_{count}"
    record_results(run_root, "tflm", TFLM_LABEL, {name: {"accuracy": accuracy, "loss": None, "count": count}},
                   class_names, result.get("tflite_int8"))
    log.info("%s %s accuracy %.2f %% (%d images)", TFLM_LABEL, name.replace("_", " "), accuracy, count)


def evaluate_export(cfg, result, run_root: Path, *, mlflow_logger=None) -> list[dict]:
    """Accuracy of the source model and of every file of an export (an
    :class:`~stmclf.export.export.ExportResult`) on the evaluation set (test set, else validation
    set), each reported like the evaluation mode (table, confusion matrix PNG, ``results.json``,
    MLflow), then the float → exported comparison table. Returns its rows ([] without a set)."""
    from stmclf.evaluate.results import report_results
    from stmclf.export.export import StageTimer

    datamodule, evaluation = result.evaluation or (None, None)
    if evaluation is None:
        log.info("No evaluation set (dataset.test_path, validation_path or training_path): accuracies not measured")
        return []
    name, files = evaluation
    threads = getattr(getattr(cfg, "general", None), "num_threads_tflite", None)
    module = result.module
    class_names = list(module.class_names)
    primary = result.quantized_model
    artifacts = [("Float model", "float", module, result.model_file)]  # (label, kind, what runs, its file)
    for key, (label, kind) in ARTIFACT_LABELS.items():
        if key in result:
            artifacts.append((label, "int" if result[key] == primary else kind, result[key], result[key]))
    loader = datamodule.loader_for(files)  # one loader (and its workers) for every artifact
    timer = StageTimer(result.timings)
    for label, kind, artifact, model_file in artifacts:
        with timer("evaluate_" + label.lower().replace(" ", "_")), timer("evaluation"):
            results = evaluate_artifact(artifact, [(name, loader)], rescaling=result.rescaling, label=label,
                                        keep_predictions=True, threads=threads)
        result.results[label] = results
        report_results(results, class_names, run_root, kind=kind, model_label=label, mlflow_logger=mlflow_logger,
                       model_file=model_file)
    reference = result.results["Float model"]
    rows = comparison_rows(reference, {k: v for k, v in result.results.items() if k != "Float model"})
    if rows:
        print_comparison(rows)
    result.checks["comparison"] = rows
    _record_tflm(result, reference, class_names, run_root)
    if result.export_dir is not None:
        result.write_summary()
    return rows
