"""Offline latency estimate of an int8 model on an STM32 board, calibrated on ST's published
inference times: no board, no Developer Cloud.

Model (cycles of one inference on the board's core; ms = cycles / clock)::

    cycles = Σ_type c_type · MACC_type

with the MACC of the offline estimate (:mod:`stmclf.benchmark.estimate`) summed per layer type:

- ``conv_macc``       convolutions with a k×k window, k > 1 (stems, ResNet/SqueezeNet 3×3 layers)
- ``pointwise_macc``  1×1 convolutions (grouped or not)
- ``depthwise_macc``  depthwise convolutions
- ``dense_macc``      fully connected / matmul layers (each weight read once, from flash)
- ``other_macc``      pooling, element-wise layers, activations, softmax (the estimate counts one
                      MACC per element read or written)
- ``convert_macc``    quantize / dequantize / cast layers (two MACC per element): the uint8 input
                      and float output conversions of ST's int8 models

Fitted cycles per MACC on Cortex-M7 (``COEFFICIENTS``): ~0.9 for 1×1 and k×k convolutions (SIMD
dual MACs, weights reused across the image), ~7.6 for depthwise (9 MACs per output, per-channel
requantization dominates), ~6.6 for dense (weights streamed from flash, no reuse), ~24 per
element-wise MACC and ~12 per conversion MACC (memory-bound loops). Terms tried and left out
because they did not lower the leave-one-out error: output elements, number of layers, weight
bytes, activation bytes, a separate stem convolution.

The coefficients are cycles per unit for one core family, fitted by non-negative least squares
on the relative error over every MCU inference time the model-zoo READMEs publish (reference
inventory §9: STM32H747I-DISCO @ 400 MHz and STM32F769I-DISCO @ 216 MHz, STM32Cube.AI 10, int8
per-channel TFLite) by ``benchmarks/calibrate_latency.py``, which rebuilds each published model
(stmclf's zoo architectures, random weights, stmclf's int8 export), computes the features above
with the offline estimator and prints ``CALIBRATION`` and ``COEFFICIENTS``. ST publishes MCU times
for Cortex-M7 boards only: the other cores (Cortex-M4, M33, M55), the STM32N6 NPU and the MPU boards
get no latency figure (one warning line), never an extrapolated one. Float models get none either
(the calibration models are int8: float kernels run several times slower).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

FEATURES = ("conv_macc", "pointwise_macc", "depthwise_macc", "dense_macc", "other_macc", "convert_macc")
_COMPUTE_KINDS = ("conv", "depthwise", "dense", "matmul", "conv_transpose")
_CONVERT_KINDS = ("quantize", "dequantize")

# CALIBRATION, COEFFICIENTS and LOO_ERROR_PCT are pasted from the output of
# ``benchmarks/calibrate_latency.py`` (models rebuilt by that script, features computed by
# :func:`features`, fitted by :func:`fit`). One row per time published in reference inventory §9:
# model (stmclf zoo architecture _ resolution [x channels] _ classes), board, ST's ms, and the
# model's MACC per type in FEATURES order. Every rebuilt model has ST's published weights size
# (within 1 %): the same network. Not included: ST ResNet 8 Hybrid v1/v2, which have no int8 TFLite.
H747, F769 = "STM32H747I-DISCO", "STM32F769I-DISCO"
CALIBRATION: tuple[tuple[str, str, float, tuple[int, ...]], ...] = (
    ("mobilenet_v1_0.25_224_5", H747, 163.78, (2709512, 33719760, 4347736, 1285, 12549, 301066)),
    ("mobilenet_v1_0.5_224_5", H747, 485.79, (5419024, 134876064, 8695472, 2565, 25093, 301066)),
    ("mobilenet_v1_0.25_96_5", H747, 29.94, (497672, 6194640, 799576, 1285, 2309, 55306)),
    ("mobilenet_v1_0.25_96x1_5", H747, 28.34, (165896, 6194640, 799576, 1285, 2309, 18442)),
    ("mobilenet_v1_0.25_224_1000", H747, 166.75, (2709512, 33719760, 4347736, 257000, 13544, 303056)),
    ("mobilenet_v1_0.5_224_1000", H747, 504.37, (5419024, 134876064, 8695472, 513000, 26088, 303056)),
    ("mobilenet_v1_1.0_224_1000", H747, 1641.84, (10838048, 539498304, 17390944, 1025000, 51176, 303056)),
    ("mobilenet_v2_0.35_128_5", H747, 94.34, (1769488, 14367040, 2811184, 6405, 47365, 98314)),
    ("mobilenet_v2_0.35_224_5", H747, 290.75, (5419024, 43989952, 8603872, 6405, 145045, 301066)),
    ("mobilenet_v2_0.35_128_1000", H747, 116.13, (1769488, 14367040, 2811184, 1281000, 48360, 100304)),
    ("mobilenet_v2_0.35_224_1000", H747, 313.92, (5419024, 43989952, 8603872, 1281000, 146040, 303056)),
    ("mobilenet_v2_1.0_224_1000", H747, 1106.64, (10838048, 267949728, 20723552, 1281000, 280104, 303056)),
    ("mobilenet_v2_1.4_224_1000", H747, 2010.66, (16257072, 534588992, 29581728, 1793000, 391432, 303056)),
    ("fdmobilenet_0.25_224_5", H747, 53.52, (2709512, 8030549, 1045144, 0, 12549, 301066)),
    ("fdmobilenet_0.25_128_5", H747, 17.73, (884744, 2623829, 341848, 0, 4101, 98314)),
    ("st_fdmobilenet_v1_224_5", H747, 102.0, (5419024, 17062373, 1948464, 0, 12549, 301066)),
    ("st_fdmobilenet_v1_224_5", F769, 176.5, (5419024, 17062373, 1948464, 0, 12549, 301066)),
    ("st_fdmobilenet_v1_128_5", H747, 32.14, (1769488, 5573093, 636912, 0, 4101, 98314)),
    ("st_fdmobilenet_v1_128_5", F769, 59.29, (1769488, 5573093, 636912, 0, 4101, 98314)),
    ("resnet_v1_8_32_10", H747, 28.67, (12239088, 262240, 0, 650, 32778, 6164)),
    ("resnet_v1_32_32_100", H747, 177.7, (68863088, 262240, 0, 6500, 147556, 6344)),
    ("st_efficientnet_lc_v1_224_5", H747, 438.33, (5419024, 45171412, 10005184, 2885, 1592029, 301066)),
    ("st_efficientnet_lc_v1_128_5", H747, 144.96, (1769488, 14798740, 3268432, 2885, 524149, 98314)),
    ("squeezenet_v11_224_5", H747, 693.3, (208671744, 54387781, 0, 0, 2972434, 301066)),
    ("squeezenet_v11_128_5", H747, 216.67, (63740928, 16479301, 0, 0, 925882, 98314)),
)

# Cycles per MACC of each type, per core: non-negative least squares on the relative error over
# CALIBRATION. Fit error (``calibration_error_pct()``): 11.7 % at most, ResNet v1 32 (−11.7 %: ST's
# time is longer than its MACC mix predicts), then SqueezeNet 1.1 @224 (+8.7 %); 20 of 25 within 7 %.
COEFFICIENTS: dict[str, dict[str, float]] = {"Cortex-M7": {
    "conv_macc": 0.855732, "pointwise_macc": 0.902089, "depthwise_macc": 7.58437, "dense_macc": 6.64948,
    "other_macc": 23.6866, "convert_macc": 11.6614}}
# Leave-one-model-out error (each model's times predicted by a fit without that model), largest |%|:
# ResNet v1 32 −19.4 %, SqueezeNet 1.1 @224 +13.5 %, ST EfficientNet LC @128 −12.2 %, others ≤ 11 %.
LOO_ERROR_PCT: dict[str, float] = {"Cortex-M7": 19.4}


def calibration_rows() -> list[tuple[str, str, float, dict[str, int]]]:
    """CALIBRATION with each row's features as a dict."""
    return [(model, board, ms, dict(zip(FEATURES, values))) for model, board, ms, values in CALIBRATION]


class NoLatency(ValueError):
    """The calibration does not cover this board or model (one line saying why)."""


def features(estimate) -> dict[str, int]:
    """The latency model's features of an :class:`~stmclf.benchmark.estimate.Estimate`."""
    out = dict.fromkeys(FEATURES, 0)
    for layer in estimate.layers:
        if layer.kind in _CONVERT_KINDS:
            out["convert_macc"] += layer.macc
        elif layer.kind not in _COMPUTE_KINDS:
            out["other_macc"] += layer.macc
        elif layer.kind in ("dense", "matmul"):
            out["dense_macc"] += layer.macc
        elif layer.depthwise:
            out["depthwise_macc"] += layer.macc
        elif tuple(layer.kernel) == (1, 1):
            out["pointwise_macc"] += layer.macc
        else:
            out["conv_macc"] += layer.macc
    return out


def predict_cycles(feature_values: dict[str, float], coefficients: dict[str, float]) -> float:
    return float(sum(coefficients.get(name, 0.0) * feature_values.get(name, 0) for name in FEATURES))


def board_clock_mhz(board: str) -> int:
    from stmclf.benchmark.boards import get_board

    return get_board(board).clock_mhz


def calibration_errors(core: str = "Cortex-M7",
                       rows: Optional[Sequence] = None) -> list[tuple[str, str, float, float, float]]:
    """(model, board, ST ms, our ms, error %) for every calibration row of ``core``."""
    coefficients = COEFFICIENTS[core]
    out = []
    for model, board, published, values in (calibration_rows() if rows is None else rows):
        ours = predict_cycles(values, coefficients) / (board_clock_mhz(board) * 1e3)
        out.append((model, board, published, ours, 100.0 * (ours / published - 1.0)))
    return out


def calibration_error_pct(core: str = "Cortex-M7") -> float:
    """The largest |error| (%) of the model on ST's published times it was fitted on."""
    return max(abs(row[-1]) for row in calibration_errors(core))


def fit(rows: Sequence, names: Sequence[str] = FEATURES) -> dict[str, float]:
    """Coefficients (cycles per unit, ≥ 0) minimising Σ (predicted / published − 1)² over
    ``rows`` (model, board, published ms, features): scipy's non-negative least squares."""
    import numpy as np
    from scipy.optimize import nnls

    matrix, target = [], []
    for _model, board, published, values in rows:
        cycles = published * board_clock_mhz(board) * 1e3
        matrix.append([values.get(name, 0) / cycles for name in names])
        target.append(1.0)
    solution, _ = nnls(np.asarray(matrix, dtype=float), np.asarray(target))
    return {name: float(value) for name, value in zip(names, solution)}


def leave_one_out(rows: Sequence, names: Sequence[str] = FEATURES) -> list[tuple[str, str, float, float, float]]:
    """(model, board, ST ms, ms predicted by a fit without that model's rows, error %)."""
    out = []
    for model in dict.fromkeys(row[0] for row in rows):
        coefficients = fit([row for row in rows if row[0] != model], names)
        for name, board, published, values in rows:
            if name == model:
                ours = predict_cycles(values, coefficients) / (board_clock_mhz(board) * 1e3)
                out.append((name, board, published, ours, 100.0 * (ours / published - 1.0)))
    return out


@dataclass
class Latency:
    """The offline latency of one model on one board."""

    board: str
    core: str
    clock_mhz: int
    cycles: float
    calibration_error_pct: float
    loo_error_pct: Optional[float]
    published_board: bool = True  # False: no published time on this board, the core's cycles at its clock

    @property
    def ms(self) -> float:
        return self.cycles / (self.clock_mhz * 1e3)

    @property
    def inferences_per_s(self) -> float:
        return 1000.0 / self.ms if self.ms > 0 else math.inf

    def summary(self) -> str:
        loo = f", leave-one-out ±{self.loo_error_pct:.0f} %" if self.loo_error_pct is not None else ""
        scaled = ("" if self.published_board else
                  f"; ST publishes no time on {self.board}: {self.core} cycles at its clock")
        return (f"latency ≈ {self.ms:.1f} ms ({self.inferences_per_s:.1f} inf/s) on {self.board} @ {self.clock_mhz} MHz "
                f"(offline estimate; calibration error ±{self.calibration_error_pct:.0f} % on ST's published "
                f"times{loo}{scaled})")

    def to_dict(self) -> dict[str, Any]:
        return {"source": "estimate", "board": self.board, "core": self.core, "clock_mhz": self.clock_mhz,
                "cycles": round(self.cycles), "ms": round(self.ms, 3), "inferences_per_s": round(self.inferences_per_s, 3),
                "calibration_error_pct": round(self.calibration_error_pct, 1),
                "loo_error_pct": None if self.loo_error_pct is None else round(self.loo_error_pct, 1),
                "calibrated_on": sorted({row[1] for row in CALIBRATION}), "summary": self.summary()}


def no_latency_reason(board: str, *, quantized: bool = True) -> Optional[str]:
    """Why ``board`` (or a float model) gets no latency figure; None when it gets one."""
    from stmclf.benchmark.boards import get_board

    spec = get_board(board)
    if spec.mpu:
        return f"no latency estimate for {spec.name}: an MPU board (Linux); ST's MPU times are not modelled"
    if spec.npu:
        return (f"no latency estimate for {spec.name}: its models run on the {spec.npu} NPU, which the "
                f"Cortex-M cycle model does not describe")
    if spec.cpu not in COEFFICIENTS:
        return (f"no latency estimate for {spec.name} ({spec.cpu}): ST publishes no {spec.cpu} inference time to "
                f"calibrate on (calibrated cores: {', '.join(sorted(COEFFICIENTS)) or 'none'})")
    if not quantized:
        return ("no latency estimate for a float model: the latency model is calibrated on ST's int8 models "
                "(float kernels run several times slower)")
    return None


def estimate_latency(estimate, board: str) -> Latency:
    """The latency of ``estimate``'s model on ``board``; NoLatency(reason) for a board or model
    the calibration does not cover (:func:`no_latency_reason`)."""
    from stmclf.benchmark.boards import get_board

    reason = no_latency_reason(board, quantized=estimate.quantized)
    if reason:
        raise NoLatency(reason)
    spec = get_board(board)
    cycles = predict_cycles(features(estimate), COEFFICIENTS[spec.cpu])
    return Latency(spec.name, spec.cpu, spec.clock_mhz, cycles, calibration_error_pct(spec.cpu),
                   LOO_ERROR_PCT.get(spec.cpu), spec.name in {row[1] for row in CALIBRATION})


def format_table(errors: Sequence[tuple[str, str, float, float, float]], title: str) -> str:
    lines = [title, f"{'model':34} {'board':18} {'ST ms':>9} {'ours':>9} {'error':>7}"]
    for model, board, published, ours, error in errors:
        lines.append(f"{model:34} {board:18} {published:9.2f} {ours:9.2f} {error:+6.1f}%")
    return "\n".join(lines)
