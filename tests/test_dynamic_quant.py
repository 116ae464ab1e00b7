"""Failure class 2 of issue #14, dynamically quantized models (ONNX Runtime's quantize_dynamic:
DynamicQuantizeLinear, ConvInteger, MatMulInteger, com.microsoft DynamicQuantizeLSTM).
MatMulInteger with per-tensor zero points prunes like MatMul (its own rule, oracle test below);
the contrib LSTM freezes what it touches; declared output types survive normalize()."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, assert_prunes, group_at
from onnx import TensorProto, helper, numpy_helper

from onnxprune import analyze_model, prune
from onnxprune.model.normalize import keep_declared_output_types, normalize

SEQ = {"x": [2, 6, 8]}


def quantized_linear(b: GraphBuilder, x: str, k: int, n: int, name: str, w_zp=128) -> str:
    """DynamicQuantizeLinear(x) -> MatMulInteger(uint8 weight, per-tensor zero points) -> Cast ->
    Mul by x_scale * w_scale -> + bias: what quantize_dynamic writes for a MatMul + bias."""
    q, x_scale, x_zp = b.op("DynamicQuantizeLinear", [x], n_out=3, name=f"{name}_quant")
    wq = b.const(b.rng.integers(0, 256, size=(k, n)).astype(np.uint8), f"{name}.weight_quantized", dtype=np.uint8)
    wzp = b.const(np.asarray(w_zp, np.uint8), f"{name}.weight_zero_point", dtype=np.uint8)
    acc = b.op("MatMulInteger", [q, wq, x_zp, wzp], name=name)
    f = b.op("Cast", [acc], name=f"{name}_cast", to=TensorProto.FLOAT)
    scale = b.op("Mul", [x_scale, b.const(np.float32(0.01), f"{name}.weight_scale")], name=f"{name}_scale")
    y = b.op("Mul", [f, scale], name=f"{name}_output_scale")
    return b.op("Add", [y, b.weight((n,), f"{name}.bias", scale=0.5)], name=f"{name}_bias")


def mlp(relu=True, w_zp=128):
    b = GraphBuilder(opset=17)
    x = b.input("x", [6, 8])
    h = quantized_linear(b, x, 8, 16, "fc1", w_zp)
    h = b.op("Relu", [h]) if relu else h
    h = b.op("Relu", [quantized_linear(b, h, 16, 12, "fc2", w_zp)])
    return b.model([b.matmul(h, 12, 4, name="head")])


def test_matmulinteger_prunes_like_matmul():
    res = assert_prunes(mlp(), [("fc1_bias_out", 2), ("fc2_bias_out", 2)], SEQ, sizes=[16, 12],
                        shrinks=["fc1.weight_quantized", "fc2.weight_quantized", "fc1.bias", "head.weight"],
                        frozen=[("x", 2), ("head_bias_out", 2)])
    dims = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    assert dims["fc1.weight_quantized"] == (8, 8) and dims["fc2.weight_quantized"] == (8, 6)


def test_removed_inputs_hold_the_zero_point():
    """Without a Relu, DynamicQuantizeLinear's zero point is not 0: a removed input channel of
    fc2 contributes nothing when it holds it (the rule's removed_value), not when it is 0."""
    assert_prunes(mlp(relu=False), [("fc1_bias_out", 2)], SEQ, sizes=[16])


def test_per_column_zero_point_freezes():
    b = GraphBuilder(opset=17)
    x = b.input("x", [6, 8])
    q, _, x_zp = b.op("DynamicQuantizeLinear", [x], n_out=3, name="q")
    wq = b.const(b.rng.integers(0, 256, size=(8, 16)).astype(np.uint8), "w", dtype=np.uint8)
    wzp = b.const(np.full(16, 128, np.uint8), "wzp", dtype=np.uint8)
    acc = b.op("MatMulInteger", [q, wq, x_zp, wzp], name="mmi")
    y = b.matmul(b.op("Cast", [acc], to=TensorProto.FLOAT, name="cast"), 16, 4, name="head")
    a = analyze_model(b.model([y]), input_shapes=SEQ)
    g = group_at(a, "mmi_out", 2)
    assert not g.prunable and any("not per tensor" in r for r in g.reasons)


def float_conv_lstm_model() -> onnx.ModelProto:
    """Conv1d x2 -> LSTM -> MatMul x2, float: quantize_dynamic turns it into the four op kinds."""
    rng = np.random.default_rng(0)
    C, H = 8, 8

    def f(name, shape, s=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c1"], pads=[1, 1], kernel_shape=[3], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "cw2", "cb2"], ["c2"], pads=[1, 1], kernel_shape=[3], name="conv2"),
             helper.make_node("Transpose", ["c2"], ["seq"], perm=[2, 0, 1], name="to_seq"),
             helper.make_node("LSTM", ["seq", "W", "R", "B"], ["Y", "Yh"], hidden_size=H, name="lstm"),
             helper.make_node("Squeeze", ["Y", "ax1"], ["ys"], name="sq"),
             helper.make_node("MatMul", ["ys", "fw"], ["m1"], name="fc1"),
             helper.make_node("Relu", ["m1"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "fw2"], ["out"], name="fc2")]
    inits = [f("cw", (C, 4, 3)), f("cb", (C,), 0.1), f("cw2", (C, C, 3)), f("cb2", (C,), 0.1),
             f("W", (1, 4 * H, C)), f("R", (1, 4 * H, H)), f("B", (1, 8 * H), 0.1),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"), f("fw", (H, 16)), f("fw2", (16, 3))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, "T"])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["T", "b", 3]),
                           helper.make_tensor_value_info("Yh", TensorProto.FLOAT, [1, "b", H])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory):
    quantization = pytest.importorskip("onnxruntime.quantization")
    d = tmp_path_factory.mktemp("dq")
    onnx.save(float_conv_lstm_model(), d / "float.onnx")
    quantization.quantize_dynamic(str(d / "float.onnx"), str(d / "dq.onnx"),
                                  weight_type=quantization.QuantType.QUInt8)
    m = onnx.load(str(d / "dq.onnx"))
    kinds = {(n.domain or "", n.op_type) for n in m.graph.node}
    assert {("", "ConvInteger"), ("", "MatMulInteger"), ("", "DynamicQuantizeLinear"),
            ("com.microsoft", "DynamicQuantizeLSTM")} <= kinds
    return m


def test_quantize_dynamic_model_prunes_and_verifies(dynamic_model):
    res = prune(dynamic_model, ratio=0.5, latency=False, input_shapes={"x": [1, 4, 6]})
    assert res.report.verification["passed"]
    pruned = {g.name for g in res.analysis.groups if g.id in res.kept}
    assert any("fc1" in n for n in pruned) and any("conv1" in n for n in pruned), pruned
    lstm = group_at(res.analysis, "Y", 3)  # the contrib LSTM's hidden channels: frozen, with the op named
    assert not lstm.prunable and any("DynamicQuantizeLSTM" in r for r in lstm.reasons), lstm.reasons


def test_declared_output_types_survive_normalize(dynamic_model):
    n = normalize(dynamic_model)
    onnx.checker.check_model(n)
    want = {o.name: o.type for o in dynamic_model.graph.output}
    assert all(o.type == want[o.name] for o in n.graph.output)


def test_keep_declared_output_types_restores_a_lost_shape():
    declared = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 1, 3])
    lost = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    orig, out = helper.make_graph([], "a", [], [declared]), helper.make_graph([], "b", [], [lost])
    assert not out.output[0].type.tensor_type.HasField("shape")
    keep_declared_output_types(orig, out)
    assert out.output[0].type == declared.type
