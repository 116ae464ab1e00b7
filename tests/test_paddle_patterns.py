"""Patterns paddle2onnx writes: Resize sizes built from the input's own Shape, dims declared as -1,
models ONNX Runtime cannot run (a bad-input error, exit 2), and groups that collapse to one channel
(frozen, with a reason)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import assert_prunes, group_at
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxprune.api import analyze_model

rng = np.random.default_rng(0)


def C(name, a):
    return nh.from_array(np.asarray(a), name)


def resize_from_shape(channel_entry="shape"):
    """conv1 (8) -> Relu -> Resize(sizes = Concat(Slice(Shape(r), 0, 2), [16, 16])) -> conv2.
    channel_entry="const": sizes = Concat(Slice(Shape(r), 0, 1), [8], [16, 16]) (rewritten)."""
    nodes = [h.make_node("Conv", ["x", "W1"], ["y"], pads=[1] * 4), h.make_node("Relu", ["y"], ["r"]),
             h.make_node("Shape", ["r"], ["s"])]
    if channel_entry == "shape":
        nodes += [h.make_node("Slice", ["s", "z0", "e2", "z0"], ["nc"]),
                  h.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)]
    else:
        nodes += [h.make_node("Slice", ["s", "z0", "e1", "z0"], ["n"]),
                  h.make_node("Concat", ["n", "c8", "hw"], ["sizes"], axis=0)]
    nodes += [h.make_node("Resize", ["r", "", "", "sizes"], ["up"], mode="nearest"),
              h.make_node("Conv", ["up", "W2"], ["z"])]
    inits = [C("W1", rng.standard_normal((8, 4, 3, 3)).astype(np.float32)),
             C("W2", rng.standard_normal((10, 8, 1, 1)).astype(np.float32)),
             C("z0", np.array([0])), C("e1", np.array([1])), C("e2", np.array([2])), C("c8", np.array([8])),
             C("hw", np.array([16, 16]))]
    inits = [i for i in inits if any(i.name in n.input for n in nodes)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 4, 8, 8])],
                     [h.make_tensor_value_info("z", T.FLOAT, ["N", 10, 16, 16])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("entry", ["shape", "const"])
def test_resize_sizes_built_from_a_shape(entry):
    res = assert_prunes(resize_from_shape(entry), [("y", 1)], {"x": [2, 4, 8, 8]}, sizes=[8])
    if entry == "const":  # the constant channel entry of the sizes chain now says the kept width
        kept = len(res.kept[group_at(res.analysis, "y", 1).id])
        consts = [nh.to_array(t) for t in res.model.graph.initializer if t.name.startswith("c8") or
                  (t.dims == [1] and nh.to_array(t)[0] == kept)]
        assert any(c.tolist() == [kept] for c in consts)


def unrunnable(batch):
    """Expand to [-1, 8, 8, 8] (paddle's expand_as): ONNX Runtime refuses -1 in Expand at run time."""
    nodes = [h.make_node("Conv", ["x", "W1"], ["y"], pads=[1] * 4),
             h.make_node("ReduceSum", ["y", "ax"], ["s"], keepdims=1),
             h.make_node("Expand", ["s", "eshape"], ["e"]), h.make_node("Add", ["y", "e"], ["z"])]
    inits = [C("W1", rng.standard_normal((8, 4, 3, 3)).astype(np.float32)), C("eshape", np.array([-1, 8, 8, 8])),
             C("ax", np.array([1]))]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [batch, 4, 8, 8])],
                     [h.make_tensor_value_info("z", T.FLOAT, None)], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


@pytest.mark.parametrize("cmd", [["analyze"], ["--ratio", "0.3"], ["--ratio", "0.3", "--no-verify"]])
def test_a_model_onnx_runtime_cannot_run_is_a_one_line_error(tmp_path, cmd):
    src = tmp_path / "m.onnx"
    onnx.save(unrunnable("N"), src)
    out = tmp_path / "o.onnx"
    args = ["analyze", str(src)] if cmd == ["analyze"] else [str(src), str(out), *cmd]
    r = subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("onnxprune:")]
    assert len(lines) == 1 and "ONNX Runtime cannot run the model" in lines[0] and "internal" not in lines[0]
    assert not out.exists()


def test_dims_declared_as_minus_one_are_symbolic():
    m = resize_from_shape()
    for v in (*m.graph.input, *m.graph.output):
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_value = -1
    res = assert_prunes(m, [("y", 1)], {"x": [2, 4, 8, 8]}, sizes=[8])
    from helpers import ort_run

    assert ort_run(res.model, {"x": np.ones((3, 4, 8, 8), np.float32)})[0].shape == (3, 10, 16, 16)


def shuffle_after_grouped_conv(consumer_side=False):
    """conv1 (32) -> Relu -> grouped conv (8 groups of 4) -> shuffle Reshape [1, 8, 4, 8, 8] ->
    Transpose -> Reshape back -> conv3. consumer_side: the shuffle reads conv1's output directly and
    the grouped conv is another consumer of it (a tie the shuffle rule cannot see)."""
    G, Ch = 8, 32
    src = "ar" if consumer_side else "b"
    nodes = [h.make_node("Conv", ["x", "W1"], ["a"], pads=[1] * 4), h.make_node("Relu", ["a"], ["ar"]),
             h.make_node("Conv", ["ar", "W2"], ["b"], group=G), h.make_node("Reshape", [src, "s5"], ["b5"]),
             h.make_node("Transpose", ["b5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             h.make_node("Reshape", ["t5", "s4"], ["sh"]), h.make_node("Conv", ["sh", "W3"], ["z"])]
    inits = [C("W1", rng.standard_normal((Ch, 4, 3, 3)).astype(np.float32)),
             C("W2", rng.standard_normal((Ch, Ch // G, 1, 1)).astype(np.float32)),
             C("W3", rng.standard_normal((10, Ch, 1, 1)).astype(np.float32)),
             C("s5", np.array([1, G, Ch // G, 8, 8])), C("s4", np.array([1, Ch, 8, 8]))]
    outs = [h.make_tensor_value_info("z", T.FLOAT, [1, 10, 8, 8])]
    if consumer_side:
        nodes.append(h.make_node("Conv", ["b", "W4"], ["z2"]))
        inits.append(C("W4", rng.standard_normal((10, Ch, 1, 1)).astype(np.float32)))
        outs.append(h.make_tensor_value_info("z2", T.FLOAT, [1, 10, 8, 8]))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, 8, 8])], outs, inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_shuffle_after_a_grouped_conv_keeps_the_in_group_positions():
    """8 groups of 4: the shuffle's channel piece is the per-group one (4), matching the grouped
    conv's tie, instead of the larger group piece (8), which tied all 32 channels into one."""
    res = assert_prunes(shuffle_after_grouped_conv(), [("b", 1)], {"x": [1, 4, 8, 8]}, sizes=[4])
    assert len(res.kept[group_at(res.analysis, "b", 1).id]) == 2


def test_a_group_tied_into_one_channel_says_so():
    a = analyze_model(shuffle_after_grouped_conv(consumer_side=True))
    grp = group_at(a, "ar", 1)
    assert grp.size == 1 and not grp.prunable and any("tied into one" in r for r in grp.reasons), grp.reasons
