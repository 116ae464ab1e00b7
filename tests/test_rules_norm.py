"""Normalizations and reductions over channels (rules/norm.py): LayerNorm (ConvNeXt, decomposed),
BatchNorm1d, Instance/Group normalization, Softmax/ReduceMean over C, LRN (frozen).

What every case asserts: see tests/rule_cases.py."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from rule_cases import IMG, head, stem, weight_shape

from onnxprune import analyze_model


# --- ConvNeXt block (NHWC, LayerNorm over channels) ----------------------------------------------

@pytest.mark.parametrize("gelu", ["erf", "op"])
def test_convnext_block(gelu):
    b = GraphBuilder(opset=20 if gelu == "op" else 17)
    h = stem(b, 8, act=False)
    d = b.conv(h, 8, 8, k=3, group=8, name="dwconv")
    t = b.op("Transpose", [d], perm=[0, 2, 3, 1], name="to_nhwc")
    ln = b.op("LayerNormalization", [t, b.weight((8,), "ln.weight", positive=True), b.weight((8,), "ln.bias")],
              axis=-1, epsilon=1e-6, name="ln")
    u = b.matmul(ln, 8, 32, name="pw1")
    if gelu == "op":
        g = b.op("Gelu", [u], name="gelu")
    else:
        e = b.op("Erf", [b.op("Div", [u, b.const(np.float32(np.sqrt(2.0)))])])
        g = b.op("Mul", [b.op("Mul", [u, b.op("Add", [e, b.const(np.float32(1.0))])]), b.const(np.float32(0.5))])
    v = b.matmul(g, 32, 8, name="pw2")
    v = b.op("Mul", [v, b.weight((8,), "gamma", positive=True)], name="layer_scale")
    back = b.op("Transpose", [v], perm=[0, 3, 1, 2], name="to_nchw")
    r = b.op("Add", [back, h], name="residual")
    y = head(b, r, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1), ("pw1.weight", 1)], IMG, sizes=[8, 32])
    a = res.analysis
    g = group_at(a, "conv0_out", 1)
    assert group_at(a, "ln_out", 3) is g and group_at(a, "gamma", 0) is g
    # the LayerNorm normalizes over the channel space: the oracle computes it over kept channels
    ln_k = next(k for k, n in enumerate(a.view.nodes) if n.op_type == "LayerNormalization")
    assert a.node_results[ln_k].normalizes
    assert weight_shape(res.model, "ln.weight") == (4,)
    assert weight_shape(res.model, "pw1.weight") == (4, 16)


def test_batchnorm1d_between_gemms():
    b = GraphBuilder()
    x = b.input("x", [12])
    h = b.op("Relu", [b.bn(b.gemm(x, 12, 16, name="fc1"), 16, name="bn")])
    y = b.gemm(h, 16, 4, name="fc2")
    res = assert_prunes(b.model([y]), [("fc1_out", 1)], {"x": [3, 12]}, sizes=[16])
    assert weight_shape(res.model, "bn.mean") == (8,)


def test_lrn_mixes_neighbour_channels_and_is_frozen():
    b = GraphBuilder()
    h = stem(b, 8)
    n = b.op("LRN", [h], size=3, name="lrn")
    y = head(b, b.op("Relu", [b.conv(n, 8, 6, name="conv1")]), 6)
    res = assert_prunes(b.model([y]), [("conv1_out", 1)], IMG, sizes=[6], frozen=[("conv0_out", 1), ("lrn_out", 1)])
    assert any("LRN" in r for r in group_at(res.analysis, "conv0_out", 1).reasons)


# --- normalizations over the channel axis ---------------------------------------------------------

def test_layernorm2d_decomposed_over_channels():
    """ConvNeXt's channels-first LayerNorm as exporters emit it: ReduceMean/Sub/Pow/ReduceMean/Add/
    Sqrt/Div over axis 1, then per-channel (C,1,1) scale and shift."""
    b = GraphBuilder(opset=17)
    h = stem(b, 8, act=False)
    mean = b.op("ReduceMean", [h], axes=[1], keepdims=1, name="ln_mean")
    d = b.op("Sub", [h, mean])
    var = b.op("ReduceMean", [b.op("Pow", [d, b.const(np.float32(2))])], axes=[1], keepdims=1, name="ln_var")
    n = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(1e-6))])])])
    z = b.op("Add", [b.op("Mul", [n, b.weight((8, 1, 1), "ln.weight", positive=True)]), b.weight((8, 1, 1), "ln.bias")])
    y = head(b, z, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    assert weight_shape(res.model, "ln.weight") == (4, 1, 1)
    a = res.analysis
    for name in ("ln_mean", "ln_var"):
        k = next(k for k, nd in enumerate(a.view.nodes) if nd.name == name)
        assert a.node_results[k].normalizes == [(a.view.nodes[k].input[0], 1)]


def test_layernorm_over_chw():
    """LayerNormalization(axis=1) on NCHW normalizes over C, H, W together with (C, H, W) parameters."""
    b = GraphBuilder()
    h = stem(b, 8)
    n = b.op("LayerNormalization", [h, b.weight((8, 8, 8), "ln.weight", positive=True), b.weight((8, 8, 8), "ln.bias")],
             axis=1, name="ln")
    y = head(b, n, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    assert weight_shape(res.model, "ln.weight") == (4, 8, 8)


@pytest.mark.parametrize("kind", ["softmax", "softmax-opset11", "softmax-opset9", "reducemean-c"])
def test_normalize_over_channels(kind):
    """(before opset 13 Softmax(axis=1) normalizes over C*H*W together; opset 9 also exercises the
    oracle's opset-9 path: Mul masks and attribute Slice)"""
    b = GraphBuilder(opset=int(kind.split("opset")[1]) if "opset" in kind else 17)
    h = stem(b, 8)
    if kind.startswith("softmax"):
        z = b.op("Softmax", [h], axis=1, name="norm")
    else:
        m = b.op("ReduceMean", [h], axes=[1], keepdims=1, name="norm")
        z = b.op("Sub", [h, m])
    y = head(b, z, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    a = res.analysis
    k = next(k for k, n in enumerate(a.view.nodes) if n.name == "norm")
    assert a.node_results[k].normalizes == [(a.view.nodes[k].input[0], 1)]


# --- InstanceNormalization -------------------------------------------------------------------------

def test_instance_norm():
    b = GraphBuilder()
    h = stem(b, 8, act=False)
    n = b.op("InstanceNormalization", [h, b.weight((8,), "in.scale", positive=True), b.weight((8,), "in.bias")],
             epsilon=1e-5)
    y = head(b, b.op("Relu", [n]), 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    assert weight_shape(res.model, "in.scale") == (4,)


def test_group_normalization_frozen():
    b = GraphBuilder(opset=21)
    h = stem(b, 8, act=False)
    n = b.op("GroupNormalization", [h, b.weight((8,), "gn.scale", positive=True), b.weight((8,), "gn.bias")],
             num_groups=2, epsilon=1e-5, name="gn")
    z = b.op("Relu", [b.conv(b.op("Relu", [n]), 8, 6, name="conv1")])
    y = head(b, z, 6)
    model = b.model([y], output_shapes=[["N", 4, 8, 8]])  # onnx infers no shape past GroupNormalization-21
    a = analyze_model(model, input_shapes=IMG)
    g0 = group_at(a, "conv0_out", 1)
    assert not g0.prunable and any("GroupNormalization" in r for r in g0.reasons), g0.reasons
    assert group_at(a, "conv1_out", 1).prunable
    assert_prunes(model, [("conv1_out", 1)], IMG, sizes=[6], frozen=[("conv0_out", 1)])
