"""``stmclf report RUN_DIR``: one self-contained HTML page for a run.

Training curves, confusion matrices, per-class accuracy, every evaluated model's accuracy (and
the float → int8 deltas when quantized models were evaluated), the benchmark footprint when one
was measured, and the resolved config. Images are embedded (base64), so the file can be mailed.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from stmclf.errors import UserError
from stmclf.evaluate.results import read_results

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}.neg{color:#b00}.pos{color:#070}
"""


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_class(record: dict) -> str:
    confusion = np.array(record["confusion"])
    rows = []
    for i, name in enumerate(record["class_names"]):
        total = int(confusion[i].sum())
        accuracy = 100.0 * confusion[i, i] / total if total else float("nan")
        rows.append([html.escape(name), str(total), f"{accuracy:.2f}"])
    return _table(["class", "images", "accuracy (%)"], rows)


def _deltas(records: list[dict]) -> str:
    floats = {r["set"]: r for r in records if r["kind"] == "float"}
    rows = []
    for record in records:
        base = floats.get(record["set"])
        if record["kind"] == "float" or base is None:
            continue
        delta = record["accuracy"] - base["accuracy"]
        css = "neg" if delta < 0 else "pos"
        rows.append([html.escape(record["model"]), record["set"].replace("_", " "), f"{base['accuracy']:.2f}",
                     f"{record['accuracy']:.2f}", f'<span class="{css}">{delta:+.2f}</span>'])
    if not rows:
        return ""
    return "<h2>Float vs quantized</h2>" + _table(["model", "set", "float (%)", "model (%)", "delta"], rows)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"report: {run_dir} is not a stmclf run directory (no config.yaml)")
    records = read_results(run_dir)
    parts = [f"<h1>stmclf run {html.escape(run_dir.name)}</h1>"]
    if records:
        parts.append("<h2>Accuracy</h2>" + _table(
            ["model", "set", "images", "accuracy (%)", "loss"],
            [[html.escape(r["model"]), r["set"].replace("_", " "), str(r["count"]), f"{r['accuracy']:.2f}",
              "" if r.get("loss") is None else f"{r['loss']:.4f}"] for r in records]))
        parts.append(_deltas(records))
    curves = run_dir / "training_curves.png"
    if curves.exists():
        parts.append("<h2>Training curves</h2>" + _image(curves))
    for record in records:
        if record.get("confusion") is None:
            continue
        parts.append(f"<h2>{html.escape(record['model'])} — {record['set'].replace('_', ' ')}</h2>")
        png = run_dir / f"{record['kind']}_model_confusion_matrix_{record['set']}.png"
        if png.exists():
            parts.append(_image(png))
        parts.append(_per_class(record))
    benchmark = run_dir / "benchmark.json"
    if benchmark.exists():
        data = json.loads(benchmark.read_text())
        items = data.items() if isinstance(data, dict) else []
        parts.append("<h2>Benchmark</h2>" + _table(["field", "value"],
                                                   [[html.escape(str(k)), html.escape(str(v))] for k, v in items]))
    parts.append("<h2>Config</h2><pre>" + html.escape((run_dir / "config.yaml").read_text()) + "</pre>")
    out = Path(out) if out else run_dir / "report.html"
    out.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>stmclf {html.escape(run_dir.name)}"
                   f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8")
    return out
