"""One mask-oracle test per op rule, on small ONNX graphs built with onnx.helper (no torch).

Each case puts the op between real convs/gemms so its channels are prunable, prunes at 0.5 and
asserts through ``assert_prunes`` (tests/helpers.py) that: the group under test is found with the
expected size and is prunable; channels were really removed and weights shrank; the mask oracle
passed; the pruned model passes the full ONNX checker, runs in ONNX Runtime and differs from the
unmasked original. Cases that cannot be pruned soundly are asserted frozen, with a reason.
"""
from __future__ import annotations

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
