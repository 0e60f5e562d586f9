"""TensorFlow Lite Micro (TFLM): run an int8 ``.tflite`` the way a microcontroller would.

Nothing here reaches a board, so footprints are estimates; TFLM's interpreter and its int8
reference kernels (the runtime STM32Cube.AI can also target) are the closest thing on a PC. Its
recording allocator reports the tensor arena the model really needs. Package: ``tflite-micro``
(``pip install 'stmclf[tflite]'``); without it every function here raises :class:`TflmMissing`.

API (stable; :mod:`stmclf.benchmark` imports :func:`measure_arena`):

- :class:`TflmError` (a :class:`~stmclf.errors.UserError`): one line naming the op or the
  tensor, e.g. ``TFLM: op TILE is not supported by TensorFlow Lite Micro (model.tflite)``;
  :class:`TflmMissing` (a TflmError) when ``tflite_micro`` is not installed.
- :class:`TflmArena` — ``head_bytes``, ``tail_bytes``, ``total_bytes`` (the arena size the model
  needs: head + tail), ``persistent_bytes`` (= tail) and ``nonpersistent_bytes`` (= head): TFLM's
  arena holds the planned (non-persistent) tensors at its head and what lives as long as the
  interpreter (tensor structs, quantization data, kernel buffers) at its tail.
- :func:`measure_arena` ``(tflite_path) -> TflmArena``.
- :func:`run_tflm` ``(tflite_path, images_nhwc, *, max_images, batch, arena_limit, timeout) -> np.ndarray``:
  dequantized outputs (N, outputs) of the first output tensor. ``images_nhwc`` in the input
  tensor's dtype go in unchanged (uint8 raw pixels for a uint8-input model); float32 images for an
  integer input are quantized with the input's scale and zero point.
- :func:`run_tflm_with_arena`: both in one run (:class:`TflmRun`), the images split over up to
  one child per CPU (``workers``).
- :func:`tflm_available`, :data:`INSTALL_HINT`.

Each call runs TFLM in a child process (``python -m stmclf.export.tflm``): TFLM reports what went
wrong (a missing op kernel, an arena too small) only as text on the C ``stderr``, and a kernel
that crashes must not take stmclf with it (a garbled file can SIGSEGV it; an int8 SOFTMAX whose
input scale is below 2⁻²⁶ makes it abort — checked before TFLM sees the model, so that case gets
its own message). Every failure is one :class:`TflmError` line; the child has ``timeout`` seconds
(default 120 + 5 per image). Images go to the child as ``.npy`` files (never pickled) in batches
of ``batch`` images; the child starts in ~0.5 s. TFLM gets an arena of ``arena_limit`` bytes
(64 MiB by default; a model needing more is a TflmError) and reports what the model used of it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from stmclf.cpus import available_cpus
from stmclf.errors import UserError, one_line

INSTALL_HINT = "pip install 'stmclf[tflite]'"
DEFAULT_ARENA_LIMIT = 64 * 1024 * 1024
"""Arena given to TFLM (bytes): the recording allocator reports what the model uses of it."""
DEFAULT_BATCH = 64
IMAGES_PER_WORKER = 16
"""Fewest images worth a child process of their own (each starts in ~0.3 s)."""
DEFAULT_TIMEOUT = 120.0
"""Seconds a TFLM child may run, plus :data:`SECONDS_PER_IMAGE` per image (reference kernels are slow)."""
SECONDS_PER_IMAGE = 5.0


class TflmError(UserError):
    """TFLM could not run a model: one line naming the op or tensor (``TFLM: ...``)."""


class TflmMissing(TflmError):
    """The ``tflite_micro`` package is not installed."""


@dataclass
class TflmArena:
    """The tensor arena TFLM's recording allocator measured (bytes)."""

    head_bytes: int
    tail_bytes: int
    total_bytes: int
    persistent_bytes: Optional[int] = None
    nonpersistent_bytes: Optional[int] = None

    def describe(self) -> str:
        return f"arena {self.total_bytes:,} B (head {self.head_bytes:,} + tail {self.tail_bytes:,})"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TflmRun:
    outputs: np.ndarray
    arena: TflmArena
    seconds: float
    """Wall time of the child process (start, load, all inferences)."""


def tflm_available() -> bool:
    """True when ``tflite_micro`` can be imported (checked without importing it here)."""
    import importlib.util

    try:
        return importlib.util.find_spec("tflite_micro") is not None
    except (ImportError, ValueError):
        return False


def measure_arena(tflite_path: Path, *, arena_limit: int = DEFAULT_ARENA_LIMIT,
                  timeout: Optional[float] = None) -> TflmArena:
    """The arena TFLM needs for ``tflite_path`` (one inference on a zero input); TflmError when TFLM
    cannot run the model."""
    return run_tflm_with_arena(tflite_path, None, arena_limit=arena_limit, timeout=timeout).arena


def run_tflm(tflite_path: Path, images_nhwc: np.ndarray, *, max_images: Optional[int] = None,
             batch: int = DEFAULT_BATCH, arena_limit: int = DEFAULT_ARENA_LIMIT,
             timeout: Optional[float] = None) -> np.ndarray:
    """Dequantized outputs (N, outputs) of TFLM on the first ``max_images`` of ``images_nhwc``."""
    return run_tflm_with_arena(tflite_path, images_nhwc, max_images=max_images, batch=batch,
                               arena_limit=arena_limit, timeout=timeout).outputs


def run_tflm_with_arena(tflite_path: Path, images_nhwc: Optional[np.ndarray], *, max_images: Optional[int] = None,
                        batch: int = DEFAULT_BATCH, arena_limit: int = DEFAULT_ARENA_LIMIT,
                        timeout: Optional[float] = None, workers: Optional[int] = None) -> TflmRun:
    """Outputs and arena of one TFLM run (``images_nhwc`` None: one zero input, no outputs kept).
    The images are split over ``workers`` child processes (default: one per available CPU, at
    most 4, at least :data:`IMAGES_PER_WORKER` images each), each with its own interpreter."""
    path = Path(tflite_path)
    if not path.is_file():
        raise TflmError(f"TFLM: {path}: no such file")
    if not tflm_available():
        raise TflmMissing(f"TFLM: the tflite_micro package is not installed ({INSTALL_HINT})")
    images = None if images_nhwc is None else np.asarray(images_nhwc)
    if images is not None and max_images is not None:
        images = images[:max(int(max_images), 0)]
    count = 0 if images is None else len(images)
    if workers is None:
        workers = min(available_cpus(), 4, max(count // IMAGES_PER_WORKER, 1))
    parts = np.array_split(np.arange(count), max(min(int(workers), count), 1)) if count else [np.arange(0)]
    batch = max(int(batch), 1)
    timeout = DEFAULT_TIMEOUT + SECONDS_PER_IMAGE * count if timeout is None else timeout
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryDirectory(prefix="stmclf-tflm-") as tmp:
        folders = []
        for k, part in enumerate(parts):
            folder = Path(tmp) / f"w{k}"
            folder.mkdir()
            folders.append(folder)
            for i, first in enumerate(range(0, len(part), batch)):
                np.save(folder / f"in_{i:06d}.npy", np.ascontiguousarray(images[part[first:first + batch]]),
                        allow_pickle=False)
        start = time.perf_counter()
        procs, texts = [], []
        try:
            for folder in folders:
                procs.append(subprocess.Popen([sys.executable, "-m", "stmclf.export.tflm", str(path.resolve()),
                                               str(folder), str(int(arena_limit))], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True, errors="replace", env=env))
            for proc in procs:
                stdout, stderr = proc.communicate(timeout=max(timeout - (time.perf_counter() - start), 0.1))
                texts.append(stderr + "\n" + stdout)
        except subprocess.TimeoutExpired:
            raise TflmError(f"TFLM: {path.name} did not finish {count or 1} inference(s) within {timeout:.0f} s") \
                from None
        except OSError as exc:  # no process could be started (resources, permissions)
            raise TflmError(f"TFLM: {path.name}: could not start the TFLM process ({one_line(exc)})") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        seconds = time.perf_counter() - start
        for proc, text in zip(procs, texts):
            if proc.returncode != 0:
                raise TflmError(_failure(path, proc.returncode, text, arena_limit))
        arena = parse_arena(texts[0])
        if arena is None:
            raise TflmError(f"TFLM: {path.name}: the interpreter reported no arena usage")
        outputs = [np.load(out, allow_pickle=False) for folder in folders for out in sorted(folder.glob("out_*.npy"))]
    result = np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
    return TflmRun(result.astype(np.float32, copy=False), arena, seconds)


# -- what TFLM printed -------------------------------------------------------------------------------

_ARENA_LINE = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")


def parse_arena(text: str) -> Optional[TflmArena]:
    """The arena from ``print_allocations`` output (the last report when there are several)."""
    values: dict[str, int] = {}
    for kind, number in _ARENA_LINE.findall(text):
        values[kind] = int(number)
    if not {"head", "tail"} <= values.keys():
        return None
    head, tail = values["head"], values["tail"]
    return TflmArena(head_bytes=head, tail_bytes=tail, total_bytes=values.get("total", head + tail),
                     persistent_bytes=tail, nonpersistent_bytes=head)


def _failure(path: Path, returncode: int, text: str, arena_limit: int) -> str:
    """One line for a failed child: the missing op, the arena, the failing node, or the crash."""
    name = path.name
    missing = re.search(r"Didn't find op for builtin opcode '(\w+)'", text)
    if missing:
        return f"TFLM: op {missing.group(1)} is not supported by TensorFlow Lite Micro ({name})"
    custom = re.search(r"Didn't find op for custom opcode '([^']+)'", text)
    if custom:
        return f"TFLM: custom op {custom.group(1)} is not registered in TensorFlow Lite Micro ({name})"
    if re.search(r"Failed to allocate|[Aa]rena size is too small", text):
        tensor = re.search(r"for tensor (\d+)", text)
        return (f"TFLM: the arena the model needs exceeds the {arena_limit:,} bytes given"
                + (f" (no room for tensor {tensor.group(1)})" if tensor else "") + f" ({name})")
    node = re.search(r"Node (\w+) \(number (\d+)\) failed to (prepare|invoke)", text)
    if node:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        index = next(i for i, ln in enumerate(lines) if ln.startswith("Node ") and node.group(1) in ln)
        why = lines[index - 1] if index else ""
        return (f"TFLM: op {node.group(1)} (node {node.group(2)}) failed to {node.group(3)}"
                + (f": {one_line(why, 160)}" if why else "") + f" ({name})")
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        return f"TFLM: the interpreter crashed ({sig}) running {name}"
    marker = re.search(r"^TFLM-WORKER-ERROR: (.*)$", text, re.MULTILINE)
    detail = marker.group(1) if marker else next((ln for ln in reversed(text.splitlines()) if ln.strip()),
                                                 f"exit code {returncode}")
    return f"TFLM: {name}: {one_line(detail, 300)}"


# -- the child process ----------------------------------------------------------------------------------

def _quantize(x: np.ndarray, details: dict) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if x.dtype == dtype:
        return x
    if dtype == np.float32:
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images of dtype {x.dtype} for a {dtype} input: give {dtype} or float32 images")
    params = details["quantization_parameters"]
    scale, zero_point = float(params["scales"][0]), int(params["zero_points"][0])
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, details: dict) -> np.ndarray:
    params = details["quantization_parameters"]
    if np.dtype(details["dtype"]) == np.float32 or not len(params["scales"]):
        return y.astype(np.float32)
    return ((y.astype(np.float32) - int(params["zero_points"][0])) * float(params["scales"][0])).astype(np.float32)


SOFTMAX_MIN_SCALE = 2.0 ** -26
"""TFLM's int8 softmax (``PreprocessSoftmaxScaling``, 5 integer bits) needs beta × input scale above
this; below it the interpreter aborts (``QuantizeMultiplierGreaterThanOne``)."""


def _softmax_too_fine(model) -> Optional[str]:
    """Why TFLM would abort on an int8 SOFTMAX of ``model`` (flatbuffer object API), or None."""
    from tflite_micro.python.tflite_micro import runtime

    schema = runtime.schema_fb
    for graph in model.subgraphs or []:
        for index, op in enumerate(graph.operators or []):
            code = runtime.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            if code != schema.BuiltinOperator.SOFTMAX or op.inputs is None or not len(op.inputs):
                continue
            tensor = graph.tensors[op.inputs[0]]
            quant = tensor.quantization
            if tensor.type not in (schema.TensorType.INT8, schema.TensorType.UINT8) or quant is None \
                    or quant.scale is None or not len(quant.scale):
                continue
            beta = float(getattr(op.builtinOptions, "beta", 1.0) or 1.0)
            scale = float(quant.scale[0])
            if beta * scale <= SOFTMAX_MIN_SCALE:
                name = tensor.name.decode("utf-8", "replace") if isinstance(tensor.name, bytes) else str(tensor.name)
                return (f"op SOFTMAX (node {index}, input {one_line(name, 60)!r}) has input scale {scale:.3g} < "
                        f"{SOFTMAX_MIN_SCALE:.3g}: TensorFlow Lite Micro's int8 softmax aborts on it (the logits "
                        f"span almost nothing: an untrained model?)")
    return None


def _worker(model_path: str, work_dir: str, arena_limit: int) -> int:
    from tflite_micro.python.tflite_micro import runtime

    try:
        reason = _softmax_too_fine(runtime.convert_bytearray_to_object(Path(model_path).read_bytes()))
    except Exception as exc:  # noqa: BLE001 - not a flatbuffer TFLM can read
        reason = one_line(exc)
    if reason:
        print(f"TFLM-WORKER-ERROR: {reason}", file=sys.stderr, flush=True)
        return 3
    try:
        interpreter = runtime.Interpreter.from_file(
            model_path, arena_size=arena_limit, intrepreter_config=runtime.InterpreterConfig.kAllocationRecording)
    except Exception as exc:  # noqa: BLE001 - TFLM's own reason is on stderr already
        print(f"TFLM-WORKER-ERROR: {one_line(exc)}", file=sys.stderr, flush=True)
        return 3
    inp, out = interpreter.get_input_details(0), interpreter.get_output_details(0)
    shape = tuple(int(v) for v in inp["shape"])
    files = sorted(Path(work_dir).glob("in_*.npy"))
    try:
        if not files:
            interpreter.set_input(np.zeros(shape, np.dtype(inp["dtype"])), 0)
            interpreter.invoke()
        for file in files:
            images = np.load(file, allow_pickle=False)
            outputs = []
            for image in images:
                interpreter.set_input(np.ascontiguousarray(_quantize(image.reshape(shape), inp)), 0)
                interpreter.invoke()
                outputs.append(_dequantize(np.asarray(interpreter.get_output(0)), out).reshape(-1))
            result = np.stack(outputs) if outputs else np.zeros((0, 0), np.float32)
            np.save(file.with_name(file.name.replace("in_", "out_")), result, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        print(f"TFLM-WORKER-ERROR: {one_line(exc)}", file=sys.stderr, flush=True)
        return 3
    sys.stdout.flush()
    sys.stderr.flush()
    interpreter.print_allocations()  # C-level stderr
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], sys.argv[2], int(sys.argv[3])))
