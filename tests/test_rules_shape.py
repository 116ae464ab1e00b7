"""Layout ops (rules/shape.py): Concat, Split, Slice, Gather, Reshape with run-time shapes, channel
shuffles, shape constants shared by layers of different widths.

What every case asserts: see tests/rule_cases.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from rule_cases import IMG, head, stem, weight_shape

from onnxprune import analyze, analyze_model, prune
from onnxprune.analysis.graph import build_view
from onnxprune.model.normalize import normalize


# --- Concat -------------------------------------------------------------------------------------

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


# --- Split / Slice on channels --------------------------------------------------------------------

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


# --- channel shuffle (ShuffleNetV2 unit) ---------------------------------------------------------

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


# --- shape constants shared by layers pruned to different widths -----------------------------------

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


def test_shuffle_after_a_grouped_conv_keeps_the_per_group_piece():
    """ShuffleNet v1: a grouped conv (4 groups of 4) then a channel shuffle. Its output is laid out
    (group, channel in group), and the conv ties in-group positions across groups, so the Reshape's
    per-group piece carries the channels (the conv rule's output_channel_groups says how many groups)."""
    b = GraphBuilder()
    h = stem(b, 16)
    gc = b.op("Relu", [b.conv(h, 16, 16, group=4, name="gconv")])
    r = b.op("Reshape", [gc, b.const([0, 4, 4, 8, 8])], name="shuffle_split")
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4], name="shuffle_t")
    s = b.op("Reshape", [t, b.const([0, 16, 8, 8])], name="shuffle_merge")
    y = head(b, b.op("Relu", [b.conv(s, 16, 8, name="after")]), 8)
    res = assert_prunes(b.model([y]), [("gconv_out", 1)], IMG, sizes=[4], shrinks=["gconv.weight", "after.weight"])
    assert weight_shape(res.model, "gconv.weight")[0] == 8  # 2 of 4 in every group
