"""Float ONNX export of a trained :class:`~stmclf.training.module.ClassifierModule`.

The exported graph is the classifier as the reference ships it:

- input ``input``: NCHW float32, **already rescaled** (``scale·pixel + offset``), the contract of
  the reference's models; with ``fold_rescaling=True`` the input is raw pixels as float (0..255)
  and the rescaling is the graph's first two ops instead;
- output ``probabilities`` (softmax appended, the default: the reference's models end with a
  softmax) or ``logits`` (``softmax=False``);
- batch axis dynamic (``batch_size=None``) or fixed (``batch_size=1``: what onnx2tf and the
  STM32 tools want).

The exporter is torch's TorchScript-based one (``dynamo=False``): it matches torch to ~1e-6 on
the zoo models and writes one self-contained file. The file's metadata records the class names,
the rescaling and the input contract, so an ``.onnx`` can be evaluated without its config.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from stmclf.errors import UserError, one_line

log = logging.getLogger("stmclf.export")

INPUT_NAME = "input"
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear need opset 13
METADATA_PREFIX = "stmclf."


SCOPE = "model"
"""The attribute of :class:`ExportedClassifier` holding the network: the first part of the ONNX
node names of its layers (``/model/conv2d_3/Conv``)."""


class ExportedClassifier(nn.Module):
    """The model as exported: optional folded rescaling → network → optional softmax."""

    def __init__(self, model: nn.Module, *, softmax: bool = True,
                 rescaling: Optional[tuple[float, float]] = None) -> None:
        super().__init__()
        self.model = model
        self.softmax = softmax
        self.rescaling = rescaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rescaling is not None:
            x = x * self.rescaling[0] + self.rescaling[1]
        y = self.model(x)
        return torch.softmax(y, dim=1) if self.softmax else y


def output_name(softmax: bool) -> str:
    return "probabilities" if softmax else "logits"


def module_rescaling(module) -> tuple[float, float]:
    scale, offset = module.hparams.rescaling
    return float(scale), float(offset)


def exported_network(module, *, softmax: bool = True, fold_rescaling: bool = False) -> ExportedClassifier:
    """A CPU, contiguous-format, eval-mode copy of ``module.model`` wrapped for export."""
    with warnings.catch_warnings():  # a TorchScript model's parameters are not leaves: torch warns on .grad
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf",
                                category=UserWarning)
        model = copy.deepcopy(module.model).float().cpu().eval()
        model = model.to(memory_format=torch.contiguous_format)
    return ExportedClassifier(model, softmax=softmax,
                              rescaling=module_rescaling(module) if fold_rescaling else None).eval()


def reference_outputs(module, images: np.ndarray, *, softmax: bool = True, batch: int = 64) -> np.ndarray:
    """Torch outputs (probabilities or logits) of ``module`` for uint8 NCHW ``images``."""
    module = module.cpu().eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = module.preprocess(torch.from_numpy(np.ascontiguousarray(images[start:start + batch])))
            y = module(x).float()
            outputs.append((torch.softmax(y, dim=1) if softmax else y).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, max(module.num_classes, 2)), np.float32)


def export_onnx(module, out: Path, *, opset: int = 17, batch_size: Optional[int] = None,
                fold_rescaling: bool = False, softmax: bool = True) -> Path:
    """Write ``module`` (a trained ClassifierModule) as a float ONNX file; returns ``out``."""
    out = Path(out)
    if batch_size not in (None, 1):
        raise UserError(f"{out}: batch_size must be None (dynamic) or 1 (got {batch_size})")
    max_opset = _max_opset()
    if not MIN_OPSET <= int(opset) <= max_opset:
        raise UserError(f"quantization.target_opset: {opset} is not supported by the ONNX export; "
                        f"use an opset from {MIN_OPSET} to {max_opset} (17 is the reference's default)")
    height, width, channels = (int(v) for v in module.hparams.input_shape)
    network = exported_network(module, softmax=softmax, fold_rescaling=fold_rescaling)
    example = torch.zeros(1, channels, height, width)
    name = output_name(softmax)
    dynamic_axes = None if batch_size == 1 else {INPUT_NAME: {0: "batch"}, name: {0: "batch"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # recorded, not shown: the tracer's warnings tell of frozen control flow
            torch.onnx.export(_traceable(network, example), (example,), str(partial), input_names=[INPUT_NAME],
                              output_names=[name], opset_version=int(opset), dynamic_axes=dynamic_axes,
                              do_constant_folding=True, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types; the first line says what failed
        partial.unlink(missing_ok=True)
        reason = one_line(exc)
        hint = (" (an operator without an ONNX equivalent at this opset: try another quantization.target_opset)"
                if "opset" in reason.lower() or "operator" in reason.lower() else "")
        raise UserError(f"{out}: unable to export {module.model_name} to ONNX opset {opset}: {reason}{hint}") from None
    frozen = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
              and "might cause the trace to be incorrect" in str(w.message)]
    if frozen:
        try:
            _check_frozen_control_flow(network, partial, _probe_inputs(module, example, fold_rescaling),
                                       str(frozen[0].message))
        except UserError as exc:
            partial.unlink(missing_ok=True)
            raise UserError(f"{out}: unable to export {module.model_name} to ONNX: {exc}") from None
    _write_metadata(partial, module, fold_rescaling=fold_rescaling, softmax=softmax)
    os.replace(partial, out)
    return out


def _traceable(network: nn.Module, example: torch.Tensor) -> nn.Module:
    """``network``, traced first when it calls TorchScript modules (a TorchScript model file): torch's
    ONNX exporter takes a ScriptModule, or a plain module, but cannot trace into a ScriptModule
    that a plain module calls; ``torch.jit.trace`` can, and its result exports."""
    if not any(isinstance(m, torch.jit.ScriptModule) for m in network.modules()):
        return network
    with torch.no_grad():
        return torch.jit.trace(network, (example,), check_trace=False)


def _probe_inputs(module, example: torch.Tensor, fold_rescaling: bool) -> list[torch.Tensor]:
    """Inputs spread over the model's input range, one image each: ``example``, black, white,
    uniform noise, dark noise and bright noise (raw pixels, or rescaled as the model takes them)."""
    generator = torch.Generator().manual_seed(0)
    shape = tuple(example.shape)
    pixels = [torch.zeros(shape), torch.full(shape, 255.0), torch.rand(shape, generator=generator) * 255,
              torch.rand(shape, generator=generator) * 96, 160 + torch.rand(shape, generator=generator) * 95]
    if not fold_rescaling:
        scale, offset = module_rescaling(module)
        pixels = [x * scale + offset for x in pixels]
    return [example, *pixels]


def _check_frozen_control_flow(network: nn.Module, path: Path, probes: Sequence[torch.Tensor], warning: str) -> None:
    """The exporter traces the network: Python control flow on a tensor's values (``if x.mean() > t``)
    is recorded for the example input's path only (torch's TracerWarning ``warning`` says so). The
    file must then still give the network's outputs on ``probes``, else a one-line UserError."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    with torch.no_grad():
        for x in probes:
            expected = network(x).float().numpy()
            got = session.run(None, {name: x.numpy().astype(np.float32)})[0]
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
                diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("nan")
                raise UserError(
                    f"the exporter traces the model, and tracing froze its data-dependent control flow (torch: "
                    f"{one_line(warning.split('. ')[0], 160)}): the file gives other outputs than the model on a "
                    f"test input (max |difference| {diff:.3g}); make that control flow independent of the input's "
                    "values, or export the model yourself (torch.export.save as .pt2, or torch.onnx.export) and use "
                    "that file")


def _max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as value
    except ImportError:  # pragma: no cover - older/newer torch
        try:
            from torch.onnx._constants import ONNX_MAX_OPSET as value
        except ImportError:
            value = 20
    return int(value)


def _write_metadata(path: Path, module, *, fold_rescaling: bool, softmax: bool) -> None:
    import onnx

    model = onnx.load(str(path))
    scale, offset = module_rescaling(module)
    values = {
        "class_names": json.dumps(list(module.class_names)),
        "rescaling": json.dumps([scale, offset]),
        "input": "pixels" if fold_rescaling else "rescaled",
        "output": output_name(softmax),
        "model_name": str(module.model_name),
        "input_shape": json.dumps([int(v) for v in module.hparams.input_shape]),
    }
    paths = module.model.layer_paths() if hasattr(module.model, "layer_paths") else {}
    if any(path != name for path, name in paths.items()):  # sanitised keys, nested models: the Keras names
        values["layer_names"] = json.dumps({f"{SCOPE}/{path}": name for path, name in paths.items()})
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    model.producer_name = "stmclf"
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict:
    """The stmclf metadata of an ONNX file ({} for a foreign file)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for entry in model.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            key = entry.key[len(METADATA_PREFIX):]
            out[key] = json.loads(entry.value) if key in ("class_names", "rescaling", "input_shape", "layer_names") \
                else entry.value
    return out


def onnx_session(path: Path, threads: Optional[int] = None):
    """An onnxruntime CPU session (one UserError line if the file is not a loadable ONNX model)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions, reported in one line
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not a model onnxruntime can load ({one_line(exc)})") from None


def run_onnx(session, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """Outputs of the session's first output for float NCHW ``inputs``, batch by batch (one image
    at a time for a static batch-1 model, or for one that declares a free batch size but only
    runs one image: a hard-coded reshape). UserError naming the file if onnxruntime cannot run it."""
    spec = session.get_inputs()[0]
    static = isinstance(spec.shape[0], int) and spec.shape[0] > 0
    step = int(spec.shape[0]) if static else 1 if getattr(session, "stmclf_one_image", False) else batch
    outputs, start = [], 0
    while start < len(inputs):
        chunk = np.ascontiguousarray(inputs[start:start + step], dtype=np.float32)
        try:
            outputs.append(_run_chunk(session, spec.name, chunk))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidArgument types
            if len(chunk) > 1 and _runs_one_image(session, spec.name, chunk):
                log.warning("%s declares a free batch size but runs only one image at a time: evaluated "
                            "image by image", _session_file(session))
                session.stmclf_one_image = step = 1  # remembered for the session's next calls
                continue
            raise UserError(f"{_session_file(session)}: onnxruntime cannot run this model on input "
                            f"{list(chunk.shape)} ({one_line(exc)})") from None
        start += len(chunk)
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


class _BadBatch(ValueError):
    pass


def _run_chunk(session, name: str, chunk: np.ndarray) -> np.ndarray:
    out = session.run(None, {name: chunk})[0]
    if out.ndim == 0 or out.shape[0] != len(chunk):
        raise _BadBatch(f"its output has shape {list(out.shape)} for {len(chunk)} image(s)")
    return out


def _runs_one_image(session, name: str, chunk: np.ndarray) -> bool:
    try:
        _run_chunk(session, name, chunk[:1])
    except Exception:  # noqa: BLE001
        return False
    return True


def _session_file(session) -> str:
    return str(getattr(session, "_model_path", None) or "the ONNX model")


def onnx_inputs(images: np.ndarray, rescaling: Sequence[float], contract: str) -> np.ndarray:
    """uint8 NCHW images → the float input an exported ONNX expects."""
    x = images.astype(np.float32)
    if contract == "pixels":
        return x
    return x * np.float32(rescaling[0]) + np.float32(rescaling[1])


def check_onnx(module, path: Path, images: np.ndarray, *, tolerance: float = 1e-3,
               expected: Optional[np.ndarray] = None) -> float:
    """Max |ONNX − torch| over ``images`` (uint8 NCHW); UserError above ``tolerance``. ``expected``:
    the torch outputs when already computed (same kind as the file's output)."""
    meta = read_metadata(path)
    softmax = meta.get("output", "probabilities") == "probabilities"
    if expected is None:
        expected = reference_outputs(module, images, softmax=softmax)
    session = onnx_session(path)
    got = run_onnx(session, onnx_inputs(images, module_rescaling(module), meta.get("input", "rescaled")))
    diff = float(np.max(np.abs(got - expected))) if len(images) else 0.0
    log.info("ONNX check: %s vs torch on %d images, max |difference| %.2e", Path(path).name, len(images), diff)
    if not np.isfinite(diff) or diff > tolerance:
        alone = np.concatenate([reference_outputs(module, images[i:i + 1], softmax=softmax) for i in range(len(images))])
        if float(np.max(np.abs(got - alone))) <= tolerance:  # torch gives each image alone what the file gives
            why = ("computes an image's output from the other images of its batch (torch gives an image another "
                   "output in a batch than alone, and the file matches torch image by image): the exported model "
                   "runs one image at a time, as on the board; make the model's computation per image")
        else:
            why = "does not export faithfully at this opset; try another quantization.target_opset"
        raise UserError(f"{path}: the exported ONNX model disagrees with the torch model (max |difference| "
                        f"{diff:.3g} > {tolerance:g} over {len(images)} images): {module.model_name} {why}")
    return diff


def input_shape_of(path: Path) -> list:
    """The first input's shape of an ONNX file (ints, or names/None for dynamic axes)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def require_static_batch1(path: Path) -> None:
    shape = input_shape_of(path)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape) or shape[0] != 1:
        raise UserError(f"{path}: input shape {shape} is not static with batch 1; TFLite conversion needs a "
                        f"static batch-1 ONNX (export it with batch_size=1)")
