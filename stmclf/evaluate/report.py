"""``stmclf report RUN_DIR``: one self-contained HTML page for the whole journey of a run.

Sections, each shown only when its files are in the run directory (a malformed file gets a short
note instead of the section, never a crash):

- Journey: which stage left which file.
- Accuracy: one row per artifact and set — the float model, ONNX float / QDQ int8, TFLite float /
  int8, the int8 TFLite on TensorFlow Lite Micro — from ``results.json`` and
  ``<export_dir>/export_summary.json``: accuracy, delta vs the float model (points; the float →
  int8 deltas highlighted), file size, top-1 agreement with the float model when the export
  measured it; the export's checks (the TensorFlow Lite Micro check's line highlighted) and
  timings below.
- Training: curves, confusion matrices and per-class accuracy of every evaluated model.
- Benchmark: the footprint in ``benchmark.json`` (flash / RAM of weights and activations, MACC,
  inference time, TFLM measured arena, offline latency estimate) against the board's capacity when
  the record carries it (``board_flash_bytes``, ``board_ram_bytes``, optional
  ``board_ext_flash_bytes``/``_ram_bytes``), and the board-fit check with the RAM figure it used;
  records with the source names used before (``board``, ``cloud-analyze``, ``offline-estimate``) read too.
- Deployment header: the key macros of ``generated/ai_model_config.h``.
- Predictions: the first rows of ``predictions/predictions.csv``.
- Config: the run's ``config.yaml`` (ST's schema) and ``stmclf_extras.yaml`` (stmclf's keys).

Everything read from the run directory is untrusted: every string is HTML-escaped, and only files
inside the run directory are read (``benchmark.json`` is read as plain JSON: the benchmark layer
sits above this one). Images are embedded (base64), so the file can be mailed.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stmclf.config.rules import is_run_subdir
from stmclf.config.run_files import CONFIG_NAME, EXTRAS_NAME, read_run_config, run_config_files
from stmclf.errors import UserError, one_line, printable_path
from stmclf.evaluate.artifacts import ARTIFACT_LABELS, TFLM_LABEL
from stmclf.evaluate.predict import CSV_NAME, PREDICTIONS_DIR
from stmclf.export.export import MODEL_BASENAME, SUMMARY_NAME, outdated_export, reexport_command, run_export_dir
from stmclf.files import atomic_write_text

log = logging.getLogger("stmclf.evaluate")

DEFAULT_EXPORT_DIR = "quantized_models"
DEFAULT_SAVED_MODELS = "saved_models"
FLOAT_MODEL_FILE = "best_model.pt"
BENCHMARK_FILE = "benchmark.json"
RESULTS_FILE = "results.json"  # stmclf.evaluate.results.RESULTS_FILE (not imported: it loads torch)
HEADER_FILE = "generated/ai_model_config.h"
FLOAT_LABEL = "Float model"
PREDICTION_ROWS = 20
MAX_PROB_COLUMNS = 10
# file names export.py writes, for runs whose export_summary.json is missing
DEFAULT_FILES = {"onnx": (f"{MODEL_BASENAME}.onnx",),
                 "onnx_qdq": (f"{MODEL_BASENAME}_quant_qdq_pc.onnx", f"{MODEL_BASENAME}_quant_qdq_pt.onnx"),
                 "tflite": (f"{MODEL_BASENAME}_float32.tflite",), "tflite_int8": ("quantized_model.tflite",)}
LABEL_KEYS = {label: key for key, (label, _) in ARTIFACT_LABELS.items()} | {TFLM_LABEL: "tflite_int8"}
ARTIFACT_ORDER = [FLOAT_LABEL, "ONNX float", "TFLite float", "ONNX QDQ int8", "TFLite int8", TFLM_LABEL]
INT8_KINDS = {"int", "onnx_int", "tflite_int"}
CHECK_AGREEMENT = {"onnx_qdq": "onnx_qdq_agreement", "tflite": "tflite_float_agreement",
                   "tflite_int8": "tflite_int8_agreement"}
SOURCE_NAMES = {"cloud": "STM32Cube.AI Developer Cloud", "stedgeai": "local stedgeai generate",
                "estimate": "offline estimate", "tflm": "TFLite Micro",
                # the names of benchmark.json files written before the rename
                "board": "board run (STM32Cube.AI Developer Cloud)", "cloud-analyze": "cloud analyze",
                "offline-estimate": "offline estimate"}
HEADER_MACROS = ("NB_CLASSES", "CLASSES_TABLE", "INPUT_HEIGHT", "INPUT_WIDTH", "INPUT_CHANNELS", "QUANT_INPUT_TYPE",
                 "QUANT_OUTPUT_TYPE", "INPUT_QUANT_SCALE", "INPUT_QUANT_ZERO_POINT", "OUTPUT_QUANT_SCALE",
                 "OUTPUT_QUANT_ZERO_POINT", "ASPECT_RATIO_MODE", "PP_COLOR_MODE", "CAMERA_INTERFACE",
                 "DISPLAY_INTERFACE")

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}.neg{color:#b00}.pos{color:#070}
tr.int8 td{background:#fff8e1}tr.int8 .neg,tr.int8 .pos{font-weight:bold}.note{color:#8a5a00}
.ok{color:#070;font-weight:bold}.bad{color:#b00;font-weight:bold}small{color:#666}
"""


# ---------------------------------------------------------------------------------------------
# Small helpers


def _e(value: Any) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(path.name)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """``rows`` cells are HTML (escape them first); header cells are text."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    classes = row_classes or [""] * len(rows)
    body = "".join((f'<tr class="{css}">' if css else "<tr>") + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for row, css in zip(rows, classes))
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(value: Any) -> float | None:
    """A finite number, or None (bools, strings, NaN from a hand-edited file)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def human_size(size: float) -> str:
    """``1536`` → ``1.50 KiB`` (binary units, as the benchmark's KiB figures)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"  # pragma: no cover


def _bytes(value: Any) -> str:
    number = _int(value)
    return "" if number is None else f"{_e(human_size(number))} <small>({number:,} bytes)</small>"


def _set_name(name: str) -> str:
    return _e(str(name).replace("_", " "))


def _delta(delta: float) -> str:
    css = "neg" if delta < 0 else "pos"
    return f'<span class="{css}">{delta:+.2f}</span>'


def _inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def _safe_subdir(value: Any, default: str) -> str:
    """A config folder name that stays inside the run directory, else ``default``."""
    if is_run_subdir(value):
        return value
    return default


def _load_json(path: Path, expected: type) -> tuple[Any, str | None]:
    """(data, None), (None, None) when the file is absent, (None, note) when it is unreadable."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path.name}: not valid JSON ({one_line(exc)}); not shown"
    if not isinstance(data, expected):
        kind = "a list" if expected is list else "an object"
        return None, f"{path.name}: expected {kind} of records, got {type(data).__name__}; not shown"
    return data, None


# ---------------------------------------------------------------------------------------------
# What the run directory holds


class RunFiles:
    """Every file of the run the report reads, loaded once; ``notes`` says what could not be read."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir
        self.notes: dict[str, str] = {}
        self.config_text = (run_dir / CONFIG_NAME).read_text(encoding="utf-8", errors="replace")
        extras = run_dir / EXTRAS_NAME  # not in runs written before the split
        self.extras_text = extras.read_text(encoding="utf-8", errors="replace") if extras.is_file() else None
        self.cfg = self._config()
        quantization = self.cfg.get("quantization") if isinstance(self.cfg.get("quantization"), dict) else {}
        general = self.cfg.get("general") if isinstance(self.cfg.get("general"), dict) else {}
        self.export_dir = run_export_dir(run_dir, _safe_subdir(quantization.get("export_dir"), DEFAULT_EXPORT_DIR))
        self.saved_models = run_dir / _safe_subdir(general.get("saved_models_dir"), DEFAULT_SAVED_MODELS)

        records, note = _load_json(run_dir / RESULTS_FILE, list)
        if note:
            self.notes["results"] = note
        self.records = [r for r in records or [] if self._valid_record(r)]
        if records and len(self.records) < len(records):
            self.notes["results"] = (f"{RESULTS_FILE}: {len(records) - len(self.records)} malformed record(s) "
                                     f"skipped")
        self.summary, note = _load_json(self.export_dir / SUMMARY_NAME, dict)
        if note:
            self.notes["export"] = note
        self.outdated = self._outdated()
        self.benchmark, note = _load_json(run_dir / BENCHMARK_FILE, dict)
        if note:
            self.notes["benchmark"] = note
        header = run_dir / HEADER_FILE
        self.header_text = header.read_text(encoding="utf-8", errors="replace") if header.is_file() else None
        self.predictions = run_dir / PREDICTIONS_DIR / CSV_NAME

    def _outdated(self) -> str | None:
        """A line saying the export is outdated: the run's model file changed after it (a later
        training), so the exported files and what was made from them describe the earlier model."""
        changed = outdated_export(self.export_dir, self.summary, within=self.root) if self.summary else None
        if changed is None:
            return None
        line = (f"Outdated export: {printable_path(os.path.relpath(changed.resolve(), self.root.resolve()))} changed after "
                f"{printable_path(self.export_dir.name)} was exported (a later training); the exported files' "
                f"accuracies, the benchmark and the deployment header made from them describe the earlier model. "
                f"Export the run again: {reexport_command(self.root, self.summary)}")
        log.warning("report: %s", line)
        return line

    def _config(self) -> dict:
        try:
            return read_run_config(self.root)
        except UserError as exc:
            self.notes["config"] = f"{one_line(exc)}; default folders assumed"
            return {}

    @staticmethod
    def _valid_record(record: Any) -> bool:
        return (isinstance(record, dict) and isinstance(record.get("model"), str)
                and isinstance(record.get("set"), str) and _num(record.get("accuracy")) is not None)

    # --- artifacts --------------------------------------------------------------------------
    def artifact_file(self, label: str) -> Path | None:
        """The file of an artifact label ("TFLite int8", "Float model"...) in the run directory."""
        if label == FLOAT_LABEL:
            recorded = [r.get("file") for r in self.records if r["model"] == FLOAT_LABEL and r.get("file")]
            if recorded and isinstance(recorded[-1], str):  # the model the float rows describe, wherever it is
                path = Path(recorded[-1])
                return path if path.is_file() and _inside(self.root, path) else None
            candidates = []
            model_file = (self.summary or {}).get("model_file")
            if isinstance(model_file, str) and Path(model_file).is_absolute():
                candidates.append(Path(model_file))
            candidates.append(self.saved_models / FLOAT_MODEL_FILE)
        else:
            key = LABEL_KEYS.get(label)
            if key is None:
                return None
            files = (self.summary or {}).get("files")
            recorded = files.get(key) if isinstance(files, dict) else None
            names = [Path(recorded).name] if isinstance(recorded, str) else []
            candidates = [self.export_dir / name for name in [*names, *DEFAULT_FILES[key]]
                          if name not in ("", ".", "..")]
        return next((p for p in candidates if p.is_file() and _inside(self.root, p)), None)


# ---------------------------------------------------------------------------------------------
# Sections


def _journey(run: RunFiles) -> str:
    def state(path: Path, note_key: str | None = None, what: str = "") -> str:
        if note_key and note_key in run.notes:
            return f'<span class="bad">{_e(run.notes[note_key])}</span>'
        if path.exists():
            return "present" + (f" — {_e(what)}" if what else "")
        return "—"

    artifacts = [label for label in ARTIFACT_ORDER[1:] if run.artifact_file(label)]

    def rel(path: Path) -> str:
        return _e(path.relative_to(run.root).as_posix())

    rows = [
        ["train", rel(run.saved_models / FLOAT_MODEL_FILE), state(run.saved_models / FLOAT_MODEL_FILE)],
        ["train", "training_curves.png", state(run.root / "training_curves.png")],
        ["export / quantize", rel(run.export_dir / SUMMARY_NAME),
         state(run.export_dir / SUMMARY_NAME, "export", ", ".join(artifacts) if artifacts else "")],
        ["evaluate", RESULTS_FILE, state(run.root / RESULTS_FILE, "results",
                                         f"{len(run.records)} evaluation(s)" if run.records else "")],
        ["benchmark", BENCHMARK_FILE, state(run.root / BENCHMARK_FILE, "benchmark")],
        ["deploy", _e(HEADER_FILE), state(run.root / HEADER_FILE)],
        ["predict", rel(run.predictions), state(run.predictions)],
    ]
    return "<h2>Journey</h2>" + _table(["stage", "file", "state"], rows)


def _accuracy_entries(run: RunFiles) -> list[dict]:
    """One entry per (artifact label, set): results.json first, then export_summary.json."""
    entries: dict[tuple[str, str], dict] = {}
    for r in run.records:
        entries[(r["model"], r["set"])] = {"label": r["model"], "set": r["set"], "kind": str(r.get("kind", "")),
                                           "accuracy": _num(r["accuracy"]), "count": _int(r.get("count")),
                                           "loss": _num(r.get("loss"))}
    accuracy = (run.summary or {}).get("accuracy")
    for label, sets in (accuracy.items() if isinstance(accuracy, dict) else ()):
        for name, values in (sets.items() if isinstance(sets, dict) else ()):
            if (label, name) in entries or not isinstance(values, dict) or _num(values.get("accuracy")) is None:
                continue
            entries[(label, name)] = {"label": str(label), "set": str(name), "kind": "",
                                      "accuracy": _num(values["accuracy"]), "count": _int(values.get("count")),
                                      "loss": _num(values.get("loss"))}
    set_order = list(dict.fromkeys(e["set"] for e in entries.values()))
    rank = {label: i for i, label in enumerate(ARTIFACT_ORDER)}
    return sorted(entries.values(), key=lambda e: (set_order.index(e["set"]), rank.get(e["label"], len(rank))))


def _is_int8(entry: dict) -> bool:
    return (entry["kind"] in INT8_KINDS or LABEL_KEYS.get(entry["label"]) in ("onnx_qdq", "tflite_int8")
            or "int8" in entry["label"].lower())


def _baselines(entries: list[dict]) -> dict[str, float]:
    """The float model's accuracy per set (label "Float model", else the one other float record)."""
    out = {e["set"]: e["accuracy"] for e in entries if e["label"] == FLOAT_LABEL}
    for e in entries:
        if e["set"] not in out and e["kind"] == "float" and e["label"] not in LABEL_KEYS:
            out[e["set"]] = e["accuracy"]
    return out


def _agreements(run: RunFiles) -> tuple[dict[tuple[str, str], float], dict[str, float], str]:
    """Top-1 agreement with the float model: per (label, set) on the evaluation set, per label on
    the export's check images, and what those check images were."""
    checks = (run.summary or {}).get("checks")
    checks = checks if isinstance(checks, dict) else {}
    on_set = {}
    for row in checks.get("comparison") or []:
        if isinstance(row, dict) and _num(row.get("agreement")) is not None:
            on_set[(str(row.get("model")), str(row.get("set")))] = _num(row["agreement"])
    on_checks = {}
    for key, name in CHECK_AGREEMENT.items():
        if _num(checks.get(name)) is not None:
            on_checks[ARTIFACT_LABELS[key][0]] = _num(checks[name])
    return on_set, on_checks, str(checks.get("check_images") or "")


def _accuracy(run: RunFiles) -> str:
    entries = _accuracy_entries(run)
    notes = "".join(_note(run.notes[k]) for k in ("results", "export") if k in run.notes)
    if not entries:
        return ("<h2>Accuracy</h2>" + notes) if notes else ""
    base = _baselines(entries)
    on_set, on_checks, check_source = _agreements(run)
    rows, classes, int8_lines, footnote = [], [], [], False
    for e in entries:
        path = run.artifact_file(e["label"])
        reference = base.get(e["set"])
        is_base = e["label"] == FLOAT_LABEL or (reference is not None and e["kind"] == "float"
                                                and e["label"] not in LABEL_KEYS and e["accuracy"] == reference)
        delta = None if reference is None or is_base else round(e["accuracy"] - reference, 2)
        if is_base:
            agreement = "reference"
        elif (e["label"], e["set"]) in on_set:
            agreement = f"{on_set[(e['label'], e['set'])]:.2f}"
        elif e["label"] in on_checks:
            agreement, footnote = f"{on_checks[e['label']]:.2f}*", True
        else:
            agreement = ""
        int8 = _is_int8(e)
        rows.append([_e(e["label"]), _e(path.name) if path else "", _set_name(e["set"]),
                     "" if e["count"] is None else str(e["count"]), f"{e['accuracy']:.2f}",
                     "" if delta is None else _delta(delta), "" if e["loss"] is None else f"{e['loss']:.4f}",
                     _bytes(path.stat().st_size) if path else "", agreement])
        classes.append("int8" if int8 else "")
        if int8 and delta is not None:
            int8_lines.append(f"<li><b>{_e(e['label'])}</b>, {_set_name(e['set'])}: {e['accuracy']:.2f} % vs "
                              f"float {reference:.2f} % ({_delta(delta)} points)</li>")
    parts = ["<h2>Accuracy</h2>", notes]
    if int8_lines:
        parts.append("<h3>Float → int8</h3><ul>" + "".join(int8_lines) + "</ul>")
    parts.append(_table(["artifact", "file", "set", "images", "accuracy (%)", "Δ vs float (points)", "cross-entropy",
                         "file size", "top-1 agreement with float (%)"], rows, classes))
    if footnote:
        parts.append(f"<p><small>* on the export's check images ({_e(check_source or 'unknown')}), not the "
                     f"evaluation set</small></p>")
    parts.append(_export_details(run))
    return "".join(parts)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _export_details(run: RunFiles) -> str:
    summary = run.summary
    if not summary:
        return ""
    parts = ["<h3>Export</h3>"]
    head = [[_e(k), _e(summary[k])] for k in ("model_name", "model_kind", "formats", "int8", "rescaling")
            if k in summary]
    settings = summary.get("settings")
    if isinstance(settings, dict):
        head += [[_e(f"settings.{k}"), _e(v)] for k, v in settings.items() if _scalar(v)]
    checks = summary.get("checks")
    if isinstance(checks, dict):
        head += [[_e(f"checks.{k}"), _e(v)] for k, v in checks.items() if _scalar(v)]
        if isinstance(checks.get("tflm_message"), str):  # the TensorFlow Lite Micro check, ok or why not
            parts.append(f'<p class="{"ok" if checks.get("tflm_check") == "ok" else "note"}">'
                         f'{_e(checks["tflm_message"])}</p>')
    if head:
        parts.append(_table(["field", "value"], head))
    timings = summary.get("timings")
    if isinstance(timings, dict) and timings:
        parts.append(_table(["stage", "seconds"], [[_e(k), f"{_num(v):.2f}" if _num(v) is not None else _e(v)]
                                                   for k, v in timings.items()]))
    notes = summary.get("notes")
    if isinstance(notes, list) and notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts)


def _class_counts(stored) -> tuple[np.ndarray, np.ndarray]:
    """(images, correct) per true class of a ``results.json`` confusion matrix: a dense list of
    rows, or the non-zero cells of a large one (``{"shape": [n, n], "cells": [[i, j, count], ...]}``)."""
    if isinstance(stored, dict):
        n = stored.get("shape", [0])[0]
        cells = np.array(stored.get("cells") or np.zeros((0, 3)), dtype=np.int64)
        if not isinstance(n, int) or n < 1 or stored.get("shape") != [n, n] or cells.ndim != 2 or cells.shape[1] != 3 \
                or (cells[:, :2] < 0).any() or (cells[:, :2] >= n).any():
            raise ValueError(f"malformed sparse confusion matrix of shape {stored.get('shape')!r}")
        totals = np.bincount(cells[:, 0], weights=cells[:, 2], minlength=n).astype(np.int64)
        diagonal = cells[cells[:, 0] == cells[:, 1]]
        correct = np.bincount(diagonal[:, 0], weights=diagonal[:, 2], minlength=n).astype(np.int64)
        return totals, correct
    confusion = np.array(stored, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix of shape {confusion.shape}")
    return confusion.sum(axis=1), np.diagonal(confusion)


def _per_class(record: dict) -> str:
    totals, correct = _class_counts(record["confusion"])
    names = record.get("class_names") or []
    if len(names) > len(totals):
        raise ValueError(f"confusion matrix of {len(totals)} classes for {len(names)} class names")
    rows = []
    for i, name in enumerate(names):
        total = int(totals[i])
        accuracy = 100.0 * correct[i] / total if total else float("nan")
        rows.append([_e(name), str(total), f"{accuracy:.2f}"])
    return _table(["class", "images", "accuracy (%)"], rows)


def _training(run: RunFiles) -> str:
    parts = []
    curves = run.root / "training_curves.png"
    if curves.is_file():
        parts.append("<h2>Training curves</h2>" + _image(curves))
    for record in run.records:
        if record.get("confusion") is None:
            continue
        parts.append(f"<h2>{_e(record['model'])} — {_set_name(record['set'])}</h2>")
        kind = str(record.get("kind", ""))
        if re.fullmatch(r"\w+", kind) and re.fullmatch(r"\w+", record["set"]):
            png = run.root / f"{kind}_model_confusion_matrix_{record['set']}.png"
            if png.is_file():
                parts.append(_image(png))
        try:
            parts.append(_per_class(record))
        except (TypeError, ValueError, IndexError) as exc:
            parts.append(_note(f"per-class accuracy not shown: {one_line(exc)}"))
    return "".join(parts)


def _fit_row(what: str, used: int | None, used_text: str, available: int | None,
             external: int | None) -> list[str] | None:
    if used is None:
        return None
    if available is None:
        return [_e(what), _bytes(used) + f" <small>{_e(used_text)}</small>", "not recorded", "", ""]
    where, capacity = "internal", available
    if available == 0 and external:
        where, capacity = "external", external
    if capacity <= 0:
        return [_e(what), _bytes(used) + f" <small>{_e(used_text)}</small>", f"none ({where})", "",
                '<span class="bad">no</span>']
    share = 100.0 * used / capacity
    fits = used <= capacity
    verdict = '<span class="ok">yes</span>' if fits else '<span class="bad">no</span>'
    if not fits and external and where == "internal":
        verdict += f" <small>(external: {_e(human_size(external))})</small>"
    return [_e(what), _bytes(used) + f" <small>{_e(used_text)}</small>",
            _bytes(capacity) + f" <small>{where}</small>", f"{share:.1f} %", verdict]


def _benchmark(run: RunFiles) -> str:
    if "benchmark" in run.notes:
        return "<h2>Benchmark</h2>" + _note(run.notes["benchmark"])
    data = run.benchmark
    if data is None:
        return ""
    b = data
    mpu = b.get("target") == "mpu"
    source = str(b.get("source") or "")
    rows = [["board", _e(b.get("board") or "(none)")],
            ["source", _e(SOURCE_NAMES.get(source, source) or "unknown")
             + (f" {_e(b['cloud_mode'])} run" if b.get("cloud_mode") else "")
             + (f" <small>({_e(source)})</small>" if source in SOURCE_NAMES else "")]]
    for key, label in (("target", "target"), ("device", "device"), ("tool_version", "tool version"),
                       ("model", "model file")):
        if b.get(key) is not None:
            rows.append([label, _e(b[key])])
    weights, activations = _int(b.get("rom_size")), _int(b.get("ram_size"))
    code, runtime = _int(b.get("estimated_library_flash_size")), _int(b.get("estimated_library_ram_size"))
    total_flash = None if None in (weights, code) else weights + code
    total_ram = None if None in (activations, runtime) else activations + runtime
    sizes = ((("model size", weights), ("peak RAM", activations)) if mpu else
             (("flash: weights", weights), ("flash: runtime code", code), ("flash: total", total_flash),
              ("RAM: activations", activations), ("RAM: runtime", runtime),
              ("RAM: I/O buffers", _int(b.get("total_ram_io_size"))), ("RAM: total", total_ram)))
    rows += [[label, _bytes(value)] for label, value in sizes if value is not None]
    macc = _int(b.get("macc"))
    if macc is not None:
        rows.append(["MACC", f"{macc:,} <small>({macc / 1e6:.3f} M)</small>"])
    duration = _num(b.get("duration_ms"))
    duration = duration if duration is not None and duration >= 0 else _num(b.get("inference_time ms"))
    if duration is not None:
        rows.append(["inference time", f"{duration:.2f} ms"])
    companions = {k: b[k] if isinstance(b.get(k), dict) else {} for k in ("tflm", "latency", "ram_fit")}
    tflm, latency = companions["tflm"], companions["latency"]
    if _int(tflm.get("arena_bytes")) is not None:
        rows.append(["RAM: TFLM measured arena", _bytes(tflm["arena_bytes"]) + " <small>head "
                     + _e(human_size(tflm.get("head_bytes") or 0)) + " + tail (persistent) "
                     + _e(human_size(tflm.get("tail_bytes") or 0)) + "</small>"])
    elif tflm.get("reason"):
        rows.append(["RAM: TFLM measured arena", _e(tflm["reason"])])
    if _num(latency.get("ms")) is not None:
        rows.append(["latency (offline estimate)", _e(latency.get("summary") or f"{latency['ms']:.1f} ms")])
    elif latency.get("reason"):
        rows.append(["latency (offline estimate)", _e(latency["reason"])])
    cycles = _int(b.get("cycles"))
    if cycles is not None and cycles >= 0:
        rows.append(["cycles", f"{cycles:,}"])
    for key in ("internal_ram_consumption", "external_ram_consumption", "internal_flash_consumption",
                "external_flash_consumption"):
        if _int(b.get(key)) is not None:
            rows.append([key.replace("_", " "), _bytes(b[key])])
    for key, label in (("npu_percent", "NPU"), ("gpu_percent", "GPU"), ("cpu_percent", "CPU")):
        if _num(b.get(key)) is not None:
            rows.append([f"{label} share", f"{100 * _num(b[key]):.1f} %"])
    parts = ["<h2>Benchmark: footprint on the board</h2>", _table(["field", "value"], rows)]

    if not mpu and (weights is not None or activations is not None):
        board_flash, board_ram = _int(b.get("board_flash_bytes")), _int(b.get("board_ram_bytes"))
        ext_flash, ext_ram = _int(b.get("board_ext_flash_bytes")), _int(b.get("board_ext_ram_bytes"))
        fit = [_fit_row("flash", total_flash if total_flash is not None else weights,
                        "weights + code" if total_flash is not None else "weights only", board_flash, ext_flash),
               _fit_row("RAM", total_ram if total_ram is not None else activations,
                        "activations + runtime" if total_ram is not None else "activations only", board_ram, ext_ram),
               _fit_row("RAM", _int(tflm.get("arena_bytes")), "TFLM measured arena", board_ram, ext_ram)]
        parts.append(f"<h3>Fit on {_e(b.get('board') or 'the board')}</h3>")
        parts.append(_table(["memory", "used", "available", "use", "fits"], [r for r in fit if r]))
        if board_flash is None or board_ram is None:
            parts.append(_note(f"{BENCHMARK_FILE} does not record the board's memory sizes (board_flash_bytes, "
                               f"board_ram_bytes): capacity not shown"))
        ram_fit = companions["ram_fit"]
        if ram_fit.get("summary"):
            used = "the TFLM measured arena" if ram_fit.get("ram_source") == "tflm" else "the activations"
            parts.append(f"<p>Board-fit check (RAM from {used}): {_e(ram_fit['summary'])}</p>")
        if ram_fit.get("problem"):
            parts.append(f'<p class="bad">{_e(ram_fit["problem"])}</p>')
    notes = b.get("notes")
    if isinstance(notes, list) and notes:
        parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<details><summary>All fields of benchmark.json</summary>" + _table(
        ["field", "value"], [[_e(k), _e(v)] for k, v in data.items()]) + "</details>")
    return "".join(parts)


# --- deployment header -----------------------------------------------------------------------


def parse_defines(text: str) -> dict[str, str]:
    """``{NAME: VALUE}`` of the ``#define NAME VALUE`` lines (continuation lines joined)."""
    logical, buffer = [], ""
    for line in text.splitlines():
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    if buffer:
        logical.append(buffer)
    defines = {}
    for line in logical:
        match = re.match(r"\s*#\s*define\s+([A-Za-z_]\w*)(?:\s+(.*))?$", line)
        if not match:
            continue
        value = (match.group(2) or "").strip()
        if '"' not in value:
            value = re.sub(r"/\*.*?\*/", "", value).split("//")[0].strip()
        defines[match.group(1)] = value
    return defines


def c_strings(text: str) -> list[str]:
    """The C string literals of ``text``, decoded (UTF-8 bytes, octal and simple escapes)."""
    out = []
    for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', text):
        data, i = bytearray(), 0
        while i < len(literal):
            char = literal[i]
            if char == "\\" and i + 1 < len(literal):
                octal = re.match(r"[0-7]{1,3}", literal[i + 1:])
                if octal:
                    data.append(int(octal.group(0), 8) & 0xFF)
                    i += 1 + len(octal.group(0))
                    continue
                nxt = literal[i + 1]
                data += {"n": b"\n", "t": b"\t", "r": b"\r", "0": b"\0"}.get(nxt, nxt.encode("utf-8"))
                i += 2
                continue
            data += char.encode("utf-8")
            i += 1
        out.append(data.decode("utf-8", errors="replace"))
    return out


def _macro_value(name: str, value: str, defines: dict[str, str]) -> str:
    """HTML for one macro value: numbers without the parentheses, symbols with their value."""
    inner = value[1:-1].strip() if value.startswith("(") and value.endswith(")") else value
    number = re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?[fF]?", inner)
    if number:
        return _e(inner.rstrip("fF"))
    if re.fullmatch(r"[A-Za-z_]\w*", inner) and inner in defines:
        resolved = defines[inner]
        resolved = resolved[1:-1].strip() if resolved.startswith("(") and resolved.endswith(")") else resolved
        return f"{_e(inner)} <small>({_e(resolved)})</small>"
    return _e(value)


def _header(run: RunFiles) -> str:
    if run.header_text is None:
        return ""
    defines = parse_defines(run.header_text)
    rows, notes = [], []
    for name in HEADER_MACROS:
        if name not in defines:
            continue
        if name == "CLASSES_TABLE":
            names = c_strings(defines[name].split("=", 1)[-1])
            value = f"{len(names)}: " + ", ".join(_e(n) for n in names)
            nb = defines.get("NB_CLASSES", "").strip("() ")
            if nb.isdigit() and int(nb) != len(names):
                notes.append(f"NB_CLASSES is {nb} but CLASSES_TABLE has {len(names)} names")
            recorded = next((r.get("class_names") for r in run.records if r.get("class_names")), None)
            if isinstance(recorded, list) and recorded and list(recorded) != names:
                notes.append("CLASSES_TABLE differs from the class names in results.json")
            rows.append([name, value])
        else:
            rows.append([name, _macro_value(name, defines[name], defines)])
    parts = [f"<h2>Deployment header <small>({_e(HEADER_FILE)})</small></h2>"]
    if not rows:
        parts.append(_note(f"{HEADER_FILE}: none of the expected macros found"))
    else:
        parts.append(_table(["macro", "value"], rows))
    parts += [_note(n) for n in notes]
    return "".join(parts)


def _predictions(run: RunFiles) -> str:
    path = run.predictions
    if not path.is_file():
        return ""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows, total = [], 0
            for row in reader:
                total += 1
                if len(rows) < PREDICTION_ROWS:
                    rows.append(row)
    except (OSError, csv.Error) as exc:
        return "<h2>Predictions</h2>" + _note(f"{CSV_NAME}: unreadable ({one_line(exc)})")
    if not header:
        return "<h2>Predictions</h2>" + _note(f"{CSV_NAME}: empty")
    keep = list(range(len(header)))
    probs = [i for i, h in enumerate(header) if h.startswith("prob_")]
    hidden = ""
    if len(probs) > MAX_PROB_COLUMNS:
        keep = [i for i in keep if i not in probs]
        hidden = f"; {len(probs)} probability columns not shown"
    table = _table([header[i] for i in keep], [[_e(row[i]) if i < len(row) else "" for i in keep] for row in rows])
    shown = f"first {len(rows)} of {total}" if total > len(rows) else f"{total}"
    return (f"<h2>Predictions <small>({_e(PREDICTIONS_DIR)}/{_e(CSV_NAME)})</small></h2>"
            f"<p>{shown} prediction(s){_e(hidden)}</p>" + table)


def _config(run: RunFiles) -> str:
    note = _note(run.notes["config"]) if "config" in run.notes else ""
    extras = "" if run.extras_text is None else \
        f"<h3>{_e(EXTRAS_NAME)}</h3><pre>" + _e(run.extras_text) + "</pre>"
    return f"<h2>Config</h2>{note}<h3>{_e(CONFIG_NAME)}</h3><pre>" + _e(run.config_text) + "</pre>" + extras


def _section(name: str, render: Callable[[RunFiles], str], run: RunFiles) -> str:
    """A section, or a one-line note when its files hold something unexpected."""
    try:
        return render(run)
    except Exception as exc:  # noqa: BLE001 - the report shows what it can; files are untrusted
        log.warning("report: the %s section could not be shown (%s: %s)", name, type(exc).__name__, exc)
        return f"<h2>{_e(name)}</h2>" + _note(f"not shown: {type(exc).__name__}: {one_line(exc)}")


SECTIONS: tuple[tuple[str, Callable[[RunFiles], str]], ...] = (
    ("Journey", _journey), ("Accuracy", _accuracy), ("Training", _training), ("Benchmark", _benchmark),
    ("Deployment header", _header), ("Predictions", _predictions), ("Config", _config))


def write_report(run_dir: Path, out: Path | None = None, label: str | None = None) -> Path:
    """``RUN/report.html`` (or ``out``); ``label`` names the run folder in the error when it is
    none (the option that gave it: ``--run RUN``)."""
    run_dir = Path(run_dir)
    run_config_files(run_dir, label or f"report: {printable_path(run_dir)}")  # a folder that is no run: one line
    run = RunFiles(run_dir)
    parts = [f"<h1>stmclf run {_e(run_dir.name)}</h1>"]
    if run.outdated:
        parts.append(f'<p class="bad" id="outdated-export">{_e(run.outdated)}</p>')
    parts += [_section(name, render, run) for name, render in SECTIONS]
    out = Path(out) if out else run_dir / "report.html"
    atomic_write_text(out, f"<!doctype html><html><head><meta charset='utf-8'><title>stmclf {_e(run_dir.name)}"
                           f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return out
