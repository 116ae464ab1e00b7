"""Graph shapes other exporters write (built with onnx.helper, no torch): tf2onnx's NHWC inputs
with Transposes around NCHW convs, a Keras-style channels-last head, and old-style graphs."""
from __future__ import annotations

from helpers import GraphBuilder, assert_prunes

IMG_NHWC = {"x": [2, 8, 8, 3]}


def test_tf2onnx_nhwc_input_transposed_convs_and_channels_last_head():
    b = GraphBuilder(opset=13)
    x = b.input("x", [8, 8, 3])  # N, H, W, C
    t = b.op("Transpose", [x], perm=[0, 3, 1, 2])
    y = b.op("Relu", [b.conv(t, 3, 8, name="conv1")])
    y = b.op("Relu", [b.conv(y, 8, 6, name="conv2")])
    z = b.op("Transpose", [y], perm=[0, 2, 3, 1])  # back to NHWC, as tf2onnx leaves it
    z = b.op("ReduceMean", [z], axes=[1, 2], keepdims=0)
    out = b.matmul(z, 6, 4, name="dense")
    res = assert_prunes(b.model([out]), [("conv1_out", 1), ("conv2_out", 1)], IMG_NHWC)
    assert res.report.pruned.macs < res.report.baseline.macs


def test_channels_last_flatten_into_dense():
    """Keras Flatten on NHWC: feature f belongs to channel f % C (a modulo map)."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [8, 8, 3])
    t = b.op("Transpose", [x], perm=[0, 3, 1, 2])
    y = b.op("Relu", [b.conv(t, 3, 8, name="conv1", strides=[2, 2])])
    z = b.op("Transpose", [y], perm=[0, 2, 3, 1])
    f = b.op("Reshape", [z, b.const([-1, 4 * 4 * 8])])
    out = b.matmul(f, 128, 4, name="dense")
    assert_prunes(b.model([out]), [("conv1_out", 1)], IMG_NHWC)
