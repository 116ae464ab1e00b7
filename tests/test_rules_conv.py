"""Conv and ConvTranspose (rules/conv.py): plain, depthwise, grouped, 1-D, shared weights.

What every case asserts: see tests/rule_cases.py."""
from __future__ import annotations

import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from rule_cases import IMG, head, stem, weight_shape

from onnxprune import analyze_model


# --- Conv-BN-Relu-Conv ------------------------------------------------------------------------

def test_conv_bn_relu_conv_no_bias():
    b = GraphBuilder()
    x = b.input("x", [3, 8, 8])
    h = b.conv(x, 3, 8, bias=False, name="conv1")
    h = b.op("Relu", [b.bn(h, 8, name="bn1")])
    h = b.op("Relu", [b.conv(h, 8, 6, name="conv2")])
    y = head(b, h, 6)
    res = assert_prunes(b.model([y]), [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6],
                        frozen=[("head_out", 1), ("x", 1)])
    # BN parameters and the bias-less conv's weight were sliced together
    assert weight_shape(res.model, "bn1.scale") == (4,)
    assert weight_shape(res.model, "conv1.weight") == (4, 3, 3, 3)
    assert weight_shape(res.model, "conv2.weight") == (3, 4, 3, 3)
    assert "model output" in " ".join(group_at(res.analysis, "head_out", 1).reasons)


# --- depthwise Conv -----------------------------------------------------------------------------

@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv(mult):
    b = GraphBuilder()
    h = stem(b, 8)
    d = b.op("Relu", [b.conv(h, 8, 8 * mult, group=8, name="dw")])
    y = head(b, d, 8 * mult)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    g = group_at(res.analysis, "conv0_out", 1)
    assert g.depthwise
    assert group_at(res.analysis, "dw_out", 1) is g  # in and out coupled
    dw = next(n for n in res.model.graph.node if n.name == "dw")
    assert onnx.helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 4
    assert weight_shape(res.model, "dw.weight") == (4 * mult, 1, 3, 3)
    assert weight_shape(res.model, "head.weight")[1] == 4 * mult


# --- grouped Conv -------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv(groups):
    b = GraphBuilder()
    h = stem(b, 16)
    gc = b.op("Relu", [b.conv(h, 16, 16, group=groups, name="gconv")])
    y = head(b, gc, 16)
    per = 16 // groups
    res = assert_prunes(b.model([y]), [("conv0_out", 1), ("gconv_out", 1)], IMG, sizes=[per, per])
    # every group keeps the same in-group positions: the attribute stays, widths halve
    assert weight_shape(res.model, "gconv.weight") == (8, per // 2, 3, 3)
    gn = next(n for n in res.model.graph.node if n.name == "gconv")
    assert onnx.helper.get_attribute_value(next(a for a in gn.attribute if a.name == "group")) == groups


# --- ConvTranspose ------------------------------------------------------------------------------

def test_conv_transpose():
    b = GraphBuilder()
    h = stem(b, 8)
    u = b.op("Relu", [b.conv_transpose(h, 8, 6, name="up")])
    y = head(b, u, 6)
    res = assert_prunes(b.model([y]), [("conv0_out", 1), ("up_out", 1)], IMG, sizes=[8, 6])
    assert weight_shape(res.model, "up.weight") == (4, 3, 2, 2)


def test_conv_transpose_depthwise():
    b = GraphBuilder()
    h = stem(b, 8)
    u = b.op("Relu", [b.conv_transpose(h, 8, 8, group=8, name="up")])
    y = head(b, u, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    assert group_at(res.analysis, "up_out", 1) is group_at(res.analysis, "conv0_out", 1)
    assert weight_shape(res.model, "up.weight") == (4, 1, 2, 2)


@pytest.mark.parametrize("groups", [2, 4])
def test_conv_transpose_grouped(groups):
    """As grouped Conv: the group count stays, every group keeps the same in-group positions."""
    b = GraphBuilder()
    h = stem(b, 8)
    u = b.op("Relu", [b.conv_transpose(h, 8, 16, group=groups, name="up")])
    y = head(b, b.op("Relu", [b.conv(u, 16, 6, name="conv1")]), 6)
    res = assert_prunes(b.model([y]), [("conv0_out", 1), ("up_out", 1), ("conv1_out", 1)], IMG,
                        sizes=[8 // groups, 16 // groups, 6])
    assert weight_shape(res.model, "up.weight") == (4, 16 // groups // 2, 2, 2)
    un = next(n for n in res.model.graph.node if n.name == "up")
    assert onnx.helper.get_attribute_value(next(a for a in un.attribute if a.name == "group")) == groups


def test_conv_transpose_grouped_concat_with_a_frozen_input_keeps_its_group():
    """A grouped ConvTranspose on unpruned channels, concatenated with pruned ones: its group
    attribute must stay (it was once rewritten to the channel count)."""
    b = GraphBuilder()
    x = b.input("x", [4, 8, 8])
    a = b.op("Relu", [b.conv(x, 4, 8, name="a")])
    up = b.conv_transpose(x, 4, 6, group=2, name="up", strides=(1, 1), k=1)
    y = b.conv(b.op("Concat", [up, a], axis=1), 14, 4, k=1, name="mix")
    res = assert_prunes(b.model([y]), [("a_out", 1)], {"x": [2, 4, 8, 8]}, shrinks=["a.weight"])
    un = next(n for n in res.model.graph.node if n.name == "up")
    assert onnx.helper.get_attribute_value(next(a for a in un.attribute if a.name == "group")) == 2


def test_conv1d():
    b = GraphBuilder()
    x = b.input("x", [3, 16])
    h = b.op("Relu", [b.op("Conv", [x, b.weight((8, 3, 3), "c1.weight")], pads=[1, 1], name="c1")])
    y = b.op("Conv", [h, b.weight((4, 8, 3), "c2.weight")], pads=[1, 1], name="c2")
    assert_prunes(b.model([y]), [("c1_out", 1)], {"x": [2, 3, 16]}, sizes=[8])


def test_weight_shared_by_two_convs_ties_their_groups():
    """One weight initializer used by two Convs on different inputs: its input axis ties the two
    producers' channels, its output axis the two conv outputs; one slicing serves both."""
    b = GraphBuilder()
    x = b.input("x", [3, 8, 8])
    h1 = b.op("Relu", [b.conv(x, 3, 8, name="conv1")])
    h2 = b.op("Relu", [b.conv(x, 3, 8, name="conv2")])
    w = b.weight((6, 8, 3, 3), "shared.w")
    a1 = b.op("Relu", [b.op("Conv", [h1, w], kernel_shape=[3, 3], pads=[1] * 4, name="convA")])
    a2 = b.op("Relu", [b.op("Conv", [h2, w], kernel_shape=[3, 3], pads=[1] * 4, name="convB")])
    y = head(b, b.op("Add", [b.conv(a1, 6, 5, name="hA"), b.conv(a2, 6, 5, name="hB")]), 5)
    model = b.model([y])
    a = analyze_model(model, input_shapes=IMG)
    assert group_at(a, "conv1_out", 1) is group_at(a, "conv2_out", 1) is group_at(a, "shared.w", 1)
    assert group_at(a, "convA_out", 1) is group_at(a, "convB_out", 1) is group_at(a, "shared.w", 0)
    res = assert_prunes(model, [("conv1_out", 1), ("convA_out", 1)], IMG, sizes=[8, 6])
    assert weight_shape(res.model, "shared.w") == (3, 4, 3, 3)
