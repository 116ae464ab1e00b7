"""Shape arithmetic as tf2onnx writes it (Keras Dense as Tensordot, LayerNorm lowered to Reshape +
BatchNormalization with run-time statistics): shapes cast to int32 and back, a Shape gathered whole
and then narrowed, Slices of the non-channel dims multiplied together. A channel dim that only
reaches reshape targets, or drops out before any arithmetic, leaves its group prunable; one that
reaches arithmetic freezes that group alone."""
from __future__ import annotations

import numpy as np
import pytest
import onnx
from helpers import assert_prunes, group_at
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxprune.api import analyze_model

rng = np.random.default_rng(0)


def C(name, a):
    return nh.from_array(np.asarray(a), name)


def model(nodes, inits, x, y):
    inits = [i for i in inits if any(i.name in n.input for n in nodes)]
    g = h.make_graph(nodes, "g", [x], [y], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(m, full_check=True)
    return m


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def cast_gather_reshape(cast=True):
    """[N,8,64] -> Reshape [-1,64] -> Relu -> Reshape back to Shape(hh)[0:3], through int32 Casts."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 8, 32])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 8, 10])
    src, tgt = ("s32", "g64") if cast else ("s", "g")
    nodes = [h.make_node("MatMul", ["x", "W1"], ["hh"]), h.make_node("Reshape", ["hh", "flat"], ["f"]),
             h.make_node("Relu", ["f"], ["a"]), h.make_node("Shape", ["hh"], ["s"])]
    if cast:
        nodes.append(h.make_node("Cast", ["s"], ["s32"], to=T.INT32))
    nodes.append(h.make_node("Gather", [src, "idx"], ["g"], axis=0))
    if cast:
        nodes.append(h.make_node("Cast", ["g"], ["g64"], to=T.INT64))
    nodes += [h.make_node("Reshape", ["a", tgt], ["b"]), h.make_node("MatMul", ["b", "W2"], ["y"])]
    return model(nodes, [C("W1", w(32, 64)), C("W2", w(64, 10)), C("flat", np.array([-1, 64])),
                         C("idx", np.array([0, 1, 2]))], x, y)


def test_shape_cast_to_int32_and_back_is_followed():
    for cast in (False, True):
        assert_prunes(cast_gather_reshape(cast), [("hh", 2)], {"x": [2, 8, 32]}, sizes=[64])


def dense_on_nhwc(read_c_into="nothing"):
    """Conv -> NHWC -> Reshape [N*H*W, C] (target = ReduceProd(Gather(Gather(Shape, perm), free)), 32)
    -> MatMul. `read_c_into="mul"` also divides the data by the element count N*H*W*C (a real run-time read)."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [None, 10])
    nodes = [h.make_node("Conv", ["x", "W0"], ["hh"]), h.make_node("Relu", ["hh"], ["r"]),
             h.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
             h.make_node("Shape", ["r"], ["s"]), h.make_node("Gather", ["s", "perm"], ["snhwc"], axis=0),
             h.make_node("Cast", ["snhwc"], ["s32"], to=T.INT32), h.make_node("Gather", ["s32", "free"], ["nhw"], axis=0),
             h.make_node("ReduceProd", ["nhw"], ["p"], keepdims=1), h.make_node("Cast", ["p"], ["p64"], to=T.INT64),
             h.make_node("Concat", ["p64", "c32"], ["tgt"], axis=0), h.make_node("Reshape", ["t", "tgt"], ["f"])]
    if read_c_into == "mul":
        # the element count N*H*W*C (symbolic N: not folded), divided into the data
        nodes += [h.make_node("ReduceProd", ["s32"], ["c"], keepdims=1), h.make_node("Cast", ["c"], ["cf"], to=T.FLOAT),
                  h.make_node("Div", ["f", "cf"], ["fm"])]
    nodes.append(h.make_node("MatMul", ["fm" if read_c_into == "mul" else "f", "W1"], ["y"]))
    return model(nodes, [C("W0", w(32, 3, 1, 1)), C("W1", w(32, 10)), C("perm", np.array([0, 2, 3, 1])),
                         C("free", np.array([0, 1, 2])), C("c32", np.array([32])), C("three", np.array([3]))], x, y)


def test_channel_entry_that_drops_out_before_the_arithmetic_leaves_the_group_prunable():
    assert_prunes(dense_on_nhwc(), [("hh", 1)], {"x": [2, 3, 8, 8]}, sizes=[32])


def test_channel_count_multiplied_into_data_freezes_the_group():
    a = analyze_model(dense_on_nhwc("mul"), input_shapes={"x": [2, 3, 8, 8]})
    g = group_at(a, "hh", 1)
    assert not g.prunable and any("channel count read at run time" in r for r in g.reasons), g.reasons


def nonchannel_dims(mode, cast=False):
    """[N,16,64]: Shape -> [Cast] -> Slice[0:2] (or Gather [0,1]) -> ReduceProd -> Expand a per-row
    scale; with mode 'both' the same Shape is also the target of the Reshape back."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 16, 32])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 16, 10])
    s = "s32" if cast else "s"
    nodes = [h.make_node("MatMul", ["x", "W1"], ["hh"]), h.make_node("Relu", ["hh"], ["r"]),
             h.make_node("Shape", ["r"], ["s"])]
    if cast:
        nodes.append(h.make_node("Cast", ["s"], ["s32"], to=T.INT64))
    nodes += [h.make_node("Slice", [s, "st", "en", "ax"], ["bt"]) if mode == "slice" else
              h.make_node("Gather", [s, "i01"], ["bt"], axis=0),
              h.make_node("ReduceProd", ["bt"], ["nt"], keepdims=1), h.make_node("Expand", ["one", "nt"], ["ones"]),
              h.make_node("Reshape", ["r", "flat"], ["f"]), h.make_node("Unsqueeze", ["ones", "ax1"], ["ones2"]),
              h.make_node("Mul", ["f", "ones2"], ["fm"]), h.make_node("Reshape", ["fm", s], ["b"]),
              h.make_node("MatMul", ["b", "W2"], ["y"])]
    return model(nodes, [C("W1", w(32, 64)), C("W2", w(64, 10)), C("st", np.array([0])), C("en", np.array([2])),
                         C("ax", np.array([0])), C("one", np.array(1.0, np.float32)), C("flat", np.array([-1, 64])),
                         C("ax1", np.array([1])), C("i01", np.array([0, 1]))], x, y)


def test_shape_read_only_for_non_channel_dims_leaves_the_group_prunable():
    for mode, cast in (("slice", False), ("slice", True), ("gather", False)):
        assert_prunes(nonchannel_dims(mode, cast), [("hh", 2)], {"x": [2, 16, 32]}, sizes=[64])


def layernorm_as_sum_over_count(count=64.0):
    """mean over C as ReduceSum / constant count: pruning would leave the count stale."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 16, 32])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 16, 10])
    nodes = [h.make_node("MatMul", ["x", "W1"], ["hh"]), h.make_node("Relu", ["hh"], ["r"]),
             h.make_node("ReduceSumSquare", ["r"], ["ss"], axes=[2], keepdims=1),
             h.make_node("Div", ["ss", "count"], ["var"]), h.make_node("Add", ["var", "eps"], ["ve"]),
             h.make_node("Sqrt", ["ve"], ["sd"]), h.make_node("Div", ["r", "sd"], ["n"]),
             h.make_node("MatMul", ["n", "W2"], ["y"])]
    return model(nodes, [C("W1", w(32, 64)), C("W2", w(64, 10)), C("count", np.array(count, np.float32)),
                         C("eps", np.array(1e-3, np.float32))], x, y)


def test_sum_over_channels_divided_by_a_constant_count_freezes_the_group():
    a = analyze_model(layernorm_as_sum_over_count(), input_shapes={"x": [2, 16, 32]})
    g = group_at(a, "hh", 2)
    assert not g.prunable and any("divided by their count" in r for r in g.reasons), g.reasons
    # a constant that is not the count: a plain sum of squares, normalized over the kept channels
    assert_prunes(layernorm_as_sum_over_count(7.0), [("hh", 2)], {"x": [2, 16, 32]}, sizes=[64])


def merged_heads(use_max=False):
    """tf2onnx's einsum lowering: [N, S, 32] -> [N, S, 4, 8] -> Transpose [N, 4, S, 8] -> Reshape to
    [N*4, S, 8] with the first entry ReduceProd(Shape(t)[0:2]) (with `use_max`: the Max of that
    gather from two shapes, as broadcasting batch dims) -> Relu -> Reshape back to Shape(t) ->
    Transpose -> [N, S, 32] -> MatMul."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 6, 16])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 6, 5])
    nodes = [h.make_node("MatMul", ["x", "W1"], ["q"]), h.make_node("Reshape", ["q", "s4"], ["q4"]),
             h.make_node("Transpose", ["q4"], ["t"], perm=[0, 2, 1, 3]), h.make_node("Shape", ["t"], ["st"]),
             h.make_node("Gather", ["st", "i01"], ["nb"], axis=0)]
    if use_max:
        nodes += [h.make_node("Shape", ["t"], ["st2"]), h.make_node("Gather", ["st2", "i01"], ["nb2"], axis=0),
                  h.make_node("Max", ["nb", "nb2"], ["nbm"])]
    nodes += [h.make_node("ReduceProd", ["nbm" if use_max else "nb"], ["p"], keepdims=1),
              h.make_node("Gather", ["st", "i23"], ["rest"], axis=0),
              h.make_node("Concat", ["p", "rest"], ["tgt"], axis=0), h.make_node("Reshape", ["t", "tgt"], ["m"]),
              h.make_node("Relu", ["m"], ["mr"]), h.make_node("Reshape", ["mr", "st"], ["back"]),
              h.make_node("Transpose", ["back"], ["tb"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["tb", "s3"], ["flat"]), h.make_node("MatMul", ["flat", "W2"], ["y"])]
    return model(nodes, [C("W1", w(16, 32)), C("W2", w(32, 5)), C("s4", np.array([0, 0, 4, 8])),
                         C("s3", np.array([0, 0, -1])), C("i01", np.array([0, 1])), C("i23", np.array([2, 3]))], x, y)


@pytest.mark.parametrize("use_max", [False, True])
def test_heads_merged_with_batch_at_run_time(use_max):
    from helpers import ort_run

    res = assert_prunes(merged_heads(use_max), [("t", 1)], {"x": [1, 6, 16]}, sizes=[4], heads=True,
                        shrinks=["W1", "W2"])
    xb = rng.standard_normal((3, 6, 16)).astype(np.float32)  # the merged dim is N * heads at run time
    full = ort_run(res.model, {"x": xb})[0]
    assert np.allclose(full, np.concatenate([ort_run(res.model, {"x": xb[k:k + 1]})[0] for k in range(3)]), atol=1e-5)
