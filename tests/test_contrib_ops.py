"""ONNX Runtime contrib ops (com.microsoft) as its transformer optimizer writes them: BiasGelu /
FastGelu in the MLP, SkipLayerNormalization (residual Add fused into LayerNorm)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_prunes, group_at
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxprune.api import analyze_model

rng = np.random.default_rng(0)


def w(*shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def mlp_block(gelu="BiasGelu"):
    """x [N, 8, 16] -> MatMul (stream 24) -> MLP (48, contrib GELU) -> SkipLayerNormalization(mlp, skip =
    stream, gamma, beta, bias) -> MatMul 24 -> 6."""
    nodes = [h.make_node("MatMul", ["x", "Win"], ["s"]), h.make_node("MatMul", ["s", "W1"], ["f1"])]
    if gelu == "BiasGelu":
        nodes.append(h.make_node("BiasGelu", ["f1", "b1"], ["g"], domain="com.microsoft"))
    else:
        nodes.append(h.make_node("FastGelu", ["f1", "b1"], ["g"], domain="com.microsoft"))
    nodes += [h.make_node("MatMul", ["g", "W2"], ["f2"]),
              h.make_node("SkipLayerNormalization", ["f2", "s", "gamma", "beta", "bias"], ["ln", "", "", "sum"],
                          domain="com.microsoft", epsilon=1e-5),
              h.make_node("Add", ["ln", "sum"], ["both"]),
              h.make_node("MatMul", ["both", "Wout"], ["y"])]
    inits = [nh.from_array(a, n) for n, a in (("Win", w(16, 24)), ("W1", w(24, 48)), ("b1", w(48)), ("W2", w(48, 24)),
                                              ("gamma", 1 + w(24)), ("beta", w(24)), ("bias", w(24)),
                                              ("Wout", w(24, 6)))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 8, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 8, 6])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])


SHAPES = {"x": [2, 8, 16]}


@pytest.mark.parametrize("gelu", ["BiasGelu", "FastGelu"])
def test_mlp_neurons_through_contrib_gelu(gelu):
    res = assert_prunes(mlp_block(gelu), [("f1", 2)], SHAPES, sizes=[48], shrinks=["W1", "b1", "W2"])
    assert group_at(res.analysis, "g", 2) is group_at(res.analysis, "b1", 0)


def test_stream_through_skip_layernorm_matches_the_oracle():
    """The stream (Win output, skip, gamma/beta/bias, the sum output) is one group, normalized over:
    the oracle gathers both data inputs and runs the LayerNorm over the kept channels."""
    m = mlp_block()
    a = analyze_model(m, input_shapes=SHAPES)
    stream = group_at(a, "s", 2)
    for t, ax in (("f2", 2), ("gamma", 0), ("beta", 0), ("bias", 0), ("ln", 2), ("sum", 2)):
        assert group_at(a, t, ax) is stream
    assert_prunes(m, [("s", 2), ("f1", 2)], SHAPES, sizes=[24, 48],
                  shrinks=["Win", "W1", "W2", "gamma", "beta", "bias", "Wout"])
    onnx.checker.check_model(m)
