"""``ai_model_config.h``: the C header the STM32 image-classification application is built with.

The application (ST's getting-started project for STM32H747I-DISCO, NUCLEO-H743ZI2 and the
STM32N6570-DK) reads the model's configuration from macros of this header: the number of classes
and their names (in output order: sorted class names), the input size, the pre-processing the
camera frames get (aspect-ratio handling, colour format), the quantized input/output types and,
for boards whose camera and display are chosen in the config (NUCLEO-H743ZI2, or any STM32H7
setup naming them), the camera/display interfaces. The macro names and values are the ones the
application expects (``NB_CLASSES``, ``CLASSES_TABLE``, ``INPUT_HEIGHT``, ``ASPECT_RATIO_MODE``,
``PP_COLOR_MODE``, ``QUANT_INPUT_TYPE``, ``CAMERA_INTERFACE``, ...); the input/output scale and
zero point are added (``INPUT_QUANT_SCALE``, ``INPUT_QUANT_ZERO_POINT``, ``OUTPUT_QUANT_*``) so
that firmware can quantize frames and read scores without querying the network at run time.

Everything comes from the config and the model: the config (a run's ``config.yaml`` and
``stmclf_extras.yaml``, or an ST deployment config: pre-processing, class names,
``quantization.export_dir``, ``deployment.hardware_setup``), the class names the run recorded
(``<export_dir>/export_summary.json`` or ``results.json``) when the config infers them from the
dataset folders, and the int8 TFLite model, whose input/output types, shapes and quantization
parameters are read with LiteRT's interpreter. The model is a run's export
(``<export_dir>/quantized_model.tflite``) or any full-integer ``.tflite`` (what ST's deployment
takes: ``general.model_path`` of its deployment config, or ``--model``); a float TFLite model, one
quantized for weights only (float activations) or one with int16 activations (16x8 quantization)
is refused: the header records the input and output quantization the application applies.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from stmclf.errors import ConfigError, UserError, one_line, shell_word
from stmclf.export.export import SUMMARY_NAME, refuse_outdated_export, run_export_dir

log = logging.getLogger("stmclf.benchmark")

HEADER_NAME = "ai_model_config.h"
INT8_TFLITE = "quantized_model.tflite"

ASPECT_RATIO_MODES = {"fit": "ASPECT_RATIO_FIT", "crop": "ASPECT_RATIO_CROP", "padding": "ASPECT_RATIO_PADDING",
                      "full_screen": "ASPECT_RATIO_FULLSCREEN"}
ASPECT_RATIO_VALUES = (("ASPECT_RATIO_FIT", 1), ("ASPECT_RATIO_CROP", 2), ("ASPECT_RATIO_PADDING", 3),
                       ("ASPECT_RATIO_FULLSCREEN", 4))
COLOR_MODES = {"rgb": "RGB_FORMAT", "bgr": "BGR_FORMAT", "grayscale": "GRAYSCALE_FORMAT"}
COLOR_VALUES = (("RGB_FORMAT", 1), ("BGR_FORMAT", 2), ("GRAYSCALE_FORMAT", 3))
IO_FORMATS = {"uint8": "UINT8_FORMAT", "int8": "INT8_FORMAT", "float32": "FLOAT32_FORMAT"}
IO_VALUES = (("UINT8_FORMAT", 1), ("INT8_FORMAT", 2), ("FLOAT32_FORMAT", 3))
CAMERA_INTERFACES = (("CAMERA_INTERFACE_DCMI", 1), ("CAMERA_INTERFACE_USB", 2), ("CAMERA_INTERFACE_SPI", 3))
DISPLAY_INTERFACES = (("DISPLAY_INTERFACE_USB", 1), ("DISPLAY_INTERFACE_SPI", 2))
# Boards whose application picks its camera and display from the config (defaults as the
# reference's generator writes them when the config leaves them out).
CONFIGURABLE_IO_BOARDS = {"NUCLEO-H743ZI2": ("CAMERA_INTERFACE_DCMI", "DISPLAY_INTERFACE_USB")}


@dataclass(frozen=True)
class DeployHeader:
    """The header's text and what it was made from (:func:`build_deploy_header`)."""

    text: str
    model: Path
    class_names: list[str]
    io: dict[str, dict[str, Any]]

    def write(self, out: Path) -> Path:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.text, encoding="ascii")
        log.info("Deployment header written: %s (%d classes, input %s %s, output %s)", out, len(self.class_names),
                 "x".join(str(d) for d in self.io["input"]["shape"][1:]), self.io["input"]["dtype"],
                 self.io["output"]["dtype"])
        return out


def build_deploy_header(run_dir: Optional[Path], *, cfg: dict, model: Optional[Path] = None,
                        key: str = "general.model_path") -> DeployHeader:
    """The ``ai_model_config.h`` of a full-integer TFLite model (``stmclf deploy-header``; write it
    with :meth:`DeployHeader.write`, by default to :func:`header_path`). ``cfg``: the resolved
    config as a dict; ``model``: the model, named by ``key`` in errors (default: the int8 export
    of the run in ``run_dir``). One-line UserError/ConfigError when the run, the config or the
    model lacks what the header needs; nothing is written."""
    if model is None:
        export_dir = run_export_dir(Path(run_dir), _get(cfg, "quantization", "export_dir"))
        model_path, summary = find_int8_tflite(export_dir, run_dir), export_dir / SUMMARY_NAME
        _refuse_outdated(export_dir, model_path, run_dir)
    else:
        from stmclf.models.source import resolve_model_source

        model_path = resolve_model_source(model, key).require("deploy", "the deployment header").path
        summary = model_path.parent / "export_summary.json"  # an export of stmclf's: its class names
    io = read_tflite_io(model_path, model_key=key)
    class_names = _class_names(cfg, run_dir, summary, model_path)
    return DeployHeader(render_header(cfg, class_names, io, model_path), model_path, class_names, io)


def header_path(run_dir: Path) -> Path:
    """Where a run's header goes by default: ``<run_dir>/generated/ai_model_config.h``."""
    return Path(run_dir) / "generated" / HEADER_NAME


# ---------------------------------------------------------------------------------------------
# Inputs


def _get(cfg: dict, *keys: str) -> Any:
    value: Any = cfg
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _refuse_outdated(export_dir: Path, model_path: Path, run_dir: Path) -> None:
    """A one-line error when the run's export was made from a model file that changed since."""
    try:
        summary = json.loads((export_dir / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return
    if isinstance(summary, dict):
        refuse_outdated_export(export_dir, summary, model_path, Path(run_dir), "deploy")


def find_int8_tflite(export_dir: Path, run_dir: Optional[Path] = None) -> Path:
    """``<export_dir>/quantized_model.tflite``, else the only other non-float ``.tflite`` there;
    a one-line error saying to export the run (``run_dir``) first when there is none."""
    preferred = export_dir / INT8_TFLITE
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in export_dir.glob("*.tflite") if not p.stem.endswith("float32"))
    if len(candidates) > 1:
        raise UserError(f"{export_dir}: several TFLite models ({', '.join(p.name for p in candidates)}) and no "
                        f"{INT8_TFLITE}; keep the one to deploy")
    if not candidates:
        raise UserError(f"{export_dir}: no int8 TFLite model ({INT8_TFLITE}); export the run first "
                        f"(stmclf export --run {shell_word(run_dir or export_dir.parent)} --int8, or operation_mode "
                        "quantization)")
    return candidates[0]


def read_tflite_io(path: Path, model_key: str = "general.model_path") -> dict[str, dict[str, Any]]:
    """{"input"|"output": {dtype, shape, scale, zero_point}} of a full-integer TFLite model (first
    input and output), read with LiteRT's interpreter; a model whose convolutions or dense layers
    compute in float is a one-line error under ``model_key``."""
    try:
        import torch  # noqa: F401 - the project's rule: torch before TensorFlow/LiteRT native libraries
    except ImportError:  # pragma: no cover
        pass
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UserError("reading the TFLite model needs ai-edge-litert: pip install 'stmclf[tflite]'") from None
    try:
        interpreter = Interpreter(model_path=str(path))
    except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError/RuntimeError on bad files
        raise UserError(f"{path}: not a TFLite model LiteRT can load "
                        f"({one_line(exc)})") from None
    _require_full_integer(interpreter, path, model_key)
    out = {}
    for key, details in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
        if not details:
            raise UserError(f"{path}: the model has no {key}")
        if len(details) > 1:
            log.warning("%s: %d %ss; the header describes the first one", path.name, len(details), key)
        d = details[0]
        scale, zero_point = d.get("quantization", (0.0, 0))
        params = d.get("quantization_parameters") or {}
        scales = np.asarray(params.get("scales", []))
        if scales.size > 1:
            raise UserError(f"{path}: the model {key} is quantized per channel; the application needs one scale")
        out[key] = {"dtype": np.dtype(d["dtype"]).name, "shape": tuple(int(v) for v in d["shape"]),
                    "scale": float(scale), "zero_point": int(zero_point)}
    return out


COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL")


def _require_full_integer(interpreter, path: Path, key: str) -> None:
    """Refuse a model whose convolutions / dense layers take float inputs (a float model, or one
    quantized for its weights only: dynamic range) or int16 ones (16x8 quantization: int16
    activations, int8 weights). The application runs full-integer int8 models."""
    try:
        ops = interpreter._get_ops_details()  # LiteRT's per-operator view (op name, tensor indices)
        dtypes = {d["index"]: np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}
    except Exception:  # noqa: BLE001 - a LiteRT without this view: the model is described as it is
        return
    compute = [op for op in ops if op.get("op_name") in COMPUTE_OPS and len(op.get("inputs", ())) > 0]
    activations = [(op["op_name"], dtypes.get(int(op["inputs"][0]), np.dtype(np.int8))) for op in compute]
    floating = [name for name, dtype in activations if dtype.kind == "f"]
    if floating:
        raise ConfigError(key, f"{path} is not a full-integer model: its {floating[0]} layers compute in float "
                               "(float activations: a float or weights-only quantized model); the deployment header "
                               "needs a full-integer int8 TFLite model (quantized with a representative dataset, as "
                               "stmclf export --int8 writes it)")
    wide = [(name, dtype) for name, dtype in activations if dtype.itemsize > 1]
    if wide:
        raise ConfigError(key, f"{path} has {wide[0][1].name} activations (its {wide[0][0]} layers compute on "
                               f"{wide[0][1].name}: a 16x8-quantized model); ST's application runs int8 models: the "
                               "deployment header needs a full-integer TFLite model with int8 activations (as stmclf "
                               "export --int8 writes it)")


def _class_names(cfg: dict, run_dir: Optional[Path], summary: Path, model_path: Path) -> list[str]:
    names = _get(cfg, "dataset", "class_names")
    source = "dataset.class_names"
    if not names and summary.is_file():
        recorded = _json(summary)
        recorded = recorded if isinstance(recorded, dict) else {}
        files = recorded.get("files") if isinstance(recorded.get("files"), dict) else {}
        if not files or model_path.name in {Path(str(v)).name for v in files.values()}:  # the export that wrote it
            names, source = recorded.get("class_names"), str(summary)
    if not names and run_dir is not None:
        results = Path(run_dir) / "results.json"
        if results.is_file():
            records = _json(results)
            if isinstance(records, list):
                names = next((r.get("class_names") for r in records if isinstance(r, dict) and r.get("class_names")),
                             None)
                source = str(results)
    if not names:
        raise ConfigError("dataset.class_names", "the deployment header needs the class names: set them in the "
                                                 "config, or export the run first (its export_summary.json "
                                                 "records them)")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{source}: class names must be a list of strings, got {names!r}")
    if source == "dataset.class_names":
        names = sorted(names)  # the reference sorts configured names: output index i ↔ sorted name i
    if len(set(names)) != len(names):
        raise UserError(f"{source}: duplicate class names in {names}")
    return list(names)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Rendering


def c_string(text: str) -> str:
    """A C string literal for ``text`` (UTF-8 bytes; quotes, backslashes, '?' and non-printable
    or non-ASCII bytes escaped, octal escapes so that no following character is swallowed)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in "\"\\?":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def c_float(value: float) -> str:
    """A C float literal (``f`` suffix, always with a decimal point or exponent)."""
    if not math.isfinite(value):
        raise UserError(f"quantization scale {value!r} is not a finite number")
    text = f"{value:.9g}"
    if not any(c in text for c in ".e"):
        text += ".0"
    return f"({text}f)"


def _check_interface(name: str, interfaces: Sequence[tuple[str, int]], key: str, kind: str) -> None:
    names = [n for n, _ in interfaces]
    if name not in names:
        raise ConfigError(key, f"{name!r} is not a {kind} interface; use one of {', '.join(names)}")


def _defines(pairs: Sequence[tuple[str, int]]) -> list[str]:
    width = max(len(name) for name, _ in pairs)
    return [f"#define {name:<{width}} ({value})" for name, value in pairs]


def _classes_table(names: Sequence[str], per_line: int = 4) -> list[str]:
    literals = [c_string(n) for n in names]
    lines = ["#define CLASSES_TABLE const char* classes_table[NB_CLASSES] = {\\"]
    for start in range(0, len(literals), per_line):
        chunk = ", ".join(literals[start:start + per_line])
        end = "}" if start + per_line >= len(literals) else ",\\"
        lines.append(f"    {chunk}{end}")
    return lines


def _io_lines(cfg: dict) -> list[str]:
    """Camera and display interface defines, for setups that choose them in the config."""
    setup = _get(cfg, "deployment", "hardware_setup") or {}
    if not isinstance(setup, dict):
        return []
    board, serie = setup.get("board"), str(setup.get("serie") or "")
    camera, display = setup.get("input"), setup.get("output")
    if board:
        from stmclf.benchmark.boards import check_board

        board = check_board(board, "deployment.hardware_setup.board")
    if board in CONFIGURABLE_IO_BOARDS:
        default_camera, default_display = CONFIGURABLE_IO_BOARDS[board]
        camera, display = camera or default_camera, display or default_display
    elif not (serie.upper().startswith("STM32H7") and (camera or display)):
        return []
    lines = []
    if display:
        _check_interface(display, DISPLAY_INTERFACES, "deployment.hardware_setup.output", "display")
        lines += ["", "/* Display interface */", *_defines(DISPLAY_INTERFACES), "",
                  f"#define DISPLAY_INTERFACE    {display}"]
    if camera:
        _check_interface(camera, CAMERA_INTERFACES, "deployment.hardware_setup.input", "camera")
        lines += ["", "/* Camera interface and sensor */", *_defines(CAMERA_INTERFACES), "",
                  f"#define CAMERA_INTERFACE    {camera}", "", "#define CAMERA_SENSOR_OV5640    (1)",
                  "#define CAMERA_SENSOR           CAMERA_SENSOR_OV5640"]
    return lines


def render_header(cfg: dict, class_names: Sequence[str], io: dict[str, dict[str, Any]],
                  model_path: Optional[Path] = None) -> str:
    """The text of ``ai_model_config.h``."""
    inp, outp = io["input"], io["output"]
    if len(inp["shape"]) != 4:
        raise UserError(f"{model_path}: the application takes an image input (1, height, width, channels); the "
                        f"model input is {inp['shape']}")
    _, height, width, channels = inp["shape"]
    outputs = int(np.prod(outp["shape"][1:])) if len(outp["shape"]) > 1 else int(outp["shape"][0])
    if outputs != len(class_names):
        raise UserError(f"{model_path}: the model outputs {outputs} scores but the run has {len(class_names)} "
                        f"classes ({', '.join(class_names)})")
    aspect = str(_get(cfg, "preprocessing", "resizing", "aspect_ratio") or "fit")
    if aspect not in ASPECT_RATIO_MODES:
        raise ConfigError("preprocessing.resizing.aspect_ratio", f"{aspect!r} has no application equivalent; use "
                                                                  f"one of {', '.join(ASPECT_RATIO_MODES)}")
    color = str(_get(cfg, "preprocessing", "color_mode") or ("grayscale" if channels == 1 else "rgb"))
    if color not in COLOR_MODES:
        raise ConfigError("preprocessing.color_mode", f"{color!r} is not supported by the application; use "
                                                       f"rgb or grayscale")
    if (color == "grayscale") != (channels == 1):
        raise UserError(f"{model_path}: preprocessing.color_mode is {color} but the model input has "
                        f"{channels} channel(s)")
    for key, info in (("input", inp), ("output", outp)):
        if info["dtype"] not in IO_FORMATS:
            raise UserError(f"{model_path}: the model {key} type {info['dtype']} is not one the application "
                            f"reads ({', '.join(IO_FORMATS)})")
    rescaling = _get(cfg, "preprocessing", "rescaling") or {}
    source = model_path.name if model_path is not None else "the int8 model"

    lines = [
        "/*",
        f" * {HEADER_NAME}: model configuration of the STM32 image-classification application.",
        f" * Generated by stmclf from {source}; do not edit (regenerate it from the run instead).",
        " */",
        "#ifndef AI_MODEL_CONFIG_H",
        "#define AI_MODEL_CONFIG_H",
        "",
        "/* Model input (height x width x channels) and number of classes */",
        f"#define NB_CLASSES        ({len(class_names)})",
        f"#define INPUT_HEIGHT      ({height})",
        f"#define INPUT_WIDTH       ({width})",
        f"#define INPUT_CHANNELS    ({channels})",
        "",
        "/* Class names, in the order of the model outputs */",
        *_classes_table(class_names),
        "",
        "/* Pre-processing: aspect-ratio handling of the camera frame */",
        *_defines(ASPECT_RATIO_VALUES),
        "",
        f"#define ASPECT_RATIO_MODE    {ASPECT_RATIO_MODES[aspect]}",
        "",
        "/* Pre-processing: pixel format fed to the model */",
        *_defines(COLOR_VALUES),
        "",
        f"#define PP_COLOR_MODE    {COLOR_MODES[color]}",
        "",
        "/* Model input/output data types */",
        *_defines(IO_VALUES),
        "",
        f"#define QUANT_INPUT_TYPE     {IO_FORMATS[inp['dtype']]}",
        f"#define QUANT_OUTPUT_TYPE    {IO_FORMATS[outp['dtype']]}",
        "",
        "/* Quantization of the model input and output: real = scale * (q - zero_point);",
        "   0 / 0 for a float tensor */",
        f"#define INPUT_QUANT_SCALE         {c_float(inp['scale'])}",
        f"#define INPUT_QUANT_ZERO_POINT    ({inp['zero_point']})",
        f"#define OUTPUT_QUANT_SCALE        {c_float(outp['scale'])}",
        f"#define OUTPUT_QUANT_ZERO_POINT   ({outp['zero_point']})",
    ]
    if isinstance(rescaling, dict) and rescaling.get("scale") is not None:  # ST's deployment configs give none
        lines += [f"/* (the training rescaling pixel * {rescaling.get('scale')} + {rescaling.get('offset', 0)} is "
                  f"folded into the input quantization) */"]
    lines += _io_lines(cfg)
    lines += ["", "#endif /* AI_MODEL_CONFIG_H */", ""]
    return "\n".join(lines)
