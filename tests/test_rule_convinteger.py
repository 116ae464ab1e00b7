"""ConvInteger (dynamic quantization: DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul by the scales)
prunes like Conv: output channels on W axis 0, input channels on W axis 1. Built with onnx.helper (no
torch); the pruned model must pass the mask oracle."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from onnx import TensorProto

from onnxprune import analyze_model
from onnxprune.analysis.graph import build_view
from onnxprune.profiling.cost import total_macs

IMG = {"x": [2, 3, 8, 8]}


def quantized_conv(b: GraphBuilder, x: str, cin: int, cout: int, name: str, group: int = 1) -> str:
    """DynamicQuantizeLinear(x) -> ConvInteger(uint8 weight, zero point 128) -> Cast -> Mul by
    x_scale * w_scale -> + per-channel bias: what ONNX Runtime's quantize_dynamic writes for a Conv."""
    q, x_scale, x_zp = b.op("DynamicQuantizeLinear", [x], n_out=3, name=f"{name}_quant")
    w = b.rng.integers(0, 256, size=(cout, cin // group, 3, 3)).astype(np.uint8)
    wq = b.const(w, f"{name}.weight_quantized", dtype=np.uint8)
    wzp = b.const(np.uint8(128), f"{name}.weight_zero_point", dtype=np.uint8)
    acc = b.op("ConvInteger", [q, wq, x_zp, wzp], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)
    f = b.op("Cast", [acc], name=f"{name}_cast", to=TensorProto.FLOAT)
    scale = b.op("Mul", [x_scale, b.const(np.float32(0.01), f"{name}.weight_scale")], name=f"{name}_scale")
    y = b.op("Mul", [f, scale], name=f"{name}_output_scale")
    return b.op("Add", [y, b.weight((1, cout, 1, 1), f"{name}.bias", scale=0.5)], name=f"{name}_bias")


def convinteger_model(group2: int = 1, relu: bool = True):
    b = GraphBuilder(opset=17)
    x = b.input("x", [3, 8, 8])
    h = quantized_conv(b, x, 3, 8, "qconv1")
    h = b.op("Relu", [h]) if relu else h
    h = b.op("Relu", [quantized_conv(b, h, 8, 8 if group2 > 1 else 6, "qconv2", group=group2)])
    y = b.conv(h, 8 if group2 > 1 else 6, 4, name="head")
    return b.model([y])


def test_convinteger_prunes_like_conv():
    """Output channels of both ConvIntegers (with their biases) and the input channels of the next
    one are removed; the pruned model equals the masked original."""
    res = assert_prunes(convinteger_model(), [("qconv1_out", 1), ("qconv2_out", 1)], IMG, sizes=[8, 6],
                        shrinks=["qconv1.weight_quantized", "qconv2.weight_quantized", "qconv1.bias", "head.weight"],
                        frozen=[("x", 1), ("head_out", 1)])
    dims = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    assert dims["qconv1.weight_quantized"] == (4, 3, 3, 3)
    assert dims["qconv2.weight_quantized"] == (3, 4, 3, 3)
    assert res.report.verification["passed"]


def test_removed_channels_hold_the_zero_point():
    """Without a Relu before it, DynamicQuantizeLinear gives a nonzero zero point: a removed input
    channel contributes nothing when it holds the zero point (the oracle's rule hook), not zero."""
    res = assert_prunes(convinteger_model(relu=False), [("qconv1_out", 1)], IMG, sizes=[8])
    assert res.report.verification["passed"]


def test_depthwise_convinteger():
    """A depthwise ConvInteger ties its input and output channels (one group, marked depthwise) and
    its group attribute follows the kept channels."""
    res = assert_prunes(convinteger_model(group2=8), [("qconv1_out", 1)], IMG, sizes=[8])
    g = group_at(res.analysis, "qconv2_out", 1)
    assert g is group_at(res.analysis, "qconv1_out", 1) and g.depthwise
    node = next(n for n in res.model.graph.node if n.op_type == "ConvInteger" and n.name == "qconv2")
    assert next(a.i for a in node.attribute if a.name == "group") == 4


def test_convinteger_macs_are_counted():
    """ConvInteger's rule counts its MACs like Conv's (a missing rule hook would count 0)."""
    view = build_view(convinteger_model(), input_shapes=IMG)
    out = 2 * 8 * 8
    assert total_macs(view) == out * 8 * 3 * 9 + out * 6 * 8 * 9 + out * 4 * 6 * 9


def test_per_channel_zero_point_is_frozen():
    b = GraphBuilder(opset=17)
    x = b.input("x", [3, 8, 8])
    q, _, x_zp = b.op("DynamicQuantizeLinear", [x], n_out=3)
    wq = b.const(np.zeros((8, 3, 3, 3), np.uint8), "w", dtype=np.uint8)
    wzp = b.const(np.full(8, 128, np.uint8), "wzp", dtype=np.uint8)
    acc = b.op("ConvInteger", [q, wq, x_zp, wzp], name="qconv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.conv(b.op("Cast", [acc], to=TensorProto.FLOAT), 8, 4, name="head")
    a = analyze_model(b.model([y]), input_shapes=IMG)
    g = group_at(a, "qconv_out", 1)
    assert not g.prunable and any("not per tensor" in r for r in g.reasons)
