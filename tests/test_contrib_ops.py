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


def fused_attention(heads=4, hid=16):
    """x [N, 6, 12] -> MatMul (stream 16) -> Attention(packed qkv [16, 48], bias, num_heads) ->
    MatMul 16 -> 8. The stream is the attention input (embed kind), the output channels are heads."""
    nodes = [h.make_node("MatMul", ["x", "Win"], ["s"]),
             h.make_node("Attention", ["s", "Wqkv", "bqkv"], ["att"], domain="com.microsoft", num_heads=heads),
             h.make_node("MatMul", ["att", "Wo"], ["y"])]
    inits = [nh.from_array(a, n) for n, a in (("Win", w(12, hid)), ("Wqkv", w(hid, 3 * hid)), ("bqkv", w(3 * hid)),
                                              ("Wo", w(hid, 8)))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 6, 12])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 6, 8])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])


def test_fused_attention_heads():
    """--heads: whole heads leave the packed q/k/v columns, the bias, the output projection's rows,
    and num_heads says how many are left."""
    shapes = {"x": [2, 6, 12]}
    a = analyze_model(fused_attention(), input_shapes=shapes)
    g = group_at(a, "att", 2)
    assert not g.prunable and any("--heads" in r for r in g.reasons)
    assert group_at(a, "s", 2).kind == "embed" and not group_at(a, "s", 2).prunable
    res = assert_prunes(fused_attention(), [("att", 2)], shapes, sizes=[4], heads=True, shrinks=["Wqkv", "bqkv", "Wo"])
    node = next(n for n in res.model.graph.node if n.op_type == "Attention")
    kept = len(res.kept[group_at(res.analysis, "att", 2).id])
    assert onnx.helper.get_attribute_value(next(x for x in node.attribute if x.name == "num_heads")) == kept == 2
    wq = next(t for t in res.model.graph.initializer if t.name == "Wqkv")
    assert list(wq.dims) == [16, 3 * 4 * kept]


def test_fused_attention_input_stream_with_embed_dim():
    assert_prunes(fused_attention(), [("s", 2)], {"x": [2, 6, 12]}, sizes=[16], embed_dim=True,
                  shrinks=["Win", "Wqkv"])


def test_embed_layer_normalization_hidden_axis():
    """Word + position tables summed and normalized over the hidden axis (oracle: over kept channels);
    the tables' columns, gamma and beta shrink together."""
    nodes = [h.make_node("EmbedLayerNormalization", ["ids", "", "word", "pos", "", "gamma", "beta"], ["e", "mask_index"],
                         domain="com.microsoft", epsilon=1e-5),
             h.make_node("MatMul", ["e", "W"], ["y"])]
    inits = [nh.from_array(a, n) for n, a in (("word", w(50, 16)), ("pos", w(8, 16)), ("gamma", 1 + w(16)),
                                              ("beta", w(16)), ("W", w(16, 4)))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("ids", T.INT32, ["N", 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 8, 4])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    assert_prunes(m, [("word", 1)], {"ids": [2, 8]}, sizes=[16], shrinks=["word", "pos", "gamma", "beta", "W"])
