"""What a model file is, and what each stage can do with it: the one model-source resolver.

Every place that takes a model file — ``general.model_path``, ``--ckpt``/``--model``,
``training.resume_training_from``, ``training.trained_model_path`` — goes through
:func:`resolve_model_source`, which tells the kind of file from its content (never from its
name alone, never by unpickling code):

| kind | what | train | evaluate / predict | quantize / export | benchmark |
|---|---|---|---|---|---|
| ``stmclf`` | stmclf checkpoint (``.ckpt``) or model file (``best_model.pt``) | yes | yes | yes | float |
| ``keras_h5`` | Keras ``.h5`` (tf_keras / Keras 2 ``model.save``) | yes | yes | yes | float |
| ``onnx_float`` | float ONNX | yes | yes | yes | yes |
| ``onnx_qdq`` | int8 QDQ ONNX | — | yes | — | yes |
| ``tflite_float`` / ``tflite_int8`` | TFLite | — | yes | — | yes |
| ``torchscript``, ``torch_export``, ``pickled_module`` | torch files | yes | yes | yes | float |

The deployment header (``stmclf deploy-header``) takes ``tflite_int8`` only (stage ``deploy``).
"float" in the benchmark column: the file is exported to a float ONNX first, and that is measured.

A source a stage cannot use is refused by :meth:`ModelSource.require` with one line naming the
file, its kind and what the stage accepts, under the option or key that gave the file
(``general.model_path``, ``--ckpt``, ``--model``): a :class:`ModelSource` is a path
(``os.fspath``) that carries that key to every stage that reads it again.

A :class:`ModelSource` also keeps the torch model its file was loaded into
(:func:`stmclf.training.model_file.load_source_module`): a mode or command checks the file before
its run folder is made, then hands the same source to each stage, so the file is read (imported)
once per command, not once for the check and again for every stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stmclf.errors import ConfigError

KIND_TEXT = {
    "stmclf": "a stmclf model (checkpoint or best_model.pt)",
    "keras_h5": "a Keras .h5 model",
    "onnx_float": "a float ONNX model",
    "onnx_qdq": "an int8 QDQ ONNX model",
    "tflite_float": "a float TFLite model",
    "tflite_int8": "an int8 TFLite model",
    "torchscript": "a TorchScript model",
    "torch_export": "a torch.export program",
    "pickled_module": "a pickled torch module",
    "state_dict": "a state dict (weights without a model)",
    "unknown": "not a model file stmclf can read",
}
IMPORTED_KINDS = ("keras_h5", "onnx_float", "torchscript", "torch_export", "pickled_module")
"""Kinds read by :mod:`stmclf.models.importers` into a trainable torch graph."""
TORCH_KINDS = ("stmclf", *IMPORTED_KINDS)
"""Kinds that become a torch model (training, export, the float reference of a check)."""
ARTIFACT_KINDS = ("onnx_float", "onnx_qdq", "tflite_float", "tflite_int8")
"""Deployable files (what a benchmark measures)."""

ACCEPTS: dict[str, tuple[str, ...]] = {
    "train": TORCH_KINDS,
    "resume": ("stmclf",),
    "evaluate": (*TORCH_KINDS, "onnx_qdq", "tflite_float", "tflite_int8"),
    "predict": (*TORCH_KINDS, "onnx_qdq", "tflite_float", "tflite_int8"),
    "quantize": TORCH_KINDS,
    "benchmark": (*ARTIFACT_KINDS, *TORCH_KINDS),
    "deploy": ("tflite_int8",),
}
"""A model that is not an ONNX/TFLite file is benchmarked as its float ONNX export (ST's service
likewise measures a Keras .h5 as the float model it is)."""
HINTS = {
         "quantize": " (an exported model cannot be quantized again: give the float model it came from)",
         "resume": " (a last_augmented_model.ckpt written by stmclf fit)",
         "deploy": (" (full-integer: the header records its input and output quantization; quantize the model "
                    "first, e.g. stmclf export --int8)")}


def _accepts_text(stage: str) -> str:
    kinds = ACCEPTS[stage]
    return ", ".join(KIND_TEXT[k] for k in kinds if k not in ("torch_export", "pickled_module")) + \
        (", a torch file" if "torchscript" in kinds else "")


@dataclass(frozen=True)
class ModelSource:
    """A model file and its kind (see the module table)."""

    path: Path
    kind: str
    key: str = "general.model_path"
    loaded: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """The modules :func:`~stmclf.training.model_file.load_source_module` built from this source, by
    (config, class names) they were built for: the file is read once."""

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def text(self) -> str:
        return KIND_TEXT.get(self.kind, self.kind)

    @property
    def is_torch(self) -> bool:
        return self.kind in TORCH_KINDS

    @property
    def is_imported(self) -> bool:
        return self.kind in IMPORTED_KINDS

    @property
    def is_artifact(self) -> bool:
        return self.kind in ARTIFACT_KINDS

    @property
    def is_int8(self) -> bool:
        return self.kind in ("onnx_qdq", "tflite_int8")

    def can(self, stage: str) -> bool:
        return self.kind in ACCEPTS[stage]

    def require(self, stage: str, mode: str) -> "ModelSource":
        """``self`` if ``stage`` can use this file; else one line: file, kind, what ``mode`` accepts."""
        if not self.can(stage):
            from stmclf.models.importers.base import resave_hint

            raise ConfigError(self.key, f"{self.path} is {self.text}; {mode} accepts {_accepts_text(stage)}"
                                        f"{HINTS.get(stage, '')}{resave_hint(self.path)}")
        return self


def resolve_model_source(path: str | Path | ModelSource, key: str = "general.model_path") -> ModelSource:
    """The :class:`ModelSource` of ``path`` (a ModelSource stays itself, with its key); a one-line
    error under ``key`` when the file is missing or unreadable."""
    from stmclf.models.importers.base import detect_kind, require_model_file

    if isinstance(path, ModelSource):
        return path
    file = require_model_file(path, key)
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
        if head[4:8] == b"TFL3":
            return ModelSource(file, _tflite_kind(file), key)
        kind = detect_kind(file)
    except OSError as exc:
        raise ConfigError(key, f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if kind == "stmclf_checkpoint":
        kind = "stmclf"
    elif kind == "onnx":
        kind = "onnx_qdq" if _onnx_is_quantized(file) else "onnx_float"
    return ModelSource(file, kind, key)


QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def _onnx_is_quantized(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in QUANT_OPS for node in model.graph.node)


def _tflite_kind(path: Path) -> str:
    """``tflite_int8`` when the model computes in integers (its first convolution's or matmul's
    weights are int8), else ``tflite_float``; read with LiteRT's interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the TFLite extra is not installed: the kind still matters for messages
        return "tflite_int8" if b"quantized" in path.name.encode() else "tflite_float"
    try:
        interpreter = Interpreter(model_path=str(path))
    except Exception:  # noqa: BLE001 - not loadable: let the stage that reads it say so
        return "tflite_float"
    import numpy as np

    weights = [d for d in interpreter.get_tensor_details() if d["dtype"] in (np.int8, np.uint8)
               and len(d.get("shape", ())) >= 2]
    return "tflite_int8" if weights else "tflite_float"
