"""Exporter variety that normalize() must make disappear before analysis: weights in Constant nodes,
IR-3 graphs listing initializers as inputs, weights behind Identity / Cast (fp16 -> fp32) /
DequantizeLinear of constants; and the same small conv net across opsets. Each must end up with the
weights as initializers and prune with the mask oracle passing."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from onnx import TensorProto, helper, numpy_helper

from onnxprune.model.normalize import normalize

IMG = {"x": [2, 3, 8, 8]}
WEIGHT_OPS = {"Constant", "Identity", "Cast", "DequantizeLinear"}


def conv_net(opset=17, ir_version=None, fc=True):
    """x -> conv1 -> BN -> Relu -> conv2 -> Relu -> MaxPool -> [Flatten -> Gemm | conv3]"""
    b = GraphBuilder(opset=opset, ir_version=ir_version)
    x = b.input("x", [3, 8, 8])
    h = b.op("Relu", [b.bn(b.conv(x, 3, 8, name="conv1"), 8, name="bn1")])
    h = b.op("Relu", [b.conv(h, 8, 6, name="conv2")])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    if fc:
        y = b.gemm(b.op("Flatten", [h], axis=1), 6 * 16, 5, name="fc")
    else:
        y = b.conv(h, 6, 4, name="conv3")
    # (shape inference of an IR-3 graph whose weights are not yet listed as inputs gives no output shape)
    return b.model([y], output_shapes=[["N", 5] if fc else ["N", 4, 4, 4]])


def check_normalized(model, weights):
    norm = normalize(model)
    inits = {t.name for t in norm.graph.initializer}
    assert not [n.op_type for n in norm.graph.node if n.op_type in WEIGHT_OPS]
    for w in weights:
        assert w in inits, f"{w} is not an initializer after normalize"
    assert not inits & {i.name for i in norm.graph.input}
    return norm


def test_weights_in_constant_nodes():
    m = conv_net()
    g = m.graph
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}") for t in g.initializer]
    del g.initializer[:]
    _prepend(g, consts)  # keep topological order: constants first
    onnx.checker.check_model(m)
    check_normalized(m, ["conv1.weight", "bn1.scale", "conv2.weight", "fc.weight"])
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    assert {t.name for t in res.model.graph.initializer} >= {"conv1.weight", "fc.weight"}


def test_ir3_initializers_listed_as_inputs():
    m = conv_net(opset=8, ir_version=3, fc=False)
    g = m.graph
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer)
    onnx.checker.check_model(m)
    norm = check_normalized(m, ["conv1.weight", "conv2.weight"])
    assert [i.name for i in norm.graph.input] == ["x"]
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    # the weights are weights, not model inputs that would freeze their groups
    assert not any("model input 'conv" in r for g in res.analysis.groups for r in g.reasons)
    # ... yet the written model lists them again (with pruned shapes): the same inputs as the original
    assert [i.name for i in res.model.graph.input] == [i.name for i in g.input]
    w = next(i for i in res.model.graph.input if i.name == "conv1.weight")
    assert [d.dim_value for d in w.type.tensor_type.shape.dim] == [4, 3, 3, 3]


def _reroute(m, name, make_source):
    """Feed weight `name` through a small subgraph of constants: make_source(array) -> (nodes, inits)
    whose last node outputs `name`."""
    g = m.graph
    t = next(t for t in g.initializer if t.name == name)
    arr = numpy_helper.to_array(t)
    g.initializer.remove(t)
    nodes, inits = make_source(arr)
    g.initializer.extend(inits)
    _prepend(g, nodes)


def _prepend(g, nodes):
    rest = list(g.node)
    del g.node[:]
    g.node.extend(list(nodes) + rest)


def _identity(name):
    def make(arr):
        return ([helper.make_node("Identity", [name + "_raw"], [name], name=f"id_{name}")],
                [numpy_helper.from_array(arr, name + "_raw")])
    return make


def _cast_fp16(name):
    def make(arr):
        return ([helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT, name=f"cast_{name}")],
                [numpy_helper.from_array(arr.astype(np.float16), name + "_fp16")])
    return make


def _dequant(name, per_channel):
    def make(arr):
        if per_channel:
            scale = (np.abs(arr).reshape(arr.shape[0], -1).max(1) / 127).astype(np.float32)
            q = np.round(arr / scale.reshape((-1,) + (1,) * (arr.ndim - 1)))
            zp = np.zeros(arr.shape[0], np.int8)
            attrs = dict(axis=0)
        else:
            scale = np.float32(np.abs(arr).max() / 127)
            q = np.round(arr / scale)
            zp = np.int8(0)
            attrs = {}
        inits = [numpy_helper.from_array(q.astype(np.int8), name + "_q"),
                 numpy_helper.from_array(np.asarray(scale, np.float32), name + "_scale"),
                 numpy_helper.from_array(np.asarray(zp, np.int8), name + "_zp")]
        node = helper.make_node("DequantizeLinear", [name + "_q", name + "_scale", name + "_zp"], [name],
                                name=f"dq_{name}", **attrs)
        return [node], inits
    return make


@pytest.mark.parametrize("kind", ["identity", "cast-fp16", "dequant-tensor", "dequant-channel"])
def test_weights_behind_constant_subgraphs(kind):
    m = conv_net(opset=17)
    for w in ("conv1.weight", "conv2.weight", "fc.weight", "bn1.scale"):
        if kind == "identity":
            _reroute(m, w, _identity(w))
        elif kind == "cast-fp16":
            _reroute(m, w, _cast_fp16(w))
        elif kind.startswith("dequant") and w != "bn1.scale":
            _reroute(m, w, _dequant(w, per_channel=kind == "dequant-channel"))
    onnx.checker.check_model(m, full_check=True)
    norm = check_normalized(m, ["conv1.weight", "conv2.weight", "fc.weight", "bn1.scale"])
    w = next(numpy_helper.to_array(t) for t in norm.graph.initializer if t.name == "conv1.weight")
    assert w.dtype == np.float32 and w.shape == (8, 3, 3, 3)
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    assert group_at(res.analysis, "conv1.weight", 0) is group_at(res.analysis, "conv1_out", 1)


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
@pytest.mark.parametrize("fc", [True, False], ids=["gemm", "conv"])
def test_conv_net_across_opsets(opset, fc):
    m = conv_net(opset=opset, fc=fc)
    res = assert_prunes(m, [("conv1_out", 1), ("conv2_out", 1)], IMG, sizes=[8, 6])
    assert res.model.opset_import[0].version == opset
    if fc:  # MaxPool -> Flatten: 4x4 features per channel
        assert tuple(next(t.dims for t in res.model.graph.initializer if t.name == "fc.weight")) == (5, 3 * 16)


# --- exporter quirks that used to break analysis, verification or ONNX Runtime -------------------

def _small_net(middle, opset=13, ir_version=8, functions=(), domains=(), batch=1):
    """x -> conv1 (8) -> Relu -> [middle nodes: r1 -> a1] -> conv2 (6) -> Relu -> conv3 (4) -> y."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), *middle,
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4, name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], kernel_shape=[1, 1], name="conv3")]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 6, 8, 3, 3), w("b2", 6), w("w3", 4, 6, 1, 1), w("b3", 4)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)] + list(domains), functions=list(functions))
    m.ir_version = ir_version
    return m


SMALL = {"x": [1, 3, 8, 8]}


def _prune_checked(m, **kw):
    """prune with latency (ORT runs the original too) and verification; the result must pass the
    full checker and run."""
    from helpers import ort_run

    from onnxprune import prune

    res = prune(m, ratio=0.5, latency=True, verify=True, **kw)
    assert res.report.verification.get("passed") is True, res.report.verification
    assert res.report.baseline.latency_ms is not None
    onnx.checker.check_model(res.model, full_check=True)
    ort_run(res.model, {"x": np.ones((1, 3, 8, 8), np.float32)})
    return res


@pytest.mark.parametrize("attr,value,xtype,op,want", [
    ("value_float", 0.5, TensorProto.FLOAT, "Mul", TensorProto.FLOAT),
    ("value_floats", [0.5], TensorProto.FLOAT, "Mul", TensorProto.FLOAT),
    ("value_int", 2, TensorProto.INT64, "Add", TensorProto.INT64),
    ("value_ints", [2], TensorProto.INT64, "Add", TensorProto.INT64),
])
def test_constant_scalar_attributes_keep_spec_dtypes(attr, value, xtype, op, want):
    # the spec: value_float(s) are float32, value_int(s) int64; folding must not make float64
    nodes = [helper.make_node("Constant", [], ["c"], name="cst", **{attr: value}),
             helper.make_node(op, ["x", "c"], ["y"], name="op")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", xtype, [2, 3])],
                          [helper.make_tensor_value_info("y", xtype, [2, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    norm = normalize(m)
    assert [t.data_type for t in norm.graph.initializer] == [want]
    onnx.checker.check_model(norm, full_check=True)
    from helpers import ort_run

    ort_run(norm, {"x": np.ones((2, 3), helper.tensor_dtype_to_np_dtype(xtype))})


def test_constant_value_float_between_convs_prunes():
    m = _small_net([helper.make_node("Constant", [], ["s"], value_float=0.5, name="cst"),
                    helper.make_node("Mul", ["r1", "s"], ["a1"], name="mul")])
    res = assert_prunes(m, [("c1", 1), ("c2", 1)], SMALL, sizes=[8, 6])
    assert all(t.data_type != TensorProto.DOUBLE for t in res.model.graph.initializer)


def test_folding_keeps_the_original_dtypes():
    from onnxprune.model.normalize import restore_dtypes

    m = helper.make_model(helper.make_graph([], "g", [], [], [numpy_helper.from_array(np.array([0.5]), "s")]))
    restore_dtypes(m, {"s": TensorProto.FLOAT})
    t = m.graph.initializer[0]
    assert t.data_type == TensorProto.FLOAT and numpy_helper.to_array(t).tolist() == [0.5]


def _squeeze_head(opset, batch):
    """conv1 (2 ch) -> Relu -> GlobalAveragePool -> Squeeze (no axes) -> Unsqueeze(0) -> Gemm (batch 1)."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", [3, 8, 8], batch=batch)
    h = b.op("GlobalAveragePool", [b.op("Relu", [b.conv(x, 3, 2, name="conv1")])])
    sq = b.op("Squeeze", [h], name="squeeze_all")
    us = b.op("Unsqueeze", [sq], axes=[0]) if opset < 13 else b.op("Unsqueeze", [sq, b.const([0])])
    return b.model([b.gemm(us, 2, 5, name="fc")])


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_without_axes_gets_explicit_axes(opset):
    m = _squeeze_head(opset, batch=1)
    norm = normalize(m)
    sq = next(n for n in norm.graph.node if n.op_type == "Squeeze")
    if opset < 13:
        assert list(next(a for a in sq.attribute if a.name == "axes").ints) == [0, 2, 3]
    else:
        axes = next(t for t in norm.graph.initializer if t.name == sq.input[1])
        assert numpy_helper.to_array(axes).tolist() == [0, 2, 3]
    # one channel kept: an axes-less Squeeze would drop the channel axis too
    assert_prunes(m, [("conv1_out", 1)], {"x": [1, 3, 8, 8]}, ratio=0.9, sizes=[2])


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_without_axes_on_symbolic_shape_freezes_channels(opset):
    from onnxprune import analyze_model

    m = _squeeze_head(opset, batch="N")
    norm = normalize(m)
    sq = next(n for n in norm.graph.node if n.op_type == "Squeeze")
    assert len(sq.input) == 1 and not sq.attribute  # a symbolic dim may be 1 at run time: left alone
    g = group_at(analyze_model(m, input_shapes={"x": [1, 3, 8, 8]}), "conv1_out", 1)
    assert not g.prunable and any("Squeeze" in r for r in g.reasons)


def test_local_functions_are_inlined_not_custom_ops():
    from onnxprune.model.load import custom_ops

    dom = "pkg.local"
    fn = helper.make_function(dom, "HSwishFn", ["X"], ["Y"],
                              [helper.make_node("HardSigmoid", ["X"], ["S"], alpha=1 / 6, beta=0.5),
                               helper.make_node("Mul", ["X", "S"], ["Y"])],
                              opset_imports=[helper.make_opsetid("", 13)])
    m = _small_net([helper.make_node("HSwishFn", ["r1"], ["a1"], domain=dom, name="hswish")],
                   domains=[helper.make_opsetid(dom, 1)], functions=[fn])
    onnx.checker.check_model(m, full_check=True)
    assert custom_ops(m) == []
    norm = normalize(m)
    assert not norm.functions and all(n.domain == "" for n in norm.graph.node)
    res = assert_prunes(m, [("c1", 1), ("c2", 1)], SMALL, sizes=[8, 6])
    assert not res.model.functions


def test_duplicate_node_names_are_made_unique():
    from onnxprune.model.load import sanitized

    m = _small_net([helper.make_node("Identity", ["r1"], ["a1"], name="relu1")])  # "relu1" twice
    names = [n.name for n in normalize(m).graph.node]
    assert len(names) == len(set(names)) and "relu1" in names
    s = sanitized(m)
    assert [n.name for n in s.graph.node][1:3] == ["relu1", "relu1_1"]
    assert [n.name for n in m.graph.node][1:3] == ["relu1", "relu1"]  # the caller's model is untouched
    _prune_checked(m)


def test_trailing_empty_outputs_are_dropped():
    # BatchNormalization-9 with empty optional outputs crashes ONNX Runtime when run
    rng = np.random.default_rng(1)
    bn_w = [numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), n) for n in ("g", "b", "mu", "v")]
    m = _small_net([helper.make_node("BatchNormalization", ["r1", "g", "b", "mu", "v"], ["a1", "", "", "", ""],
                                     name="bn")], opset=9, ir_version=4)
    m.graph.initializer.extend(bn_w)
    onnx.checker.check_model(m)
    from onnxprune.model.load import sanitized

    for mm in (normalize(m), sanitized(m)):
        assert [list(n.output) for n in mm.graph.node if n.op_type == "BatchNormalization"] == [["a1"]]
    # checked before ONNX Runtime runs anything, so a regression fails here rather than crashing
    _prune_checked(m)


def test_initializers_listed_as_inputs_stay_inputs(tmp_path):
    # torch keep_initializers_as_inputs=True (IR >= 4): analysis treats them as weights, yet the
    # written model has the original's input names, the weights with their pruned shapes
    m = _small_net([helper.make_node("Identity", ["r1"], ["a1"], name="id")], ir_version=7)
    g = m.graph
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer)
    res = _prune_checked(m)
    assert [i.name for i in res.model.graph.input] == [i.name for i in g.input]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in res.model.graph.input}
    assert shapes["w1"] == [4, 3, 3, 3] and shapes["w2"] == [3, 4, 3, 3] and shapes["w3"] == [4, 3, 1, 1]
    assert not any("model input 'w" in r for gr in res.analysis.groups for r in gr.reasons)


def test_light_shape_inference_matches_full():
    """Shape inference without the large weights' data gives the same shapes and types."""
    from pathlib import Path

    from onnxprune.model.shapes import infer_shapes_light, light_model

    m = onnx.load(Path(__file__).resolve().parents[1] / "models" / "onnx" / "vit.ts.onnx")
    light, big = light_model(m)
    assert big and len(light.graph.initializer) < len(m.graph.initializer)
    full = onnx.shape_inference.infer_shapes(m, data_prop=True).graph
    lite = infer_shapes_light(m, data_prop=True).graph
    as_dict = lambda vis: {v.name: v.type.SerializeToString() for v in vis}  # noqa: E731
    assert as_dict(lite.value_info) == as_dict(full.value_info)
    assert as_dict(lite.output) == as_dict(full.output)


def test_shape_values_from_data_dependent_ops_on_large_weights_are_not_guessed():
    """NonZero of a large mask buffer sets a Reshape target: shape evaluation must use the real
    mask, not a zero-filled stand-in (which would fold the dim to 0)."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [21])
    mask = np.zeros(2000, np.float32)
    mask[[3, 50, 99, 400, 1000, 1500, 1999]] = 1.0
    # the mask meets the input (times 0), so constant folding cannot evaluate NonZero beforehand
    zero = b.op("Mul", [b.op("ReduceSum", [x], keepdims=0), b.const(np.array(0.0, np.float32))])
    idx = b.op("NonZero", [b.op("Add", [b.const(mask, "mask"), zero])])
    n_idx = b.op("Gather", [b.op("Shape", [idx]), b.const(np.array([1], np.int64))], axis=0)
    batch = b.op("Gather", [b.op("Shape", [x]), b.const(np.array([0], np.int64))], axis=0)
    target = b.op("Concat", [batch, n_idx, b.const(np.array([-1], np.int64))], axis=0)
    y = b.op("Reshape", [x, target])
    m = b.model([y], output_shapes=[["N", 7, 3]])
    norm = normalize(m)
    import onnxruntime as ort

    xv = np.arange(42, dtype=np.float32).reshape(2, 21)
    out = ort.InferenceSession(norm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})[0]
    assert out.shape == (2, 7, 3)


@pytest.mark.parametrize("dims,want", [
    (["seq", "batch", 8], [16, 1, 8]),          # sequence-first (nn.MultiheadAttention, batch_first=False)
    (["batch_size", "sequence_length"], [1, 16]),
    (["N", 3, "height", "width"], [1, 3, 224, 224]),
    (["d0", "d1", 8], [1, 16, 8]),              # unnamed: dim 0 is the batch
])
def test_default_shapes_follow_dim_names(dims, want):
    from onnxprune.model.shapes import graph_input_shapes

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    assert graph_input_shapes(helper.make_model(g))["x"] == want


def test_shared_uniform_constants_do_not_tie_groups():
    """Exporters dedup equal constants (dynamo: one ones/zeros pair for every GroupNorm): two convs
    sharing an all-zeros bias must stay two groups."""
    from onnxprune.api import analyze_model

    b = GraphBuilder(seed=4)
    x = b.input("x", [3, 8, 8])
    zeros = b.const(np.zeros(8, np.float32), "zeros8")
    w1, w2 = b.weight((8, 3, 3, 3), "w1"), b.weight((8, 8, 3, 3), "w2")
    h = b.op("Relu", [b.op("Conv", [x, w1, zeros], pads=[1, 1, 1, 1])])
    h = b.op("Relu", [b.op("Conv", [h, w2, zeros], pads=[1, 1, 1, 1])])
    m = b.model([b.conv(h, 8, 4, name="out")])
    norm = normalize(m)
    assert sum(t.name.startswith("zeros8") for t in norm.graph.initializer) == 2
    a = analyze_model(m, input_shapes={"x": [1, 3, 8, 8]})
    assert len([g for g in a.prunable_groups if g.size == 8]) == 2
    assert_prunes(m, [(norm.graph.node[0].output[0], 1)], {"x": [2, 3, 8, 8]})
