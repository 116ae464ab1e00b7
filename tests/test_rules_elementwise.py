"""Elementwise ops (rules/elementwise.py): residual Add, squeeze-excitation, activations, broadcasting
mixes, Where/Cast/Expand.

What every case asserts: see tests/rule_cases.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from rule_cases import IMG, head, stem, weight_shape


# --- residual Add -----------------------------------------------------------------------------

def test_residual_add_two_convs_and_identity_skip():
    b = GraphBuilder()
    h = stem(b, 8)
    p = b.conv(h, 8, 8, name="conv_a")
    q = b.conv(h, 8, 8, name="conv_b")
    s = b.op("Add", [p, q], name="add_pq")
    r = b.op("Add", [s, h], name="add_skip")
    y = head(b, b.op("Relu", [r]), 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    a = res.analysis
    g = group_at(a, "conv0_out", 1)
    # the two convs feeding the Add and the skip are one group
    assert group_at(a, "conv_a_out", 1) is g and group_at(a, "conv_b_out", 1) is g
    for w in ("conv0.weight", "conv_a.weight", "conv_b.weight"):
        assert weight_shape(res.model, w)[0] == 4
    assert weight_shape(res.model, "conv_a.weight")[1] == 4


# --- squeeze-excitation -------------------------------------------------------------------------

def test_squeeze_excitation():
    b = GraphBuilder()
    h = stem(b, 16)
    s = b.op("GlobalAveragePool", [h], name="gap")
    s = b.op("Relu", [b.conv(s, 16, 4, k=1, name="se_reduce")])
    s = b.op("Sigmoid", [b.conv(s, 4, 16, k=1, name="se_expand")])
    m = b.op("Mul", [h, s], name="se_mul")
    y = head(b, m, 16)
    res = assert_prunes(b.model([y]), [("conv0_out", 1), ("se_reduce_out", 1)], IMG, sizes=[16, 4])
    assert group_at(res.analysis, "se_expand_out", 1) is group_at(res.analysis, "conv0_out", 1)
    assert weight_shape(res.model, "se_expand.weight") == (8, 2, 1, 1)


# --- hardswish ----------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["decomposed", "HardSwish", "HardSigmoid"])
def test_hardswish(form):
    b = GraphBuilder(opset=14)
    h = stem(b, 8, act=False)
    if form == "decomposed":
        c = b.op("Clip", [b.op("Add", [h, b.const(np.float32(3))]), b.const(np.float32(0)), b.const(np.float32(6))])
        a = b.op("Div", [b.op("Mul", [h, c]), b.const(np.float32(6))])
    elif form == "HardSwish":
        a = b.op("HardSwish", [h])
    else:
        a = b.op("Mul", [h, b.op("HardSigmoid", [h], alpha=1.0 / 6, beta=0.5)])
    y = head(b, a, 8)
    assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])


# --- PRelu / LeakyRelu ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["PRelu", "LeakyRelu"])
def test_prelu_leaky(act):
    b = GraphBuilder()
    h = stem(b, 8, act=False)
    if act == "PRelu":
        a = b.op("PRelu", [h, b.const(np.linspace(0.05, 0.4, 8).reshape(8, 1, 1), "slope")])
    else:
        a = b.op("LeakyRelu", [h], alpha=0.1)
    y = head(b, a, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    if act == "PRelu":
        assert group_at(res.analysis, "slope", 0) is group_at(res.analysis, "conv0_out", 1)
        assert weight_shape(res.model, "slope") == (4, 1, 1)


def test_elementwise_mix():
    """Sum of three channel tensors, a (1,C,1,1) scale, Max with a scalar, Dropout (inference), Clip-6
    attributes: all one channel space with the conv that feeds them."""
    b = GraphBuilder(opset=13)
    h = stem(b, 8, act=False)
    s = b.op("Mul", [h, b.weight((1, 8, 1, 1), "scale", positive=True)])
    m = b.op("Max", [h, b.const(np.float32(0))])
    z = b.op("Sum", [h, s, m])
    z = b.op("Dropout", [z], name="drop")
    z = b.op("Sigmoid", [b.op("Neg", [z])])
    y = head(b, z, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    assert weight_shape(res.model, "scale") == (1, 4, 1, 1)


def test_elementwise_where_cast_expand():
    """LeakyRelu as Where(x > 0, x, 0.1 x); a fp16 round trip; a pooled (N,C,1,1) tensor Expand-ed
    back to full size (the Expand shape's channel entry is rewritten)."""
    b = GraphBuilder(opset=13)
    h = stem(b, 8, act=False)
    z = b.op("Where", [b.op("Greater", [h, b.const(np.float32(0))]), h, b.op("Mul", [h, b.const(np.float32(0.1))])])
    z = b.op("Cast", [b.op("Cast", [z], to=onnx.TensorProto.FLOAT16)], to=onnx.TensorProto.FLOAT)
    e = b.op("Expand", [b.op("GlobalMaxPool", [z]), b.const([1, 8, 8, 8])], name="expand")
    y = head(b, b.op("Sub", [z, e]), 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    ex = next(n for n in res.model.graph.node if n.op_type == "Expand")
    shape = next(onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer if t.name == ex.input[1])
    assert list(shape) == [1, 4, 8, 8]
