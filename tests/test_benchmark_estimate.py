"""Offline footprint estimate: the planner on hand-made graphs with known answers, MACC/weights
conventions, the board table and fit check, and the estimate of our own zoo models (exported to
int8 TFLite with uint8 input and to int8 QDQ ONNX) against ST's published footprints."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stmclf.benchmark import boards as B
from stmclf.benchmark import estimate as E
from stmclf.errors import ConfigError, UserError

# --------------------------------------------------------------------------------------------
# hand-made graphs


def _graph(tensors, ops, inputs, outputs):
    table = {t.name: t for t in tensors}
    return E.Graph(Path("hand.tflite"), "tflite", table,
                   [E.Op(i, kind, kind.upper(), f"op{i}", ins, outs, dict(attrs)) for i, (kind, ins, outs, attrs)
                    in enumerate(ops)], inputs, outputs, quantized=True)


def _t(name, *shape, dtype="int8", const=False):
    return E.Tensor(name, tuple(shape), dtype, const)


def _no_overlap(plan):
    """Buffers live at the same time never share bytes (except the deliberately anchored pair)."""
    for i, a in enumerate(plan.buffers):
        for b in plan.buffers[i + 1:]:
            if a.overlaps_in_time(b) and a.anchor is None and b.anchor is None:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)


def test_planner_known_answer_with_a_skip_connection():
    # in(100) → a(200) → b(50) → c(300); d(10) = f(a, c). Live sets per layer:
    # op0 {in, a} 300, op1 {a, b} 250, op2 {a, b, c} 550, op3 {a, c, d} 510  → peak 550
    g = _graph([_t("in", 1, 100), _t("a", 1, 200), _t("b", 1, 50), _t("c", 1, 300), _t("d", 1, 10)],
               [("other", ["in"], ["a"], {}), ("other", ["a"], ["b"], {}), ("other", ["b"], ["c"], {}),
                ("eltwise", ["a", "c"], ["d"], {})], ["in"], ["d"])
    plan = E.plan_activations(g, E.PLAIN_CONVENTIONS)
    assert plan.size == 550 and plan.peak_live == 550 and plan.peak_layer == 2
    assert plan.io_bytes == 110 and plan.input_bytes == 100 and plan.output_bytes == 10
    offsets = {b.name: b.offset for b in plan.buffers}
    # greedy best-fit by size: c at 0, a above it, the input in the gap under a, b and d on top
    assert offsets == {"c": 0, "a": 300, "in": 0, "b": 500, "d": 500}
    _no_overlap(plan)


def test_planner_reuses_dead_buffers_and_keeps_outputs_to_the_end():
    # a chain of four 64-byte tensors needs two buffers; the output lives until the end
    g = _graph([_t(n, 1, 64) for n in "wxyz"],
               [("other", ["w"], ["x"], {}), ("other", ["x"], ["y"], {}), ("other", ["y"], ["z"], {})],
               ["w"], ["z"])
    plan = E.plan_activations(g, E.PLAIN_CONVENTIONS)
    assert plan.size == 128
    z = next(b for b in plan.buffers if b.name == "z")
    assert z.last == len(g.ops)
    _no_overlap(plan)


def test_views_and_inplace_layers_share_their_input_buffer():
    g = _graph([_t("in", 1, 8, 8, 4), _t("r", 1, 8, 8, 4), _t("f", 1, 256), _t("o", 1, 256)],
               [("activation", ["in"], ["r"], {}), ("view", ["r"], ["f"], {}), ("softmax", ["f"], ["o"], {})],
               ["in"], ["o"])
    plain = E.plan_activations(g, E.Conventions(inplace=False, input_overlap=False, scratch="none", alignment=1))
    shared = E.plan_activations(g, E.Conventions(input_overlap=False, scratch="none", alignment=1))
    assert plain.size == 3 * 256 - 256  # in+r at op0, r(=f)+o at op2
    assert shared.size == 2 * 256       # in = r = f, then o
    assert {"in", "r", "f"} <= set(next(b for b in shared.buffers if "in" in b.tensors).tensors)


@pytest.mark.parametrize("stride, shape_in, shape_out, margin", [
    # 3×3 stride 2 "same" on 8×8×1 → 4×4×4 (pad top 0): while output row r (16 B) is written,
    # input rows from 2r (8 B each) are still read: 16·(r+1) ≤ margin + 8·2r → margin 16
    (2, (1, 8, 8, 1), (1, 4, 4, 4), 16),
    # 3×3 stride 1 "same" on 4×4×2 (pad top 1, rows of 8 B): 8·(r+1) ≤ margin + 8·max(0, r−1) → 16
    (1, (1, 4, 4, 2), (1, 4, 4, 2), 16),
])
def test_first_layer_overwrites_the_input_with_a_safe_margin(stride, shape_in, shape_out, margin):
    g = _graph([_t("in", *shape_in, dtype="uint8"), _t("q", *shape_in), _t("w", shape_out[-1], 3, 3, shape_in[-1],
                                                                             const=True),
                _t("y", *shape_out)],
               [("quantize", ["in"], ["q"], {}),
                ("conv", ["q", "w"], ["y"], {"kernel": (3, 3), "strides": (stride, stride), "same": True})],
               ["in"], ["y"])
    layer = g.ops[1]
    assert E._input_overlap_margin(layer, g.tensors["q"], g.tensors["y"]) == margin
    plan = E.plan_activations(g, E.Conventions(scratch="none", alignment=1))
    n_in, n_out = math.prod(shape_in), math.prod(shape_out)
    assert plan.size == max(n_in + margin, n_out)
    plain = E.plan_activations(g, E.PLAIN_CONVENTIONS)
    assert plain.size == n_in + n_out


def test_scratch_buffers_and_alignment():
    g = _graph([_t("in", 1, 16, 16, 16), _t("w", 32, 3, 3, 16, const=True), _t("b", 32, dtype="int32", const=True),
                _t("y", 1, 16, 16, 32)],
               [("conv", ["in", "w", "b"], ["y"], {"kernel": (3, 3), "strides": (1, 1), "same": True, "bias": True})],
               ["in"], ["y"])
    conv = g.ops[0]
    v8 = 4 * 9 * 16 + 4 * 32 + 5120
    assert E.scratch_bytes(g, conv, E.Conventions(scratch="stm32-v8")) == v8
    assert E.scratch_bytes(g, conv, E.Conventions(scratch="stm32")) == v8 + 2 * 16 * 9 * 16
    assert E.scratch_bytes(g, conv, E.Conventions(scratch="cmsis")) == 4 * 9 * 16
    assert E.scratch_bytes(g, conv, E.Conventions(scratch="none")) == 0
    plan = E.plan_activations(g, E.Conventions(scratch="stm32-v8", input_overlap=False))
    assert plan.size == 16 * 16 * 16 + 16 * 16 * 32 + v8
    with pytest.raises(ValueError):
        E.Conventions(scratch="magic")


def test_macc_and_weights_conventions():
    # conv 3×3 16→32 on 16×16 with bias: 16·16·32·(3·3·16) + 32; dense 64→10 with bias: 640 + 10
    g = _graph([_t("in", 1, 16, 16, 16), _t("w", 32, 3, 3, 16, const=True), _t("b", 32, dtype="int32", const=True),
                _t("y", 1, 16, 16, 32), _t("dw", 1, 3, 3, 32, const=True), _t("z", 1, 8, 8, 32),
                _t("s", 2, dtype="int32", const=True), _t("f", 1, 2048), _t("fw", 10, 2048, const=True),
                _t("fb", 10, dtype="int32", const=True), _t("o", 1, 10, dtype="float32")],
               [("conv", ["in", "w", "b"], ["y"], {"kernel": (3, 3), "strides": (1, 1), "bias": True}),
                ("depthwise", ["y", "dw"], ["z"], {"kernel": (3, 3), "strides": (2, 2)}),
                ("view", ["z", "s"], ["f"], {}),
                ("dense", ["f", "fw", "fb"], ["o"], {"bias": True})],
               ["in"], ["o"])
    maccs = [E.op_macc(g, op) for op in g.ops]
    assert maccs == [16 * 16 * 32 * 144 + 32, 8 * 8 * 32 * 9, 0, 2048 * 10 + 10]
    weights = {t.name for t in E.weight_tensors(g)}
    assert weights == {"w", "b", "dw", "fw", "fb"}  # the reshape's shape constant is code
    assert sum(t.nbytes for t in E.weight_tensors(g)) == 32 * 144 + 4 * 32 + 9 * 32 + 20480 + 40


# --------------------------------------------------------------------------------------------
# boards


def test_board_table_lookups():
    h747 = B.get_board("STM32H747I-DISCO")
    assert (h747.flash_kib, h747.ram_kib, h747.ext_flash_mib, h747.ext_ram_mib) == (2048, 1024, 16, 8)
    assert h747.clock_mhz == 400 and h747.core == "Cortex-M7 + Cortex-M4"
    assert B.get_board("stm32h7b3i-dk").name == "STM32H7B3I-DK"  # case-insensitive, canonical spelling back
    for name in ("STM32H747I-DISCO", "STM32H7B3I-DK", "NUCLEO-H743ZI2", "STM32F769I-DISCO", "B-U585I-IOT02A",
                 "STM32N6570-DK"):
        board = B.get_board(name)
        assert not board.mpu and board.ram_kib > 0 and board.clock_mhz > 0 and board.mcu.startswith("STM32")
        assert board.core.startswith("Cortex-M")
    assert B.get_board("STM32N6570-DK").flash_kib == 0 and B.get_board("STM32N6570-DK").npu
    assert B.get_board("NUCLEO-H743ZI2").ext_flash_mib == 0
    for name in B.SUPPORTED_BOARDS:  # every name the reference lists resolves
        assert B.check_board(name) == name
    assert B.get_board("STM32MP257F-EV1").mpu


def test_unknown_board_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        B.get_board("STM32H999-NOPE")
    message = str(info.value)
    assert "\n" not in message and message.startswith("benchmarking.board:")
    assert "STM32H999-NOPE" in message and "STM32H747I-DISCO" in message and "NUCLEO-H743ZI2" in message
    with pytest.raises(ConfigError, match="deployment.hardware_setup.board"):
        B.check_board("nope", "deployment.hardware_setup.board")


def test_fit_check():
    small = E.fit_check(100 * 1024, 60 * 1024, "STM32H747I-DISCO")
    assert small.fits_internal and small.flash == "internal" and small.ram == "internal"
    split = E.fit_check(100 * 1024, 700 * 1024, "STM32H747I-DISCO")  # > the 512 KiB AXI SRAM
    assert split.ram == "internal-split" and split.fits
    big = E.fit_check(3500 * 1024, 1500 * 1024, "NUCLEO-H743ZI2")  # no external memory on the Nucleo
    assert (big.flash, big.ram, big.fits) == ("no", "no", False)
    n6 = E.fit_check(3500 * 1024, 1500 * 1024, "STM32N6570-DK")  # no internal flash, 4.2 MB SRAM
    assert (n6.flash, n6.ram) == ("external", "internal")
    ext = E.fit_check(3500 * 1024, 1500 * 1024, "STM32H747I-DISCO")
    assert (ext.flash, ext.ram) == ("external", "external")
    assert E.fit_check(10, 10, "STM32MP157F-DK2").mpu
    assert "STM32H747I-DISCO" in ext.summary()
    with pytest.raises(ConfigError):
        E.fit_check(1, 1, "NOPE")


def test_bad_model_files(tmp_path):
    with pytest.raises(UserError, match="no such model file"):
        E.estimate_footprint(tmp_path / "missing.tflite")
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match=r"\.tflite and \.onnx"):
        E.estimate_footprint(other)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError):
        E.estimate_footprint(junk)


# --------------------------------------------------------------------------------------------
# our zoo models vs ST's published footprints

ZOO = {  # our zoo spec and class count for each calibration model of E.REFERENCE_FOOTPRINTS
    "mobilenet_v2_0.35_128": ({"name": "mobilenet", "version": "v2", "alpha": 0.35, "input_shape": (128, 128, 3)}, 5),
    "resnet_v1_8_32": ({"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)}, 10),
    "fdmobilenet_0.25_128": ({"name": "fdmobilenet", "alpha": 0.25, "input_shape": (128, 128, 3)}, 5),
}
RESCALING = (1 / 127.5, -1.0)


class _Softmax(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=1)


def _export(name: str, spec: dict, classes: int, out: Path) -> dict[str, Path]:
    """Our zoo model (random weights, non-zero biases and BN statistics) → float ONNX → int8 QDQ
    ONNX (per-channel) and int8 TFLite (per-channel, uint8 input, float output) as ST ships them."""
    from stmclf.export.onnx_qdq import quantize_qdq
    from stmclf.export.tflite import onnx_to_saved_model, saved_model_to_int8_tflite
    from stmclf.models import build_model

    torch.manual_seed(0)
    model = build_model(spec, classes, None).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(getattr(module, "bias", None), torch.nn.Parameter):
                module.bias.uniform_(-0.05, 0.05)  # zero biases would be dropped by the converter
    h, w, c = spec["input_shape"]
    onnx_path = out / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Softmax(model).eval(), (torch.zeros(1, c, h, w),), str(onnx_path), input_names=["input"],
                          output_names=["probabilities"], opset_version=17, dynamo=False)
    pixels = np.random.default_rng(0).integers(0, 256, (4, c, h, w)).astype(np.uint8)
    pixels[0, :, 0, 0], pixels[0, :, 0, 1] = 0, 255
    x = pixels.astype(np.float32) * np.float32(RESCALING[0]) + np.float32(RESCALING[1])
    qdq = quantize_qdq(onnx_path, out / f"{name}_quant_qdq_pc.onnx", x, per_channel=True)
    work = out / f"{name}_tf"
    work.mkdir()
    saved = onnx_to_saved_model(onnx_path, work, out / "onnx2tf.log")
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    tflite = saved_model_to_int8_tflite(saved, out / f"{name}_int8.tflite", nhwc, out / "onnx2tf.log", onnx_path,
                                        per_channel=True, input_type="uint8", output_type="float")
    return {"onnx": onnx_path, "qdq": qdq, "tflite": tflite}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    import importlib.util

    # find_spec, not importorskip: importing onnx2tf sets the process's recursion limit to 2**31 - 1
    if importlib.util.find_spec("onnx2tf") is None or importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("needs the TFLite extra (onnx2tf, ai_edge_litert)")
    out = tmp_path_factory.mktemp("zoo")
    return {name: (_export(name, spec, classes, out), E.REFERENCE_FOOTPRINTS[name])
            for name, (spec, classes) in ZOO.items()}


@pytest.mark.parametrize("name", list(ZOO))
def test_int8_tflite_estimate_matches_the_published_footprint(zoo, name):
    files, (weights_kib, activations_kib) = zoo[name]
    est = E.estimate_footprint(files["tflite"], board="STM32H747I-DISCO")
    assert est.fmt == "tflite" and est.quantized
    assert est.input_bytes == math.prod(ZOO[name][0]["input_shape"])  # uint8 input, 1 byte per pixel
    assert est.output_bytes == 4 * ZOO[name][1]                       # float32 scores
    ours_w, ours_a = est.weights_bytes / 1024, est.activations_bytes / 1024
    assert abs(ours_w - weights_kib) / weights_kib < 0.01, (ours_w, weights_kib)
    assert abs(ours_a - activations_kib) / activations_kib < 0.10, (ours_a, activations_kib)
    assert est.fit is not None and est.fit.fits_internal
    footprint = est.footprint()
    assert footprint.source == "estimate" and footprint.rom_size == est.weights_bytes
    assert footprint.ram_size == est.activations_bytes and footprint.macc == est.macc
    assert footprint.total_ram_io_size == 0  # the I/O buffers are inside the activations
    assert footprint.metrics()["Flash weights KiB"] == round(ours_w, 2)


def test_st_conventions_beat_a_plain_liveness_plan(zoo):
    """Without the ST conventions (input overwritten by the first layer, kernel scratch) the plan
    misses the published figures by 20-70 %."""
    errors = {"st": [], "plain": []}
    for name, (files, (_, activations_kib)) in zoo.items():
        graph = E.load_graph(files["tflite"])
        for key, conventions in (("st", E.ST_CONVENTIONS), ("plain", E.PLAIN_CONVENTIONS)):
            ours = E.plan_activations(graph, conventions).size / 1024
            errors[key].append(abs(ours - activations_kib) / activations_kib)
    assert max(errors["st"]) < 0.10 < max(errors["plain"])
    assert sum(errors["st"]) < sum(errors["plain"])


@pytest.mark.parametrize("name", list(ZOO))
def test_qdq_onnx_and_float_onnx_estimates(zoo, name):
    files, (weights_kib, _) = zoo[name]
    tfl = E.estimate_footprint(files["tflite"])
    qdq = E.estimate_footprint(files["qdq"])
    assert qdq.fmt == "onnx" and qdq.quantized
    assert abs(qdq.weights_bytes / 1024 - weights_kib) / weights_kib < 0.01  # int8 weights + int32 biases
    assert qdq.macc == pytest.approx(tfl.macc, rel=0.01)
    # float NCHW input: 4 bytes per pixel, so at least as much RAM as the uint8-input TFLite model
    assert qdq.input_bytes == 4 * math.prod(ZOO[name][0]["input_shape"])
    assert qdq.activations_bytes >= tfl.activations_bytes
    flt = E.estimate_footprint(files["onnx"])
    assert not flt.quantized
    params = sum(t.size for t in E.weight_tensors(E.load_graph(files["tflite"])))
    assert flt.weights_bytes == pytest.approx(4 * params, rel=0.01)  # the same parameters, all float32
    assert flt.activations_bytes > 2 * tfl.activations_bytes


def test_estimate_reports(zoo):
    files, _ = zoo["resnet_v1_8_32"]
    est = E.estimate_footprint(files["tflite"], board="NUCLEO-H743ZI2")
    text = "\n".join(est.summary_lines())
    assert "NUCLEO-H743ZI2" in text and "KiB" in text
    table = est.layer_table()
    assert table.count("CONV_2D") == 9 and "FULLY_CONNECTED" in table
    data = est.to_dict()
    assert data["weights_bytes"] == est.weights_bytes and data["fit"]["fits_internal"] is True
    assert sum(layer.macc for layer in est.layers) == est.macc
    # the first layer of ResNet v1 8 (3×3 conv 3→16 on 32×32, bias): 32·32·16·27 + 16
    first_conv = next(layer for layer in est.layers if layer.op_type == "CONV_2D")
    assert first_conv.macc == 32 * 32 * 16 * 27 + 16
