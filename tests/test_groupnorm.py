"""Failure class 3 of issue #14: GroupNormalization with one group is a LayerNorm over (C, H, W)
(PoolFormer-style blocks). Exported as the op itself (opset 18) or lowered by exporters to
Reshape(N, 1, C*H*W) -> InstanceNormalization -> Reshape back -> per-channel Mul/Add, its
statistics see only the kept channels after pruning; the mask oracle computes them over the kept
channels too. Before, the lowered form failed verification (pruned vs masked: 1.4e-1)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import GraphBuilder, assert_prunes, feeds_for, group_at, ort_run

from onnxprune import analyze_model, prune

IMG = {"x": [2, 3, 8, 8]}


def block(b, h, c, lowered: bool, groups: int = 1, opset: int = 17):
    if lowered:
        r = b.op("Reshape", [h, b.const([0, groups, -1])], name="gn_reshape")
        n = b.op("InstanceNormalization", [r, b.const(np.ones(groups, np.float32)),
                                           b.const(np.zeros(groups, np.float32))], epsilon=1e-5, name="gn_inorm")
        r2 = b.op("Reshape", [n, b.op("Shape", [h], name="gn_shape")], name="gn_back")
        g = b.op("Mul", [r2, b.weight((c, 1, 1), "gn.gamma", positive=True)], name="gn_mul")
        return b.op("Add", [g, b.weight((c, 1, 1), "gn.beta", scale=0.5)], name="gn_add")
    # opset 18: scale and bias are per group
    return b.op("GroupNormalization", [h, b.weight((groups,), "gn.scale", positive=True),
                                       b.weight((groups,), "gn.bias", scale=0.5)],
                num_groups=groups, epsilon=1e-5, name="gn")


def poolformer_like(lowered: bool, groups: int = 1):
    """conv1 -> relu -> GroupNorm -> + residual -> head conv: the norm's channels are conv1's."""
    b = GraphBuilder(opset=17 if lowered else 18)
    x = b.input("x", [3, 8, 8])
    h = b.op("Relu", [b.conv(x, 3, 16, name="conv1")], name="relu1")
    y = b.op("Add", [block(b, h, 16, lowered, groups), h], name="res")
    return b.model([b.conv(y, 16, 4, name="head")], output_shapes=[["N", 4, 8, 8]])


def test_one_group_lowered_prunes_and_verifies():
    res = assert_prunes(poolformer_like(True), [("relu1_out", 1)], IMG, sizes=[16],
                        shrinks=["conv1.weight", "head.weight", "gn.gamma", "gn.beta"])
    assert res.report.verification["passed"]


def test_one_group_op_prunes_and_verifies():
    """GroupNormalization-18 itself (the ONNX checker calls the op deprecated, so assert_prunes'
    full check is left out; ONNX Runtime runs it)."""
    model = poolformer_like(False)
    res = prune(model, ratio=0.5, latency=False, input_shapes=IMG)
    g = group_at(res.analysis, "relu1_out", 1)
    assert g.prunable and len(res.kept[g.id]) == 8
    assert res.report.verification["passed"]
    dims = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    assert dims["conv1.weight"] == (8, 3, 3, 3) and dims["head.weight"] == (4, 8, 3, 3)
    feeds = feeds_for(model, IMG)
    (orig,), (pruned,) = ort_run(model, feeds), ort_run(res.model, feeds)
    assert orig.shape == pruned.shape and not np.allclose(orig, pruned)


def test_the_oracle_normalizes_over_kept_channels_only():
    """The analysis marks the norm as normalizing over the channels (else the oracle would zero
    removed channels and still count them in the mean: the failure of the issue)."""
    a = analyze_model(poolformer_like(True), input_shapes=IMG)
    k = next(i for i, n in enumerate(a.view.nodes) if n.op_type == "InstanceNormalization")
    assert ("gn_reshape_out", 2) in a.node_results[k].normalizes
    a = analyze_model(poolformer_like(False), input_shapes=IMG)
    k = next(i for i, n in enumerate(a.view.nodes) if n.op_type == "GroupNormalization")
    assert ("relu1_out", 1) in a.node_results[k].normalizes


def test_more_groups_freeze_with_a_reason():
    a = analyze_model(poolformer_like(False, groups=4), input_shapes=IMG)
    g = group_at(a, "relu1_out", 1)
    assert not g.prunable
    assert any("num_groups > 1" in r for r in g.reasons), g.reasons
