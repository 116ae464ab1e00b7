"""Control flow (If/Loop) whose subgraphs read tensors of the enclosing graph without listing them as
node inputs (outer-scope references). Such a read is an input of the node like any other: the
groups it touches freeze with a reason naming the node; every other group still prunes, passes the
mask oracle and the pruned model runs in ONNX Runtime on every branch."""
from __future__ import annotations

import numpy as np
import onnx
from helpers import GraphBuilder, assert_prunes, group_at, ort_run
from onnx import TensorProto, helper

from onnxprune import analyze_model
from onnxprune.analysis.graph import build_view, subgraph_outer_refs
from onnxprune.verify.oracle import compare_models, masked_model

IMG = {"x": [1, 3, 8, 8]}


def vi(name, shape=None, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def sign_cond(b, x):
    """If condition: sum(x) > 0 (so a test can drive either branch with +|x| / -|x|)."""
    s = b.op("ReduceSum", [x], keepdims=0, name="sum_x")
    return b.op("Greater", [s, b.const(np.float32(0))], name="gt")


def both_branches_match_oracle(res, model):
    """The pruned model equals the masked original on inputs that take each branch, and runs."""
    rng = np.random.default_rng(5)
    x = np.abs(rng.standard_normal(IMG["x"])).astype(np.float32) + 0.1
    feeds = [{"x": x}, {"x": -x}]
    r = compare_models(masked_model(res.analysis, res.kept), res.model, feeds)
    assert r.passed, (r.max_abs_diff, r.tolerance)
    for f in feeds:
        for o, p in zip(ort_run(model, f), ort_run(res.model, f)):
            assert o.shape == p.shape


def if_model():
    """conv1 -> relu (r1) feeds conv4 (output 2) and conv2 -> relu (r2); the If branches read r2
    (Relu / Neg) from the outer scope; conv3 after the If."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [3, 8, 8], batch=1)
    r1 = b.op("Relu", [b.conv(x, 3, 8, name="conv1")], name="relu1")
    r2 = b.op("Relu", [b.conv(r1, 8, 12, name="conv2")], name="relu2")
    then_g = helper.make_graph([helper.make_node("Relu", [r2], ["t_out"], name="then_relu")], "then", [],
                               [vi("t_out", [1, 12, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", [r2], ["e_out"], name="else_neg")], "else", [],
                               [vi("e_out", [1, 12, 8, 8])])
    iff = b.op("If", [sign_cond(b, x)], then_branch=then_g, else_branch=else_g, name="branch")
    y = b.conv(iff, 12, 4, k=1, name="conv3")
    y2 = b.conv(r1, 8, 5, k=1, name="conv4")
    return b.model([y, y2])


def test_graph_view_lists_outer_scope_reads_as_inputs():
    m = if_model()
    n = next(n for n in m.graph.node if n.op_type == "If")
    assert subgraph_outer_refs(n) == ["relu2_out"]
    view = build_view(m, IMG)
    k = view.nodes.index(n)
    assert (k, -1) in view.consumers["relu2_out"]
    assert view.implicit[k] == ["relu2_out"]
    assert k in set(view.nx_graph().successors(view.producer["relu2_out"]))


def test_if_branch_reading_outer_activation_freezes_only_its_group():
    m = if_model()
    a = analyze_model(m, input_shapes=IMG)
    g2 = group_at(a, "conv2_out", 1)
    assert not g2.prunable
    assert any("If 'branch'" in r and "inside a subgraph" in r and "relu2_out" in r for r in g2.reasons), g2.reasons
    assert group_at(a, "conv1_out", 1).prunable
    assert [g.name for g in a.prunable_groups] == ["conv1"]
    res = assert_prunes(m, [("conv1_out", 1)], IMG, sizes=[8], frozen=[("conv2_out", 1)])
    both_branches_match_oracle(res, m)


def test_loop_body_reading_outer_activation_freezes_only_its_group():
    """The Loop body reduces over the channels of r1 (an outer tensor): conv1's group freezes;
    an unrelated conv chain still prunes."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [3, 8, 8], batch=1)
    r1 = b.op("Relu", [b.conv(x, 3, 8, name="conv1")], name="relu1")
    r2 = b.op("Relu", [b.conv(r1, 8, 12, name="conv2")], name="relu2")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("ReduceMean", [r1], ["r1m"], axes=[1], keepdims=1),
         helper.make_node("Add", ["v_in", "r1m"], ["v_out"])],
        "body", [vi("it", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("v_in", [1, 12, 8, 8])],
        [vi("cond_out", [], TensorProto.BOOL), vi("v_out", [1, 12, 8, 8])])
    lv = b.op("Loop", [b.const(np.int64(2)), b.const(np.array(True), dtype=bool), r2], body=body, name="loop")
    y = b.conv(lv, 12, 4, k=1, name="conv3")
    z = b.op("Relu", [b.conv(x, 3, 6, name="conv5")])
    y2 = b.conv(z, 6, 5, k=1, name="conv6")
    m = b.model([y, y2], output_shapes=[[1, 4, 8, 8], [1, 5, 8, 8]])  # inference stops at the Loop
    a = analyze_model(m, input_shapes=IMG)
    g1 = group_at(a, "conv1_out", 1)
    assert not g1.prunable
    assert any("Loop 'loop'" in r and "reads 'relu1_out' inside a subgraph" in r for r in g1.reasons), g1.reasons
    assert [g.name for g in a.prunable_groups] == ["conv5"]
    assert_prunes(m, [("conv5_out", 1)], IMG, sizes=[6], frozen=[("conv1_out", 1), ("conv2_out", 1)])


def test_nested_subgraph_reads_outer_activation():
    """An If inside a Loop body reads r1 two scopes up: the Loop is its reader."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [3, 8, 8], batch=1)
    r1 = b.op("Relu", [b.conv(x, 3, 8, name="conv1")], name="relu1")
    r2 = b.op("Relu", [b.conv(r1, 8, 8, name="conv2")], name="relu2")
    inner_then = helper.make_graph([helper.make_node("Relu", [r1], ["it_out"])], "it", [], [vi("it_out", [1, 8, 8, 8])])
    inner_else = helper.make_graph([helper.make_node("Neg", [r1], ["ie_out"])], "ie", [], [vi("ie_out", [1, 8, 8, 8])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("If", ["cond_in"], ["inner"], then_branch=inner_then, else_branch=inner_else),
         helper.make_node("Add", ["v_in", "inner"], ["v_out"])],
        "body", [vi("it", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("v_in", [1, 8, 8, 8])],
        [vi("cond_out", [], TensorProto.BOOL), vi("v_out", [1, 8, 8, 8])])
    lv = b.op("Loop", [b.const(np.int64(2)), b.const(np.array(True), dtype=bool), r2], body=body, name="loop")
    y = b.conv(lv, 8, 4, k=1, name="conv3")
    z = b.op("Relu", [b.conv(x, 3, 6, name="conv5")])
    m = b.model([y, b.conv(z, 6, 5, k=1, name="conv6")], output_shapes=[[1, 4, 8, 8], [1, 5, 8, 8]])
    a = analyze_model(m, input_shapes=IMG)
    g1 = group_at(a, "conv1_out", 1)
    assert not g1.prunable and any("Loop 'loop'" in r and "inside a subgraph" in r for r in g1.reasons)
    assert_prunes(m, [("conv5_out", 1)], IMG, frozen=[("conv1_out", 1)])


def test_weight_read_inside_subgraph_is_frozen_not_sliced():
    """conv4's weight is also read inside a branch (scaled by a run-time value, so nothing folds it):
    slicing it would break the branch, so the groups of its axes freeze; the rest prunes."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [3, 8, 8], batch=1)
    r1 = b.op("Relu", [b.conv(x, 3, 8, name="conv1")], name="relu1")
    y2 = b.conv(r1, 8, 5, k=1, name="conv4")
    s = b.op("ReduceMean", [x], keepdims=0, name="mean_x")
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["conv4.weight", s], ["wm"]),
         helper.make_node("ReduceSum", ["wm"], ["ws"], keepdims=0),
         helper.make_node("Add", [y2, "ws"], ["t_out"])], "then", [], [vi("t_out", [1, 5, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", [y2], ["e_out"])], "else", [], [vi("e_out", [1, 5, 8, 8])])
    iff = b.op("If", [sign_cond(b, x)], then_branch=then_g, else_branch=else_g, name="branch")
    z = b.op("Relu", [b.conv(x, 3, 6, name="conv5")])
    m = b.model([iff, b.conv(z, 6, 5, k=1, name="conv6")])
    a = analyze_model(m, input_shapes=IMG)
    g1 = group_at(a, "conv1_out", 1)
    assert not g1.prunable and any("reads 'conv4.weight' inside a subgraph" in r for r in g1.reasons), g1.reasons
    res = assert_prunes(m, [("conv5_out", 1)], IMG, frozen=[("conv1_out", 1)])
    both_branches_match_oracle(res, m)


def test_initializer_used_only_inside_a_subgraph_survives():
    """A constant read only inside a branch is not dead: the pruned model still has it in scope."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [3, 8, 8], batch=1)
    r1 = b.op("Relu", [b.conv(x, 3, 8, name="conv1")], name="relu1")
    y2 = b.conv(r1, 8, 5, k=1, name="conv4")
    s = b.op("ReduceMean", [x], keepdims=0, name="mean_x")
    k = b.const(np.float32(0.5), name="inner_only")
    then_g = helper.make_graph([helper.make_node("Mul", [s, k], ["t_out"])], "then", [], [vi("t_out", [])])
    else_g = helper.make_graph([helper.make_node("Neg", [s], ["e_out"])], "else", [], [vi("e_out", [])])
    iff = b.op("If", [sign_cond(b, x)], then_branch=then_g, else_branch=else_g, name="branch")
    m = b.model([b.op("Add", [y2, iff], name="add")])
    res = assert_prunes(m, [("conv1_out", 1)], IMG)
    onnx.checker.check_model(res.model, full_check=True)
    both_branches_match_oracle(res, m)
