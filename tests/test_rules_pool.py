"""Spatial ops (rules/pool.py): pooling, Pad, Resize/Upsample, Tile/Reduce over spatial axes,
DepthToSpace/SpaceToDepth.

What every case asserts: see tests/rule_cases.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from rule_cases import IMG, head, stem, weight_shape


# --- spatial ops: Resize, pooling, Pad, ReduceMean over spatial axes ------------------------------

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
