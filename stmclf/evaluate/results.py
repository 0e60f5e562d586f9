"""Report evaluation results the same way everywhere: table, log lines, confusion-matrix PNGs,
MLflow metrics with the reference's names (``float_acc_test_set``, ``int_acc_validation_set``...)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from stmclf.errors import one_line
from stmclf.evaluate.accuracy import print_accuracy_table
from stmclf.evaluate.confusion import plot_confusion_matrix
from stmclf.files import atomic_write_text

log = logging.getLogger("stmclf.evaluate")


def report_results(results: dict[str, dict], class_names: Sequence[str], run_root: Path, *, kind: str = "float",
                   model_label: str = "Float model", mlflow_logger=None, title: Optional[str] = None,
                   model_file: Optional[Path] = None) -> dict[str, float]:
    """``kind`` prefixes the metric names (``float``/``int``); ``model_file``: the file evaluated
    (recorded in ``results.json``); returns {metric name: value}."""
    print_accuracy_table(results, title=title or model_label)
    metrics: dict[str, float] = {}
    for name, values in results.items():
        label = name.replace("_", " ")
        log.info("%s %s accuracy : %.2f %%%s", model_label, label, values["accuracy"],
                 f" (cross-entropy {values['loss']:.4f})" if values.get("loss") is not None else "")
        metrics[f"{kind}_acc_{name}"] = values["accuracy"]
        if values.get("loss") is not None:
            metrics[f"{kind}_loss_{name}"] = values["loss"]
        if "confusion" in values:
            path = Path(run_root) / f"{kind}_model_confusion_matrix_{name}.png"
            plot_confusion_matrix(values["confusion"], class_names,
                                  f"{model_label} — {label} — accuracy {values['accuracy']:.2f} %", path)
    record_results(run_root, kind, model_label, results, class_names, model_file)
    if mlflow_logger is not None:
        mlflow_logger.log_metrics(metrics)
    return metrics


RESULTS_FILE = "results.json"


def record_results(run_root: Path, kind: str, model_label: str, results: dict[str, dict],
                   class_names: Sequence[str], model_file: Optional[Path] = None) -> Path:
    """Append the results to ``<run>/results.json`` (read by ``stmclf report``). Each record names
    the file evaluated; records of the same label for another file (an earlier model exported into
    this run) are dropped, so the report never mixes two models under one label."""
    path = Path(run_root) / RESULTS_FILE
    records = _earlier_records(path)
    file = str(Path(model_file).resolve()) if model_file is not None else None
    if file is not None:
        records = [r for r in records if not (r["kind"] == kind and r["model"] == model_label
                                              and r.get("file") not in (None, file))]
    for name, values in results.items():
        records = [r for r in records if not (r["kind"] == kind and r["set"] == name and r["model"] == model_label)]
        records.append({"kind": kind, "model": model_label, "set": name, "accuracy": values["accuracy"],
                        "loss": values.get("loss"), "count": values["count"], "class_names": list(class_names),
                        "confusion": stored_confusion(values["confusion"]) if "confusion" in values else None,
                        **({"file": file} if file is not None else {})})
    atomic_write_text(path, json.dumps(records, indent=1))
    return path


def _earlier_records(path: Path) -> list[dict]:
    """The records of ``results.json``; one that does not read as a list of records (damaged by
    hand, or by a write of a version that did not write it whole) is kept aside as
    ``results.json.damaged``, with one warning, and the results start over."""
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problem = f"not valid JSON ({one_line(exc)})"
    else:
        if isinstance(records, list) and all(isinstance(r, dict) for r in records):
            return records
        problem = "not a list of records"
    aside = path.with_name(f"{path.name}.damaged")
    os.replace(path, aside)
    log.warning("%s: %s; kept as %s, the earlier results are not in the new file", path, problem, aside.name)
    return []


MAX_DENSE_CONFUSION = 256
"""Above this many classes ``results.json`` keeps a confusion matrix as its non-zero cells
(``{"shape": [n, n], "cells": [[true, predicted, count], ...]}``, at most one per image): 10,000
classes as a dense list are 10⁸ numbers (gigabytes of JSON)."""


def stored_confusion(confusion) -> list | dict:
    """The matrix as ``results.json`` keeps it (:data:`MAX_DENSE_CONFUSION`)."""
    if len(confusion) <= MAX_DENSE_CONFUSION:
        return confusion.tolist()
    rows, cols = confusion.nonzero()
    return {"shape": list(confusion.shape),
            "cells": [[int(i), int(j), int(confusion[i, j])] for i, j in zip(rows, cols)]}


def read_results(run_root: Path) -> list[dict]:
    path = Path(run_root) / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else []
