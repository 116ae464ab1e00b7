"""Exporter variety that normalize() must make disappear before analysis: weights in Constant nodes,
IR-3 graphs listing initializers as inputs, weights behind Identity / Cast (fp16 -> fp32) /
DequantizeLinear of constants; and the same small conv net across opsets. Each must end up with the
weights as initializers and prune with the mask oracle passing."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from onnx import TensorProto, helper, numpy_helper

from onnxprune.io import normalize

IMG = {"x": [2, 3, 8, 8]}
WEIGHT_OPS = {"Constant", "Identity", "Cast", "DequantizeLinear"}


def conv_net(opset=17, ir_version=None, fc=True):
    """x -> conv1 -> BN -> Relu -> conv2 -> Relu -> MaxPool -> [Flatten -> Gemm | conv3]"""
    b = GraphBuilder(opset=opset, ir_version=ir_version)
    x = b.input("x", [3, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 8, name="conv1"), 8, name="bn1")])
    h = b.op("Relu", [b.conv(h, 8, 6, name="conv2")])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    if fc:
        y = b.gemm(b.op("Flatten", [h], axis=1), 6 * 16, 5, name="fc")
    else:
        y = b.conv(h, 6, 4, name="conv3")
    # (shape inference of an IR-3 graph whose weights are not yet listed as inputs gives no output shape)
    return b.model([y], output_shapes=[["N", 5] if fc else ["N", 4, 4, 4]])


def check_normalized(model, weights):
    norm = normalize(model)
    inits = {t.name for t in norm.graph.initializer}
    assert not [n.op_type for n in norm.graph.node if n.op_type in WEIGHT_OPS]
    for w in weights:
        assert w in inits, f"{w} is not an initializer after normalize"
    assert not inits & {i.name for i in norm.graph.input}
    return norm


def test_weights_in_constant_nodes():
    m = conv_net()
    g = m.graph
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}") for t in g.initializer]
    del g.initializer[:]
    _prepend(g, consts)  # keep topological order: constants first
    onnx.checker.check_model(m)
    check_normalized(m, ["conv1.weight", "bn1.scale", "conv2.weight", "fc.weight"])
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    assert {t.name for t in res.model.graph.initializer} >= {"conv1.weight", "fc.weight"}


def test_ir3_initializers_listed_as_inputs():
    m = conv_net(opset=8, ir_version=3, fc=False)
    g = m.graph
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer)
    onnx.checker.check_model(m)
    norm = check_normalized(m, ["conv1.weight", "conv2.weight"])
    assert [i.name for i in norm.graph.input] == ["x"]
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    # the weights are weights, not model inputs that would freeze their groups
    assert not any("model input 'conv" in r for g in res.analysis.groups for r in g.reasons)
    assert [i.name for i in res.model.graph.input] == ["x"]


def _reroute(m, name, make_source):
    """Feed weight `name` through a small subgraph of constants: make_source(array) -> (nodes, inits)
    whose last node outputs `name`."""
    g = m.graph
    t = next(t for t in g.initializer if t.name == name)
    arr = numpy_helper.to_array(t)
    g.initializer.remove(t)
    nodes, inits = make_source(arr)
    g.initializer.extend(inits)
    _prepend(g, nodes)


def _prepend(g, nodes):
    rest = list(g.node)
    del g.node[:]
    g.node.extend(list(nodes) + rest)


def _identity(name):
    def make(arr):
        return ([helper.make_node("Identity", [name + "_raw"], [name], name=f"id_{name}")],
                [numpy_helper.from_array(arr, name + "_raw")])
    return make


def _cast_fp16(name):
    def make(arr):
        return ([helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT, name=f"cast_{name}")],
                [numpy_helper.from_array(arr.astype(np.float16), name + "_fp16")])
    return make


def _dequant(name, per_channel):
    def make(arr):
        if per_channel:
            scale = (np.abs(arr).reshape(arr.shape[0], -1).max(1) / 127).astype(np.float32)
            q = np.round(arr / scale.reshape((-1,) + (1,) * (arr.ndim - 1)))
            zp = np.zeros(arr.shape[0], np.int8)
            attrs = dict(axis=0)
        else:
            scale = np.float32(np.abs(arr).max() / 127)
            q = np.round(arr / scale)
            zp = np.int8(0)
            attrs = {}
        inits = [numpy_helper.from_array(q.astype(np.int8), name + "_q"),
                 numpy_helper.from_array(np.asarray(scale, np.float32), name + "_scale"),
                 numpy_helper.from_array(np.asarray(zp, np.int8), name + "_zp")]
        node = helper.make_node("DequantizeLinear", [name + "_q", name + "_scale", name + "_zp"], [name],
                                name=f"dq_{name}", **attrs)
        return [node], inits
    return make


@pytest.mark.parametrize("kind", ["identity", "cast-fp16", "dequant-tensor", "dequant-channel"])
def test_weights_behind_constant_subgraphs(kind):
    m = conv_net(opset=17)
    for w in ("conv1.weight", "conv2.weight", "fc.weight", "bn1.scale"):
        if kind == "identity":
            _reroute(m, w, _identity(w))
        elif kind == "cast-fp16":
            _reroute(m, w, _cast_fp16(w))
        elif kind.startswith("dequant") and w != "bn1.scale":
            _reroute(m, w, _dequant(w, per_channel=kind == "dequant-channel"))
    onnx.checker.check_model(m, full_check=True)
    norm = check_normalized(m, ["conv1.weight", "conv2.weight", "fc.weight", "bn1.scale"])
    w = next(numpy_helper.to_array(t) for t in norm.graph.initializer if t.name == "conv1.weight")
    assert w.dtype == np.float32 and w.shape == (8, 3, 3, 3)
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    assert group_at(res.analysis, "conv1.weight", 0) is group_at(res.analysis, "conv1_out", 1)


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
@pytest.mark.parametrize("fc", [True, False], ids=["gemm", "conv"])
def test_conv_net_across_opsets(opset, fc):
    m = conv_net(opset=opset, fc=fc)
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    assert res.model.opset_import[0].version == opset
    if fc:  # MaxPool -> Flatten: 4x4 features per channel
        assert tuple(next(t.dims for t in res.model.graph.initializer if t.name == "fc.weight")) == (5, 3 * 16)
