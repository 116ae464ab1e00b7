"""Gemm and MatMul (rules/linear.py): Flatten/Reshape into linear layers (block and modulo maps), a
constant left operand.

What every case asserts: see tests/rule_cases.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from rule_cases import weight_shape


# --- Flatten / Reshape -> Gemm / MatMul -------------------------------------------------------------

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
