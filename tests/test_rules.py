"""One mask-oracle test per op rule, on small ONNX graphs built with onnx.helper (no torch).

Each case puts the op between real convs/gemms so its channels are prunable, prunes at 0.5 and
asserts through ``assert_prunes`` (tests/helpers.py) that: the group under test is found with the
expected size and is prunable; channels were really removed and weights shrank; the mask oracle
passed; the pruned model passes the full ONNX checker, runs in ONNX Runtime and differs from the
unmasked original. Cases that cannot be pruned soundly are asserted frozen, with a reason.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at

from onnxprune import analyze, analyze_model, prune
from onnxprune.analysis.graph import build_view
from onnxprune.model.normalize import normalize

IMG = {"x": [2, 3, 8, 8]}


def stem(b, cout=8, name="conv0", act=True):
    """x (N,3,8,8) -> Conv 3->cout [-> Relu]"""
    x = b.input("x", [3, 8, 8])
    h = b.conv(x, 3, cout, name=name)
    return b.op("Relu", [h]) if act else h


def head(b, h, cin, name="head"):
    """a final Conv to 4 channels: its output is the (frozen) model output"""
    return b.conv(h, cin, 4, name=name)


def weight_shape(model, name):
    return next(tuple(t.dims) for t in model.graph.initializer if t.name == name)


# --- 1. Conv-BN-Relu-Conv ------------------------------------------------------------------------

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


# --- 2. residual Add -----------------------------------------------------------------------------

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


# --- 3. depthwise Conv -----------------------------------------------------------------------------

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


# --- 4. grouped Conv -------------------------------------------------------------------------------

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


# --- 5. ConvTranspose ------------------------------------------------------------------------------

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


# --- 6. Concat -------------------------------------------------------------------------------------

def test_concat_channels_then_conv():
    b = GraphBuilder()
    x = b.input("x", [3, 8, 8])
    p = b.op("Relu", [b.conv(x, 3, 4, name="conv_a")])
    q = b.op("Relu", [b.conv(x, 3, 6, name="conv_b")])
    c = b.op("Concat", [p, q], axis=1, name="cat")
    y = head(b, c, 10)
    res = assert_prunes(b.model([y]), [("conv_a_out", 1)], IMG, sizes=[10])
    # one group: the Concat output space is in_a ++ in_b (offset map)
    g = group_at(res.analysis, "cat_out", 1)
    assert group_at(res.analysis, "conv_b_out", 1) is g and group_at(res.analysis, "conv_a_out", 1) is g
    assert weight_shape(res.model, "head.weight")[1] == 5
    assert weight_shape(res.model, "conv_a.weight")[0] + weight_shape(res.model, "conv_b.weight")[0] == 5


def test_concat_with_model_input_is_partly_frozen():
    """DenseNet/U-Net style Concat(x, conv(x)): the input's channels are frozen, the conv's prune."""
    b = GraphBuilder()
    x = b.input("x", [3, 8, 8])
    p = b.op("Relu", [b.conv(x, 3, 8, name="conv_a")])
    c = b.op("Concat", [x, p], axis=1, name="cat")
    y = head(b, c, 11)
    res = assert_prunes(b.model([y]), [("cat_out", 1)], IMG, sizes=[11], shrinks=["conv_a.weight", "head.weight"])
    g = group_at(res.analysis, "cat_out", 1)
    assert g.frozen.sum() == 3 and any("model input" in r for r in g.reasons)
    kept = set(res.kept[g.id].tolist())
    frozen = set(np.flatnonzero(g.frozen).tolist())
    assert frozen <= kept
    assert weight_shape(res.model, "head.weight")[1] == 3 + weight_shape(res.model, "conv_a.weight")[0]


# --- 7. Split / Slice on channels --------------------------------------------------------------------

@pytest.mark.parametrize("form", ["opset13-input", "opset11-attr", "opset18-num_outputs", "opset18-uneven"])
def test_split_channels(form):
    opset = {"opset13-input": 13, "opset11-attr": 11}.get(form, 18)
    b = GraphBuilder(opset=opset)
    if form == "opset18-uneven":  # 7 channels into 2 outputs: [4, 3]
        h = stem(b, 7)
        u, v = b.op("Split", [h], n_out=2, axis=1, num_outputs=2, name="split")
        y = b.op("Add", [b.conv(u, 4, 4, name="conv_u"), b.conv(v, 3, 4, name="conv_v")])
        assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[7])
        return
    h = stem(b, 8)
    if form == "opset13-input":
        parts = b.op("Split", [h, b.const([3, 5])], n_out=2, axis=1, name="split")
    elif form == "opset11-attr":
        parts = b.op("Split", [h], n_out=2, axis=1, split=[3, 5], name="split")
    else:
        parts = b.op("Split", [h], n_out=2, axis=1, num_outputs=2, name="split")
    n0 = 3 if opset < 18 else 4
    u = b.conv(parts[0], n0, 4, name="conv_u")
    v = b.conv(parts[1], 8 - n0, 4, name="conv_v")
    y = b.op("Add", [u, v])
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    w_u, w_v = weight_shape(res.model, "conv_u.weight")[1], weight_shape(res.model, "conv_v.weight")[1]
    assert w_u + w_v == 4


def test_split_with_one_part_as_model_output():
    b = GraphBuilder(opset=13)
    h = stem(b, 8)
    u, v = b.op("Split", [h, b.const([3, 5])], n_out=2, axis=1, name="split")
    y = b.conv(v, 5, 4, name="conv_v")
    res = assert_prunes(b.model([u, y]), [("conv0_out", 1)], IMG, sizes=[8], shrinks=["conv0.weight", "conv_v.weight"])
    g = group_at(res.analysis, "conv0_out", 1)
    assert g.frozen.tolist() == [True] * 3 + [False] * 5
    assert weight_shape(res.model, "conv_v.weight")[1] == 3  # the ratio applies to the 5 free channels: round(2.5) = 2 removed


@pytest.mark.parametrize("form", ["opset13", "opset13-open-end", "opset9-attrs"])
def test_slice_channels(form):
    b = GraphBuilder(opset=9 if form == "opset9-attrs" else 13)
    h = stem(b, 8)
    if form == "opset13":
        s = b.op("Slice", [h, b.const([1]), b.const([7]), b.const([1])], name="slice")
    elif form == "opset13-open-end":  # exporters write x[:, -6:] as ends=INT64_MAX
        s = b.op("Slice", [h, b.const([-6]), b.const([2**63 - 1]), b.const([1]), b.const([1])], name="slice")
    else:
        s = b.op("Slice", [h], starts=[1], ends=[7], axes=[1], name="slice")
    n = 6
    y = head(b, s, n)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    g = group_at(res.analysis, "conv0_out", 1)
    assert group_at(res.analysis, "slice_out", 1) is g
    kept_in_slice = [c for c in res.kept[g.id] if (1 if form != "opset13-open-end" else 2) <= c < 8 - (form != "opset13-open-end")]
    assert weight_shape(res.model, "head.weight")[1] == len(kept_in_slice) < n


def test_strided_slice_on_channels_is_frozen():
    b = GraphBuilder(opset=13)
    h = stem(b, 8)
    s = b.op("Slice", [h, b.const([0]), b.const([8]), b.const([1]), b.const([2])], name="slice")
    y = head(b, b.op("Relu", [b.conv(s, 4, 6, name="conv1")]), 6)
    res = assert_prunes(b.model([y]), [("conv1_out", 1)], IMG, sizes=[6], frozen=[("conv0_out", 1), ("slice_out", 1)])
    assert any("strided Slice" in r for r in group_at(res.analysis, "conv0_out", 1).reasons)


# --- 8. Flatten / Reshape -> Gemm / MatMul -------------------------------------------------------------

def _flat_net(kind):
    b = GraphBuilder()
    x = b.input("x", [3, 2, 2])
    h = b.op("Relu", [b.conv(x, 3, 6, name="conv0")])
    if kind.startswith("flatten"):
        tb = 0 if kind.endswith("transB0") else 1
        f = b.op("Flatten", [h], axis=1, name="flat")
        z = b.op("Relu", [b.gemm(f, 24, 10, trans_b=tb, name="fc1")])
        y = b.gemm(z, 10, 5, trans_b=tb, name="fc2")
    else:
        shape = [-1, 24] if kind == "reshape-1" else [0, -1]
        f = b.op("Reshape", [h, b.const(shape)], name="reshape")
        z = b.op("Relu", [b.matmul(f, 24, 10, name="fc1")])
        y = b.matmul(z, 10, 5, name="fc2")
    return b.model([y])


@pytest.mark.parametrize("kind", ["flatten", "flatten-transB0", "reshape-1", "reshape0-1"])
def test_flatten_reshape_to_linear(kind):
    k_axis = 1 if kind == "flatten" else 0  # fc1.weight axis holding the 24 features
    res = assert_prunes(_flat_net(kind), [("conv0_out", 1), ("fc1.weight", 1 - k_axis)],
                        {"x": [2, 3, 2, 2]}, sizes=[6, 10])
    # block map: each removed channel takes its 2x2 = 4 features with it
    fc1 = weight_shape(res.model, "fc1.weight")
    assert fc1[k_axis] == 3 * 4
    g = group_at(res.analysis, "conv0_out", 1)
    m = next(m for m in g.members if m.tensor == "fc1.weight")
    assert np.array_equal(m.index_map, np.repeat(np.arange(6), 4))  # feature f -> channel f // (H*W)
    if kind.startswith("reshape"):  # the target shape's feature entry follows the kept width
        rs = next(n for n in res.model.graph.node if n.op_type == "Reshape")
        shape = next(onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer if t.name == rs.input[1])
        assert list(shape) == ([-1, 12] if kind == "reshape-1" else [0, -1])


def test_nhwc_flatten_modulo_map():
    """Keras-style: Transpose to NHWC, then Flatten: feature f belongs to channel f % C."""
    b = GraphBuilder()
    x = b.input("x", [3, 2, 2])
    h = b.op("Relu", [b.conv(x, 3, 6, name="conv0")])
    f = b.op("Flatten", [b.op("Transpose", [h], perm=[0, 2, 3, 1])], axis=1)
    y = b.gemm(b.op("Relu", [b.gemm(f, 24, 10, name="fc1")]), 10, 5, name="fc2")
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], {"x": [2, 3, 2, 2]}, sizes=[6])
    m = next(m for m in group_at(res.analysis, "conv0_out", 1).members if m.tensor == "fc1.weight")
    assert np.array_equal(m.index_map, np.tile(np.arange(6), 4))
    assert weight_shape(res.model, "fc1.weight") == (5, 12)  # (fc1's own 10 outputs prune too)


def test_flatten_with_batch_read_at_run_time():
    """TorchScript's x.view(x.size(0), -1): the target shape is Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [3, 2, 2])
    h = b.op("Relu", [b.conv(x, 3, 6, name="conv0")])
    n = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [h]), b.const(np.int64(0))], axis=0), b.const([0])])
    shape = b.op("Concat", [n, b.const([-1])], axis=0)
    f = b.op("Reshape", [h, shape], name="reshape")
    y = b.matmul(b.op("Relu", [b.matmul(f, 24, 10, name="fc1")]), 10, 5, name="fc2")
    model = b.model([y], output_shapes=[["N", 5]])
    res = assert_prunes(model, [("conv0_out", 1)], {"x": [2, 3, 2, 2]}, sizes=[6])
    assert weight_shape(res.model, "fc1.weight") == (12, 5)
    # the pruned model still takes any batch size
    from helpers import ort_run
    assert ort_run(res.model, {"x": np.ones((5, 3, 2, 2), np.float32)})[0].shape == (5, 5)


def test_matmul_constant_left_operand():
    """Y = W @ X on (N, C, L) activations (a 1x1 conv written as MatMul): W's rows are the output
    channels and its columns the input channels; the L axis is not a channel space."""
    b = GraphBuilder()
    x = b.input("x", [3, 16])
    h = b.op("Relu", [b.op("Conv", [x, b.weight((8, 3, 3), "c1.weight")], pads=[1, 1], name="c1")])
    m = b.op("Relu", [b.op("MatMul", [b.weight((6, 8), "mm.weight"), h], name="mm")])
    y = b.op("Conv", [m, b.weight((4, 6, 3), "c2.weight")], pads=[1, 1], name="c2")
    res = assert_prunes(b.model([y]), [("c1_out", 1), ("mm_out", 1)], {"x": [2, 3, 16]}, sizes=[8, 6])
    assert weight_shape(res.model, "mm.weight") == (3, 4)
    assert res.analysis.group_of("c1_out", 2) is None  # the length axis stays spatial


def test_reshape_with_channel_count_read_at_run_time():
    """x.view(x.size(0), x.size(1), -1).mean(2): the channel dim is read with Shape at run time."""
    b = GraphBuilder(opset=13)
    h = stem(b, 8)
    sh = b.op("Shape", [h])
    dims = [b.op("Unsqueeze", [b.op("Gather", [sh, b.const(np.int64(i))], axis=0), b.const([0])]) for i in (0, 1)]
    r = b.op("Reshape", [h, b.op("Concat", dims + [b.const([-1])], axis=0)], name="reshape")
    y = b.gemm(b.op("ReduceMean", [r], axes=[2], keepdims=0), 8, 5, name="fc")
    res = assert_prunes(b.model([y], output_shapes=[["N", 5]]), [("conv0_out", 1)], IMG, sizes=[8])
    assert group_at(res.analysis, "reshape_out", 1) is group_at(res.analysis, "conv0_out", 1)
    assert weight_shape(res.model, "fc.weight") == (5, 4)


# --- 9. ConvNeXt block (NHWC, LayerNorm over channels) ----------------------------------------------

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


# --- 10. squeeze-excitation -------------------------------------------------------------------------

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


# --- 11. hardswish ----------------------------------------------------------------------------------

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


# --- 12. PRelu / LeakyRelu ---------------------------------------------------------------------------

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


# --- 13. channel shuffle (ShuffleNetV2 unit) ---------------------------------------------------------

def _shuffle_net():
    b = GraphBuilder()
    h = stem(b, 8)
    p = b.op("Relu", [b.conv(h, 8, 4, name="branch_a")])
    q = b.op("Relu", [b.conv(h, 8, 4, name="branch_b")])
    c = b.op("Concat", [p, q], axis=1, name="cat")
    r = b.op("Reshape", [c, b.const([0, 2, 4, 8, 8])], name="shuffle_split")
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4], name="shuffle_t")
    s = b.op("Reshape", [t, b.const([0, 8, 8, 8])], name="shuffle_merge")
    u, v = b.op("Split", [s, b.const([4, 4])], n_out=2, axis=1, name="split")
    u = b.conv(u, 4, 4, name="conv_u")
    v = b.conv(v, 4, 4, name="conv_v")
    y = b.op("Concat", [u, v], axis=1)
    return b.model([y])


def test_channel_shuffle_shufflenet_unit():
    """Prunes soundly or is frozen with a reason; never a wrong model (the oracle checks)."""
    model = _shuffle_net()
    a = analyze_model(model, input_shapes=IMG)
    g = group_at(a, "branch_a_out", 1)
    if not g.prunable:
        assert g.reasons
        res = prune(model, ratio=0.5, latency=False, input_shapes=IMG)
        assert res.report.verification["passed"]
        return
    # the shuffle pairs channel j of branch a with channel j of branch b
    assert group_at(a, "branch_b_out", 1) is g and g.size == 4
    # (shrinks: at 0.5 one half of the Split may lose all its channels, so name the branch weights)
    res = assert_prunes(model, [("branch_a_out", 1)], IMG, sizes=[4], shrinks=["branch_a.weight", "branch_b.weight"])
    # 2 of 4 at ratio 0.5, or 3 when the guard keeps one channel in the Split half that would be empty
    assert weight_shape(res.model, "branch_a.weight")[0] == weight_shape(res.model, "branch_b.weight")[0] in (2, 3)
    assert all(0 not in t.dims for t in res.model.graph.initializer)
    cu, cv = weight_shape(res.model, "conv_u.weight")[1], weight_shape(res.model, "conv_v.weight")[1]
    assert cu + cv == 2 * weight_shape(res.model, "branch_a.weight")[0] and cu >= 1 and cv >= 1


def _shuffle(b, c, C, H=8):
    r = b.op("Reshape", [c, b.const([0, 2, C // 2, H, H])])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [t, b.const([0, C, H, H])])


def test_shufflenet_v2_units_with_identity_half():
    """Two real ShuffleNetV2 units: Split -> (identity | pw-dw-pw branch) -> Concat -> shuffle. The
    identity half carries the previous unit's channels, so shuffles couple them across units."""
    b = GraphBuilder()
    h = stem(b, 8)
    for i in (1, 2):
        s1, s2 = b.op("Split", [h, b.const([4, 4])], n_out=2, axis=1, name=f"split{i}")
        z = b.op("Relu", [b.conv(s2, 4, 4, k=1, name=f"u{i}_pw1")])
        z = b.conv(z, 4, 4, group=4, name=f"u{i}_dw")
        z = b.op("Relu", [b.conv(z, 4, 4, k=1, name=f"u{i}_pw2")])
        h = _shuffle(b, b.op("Concat", [s1, z], axis=1, name=f"cat{i}"), 8)
    y = head(b, h, 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1), ("u1_dw_out", 1), ("u2_dw_out", 1)], IMG,
                        shrinks=["conv0.weight", "u1_dw.weight", "u2_dw.weight"])
    assert weight_shape(res.model, "u1_dw.weight") == (2, 1, 3, 3)


# --- 14. spatial ops: Resize, pooling, Pad, ReduceMean over spatial axes ------------------------------

def _spatial(kind):
    opset = {"resize-sizes": 13, "resize-sizes-axes": 18, "reduce-keep1": 18, "reduce-keep0": 13,
             "upsample-opset9": 9, "resize-opset11-sizes": 11, "pad-axes-opset18": 18}.get(kind, 13)
    b = GraphBuilder(opset=opset)
    h = stem(b, 8)
    c_out = None
    if kind == "upsample-opset9":
        z = b.op("Upsample", [h, b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    elif kind == "resize-opset11-sizes":  # empty roi/scales constants, as exporters write them
        empty = b.const(np.zeros(0, np.float32))
        z = b.op("Resize", [h, empty, empty, b.const([1, 8, 12, 12])], mode="nearest")
    elif kind == "gap-flatten":
        z = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)
        c_out = b.gemm(z, 8, 5, name="fc")
    elif kind == "gap-squeeze":
        z = b.op("Squeeze", [b.op("GlobalMaxPool", [h]), b.const([2, 3])])
        c_out = b.matmul(z, 8, 5, name="fc")
    elif kind == "unsqueeze":
        z = b.op("ReduceMean", [h], axes=[2, 3], keepdims=0)
        z = b.op("Relu", [b.gemm(z, 8, 6, name="fc")])
        c_out = b.conv(b.op("Unsqueeze", [z, b.const([2, 3])]), 6, 4, k=1, name="head")
    elif kind == "resize-scales":
        z = b.op("Resize", [h, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    elif kind == "resize-sizes":
        z = b.op("Resize", [h, "", "", b.const([1, 8, 16, 16])], mode="linear")
    elif kind == "resize-sizes-axes":
        z = b.op("Resize", [h, "", "", b.const([16, 16])], axes=[2, 3], mode="linear")
    elif kind == "maxpool":
        z = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    elif kind == "avgpool":
        z = b.op("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    elif kind == "pad":
        z = b.op("Pad", [h, b.const([0, 0, 1, 2, 0, 0, 2, 1])], mode="reflect")
    elif kind == "pad-axes-opset18":
        z = b.op("Pad", [h, b.const([1, 1, 1, 1]), "", b.const([2, 3])], mode="constant")
    elif kind == "tile":
        z = b.op("Tile", [h, b.const([1, 1, 2, 2])])
    elif kind == "reduce-keep1":
        z = b.op("ReduceMean", [h, b.const([2, 3])], keepdims=1)
    elif kind == "reduce-keep0":
        z = b.op("ReduceMean", [h], axes=[2, 3], keepdims=0)
        c_out = b.gemm(z, 8, 5, name="fc")
    y = c_out or head(b, z, 8)
    return b.model([y])


@pytest.mark.parametrize("kind", ["resize-scales", "resize-sizes", "resize-sizes-axes", "resize-opset11-sizes",
                                  "upsample-opset9", "maxpool", "avgpool", "pad", "pad-axes-opset18", "tile",
                                  "reduce-keep1", "reduce-keep0",
                                  "gap-flatten", "gap-squeeze", "unsqueeze"])
def test_spatial_ops(kind):
    shapes = {"x": [1, 3, 8, 8]} if "sizes" in kind and "axes" not in kind else IMG
    res = assert_prunes(_spatial(kind), [("conv0_out", 1)], shapes, sizes=[8])
    if kind in ("resize-sizes", "resize-opset11-sizes"):  # the channel entry of `sizes` was rewritten
        rs = next(n for n in res.model.graph.node if n.op_type == "Resize")
        sizes = next(onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer if t.name == rs.input[3])
        assert list(sizes) == ([1, 4, 16, 16] if kind == "resize-sizes" else [1, 4, 12, 12])
    if kind == "unsqueeze":
        assert weight_shape(res.model, "head.weight") == (4, 3, 1, 1)


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


@pytest.mark.parametrize("kind", ["pad-channels", "resize-channels"])
def test_spatial_ops_touching_channels_are_frozen(kind):
    b = GraphBuilder(opset=13)
    h = stem(b, 8)
    if kind == "pad-channels":
        z, n, why = b.op("Pad", [h, b.const([0, 1, 0, 0, 0, 1, 0, 0])], name="op"), 10, "Pad pads a channel axis"
    else:
        z = b.op("Resize", [h, "", b.const(np.array([1, 2, 1, 1], np.float32))], mode="nearest", name="op")
        n, why = 16, "Resize scales a channel axis"
    y = head(b, b.op("Relu", [b.conv(z, n, 6, name="conv1")]), 6)
    res = assert_prunes(b.model([y]), [("conv1_out", 1)], IMG, sizes=[6], frozen=[("conv0_out", 1), ("op_out", 1)])
    assert any(why in r for r in group_at(res.analysis, "conv0_out", 1).reasons)


# --- 15. normalizations over the channel axis ---------------------------------------------------------

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


# --- 16. InstanceNormalization -------------------------------------------------------------------------

def test_instance_norm():
    b = GraphBuilder()
    h = stem(b, 8, act=False)
    n = b.op("InstanceNormalization", [h, b.weight((8,), "in.scale", positive=True), b.weight((8,), "in.bias")],
             epsilon=1e-5)
    y = head(b, b.op("Relu", [n]), 8)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    assert weight_shape(res.model, "in.scale") == (4,)


# --- 17. custom-domain op; GroupNormalization ------------------------------------------------------------

def test_custom_domain_op_freezes_only_its_groups():
    b = GraphBuilder()
    h = stem(b, 8)
    c = b.op("Mystery", [h], domain="com.example", name="mystery")
    z = b.op("Relu", [b.conv(c, 8, 6, name="conv1")])
    y = head(b, z, 6)
    model = b.model([y], output_shapes=[["N", 4, 8, 8]])
    # a custom op has no shape inference: give the analyzer its output shape
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("mystery_out", onnx.TensorProto.FLOAT,
                                                                     ["N", 8, 8, 8]))
    a = analyze_model(model, input_shapes=IMG)
    g0 = group_at(a, "conv0_out", 1)
    assert not g0.prunable
    assert any("Mystery" in r and "com.example" in r for r in g0.reasons), g0.reasons
    g_in = group_at(a, "mystery_out", 1)
    assert not g_in.prunable and any("Mystery" in r for r in g_in.reasons)
    g1 = group_at(a, "conv1_out", 1)
    assert g1.prunable and g1.size == 6 and not g1.reasons
    assert [g.id for g in a.prunable_groups] == [g1.id]


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


# --- 18. exclusion ----------------------------------------------------------------------------------------

def test_exclude_freezes_groups_the_node_touches():
    b = GraphBuilder()
    h = stem(b, 8, name="conv1")
    h = b.op("Relu", [b.conv(h, 8, 8, name="conv2")])
    h = b.op("Relu", [b.conv(h, 8, 8, name="conv3")])
    y = head(b, h, 8)
    model = b.model([y])
    view = build_view(normalize(model), IMG)
    free = analyze(view)
    assert {g.name for g in free.prunable_groups} == {"conv1", "conv2", "conv3"}
    a = analyze(view, exclude=["conv2*"])
    for t in ("conv1_out", "conv2_out"):  # conv2's input and output groups
        g = group_at(a, t, 1)
        assert not g.prunable and any("excluded" in r and "conv2" in r for r in g.reasons), g.reasons
    assert group_at(a, "conv3_out", 1).prunable
    assert_prunes(model, [("conv3_out", 1)], IMG, frozen=[("conv1_out", 1), ("conv2_out", 1)], exclude=["conv2*"])


# --- 19. shape constants shared by layers pruned to different widths -----------------------------------

def _rewrite_and_verify(model, shapes, choose):
    """Analyze, keep the channels `choose(analysis)` picks per group ({group id: kept positions},
    non-uniform on purpose), rewrite, and check the result against the mask oracle."""
    from onnxprune.analysis.graph import random_feeds
    from onnxprune.verify.oracle import compare_models, masked_model
    from onnxprune.transform.rewrite import rewrite

    view = build_view(normalize(model), shapes)
    a = analyze(view)
    kept = {g: np.asarray(k) for g, k in choose(a).items()}
    pruned = rewrite(a, kept)
    onnx.checker.check_model(pruned, full_check=True)
    r = compare_models(masked_model(a, kept), pruned, [random_feeds(view, seed=s) for s in range(2)])
    assert r.passed, (r.max_abs_diff, r.tolerance)
    return pruned


def test_reshape_shape_shared_by_layers_of_different_widths():
    """Two layers reshape with ONE shape tensor each way (Concat of a run-time batch dim and
    constants, as dynamo exports do); when they keep different widths each Reshape needs its own
    copy, when they keep the same width they keep sharing it."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [16, 8])
    n = b.op("Slice", [b.op("Shape", [x]), b.const([0]), b.const([1])])  # batch, symbolic
    split = b.op("Concat", [n, b.const([16]), b.const([3]), b.const([4])], axis=0, name="split_shape")
    merge = b.op("Concat", [n, b.const([16]), b.const([12])], axis=0, name="merge_shape")
    outs = []
    for i in range(2):
        h = b.matmul(x, 8, 12, name=f"fc{i}")
        h = b.op("Relu", [b.op("Reshape", [h, split], name=f"split{i}")])
        outs.append(b.matmul(b.op("Reshape", [h, merge], name=f"merge{i}"), 12, 8, name=f"proj{i}"))
    model = b.model([b.op("Add", outs)])
    shapes = {"x": [2, 16, 8]}

    def groups(a):
        return group_at(a, "fc0_out", 2).id, group_at(a, "fc1_out", 2).id

    def concats(m):
        return sum(n.op_type == "Concat" for n in m.graph.node)

    pruned = _rewrite_and_verify(model, shapes, lambda a: dict(zip(groups(a), ([0, 1, 3], [2]))))
    assert concats(pruned) == 4  # one private split/merge shape per layer
    pruned = _rewrite_and_verify(model, shapes, lambda a: dict(zip(groups(a), ([0, 1, 3], [0, 2, 3]))))
    assert concats(pruned) == 2  # same widths: still shared
    pruned = _rewrite_and_verify(model, shapes, lambda a: {groups(a)[1]: [1, 2]})  # one layer only
    assert concats(pruned) == 4
    # and through the whole pipeline (equal widths)
    assert_prunes(model, [("fc0_out", 2), ("fc1_out", 2)], shapes, sizes=[4, 4])


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


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_pixel_shuffle(mode):
    """conv (4 x 6 channels) -> DepthToSpace(2) -> conv: a kept output channel keeps its 4 inputs."""
    b = GraphBuilder()
    h = stem(b, 24)
    d = b.op("DepthToSpace", [h], blocksize=2, mode=mode)
    y = head(b, b.op("Relu", [b.conv(d, 6, 8, name="c2")]), 8)
    res = assert_prunes(b.model([y], output_shapes=[["N", 4, 16, 16]]), [("conv0_out", 1)], IMG, sizes=[6])
    k = len(res.kept[group_at(res.analysis, "conv0_out", 1).id])
    assert weight_shape(res.model, "conv0.weight")[0] == 4 * k and weight_shape(res.model, "c2.weight")[1] == k


def test_space_to_depth():
    b = GraphBuilder()
    h = stem(b, 6)
    d = b.op("SpaceToDepth", [h], blocksize=2)
    y = head(b, b.op("Relu", [b.conv(d, 24, 8, name="c2")]), 8)
    res = assert_prunes(b.model([y], output_shapes=[["N", 4, 4, 4]]), [("conv0_out", 1)], IMG, sizes=[6])
    k = len(res.kept[group_at(res.analysis, "conv0_out", 1).id])
    assert weight_shape(res.model, "c2.weight")[1] == 4 * k


@pytest.mark.parametrize("sel", [[0, 2, 4, 6, 1], [7, 6, 5, 4, 3, 2, 1, 0], [3, 3, 5, -1]])
def test_gather_selects_channels(sel):
    """conv (8) -> Gather(axis=1, constant indices) -> conv: selected channels are tied to their
    source; unselected ones go with the producer; the indices are rewritten."""
    b = GraphBuilder()
    h = stem(b, 8)
    idx = b.const(np.array(sel, np.int64), "sel")
    g = b.op("Gather", [h, idx], axis=1)
    y = head(b, b.op("Relu", [b.conv(g, len(sel), 6, name="c2")]), 6)
    res = assert_prunes(b.model([y]), [("conv0_out", 1)], IMG, sizes=[8])
    new = next(numpy_helper_to_array(t) for t in res.model.graph.initializer if t.name.startswith("sel"))
    k = len(res.kept[group_at(res.analysis, "conv0_out", 1).id])
    assert new.max() < k and len(new) == weight_shape(res.model, "c2.weight")[1] < len(sel) + 1


def numpy_helper_to_array(t):
    return onnx.numpy_helper.to_array(t)


def test_ratio_applies_to_the_free_channels_of_a_partly_frozen_group():
    """Concat of the model input (frozen) with a conv: --ratio 0.25 removes a quarter of the conv's
    channels, not a quarter of the whole concatenated axis."""
    from onnxprune.planning.ratio import n_remove

    assert n_remove(40, 8, 0.25) == 2 and n_remove(40, 8, 0.9) == 7 and n_remove(8, 8, 1.0) == 7
    b = GraphBuilder()
    x = b.input("x", [32, 8, 8])
    a = b.op("Relu", [b.conv(x, 32, 8, name="a")])
    y = b.conv(b.op("Concat", [x, a], axis=1), 40, 4, k=1, name="mix")
    res = assert_prunes(b.model([y]), [("a_out", 1)], {"x": [2, 32, 8, 8]}, ratio=0.25)
    assert weight_shape(res.model, "a.weight")[0] == 6
