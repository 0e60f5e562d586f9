"""Per-tensor int8 error of a QDQ ONNX model against its float ONNX model (``stmclf export --int8
--per-layer``).

Both models run on the same few images with every compared tensor added as a graph output; for
each tensor the signal-to-quantization-noise ratio over all images is

    SNR (dB) = 10·log10(‖float‖² / ‖float − int8‖²)

(+inf when the int8 values equal the float ones). Low SNR marks where int8 loses information: a
layer with a wide activation range, a weight tensor with outliers, the logits. The report is a
Rich table, worst tensor first, and ``per_layer_snr.csv`` in the export directory.

How QDQ tensors map to float tensors (onnxruntime's static QDQ quantizer, used by
``stmclf.export.onnx_qdq``):

- an activation tensor ``T`` of the quantized graph becomes ``T → QuantizeLinear →
  DequantizeLinear``; the DequantizeLinear output (``T_DequantizeLinear_Output``) is the int8
  value of the float tensor named by the QuantizeLinear's input, ``T``. A graph output keeps its
  name on the DequantizeLinear output and the producer's output is renamed
  (``T_QuantizeLinear_Input``): then the float name is the DequantizeLinear output's own name;
- a Relu or Clip fused away by the quantizer leaves the producer writing the Relu's output name,
  so the names still refer to the float graph's tensors;
- a weight becomes an int8 initializer ``W_quantized`` read by a DequantizeLinear (per-channel:
  ``axis`` attribute): the float weight is the float model's initializer ``W``; its int8 value is
  computed directly, ``(q − zero_point)·scale``. int32 biases are not listed (their error is
  negligible next to the weights' and activations').

The float names are looked up in the float ONNX; a name that onnxruntime's pre-processing
(``quant_pre_process``) created is looked up in the pre-processed float model instead (rebuilt
here the same way).
"""
from __future__ import annotations

import csv
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stmclf.errors import ConfigError, UserError

log = logging.getLogger("stmclf.export")

CSV_NAME = "per_layer_snr.csv"
DEFAULT_IMAGES = 16
QUANTIZED_SUFFIX = "_quantized"


@dataclass
class TensorPair:
    float_name: str  # tensor (or initializer) of the float model
    qdq_name: str  # DequantizeLinear output of the QDQ model ("" for weights)
    kind: str  # input, activation, output, weight
    op: str = ""  # producing op in the float model (weights: the consuming op)
    layer: str = ""  # the stmclf layer (Keras name) when the node name says it


@dataclass
class LayerSnr:
    tensor: str
    layer: str
    op: str
    kind: str
    snr_db: float
    signal_rms: float
    noise_rms: float
    max_abs_error: float
    elements: int


def _layer_of(node_name: str, layer_names: Optional[dict[str, str]] = None) -> str:
    """``/model/conv2d_3/Conv`` → ``conv2d_3`` (torch's exporter names nodes by module path). With
    ``layer_names`` (the float ONNX's stmclf metadata: module path → Keras name, where they differ)
    the longest module path the node name starts with gives the Keras name: ``mobilenetv2_0.35_96``
    (a module key cannot hold its '.'), ``mobilenetv2_0.35_96/Conv1`` inside that nested model."""
    parts = [p for p in node_name.split("/") if p]
    for end in range(len(parts) - 1, 0, -1) if layer_names else ():
        name = layer_names.get("/".join(parts[:end]))
        if name is not None:
            return name
    if len(parts) >= 3 and parts[0] == "model":
        return parts[1]
    if len(parts) >= 2:
        return parts[-2]
    return parts[0] if parts else node_name


def _graph_index(model):
    producers = {out: node for node in model.graph.node for out in node.output if out}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name: i for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input if i.name not in initializers}
    outputs = {o.name for o in model.graph.output}
    return producers, consumers, initializers, inputs, outputs


def tensor_pairs(qdq_model, layer_names: Optional[dict[str, str]] = None) -> list[TensorPair]:
    """Every activation and weight tensor of the QDQ model with the float tensor it stands for
    (``layer_names``: see :func:`_layer_of`)."""
    import onnx

    producers, consumers, initializers, inputs, outputs = _graph_index(qdq_model)
    pairs: list[TensorPair] = []
    seen: set[str] = set()
    for node in qdq_model.graph.node:
        if node.op_type != "DequantizeLinear" or not node.output:
            continue
        source, out = node.input[0], node.output[0]
        if source in initializers:
            init = initializers[source]
            if init.data_type == onnx.TensorProto.INT32:
                continue  # a bias
            name = source[:-len(QUANTIZED_SUFFIX)] if source.endswith(QUANTIZED_SUFFIX) else source
            user = next(iter(consumers.get(out, [])), None)
            pair = TensorPair(name, out, "weight", user.op_type if user is not None else "",
                              _layer_of(user.name, layer_names) if user is not None else "")
        else:
            quantize = producers.get(source)
            if quantize is None or quantize.op_type != "QuantizeLinear":
                continue
            name = out if out in outputs else quantize.input[0]
            kind = "output" if out in outputs else ("input" if name in inputs else "activation")
            pair = TensorPair(name, out, kind)
        if (pair.kind, pair.float_name) in seen:
            continue  # one Q shared by several DQ nodes
        seen.add((pair.kind, pair.float_name))
        pairs.append(pair)
    return pairs


def _dequantize_initializer(model, node) -> np.ndarray:
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    q = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64) if len(node.input) > 2 and \
        node.input[2] else np.zeros_like(scale)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def _prepared_model(float_onnx: Path):
    """The float model as onnxruntime's ``quant_pre_process`` leaves it (what was quantized)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="stmclf-per-layer-") as tmp:
        out = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_onnx), str(out), skip_symbolic_shape=False)
        return onnx.load(str(out))


def _session_with_outputs(model, names: Sequence[str]):
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_each(session, inputs: np.ndarray, names: Sequence[str]):
    """Yield {name: array} per image (the models have a static batch of 1)."""
    spec = session.get_inputs()[0]
    static = isinstance(spec.shape[0], int) and spec.shape[0] > 0
    step = int(spec.shape[0]) if static else 1
    for start in range(0, len(inputs), step):
        chunk = np.ascontiguousarray(inputs[start:start + step], dtype=np.float32)
        values = session.run(list(names), {spec.name: chunk})
        yield chunk, dict(zip(names, values))


class _Accumulator:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.max_abs = 0.0
        self.count = 0

    def add(self, reference: np.ndarray, quantized: np.ndarray) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        quantized = np.asarray(quantized, dtype=np.float64).reshape(reference.shape)
        diff = reference - quantized
        self.signal += float(np.sum(reference * reference))
        self.noise += float(np.sum(diff * diff))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        self.count += reference.size

    def snr_db(self) -> float:
        return snr_db(self.signal, self.noise)


def snr_db(signal: float, noise: float) -> float:
    """10·log10(signal/noise) from squared norms: +inf for no noise, nan for no signal."""
    if noise == 0.0:
        return math.inf if signal > 0 else math.nan
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def per_layer_snr(float_onnx: Path, qdq_onnx: Path, inputs: np.ndarray, *,
                  include_weights: bool = True) -> list[LayerSnr]:
    """SNR of every QDQ tensor against the float model on float model ``inputs`` (NCHW, as the
    float ONNX takes them), worst first."""
    import onnx

    from stmclf.export.onnx_export import read_metadata

    float_onnx, qdq_onnx = Path(float_onnx), Path(qdq_onnx)
    if len(inputs) == 0:
        raise UserError("per-layer report: no image to run the models on")
    float_model = onnx.load(str(float_onnx))
    qdq_model = onnx.load(str(qdq_onnx))
    layer_names = read_metadata(float_onnx).get("layer_names")  # Keras names where the module paths differ
    pairs = tensor_pairs(qdq_model, layer_names)
    if not pairs:
        raise UserError(f"{qdq_onnx}: no QuantizeLinear/DequantizeLinear pair found: is it a QDQ model?")
    references = [float_model]
    missing = [p for p in pairs if not (_initializer(float_model, p.float_name) is not None if p.kind == "weight"
                                        else _has_tensor(float_model, p))]
    if missing:
        log.info("per-layer report: %d tensor name(s) not in %s; using the pre-processed float model for them",
                 len(missing), float_onnx.name)
        references.append(_prepared_model(float_onnx))
    qdq_nodes = {n.output[0]: n for n in qdq_model.graph.node if n.op_type == "DequantizeLinear" and n.output}

    results: dict[tuple[str, str], _Accumulator] = {}
    labels: dict[tuple[str, str], TensorPair] = {}
    activations = [p for p in pairs if p.kind != "weight"]
    # which reference model holds each float activation
    owner: dict[str, int] = {}
    for pair in activations:
        for i, model in enumerate(references):
            if _has_tensor(model, pair):
                owner[pair.float_name] = i
                _describe(model, pair, layer_names)
                break
        else:
            log.info("per-layer report: no float tensor %s; skipped", pair.float_name)
    activations = [p for p in activations if p.float_name in owner]

    qdq_session = _session_with_outputs(qdq_model, [p.qdq_name for p in activations])
    qdq_values = [values for _, values in _run_each(qdq_session, inputs, [p.qdq_name for p in activations])]
    for i, model in enumerate(references):
        wanted = [p for p in activations if owner[p.float_name] == i]
        names = [p.float_name for p in wanted if p.kind != "input"]
        if not wanted:
            continue
        session = _session_with_outputs(model, names)
        for (chunk, values), quantized in zip(_run_each(session, inputs, names), qdq_values):
            for pair in wanted:
                reference = chunk if pair.kind == "input" else values[pair.float_name]
                key = (pair.kind, pair.float_name)
                results.setdefault(key, _Accumulator()).add(reference, quantized[pair.qdq_name])
                labels[key] = pair

    if include_weights:
        for pair in (p for p in pairs if p.kind == "weight"):
            reference = next((_initializer(m, pair.float_name) for m in references
                              if _initializer(m, pair.float_name) is not None), None)
            if reference is None:
                log.info("per-layer report: no float initializer %s; skipped", pair.float_name)
                continue
            key = (pair.kind, pair.float_name)
            results.setdefault(key, _Accumulator()).add(reference, _dequantize_initializer(qdq_model,
                                                                                           qdq_nodes[pair.qdq_name]))
            labels[key] = pair

    rows = []
    for key, acc in results.items():
        pair = labels[key]
        count = max(acc.count, 1)
        rows.append(LayerSnr(pair.float_name, pair.layer, pair.op, pair.kind, acc.snr_db(),
                             math.sqrt(acc.signal / count), math.sqrt(acc.noise / count), acc.max_abs, acc.count))
    return sort_worst_first(rows)


def sort_worst_first(rows: list[LayerSnr]) -> list[LayerSnr]:
    """Ascending SNR; +inf (exact) and nan (all-zero tensors) last."""
    return sorted(rows, key=lambda r: (math.isnan(r.snr_db), r.snr_db if not math.isnan(r.snr_db) else 0.0))


def _has_tensor(model, pair: TensorPair) -> bool:
    graph = model.graph
    if pair.kind == "input":
        return any(i.name == pair.float_name for i in graph.input)
    return any(pair.float_name in node.output for node in graph.node)


def _describe(model, pair: TensorPair, layer_names: Optional[dict[str, str]] = None) -> None:
    if pair.kind == "input":
        pair.op, pair.layer = "input", "input"
        return
    node = next(n for n in model.graph.node if pair.float_name in n.output)
    pair.op, pair.layer = node.op_type, _layer_of(node.name, layer_names)


def _initializer(model, name: str) -> Optional[np.ndarray]:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:  # Constant nodes (some exporters store weights so)
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


# -- output ------------------------------------------------------------------------------------

def _format_db(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "inf" if value == math.inf else f"{value:.2f}"


def print_snr_table(rows: Sequence[LayerSnr], title: str = "Per-tensor int8 SNR (worst first)") -> None:
    from rich.table import Table

    from stmclf.console import data_console

    table = Table(title=title, caption=f"tensor names in {CSV_NAME}")
    for column, justify in (("#", "right"), ("layer", "left"), ("op", "left"), ("kind", "left"),
                            ("SNR (dB)", "right"), ("RMS float", "right"), ("RMS error", "right")):
        table.add_column(column, justify=justify, no_wrap=column in ("layer", "SNR (dB)"))
    for i, row in enumerate(rows, start=1):
        style = "red" if row.snr_db < 20 else ("yellow" if row.snr_db < 30 else None)
        table.add_row(str(i), row.layer, row.op, "act" if row.kind == "activation" else row.kind,
                      _format_db(row.snr_db), f"{row.signal_rms:.4g}", f"{row.noise_rms:.3g}", style=style)
    data_console().print(table)


def write_snr_csv(rows: Sequence[LayerSnr], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "tensor", "layer", "op", "kind", "snr_db", "signal_rms", "noise_rms",
                         "max_abs_error", "elements"])
        for i, row in enumerate(rows, start=1):
            writer.writerow([i, row.tensor, row.layer, row.op, row.kind, _format_db(row.snr_db),
                             f"{row.signal_rms:.6g}", f"{row.noise_rms:.6g}", f"{row.max_abs_error:.6g}",
                             row.elements])
    return path


def per_layer_report(float_onnx: Path, qdq_onnx: Path, images: np.ndarray, out_dir: Path, *,
                     rescaling: Optional[Sequence[float]] = None, print_table: bool = True) -> tuple[list[LayerSnr], Path]:
    """The report for uint8 NCHW ``images`` (fed as the float ONNX's metadata says: rescaled, or
    raw pixels for a folded-rescaling model): (rows, CSV path)."""
    from stmclf.export.onnx_export import onnx_inputs, read_metadata

    meta = read_metadata(float_onnx)
    contract = meta.get("input", "rescaled")
    rescaling = tuple(rescaling) if rescaling is not None else tuple(meta.get("rescaling") or ())
    if contract == "rescaled" and len(rescaling) != 2:
        raise UserError(f"{float_onnx}: no stmclf metadata; give the rescaling for the per-layer report")
    rows = per_layer_snr(float_onnx, qdq_onnx, onnx_inputs(images, rescaling, contract))
    path = write_snr_csv(rows, Path(out_dir) / CSV_NAME)
    if print_table:
        print_snr_table(rows, title=f"Per-tensor int8 SNR of {Path(qdq_onnx).name} on {len(images)} image(s), "
                                    f"worst first")
    finite = [r for r in rows if math.isfinite(r.snr_db)]
    if finite:
        log.info("Per-layer report: %d tensors, worst %s %.2f dB, median %.2f dB; %s", len(rows), finite[0].tensor,
                 finite[0].snr_db, float(np.median([r.snr_db for r in finite])), path)
    return rows, path


# -- images and the export command ------------------------------------------------------------

def report_images(cfg, input_shape: Sequence[int], count: int = DEFAULT_IMAGES, seed: int = 0) -> tuple[np.ndarray, str]:
    """(uint8 NCHW images, description): the first ``count`` images of the evaluation set (test,
    else validation), else of the calibration set, else random images."""
    import torch

    from stmclf.export.images import load_images, random_images

    height, width, channels = (int(v) for v in input_shape)
    if cfg is not None and cfg.dataset is not None and cfg.preprocessing is not None:
        from stmclf.data.datamodule import ImageDataModule, ImageFormat

        fmt = ImageFormat.from_config(cfg.preprocessing, input_shape)
        datamodule = ImageDataModule(cfg.dataset, fmt, batch_size=min(count, 32), num_workers=0)
        splits = datamodule.prepare_splits()
        for name, files in (("test set", splits.test), ("validation set", splits.valid),
                            ("calibration set", splits.quantization)):
            if files is not None and len(files):
                with torch.random.fork_rng():
                    images, _ = load_images(datamodule, files, count)
                if len(images):
                    return images, f"{name}: first {len(images)} images"
    log.warning("per-layer report: no dataset in the config; the models run on %d random images", count)
    return random_images(count, (channels, height, width), seed), f"{count} random images"


def check_per_layer_request(formats, int8: Optional[bool], cfg) -> None:
    """``--per-layer`` needs the QDQ model: the onnx format and int8."""
    from stmclf.export.export import parse_formats

    if "onnx" not in parse_formats(formats):
        raise UserError("--per-layer compares the QDQ ONNX with the float ONNX: include onnx in --format")
    if int8 is False or (int8 is None and getattr(cfg, "quantization", None) is None):
        raise UserError("--per-layer needs the int8 models: add --int8 (or a quantization section)")


def per_layer_for_export(cfg, result, count: int = DEFAULT_IMAGES) -> Path:
    """The per-layer report of an export result (``stmclf export --int8 --per-layer``)."""
    from stmclf.export.onnx_export import read_metadata

    if "onnx" not in result or "onnx_qdq" not in result:
        raise ConfigError("quantization", "per-layer report: the export wrote no QDQ ONNX model")
    float_onnx, qdq = Path(result["onnx"]), Path(result["onnx_qdq"])
    meta = read_metadata(float_onnx)
    images, source = report_images(cfg, meta["input_shape"], count)
    log.info("Per-layer report: %s vs %s on %s", qdq.name, float_onnx.name, source)
    _, path = per_layer_report(float_onnx, qdq, images, getattr(result, "export_dir", None) or float_onnx.parent)
    return path
