"""Int8 ONNX in QDQ format with onnxruntime's static quantizer (the reference's ``onnx_quantizer``).

``quant_pre_process`` (shape inference and graph optimisation) then ``quantize_static`` with:
QDQ format, MinMax calibration, int8 weights (symmetric) and int8 activations (asymmetric),
per-channel weights unless ``granularity: per_tensor``, and ``CalibMovingAverage`` when
``quantization.extra_options: calib_moving_average``. Calibration samples are fed one at a time
(the reference's reader does the same, and the moving average depends on it). Input and output
stay float: the file takes the same input as the float ONNX model.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from stmclf.errors import UserError, one_line
from stmclf.export.onnx_export import INPUT_NAME

log = logging.getLogger("stmclf.export")


def qdq_file_name(float_onnx: Path, per_channel: bool) -> str:
    """The reference's name: ``<name>_quant_qdq_pc.onnx`` (per-channel) or ``..._pt.onnx``."""
    return f"{Path(float_onnx).stem}_quant_qdq_{'pc' if per_channel else 'pt'}.onnx"


def _reader(samples: Iterator[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = samples

        def get_next(self) -> Optional[dict]:
            sample = next(self.samples, None)
            return None if sample is None else {input_name: sample}

    return Reader()


def quantize_qdq(float_onnx: Path, out: Path, calibration: np.ndarray, *, per_channel: bool = True,
                 calib_moving_average: bool = False) -> Path:
    """Write the int8 QDQ model of ``float_onnx``; ``calibration`` is float32 NCHW model input
    (rescaled images, or pixels for a folded-rescaling model), fed one image at a time."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    float_onnx, out = Path(float_onnx), Path(out)
    if len(calibration) == 0:
        raise UserError(f"{float_onnx}: no calibration image for the int8 QDQ model; set "
                        f"dataset.quantization_path or dataset.training_path")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stmclf-qdq-") as tmp:
        prepared = Path(tmp) / f"{float_onnx.stem}_infer.onnx"
        try:
            quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{float_onnx}: onnxruntime's quant_pre_process failed ({one_line(exc)}); "
                            f"is it a float ONNX model?") from None
        samples = (np.ascontiguousarray(calibration[i:i + 1], dtype=np.float32) for i in range(len(calibration)))
        partial = out.with_name(f".{out.name}.partial")
        try:
            quantize_static(str(prepared), str(partial), _reader(samples, _input_name(prepared)),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"CalibMovingAverage": bool(calib_moving_average),
                                           "ActivationSymmetric": False, "WeightSymmetric": True},
                            calibration_providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            partial.unlink(missing_ok=True)
            raise UserError(f"{float_onnx}: int8 QDQ quantization failed ({one_line(exc)})") from None
    _copy_metadata(float_onnx, partial)
    os.replace(partial, out)
    return out


def _input_name(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    return names[0] if names else INPUT_NAME


def _copy_metadata(source: Path, target: Path) -> None:
    import onnx

    src = onnx.load(str(source), load_external_data=False)
    dst = onnx.load(str(target))
    keys = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in keys:
            entry = dst.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
    entry = dst.metadata_props.add()
    entry.key, entry.value = "stmclf.quantized", "int8-qdq"
    onnx.save(dst, str(target))


def is_quantized_onnx(path: Path) -> bool:
    """True for an ONNX file holding QuantizeLinear/DequantizeLinear nodes or 8-bit initializers."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul")
           for n in model.graph.node):
        return True
    return any(i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for i in model.graph.initializer)
