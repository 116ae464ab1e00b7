"""Ops no rule knows (custom domains) and excluded nodes: they freeze only the groups they touch.

What every case asserts: see tests/rule_cases.py."""
from __future__ import annotations

import onnx
from helpers import GraphBuilder, assert_prunes, group_at
from rule_cases import IMG, head, stem

from onnxprune import analyze, analyze_model
from onnxprune.analysis.graph import build_view
from onnxprune.model.normalize import normalize


# --- custom-domain op ---------------------------------------------------------------------------------

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


# --- exclusion ----------------------------------------------------------------------------------------

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
