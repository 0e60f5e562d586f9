"""TFLite export: float32 and full-integer int8 models from a static batch-1 float ONNX.

Route: ONNX → onnx2tf (NCHW → NHWC graph, TensorFlow SavedModel) → TensorFlow's TFLite converter,
called here directly for both files, so that:

- the float model uses builtin TFLite ops only (an op without a builtin kernel is an error, never a
  silent "Flex" op that STM32 tools reject);
- the int8 model is full-integer (builtin int8 kernels only), per-channel weights unless
  per-tensor is asked for, calibrated once on our own images (onnx2tf's own int8 path runs four
  calibrated conversions and wants its calibration data as ``.npy`` files with mean/std);
- its input is ``uint8`` (default), ``int8`` or float, its output float (default), ``int8`` or
  ``uint8``.

Input contract: NHWC, rescaled (``scale·pixel + offset``), like the float ONNX. Because the
calibration images span the whole pixel range (``stmclf.export.images.pin_input_range``), the
int8 model's input quantization is scale = rescaling scale and zero point ≈ −offset/scale:
**raw pixels go in unchanged** (uint8: q = pixel; int8: q = pixel − 128), as in ST's published
models. With the rescaling (1/127.5, −1) the zero point cannot be 127.5, so raw pixels sit half a
quantization step (1/255) off the float model's input; the conversion checks that this does not
move predictions.

onnx2tf is kept offline: its sample-image download is replaced by local data; the graph is simplified
with onnxsim's Python API beforehand (onnx2tf would run the ``onnxsim`` command three times, ~10 s;
the interpreter's bin directory is on PATH anyway); its console output goes to a log file
(``<export_dir>/onnx2tf.log``) that error messages point to. The float model is compared with torch
before the int8 model is built; a disagreement stops the export with no TFLite file written.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from stmclf.errors import UserError, one_line

log = logging.getLogger("stmclf.export")

FLOAT_NAME = "{stem}_float32.tflite"
INT8_NAME = "quantized_model.tflite"  # the reference's name


def normalise_io_type(value: Optional[str]) -> str:
    """``int8`` and ``uint8`` are themselves; unset, ``float`` and ``float32`` mean float (other
    values are refused when the config is read: :func:`stmclf.config.rules.check_io_types`)."""
    text = str(value).strip().lower() if value is not None else "float"
    return text if text in ("uint8", "int8") else "float"


def _torch_first() -> None:
    """torch (and triton) must be loaded before TensorFlow's native libraries, or triton crashes."""
    import torch  # noqa: F401
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - CPU-only torch builds
        pass


def require_tflite_stack(log_file: Optional[Path] = None):
    """Import TensorFlow, onnx2tf and LiteRT (their start-up chatter goes to ``log_file``, or nowhere)."""
    _torch_first()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    missing = []
    modules = {}
    limit = sys.getrecursionlimit()
    if limit >= ONNX2TF_IMPORT_LIMIT:  # onnx2tf was imported before, outside this function: Python's default
        limit = 1000
    with captured_output(Path(log_file) if log_file else None):
        for name in ("tensorflow", "tf_keras", "onnx2tf", "ai_edge_litert", "onnxsim"):
            try:
                modules[name] = __import__(name)
            except ImportError:
                missing.append(name)
    sys.setrecursionlimit(limit)  # onnx2tf's import sets 2**31 - 1 (see onnx_to_saved_model)
    if missing:
        raise UserError(f"TFLite export needs {', '.join(missing)}: install the extra with "
                        f"pip install 'stmclf[tflite]' (or export with --format onnx)")
    return modules["tensorflow"]


def require_litert():
    """LiteRT's interpreter (enough to run .tflite files; TensorFlow is not needed)."""
    _torch_first()
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UserError("running TFLite models needs ai-edge-litert: pip install 'stmclf[tflite]'") from None
    return Interpreter


@contextlib.contextmanager
def captured_output(log_file: Optional[Path]):
    """Send this process's stdout/stderr (Python and C level) to ``log_file`` (None: discard) for
    the duration."""
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    with open(log_file if log_file is not None else os.devnull, "a", encoding="utf-8", errors="replace") as sink:
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            # File descriptors only: sys.stdout/sys.stderr stay the same objects, so a logging
            # handler a library creates meanwhile (TensorFlow does) keeps a stream that outlives this.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sink.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            # onnx2tf/TensorFlow call logging.basicConfig: keep the application's root logging as it was
            for handler in [h for h in root.handlers if h not in root_handlers]:
                root.removeHandler(handler)
            root.setLevel(root_level)


ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} ")  # TensorFlow's C++ log lines (cuInit noise and the like)


def _log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def _telling_line(text: str, default: str) -> str:
    """The most telling error line of converter output (ANSI colours and C++ log lines dropped)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not ABSL_PREFIX.match(line) and "trace log" not in line]
    for marker in ("not supported", "nsupported", "neither a custom op nor a flex op", "ERROR", "rror:"):
        for line in reversed(lines):
            if marker in line:
                return line[:300]
    return default


def _error_text(log_file: Path, offset: int = 0) -> str:
    """What was written to ``log_file`` after byte ``offset``."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _error_line(log_file: Path, default: str, offset: int = 0) -> str:
    """The most telling error line written to ``log_file`` after byte ``offset``."""
    return _telling_line(_error_text(log_file, offset), default)


def _sample_images(seed: int = 0) -> np.ndarray:
    """What onnx2tf would download (20 RGB 128×128 images in [0, 1], float32): used only for its own
    test inference, never for calibration here."""
    return np.random.default_rng(seed).random((20, 128, 128, 3), dtype=np.float32)


def _simplify(onnx_path: Path, out: Path, log_file: Path) -> bool:
    """onnx-simplifier, in this process (onnx2tf would run its command three times, ~10 s); False
    when it is unavailable or fails (onnx2tf then gets the file as exported)."""
    try:
        import onnx
        import onnxsim

        with captured_output(log_file):
            model, ok = onnxsim.simplify(onnx.load(str(onnx_path)))
        if not ok:
            return False
        onnx.save(model, str(out))
        return True
    except Exception as exc:  # noqa: BLE001 - simplification is an optimisation only
        log.info("onnxsim skipped (%s)", one_line(exc))
        return False


ONNX2TF_RECURSION_LIMIT = 20_000
"""The recursion limit while onnx2tf converts (Python 3.11 frames need little C stack)."""
ONNX2TF_IMPORT_LIMIT = 2**31 - 1
"""What importing onnx2tf sets ``sys.setrecursionlimit`` to, for the whole process."""


def onnx_to_saved_model(onnx_path: Path, work_dir: Path, log_file: Path, *, simplify: bool = True) -> Path:
    """Run onnx2tf on a copy of ``onnx_path``; returns the SavedModel directory."""
    from stmclf.export.onnx_export import require_static_batch1

    require_static_batch1(onnx_path)
    require_tflite_stack(log_file)
    import onnx2tf.onnx2tf as o2t
    from unittest import mock

    limit = sys.getrecursionlimit()

    # Deep graphs need some room, but a limit past what the C stack holds turns any deep recursion
    # later in the process (a cloud reply nested 100,000 deep) into a segfault, not a RecursionError.
    sys.setrecursionlimit(max(limit, ONNX2TF_RECURSION_LIMIT))

    source = work_dir / "model.onnx"  # onnx2tf rewrites its input file (op names)
    if not (simplify and _simplify(onnx_path, source, log_file)):
        shutil.copyfile(onnx_path, source)
    saved_model = work_dir / "saved_model"
    offset = _log_size(log_file)
    path = os.environ.get("PATH", "")
    bin_dir = str(Path(sys.executable).parent)
    try:
        os.environ["PATH"] = bin_dir + os.pathsep + path
        with captured_output(log_file), mock.patch.object(o2t, "download_test_image_data", _sample_images):
            o2t.convert(input_onnx_file_path=str(source), output_folder_path=str(saved_model),
                        output_signaturedefs=True, not_use_onnxsim=True, non_verbose=True, verbosity="error")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - onnx2tf exits on unsupported graphs
        raise UserError(f"{onnx_path}: onnx2tf could not convert the model "
                        f"({_error_line(log_file, type(exc).__name__, offset)}); full log: {log_file}") from None
    finally:
        os.environ["PATH"] = path
        sys.setrecursionlimit(limit)
    if not (saved_model / "saved_model.pb").is_file():
        raise UserError(f"{onnx_path}: onnx2tf wrote no SavedModel "
                        f"({_error_line(log_file, 'no error reported', offset)}); "
                        f"full log: {log_file}")
    return saved_model


def _convert(converter, what: str, source: Path, log_file: Path) -> bytes:
    offset = _log_size(log_file)
    try:
        with captured_output(log_file):
            return converter.convert()
    except Exception as exc:  # noqa: BLE001 - ConverterError and friends
        text = str(exc) + "\n" + _error_text(log_file, offset)
        ops = _unsupported_ops(text)
        if ops:
            raise UserError(f"{source}: TFLite {what} conversion failed: no builtin TFLite {what} kernel for "
                            f"{', '.join(ops)}; change that part of the model, or export ONNX only "
                            f"(--format onnx); full log: {log_file}") from None
        detail = _telling_line(text, one_line(exc))
        raise UserError(f"{source}: TFLite {what} conversion failed: {detail}; full log: {log_file}") from None


def _unsupported_ops(text: str) -> list[str]:
    """TensorFlow op names the TFLite converter could not map to builtin kernels."""
    found = re.findall(r"TF Select ops: ([^\n]+)", text)
    names = [n.strip() for line in found for n in line.split(",") if n.strip()]
    names += re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)
    names += re.findall(r"'tfl?\.(\w+)' op is not supported", text)
    return list(dict.fromkeys(names))


def saved_model_to_float_tflite(saved_model: Path, out: Path, log_file: Path, source: Path) -> Path:
    tf = require_tflite_stack()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    data = _convert(converter, "float32", source, log_file)
    return _write(out, data)


def saved_model_to_int8_tflite(saved_model: Path, out: Path, calibration_nhwc: np.ndarray, log_file: Path,
                               source: Path, *, per_channel: bool = True, input_type: str = "uint8",
                               output_type: str = "float") -> Path:
    """Full-integer int8 TFLite; ``calibration_nhwc`` is float32 model input, fed one image at a time."""
    tf = require_tflite_stack()
    if len(calibration_nhwc) == 0:
        raise UserError(f"{source}: no calibration image for the int8 TFLite model; set "
                        f"dataset.quantization_path or dataset.training_path")
    dtypes = {"uint8": tf.uint8, "int8": tf.int8, "float": tf.float32}
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_disable_per_channel = not per_channel
    converter.inference_input_type = dtypes[normalise_io_type(input_type)]
    converter.inference_output_type = dtypes[normalise_io_type(output_type)]

    def representative():
        for i in range(len(calibration_nhwc)):
            yield [np.ascontiguousarray(calibration_nhwc[i:i + 1], dtype=np.float32)]

    converter.representative_dataset = representative
    data = _convert(converter, "int8", source, log_file)
    return _write(out, data)


def _write(out: Path, data: bytes) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, out)
    return out


# -- running TFLite models --------------------------------------------------------------------------

@dataclass
class TensorInfo:
    dtype: np.dtype
    scale: float
    zero_point: int
    shape: tuple


class TfliteModel:
    """A TFLite classifier run with LiteRT's interpreter, one image at a time (NHWC)."""

    def __init__(self, path: Path, threads: Optional[int] = None) -> None:
        Interpreter = require_litert()
        self.path = Path(path)
        try:
            with captured_output(None):  # "Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads or 1)
                self.interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{path}: not a TFLite model LiteRT can load ({one_line(exc)})") from None
        inp = self.interpreter.get_input_details()[0]
        outp = self.interpreter.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], outp["index"]
        self.input = TensorInfo(np.dtype(inp["dtype"]), float(inp["quantization"][0]), int(inp["quantization"][1]),
                                tuple(int(v) for v in inp["shape"]))
        self.output = TensorInfo(np.dtype(outp["dtype"]), float(outp["quantization"][0]),
                                 int(outp["quantization"][1]), tuple(int(v) for v in outp["shape"]))

    @property
    def quantized(self) -> bool:
        """True when the model computes in int8 (whatever its I/O types)."""
        if self.input.dtype != np.float32:
            return True
        return any(np.dtype(t["dtype"]) == np.int8 for t in self.interpreter.get_tensor_details())

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float model input → the input tensor's type: q = clip(round(x/scale) + zero_point)."""
        if self.input.dtype == np.float32:
            return x.astype(np.float32)
        info = np.iinfo(self.input.dtype)
        q = np.round(x / self.input.scale) + self.input.zero_point
        return np.clip(q, info.min, info.max).astype(self.input.dtype)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if self.output.dtype == np.float32:
            return y.astype(np.float32)
        return (y.astype(np.float32) - self.output.zero_point) * self.output.scale

    def run_raw(self, batch: np.ndarray) -> np.ndarray:
        """Outputs (dequantized) for inputs already in the input tensor's dtype, NHWC."""
        outputs = []
        for i in range(len(batch)):
            self.interpreter.set_tensor(self._in_index, np.ascontiguousarray(batch[i:i + 1]))
            self.interpreter.invoke()
            outputs.append(self.dequantize_output(self.interpreter.get_tensor(self._out_index)).reshape(1, -1))
        return np.concatenate(outputs) if outputs else np.zeros((0, int(np.prod(self.output.shape[1:]))), np.float32)

    def predict(self, x_nhwc: np.ndarray) -> np.ndarray:
        """Outputs for float model input (rescaled NHWC), quantized as the reference does."""
        return self.run_raw(self.quantize_input(x_nhwc))

    def raw_pixel_input(self, pixels_nhwc: np.ndarray) -> np.ndarray:
        """Raw uint8 pixels as an int8/uint8 model takes them without any arithmetic (int8: −128)."""
        if self.input.dtype == np.uint8:
            return pixels_nhwc.astype(np.uint8)
        if self.input.dtype == np.int8:
            return (pixels_nhwc.astype(np.int16) - 128).astype(np.int8)
        raise ValueError("a float-input model takes rescaled floats, not raw pixels")

    def takes_raw_pixels(self, rescaling: Sequence[float]) -> bool:
        """True when the input quantization is the rescaling (scale = rescaling scale, zero point
        within half a step of −offset/scale), i.e. raw pixels are the quantized input."""
        if self.input.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
            return False
        scale, offset = float(rescaling[0]), float(rescaling[1])
        qmin = 0 if self.input.dtype == np.uint8 else -128
        ideal = qmin - offset / scale
        return abs(self.input.scale - scale) <= 1e-3 * abs(scale) and abs(self.input.zero_point - ideal) <= 0.5 + 1e-6


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


# -- the conversion ---------------------------------------------------------------------------------

@dataclass
class TfliteExport:
    float_path: Path
    int8_path: Optional[Path]
    float_max_diff: float
    float_agreement: float
    int8_agreement: Optional[float] = None
    int8_raw_pixels: Optional[bool] = None
    int8_input: Optional[TensorInfo] = None
    timings: Optional[dict] = None


def check_float_tflite(model: TfliteModel, images: np.ndarray, expected: np.ndarray, rescaling,
                       *, tolerance: float = 1e-3, min_agreement: float = 0.99,
                       path: Optional[Path] = None) -> tuple[float, float]:
    """(max |TFLite − torch|, top-1 agreement) on uint8 NCHW ``images``; UserError when they disagree.
    ``path``: the file name to report (default: the model's)."""
    from stmclf.export.images import rescale

    path = Path(path) if path is not None else model.path
    got = model.predict(nhwc(rescale(images, rescaling)))
    if got.shape != expected.shape:
        raise UserError(f"{path}: the float TFLite model outputs shape {got.shape[1:]}, torch "
                        f"{expected.shape[1:]}; the conversion is wrong")
    diff = float(np.max(np.abs(got - expected))) if len(images) else 0.0
    agreement = float(np.mean(got.argmax(1) == expected.argmax(1))) if len(images) else 1.0
    log.info("TFLite float check: %s vs torch on %d images, max |difference| %.2e, top-1 agreement %.2f %%",
             path.name, len(images), diff, 100 * agreement)
    if not np.isfinite(diff) or diff > tolerance or agreement < min_agreement:
        raise UserError(f"{path}: the float TFLite model disagrees with the torch model (max |difference| "
                        f"{diff:.3g}, top-1 agreement {100 * agreement:.1f} % over {len(images)} images); "
                        f"onnx2tf mis-converted this model: no TFLite file is shipped (export ONNX only with "
                        f"--format onnx)")
    return diff, agreement


def convert_tflite(onnx_path: Path, out_dir: Path, *, rescaling: Sequence[float], check_images: np.ndarray,
                   expected: np.ndarray, calibration: Optional[np.ndarray] = None, per_channel: bool = True,
                   input_type: str = "uint8", output_type: str = "float", simplify: bool = True,
                   float_name: Optional[str] = None, int8_name: str = INT8_NAME,
                   log_file: Optional[Path] = None) -> TfliteExport:
    """Float TFLite (checked against ``expected``, the torch outputs on ``check_images``), then the
    int8 TFLite when ``calibration`` (uint8 NCHW images) is given. Files go to ``out_dir``."""
    import time

    from stmclf.export.images import pin_input_range, rescale

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = Path(log_file) if log_file else out_dir / "onnx2tf.log"
    log_file.unlink(missing_ok=True)
    float_out = out_dir / (float_name or FLOAT_NAME.format(stem=Path(onnx_path).stem))
    int8_out = out_dir / int8_name
    for stale in (float_out, int8_out):  # never leave an earlier run's file beside a failed conversion
        stale.unlink(missing_ok=True)
    timings = {}
    start = time.perf_counter()
    require_tflite_stack(log_file)
    timings["import_tensorflow"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="stmclf-tflite-") as tmp:
        start = time.perf_counter()
        saved_model = onnx_to_saved_model(Path(onnx_path), Path(tmp), log_file, simplify=simplify)
        timings["onnx2tf"] = time.perf_counter() - start

        start = time.perf_counter()
        staged_float = saved_model_to_float_tflite(saved_model, Path(tmp) / "float.tflite", log_file, onnx_path)
        timings["tflite_float"] = time.perf_counter() - start
        start = time.perf_counter()
        diff, agreement = check_float_tflite(TfliteModel(staged_float), check_images, expected, rescaling,
                                             path=float_out)
        timings["tflite_float_check"] = time.perf_counter() - start
        shutil.copyfile(staged_float, float_out)
        result = TfliteExport(float_out, None, diff, agreement, timings=timings)

        if calibration is not None:
            start = time.perf_counter()
            calibration = pin_input_range(calibration)  # raw pixels in: see the module docstring
            saved_model_to_int8_tflite(saved_model, int8_out, nhwc(rescale(calibration, rescaling)), log_file,
                                       onnx_path, per_channel=per_channel, input_type=input_type,
                                       output_type=output_type)
            timings["tflite_int8"] = time.perf_counter() - start
            start = time.perf_counter()
            model = TfliteModel(int8_out)
            result.int8_path, result.int8_input = int8_out, model.input
            result.int8_raw_pixels = model.takes_raw_pixels(rescaling)
            if result.int8_raw_pixels:
                got = model.run_raw(model.raw_pixel_input(nhwc(check_images)))
                how = "raw pixels"
            else:
                got = model.predict(nhwc(rescale(check_images, rescaling)))
                how = "quantized rescaled input"
                if model.input.dtype != np.float32:
                    log.warning("TFLite int8 input quantization (scale %.6g, zero point %d) is not the rescaling "
                                "(%.6g, %.6g): feed round(x/scale) + zero point, not raw pixels",
                                model.input.scale, model.input.zero_point, rescaling[0], rescaling[1])
            result.int8_agreement = float(np.mean(got.argmax(1) == expected.argmax(1))) if len(got) else 1.0
            timings["tflite_int8_check"] = time.perf_counter() - start
            log.info("TFLite int8 check: %s (input %s scale %.6g zero point %d, output %s) fed %s: top-1 agreement "
                     "with torch %.2f %% on %d images", int8_out.name, model.input.dtype, model.input.scale,
                     model.input.zero_point, model.output.dtype, how, 100 * result.int8_agreement, len(got))
    return result
