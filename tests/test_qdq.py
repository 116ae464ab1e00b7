"""QDQ models: QuantizeLinear/DequantizeLinear pairs on activations are channel-preserving (per
tensor) or carry per-channel scale / zero_point (per axis, sliced with the channels); int8 weights
behind DequantizeLinear stay int8 in the written model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_prunes, group_at
from onnx import TensorProto, helper, numpy_helper

SHAPES = {"x": [1, 3, 8, 8]}


def _qweight(name, shape, rng, per_channel=True):
    w = rng.standard_normal(shape).astype(np.float32) * 0.3
    if per_channel:
        s = (np.abs(w).reshape(shape[0], -1).max(1) / 127).astype(np.float32)
        q = np.round(w / s.reshape((-1,) + (1,) * (len(shape) - 1)))
        z = np.zeros(shape[0], np.int8)
    else:
        s = np.float32(np.abs(w).max() / 127)
        q = np.round(w / s)
        z = np.int8(3)
        q = q + 3
    q = np.clip(q, -128, 127).astype(np.int8)
    return [numpy_helper.from_array(q, name + "_q"), numpy_helper.from_array(np.asarray(s, np.float32), name + "_s"),
            numpy_helper.from_array(np.asarray(z, np.int8), name + "_z")]


def qdq_net(act="tensor", zp=128, weights="float", opset=13):
    """x -> conv1 (16) -> Relu -> [Q -> DQ] -> conv2 (12) -> Relu -> conv3 (4) -> y; weights float or
    int8 behind DequantizeLinear (per output channel, or per tensor with a nonzero zero point)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    shapes = {"w1": (16, 3, 3, 3), "w2": (12, 16, 3, 3), "w3": (4, 12, 1, 1)}
    for w, s in shapes.items():
        if weights == "float":
            inits.append(numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), w))
        else:
            per_channel = weights == "int8-channel"
            inits += _qweight(w, s, rng, per_channel)
            nodes.append(helper.make_node("DequantizeLinear", [w + "_q", w + "_s", w + "_z"], [w], name="dq_" + w,
                                          **(dict(axis=0) if per_channel else {})))
    for b, n in (("b1", 16), ("b2", 12), ("b3", 4)):
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.3).astype(np.float32), b))
    nodes += [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4, name="conv1"),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    a = "r1"
    if act is not None:
        if act == "tensor":
            inits += [numpy_helper.from_array(np.float32(0.05), "as"), numpy_helper.from_array(np.uint8(zp), "az")]
            attrs = {}
        else:  # per channel on axis 1
            inits += [numpy_helper.from_array(rng.uniform(0.02, 0.08, 16).astype(np.float32), "as"),
                      numpy_helper.from_array(rng.integers(0, 256, 16).astype(np.uint8), "az")]
            attrs = dict(axis=1)
        nodes += [helper.make_node("QuantizeLinear", ["r1", "as", "az"], ["r1q"], name="q1", **attrs),
                  helper.make_node("DequantizeLinear", ["r1q", "as", "az"], ["r1d"], name="dq1", **attrs)]
        a = "r1d"
    nodes += [helper.make_node("Conv", [a, "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4, name="conv2"),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], kernel_shape=[1, 1], name="conv3")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("zp", [0, 128], ids=["zp0", "zp128"])
def test_per_tensor_qdq_on_activations_is_channel_preserving(zp):
    m = qdq_net(act="tensor", zp=zp)
    res = assert_prunes(m, [("c1", 1), ("c2", 1)], SHAPES, sizes=[16, 12], shrinks=["w1", "w2", "w3"])
    assert group_at(res.analysis, "r1q", 1) is group_at(res.analysis, "c1", 1)
    # the scalar scale / zero point stay as they are
    z = next(t for t in res.model.graph.initializer if t.name == "az")
    assert list(z.dims) == [] and numpy_helper.to_array(z) == zp


def test_per_axis_qdq_on_the_channel_axis_slices_scale_and_zero_point():
    m = qdq_net(act="channel")
    res = assert_prunes(m, [("c1", 1), ("c2", 1)], SHAPES, sizes=[16, 12], shrinks=["w1", "w2", "as", "az"])
    inits = {t.name: t for t in res.model.graph.initializer}
    assert list(inits["as"].dims) == list(inits["az"].dims) == [8]
    assert inits["az"].data_type == TensorProto.UINT8


def _prune(m, **kw):
    from helpers import ort_run

    from onnxprune import prune

    res = prune(m, ratio=0.5, latency=False, verify=True, input_shapes=SHAPES, **kw)
    assert res.report.verification.get("passed") is True, res.report.verification
    onnx.checker.check_model(res.model, full_check=True)
    out = ort_run(res.model, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert out[0].shape == (1, 4, 8, 8)
    return res


@pytest.mark.parametrize("weights", ["int8-channel", "int8-tensor"])
@pytest.mark.parametrize("act", [None, "tensor"])
def test_int8_weights_stay_int8(weights, act):
    m = qdq_net(act=act, weights=weights)
    res = _prune(m)
    o = res.model
    inits = {t.name: t for t in o.graph.initializer}
    dqs = {n.output[0]: n for n in o.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in ("w1", "w2", "w3")}
    assert set(dqs) == {"w1", "w2", "w3"} and not {"w1", "w2", "w3"} & set(inits)
    k1, k2 = (len(res.kept[g.id]) for g in (group_at(res.analysis, "c1", 1), group_at(res.analysis, "c2", 1)))
    assert (k1, k2) == (8, 6)
    for w, shape in (("w1", (k1, 3, 3, 3)), ("w2", (k2, k1, 3, 3)), ("w3", (4, k2, 1, 1))):
        q, s, z = (inits[i] for i in dqs[w].input)
        assert q.data_type == TensorProto.INT8 and tuple(q.dims) == shape
        assert tuple(s.dims) == tuple(z.dims) == ((shape[0],) if weights == "int8-channel" else ())
        # exactly the original's integers, sliced
        orig = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == w + "_q"))
        g_out = group_at(res.analysis, "c1" if w == "w1" else "c2", 1) if w != "w3" else None
        if g_out is not None:
            orig = orig[np.sort(res.kept[g_out.id])]
        if w != "w1":
            orig = orig[:, np.sort(res.kept[group_at(res.analysis, "c1" if w == "w2" else "c2", 1).id])]
        assert np.array_equal(numpy_helper.to_array(q), orig)
    assert not any(p.key.startswith("onnxprune") for p in o.metadata_props)
    # the verified float rewrite and the written int8 model compute the same: DQ is exact (with
    # ORT's optimizer off, which would otherwise fuse Q/DQ + Conv into integer kernels)
    import onnxruntime as ort

    from onnxprune.transform.rewrite import rewrite

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    a, b = (ort.InferenceSession(x.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for x in (o, rewrite(res.analysis, res.kept)))
    assert np.array_equal(a, b)
    assert o.ByteSize() < m.ByteSize()
    assert not any("dequantized" in n for n in res.report.notes)


@pytest.mark.parametrize("weights", ["int8-channel", "int8-tensor"])
def test_normalize_returns_the_dequantized_weights_it_folded(weights):
    """The fold records travel as a typed result, not in the model's metadata."""
    from onnxprune.model.normalize import normalize_model

    n = normalize_model(qdq_net(act=None, weights=weights))
    assert not any(p.key.startswith("onnxprune") for p in n.model.metadata_props)
    recs = {r.name: r for r in n.dequantized}
    assert set(recs) == {"w1", "w2", "w3"} and set(recs) <= {t.name for t in n.model.graph.initializer}
    r = recs["w2"]
    assert (r.quantized_name, r.scale_name, r.zero_point_name, r.node_name) == ("w2_q", "w2_s", "w2_z", "dq_w2")
    assert r.dtype == np.int8 and r.zero_point_dtype == np.int8
    assert (r.axis, r.scale.shape) == ((0, (12,)) if weights == "int8-channel" else (None, (1,)))


@pytest.mark.parametrize("change", ["nudge", "grow"])
def test_weights_moved_by_compensation_are_requantized_or_kept_float(change):
    """A weight moved off its grid (as compensation does) goes back onto it with its own scales; one
    that left the integer range of its scale is kept float. Both with a note."""
    from onnxprune.model.normalize import normalize_model
    from onnxprune.transform.requantize import requantize_weights
    from onnxprune.transform.rewrite import rewrite

    m = qdq_net(act=None, weights="int8-channel")
    res = _prune(m)
    pruned = rewrite(res.analysis, res.kept)
    t = next(t for t in pruned.graph.initializer if t.name == "w2")
    w = numpy_helper.to_array(t)
    moved = w + np.float32(1e-3) if change == "nudge" else w * np.float32(3)
    t.CopyFrom(numpy_helper.from_array(moved, "w2__meancomp1"))  # compensation's fresh name
    next(n for n in pruned.graph.node if n.op_type == "Conv" and n.input[1] == "w2").input[1] = "w2__meancomp1"
    dequantized = normalize_model(m).dequantized
    out, notes = requantize_weights(pruned, res.analysis, res.kept, dequantized, {"w2__meancomp1": "w2"})
    onnx.checker.check_model(out, full_check=True)
    inits = {t.name: t for t in out.graph.initializer}
    assert "w1" not in inits and "w3" not in inits  # untouched ones: integers + DequantizeLinear
    assert len(notes) == 1 and "w2__meancomp1" in notes[0]
    if change == "grow":
        assert inits["w2__meancomp1"].data_type == TensorProto.FLOAT and "outside the integer range" in notes[0]
        return
    assert "w2__meancomp1" not in inits and "re-quantized" in notes[0]
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "w2__meancomp1")
    q, s = numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[1]])
    assert q.dtype == np.int8
    back = q.astype(np.float32) * s.reshape(-1, 1, 1, 1)
    assert np.max(np.abs(back - moved)) <= 0.5 * s.max() + 1e-7  # within half a step


def test_mean_compensation_keeps_int32_biases_integer(tmp_path):
    from onnxprune import prune

    m = qdq_net(act="tensor", weights="int8-channel")
    b = next(t for t in m.graph.initializer if t.name == "b2")  # bias as int32 behind DQ, scale tiny
    bq = np.round(numpy_helper.to_array(b) / 1e-4).astype(np.int32)
    b.CopyFrom(numpy_helper.from_array(bq, "b2_q"))
    m.graph.initializer.append(numpy_helper.from_array(np.float32(1e-4), "b2_s"))
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["b2_q", "b2_s"], ["b2"], name="dq_b2"))
    calib = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    res = prune(m, ratio=0.5, scorer="vbp", calib=calib, compensate="mean", latency=False, input_shapes=SHAPES)
    o = res.model
    conv2 = next(n for n in o.graph.node if n.name == "conv2")
    conv3 = next(n for n in o.graph.node if n.name == "conv3")
    dqs = {n.output[0]: n for n in o.graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name: t for t in o.graph.initializer}
    assert conv2.input[2] in dqs and inits[dqs[conv2.input[2]].input[0]].data_type == TensorProto.INT32
    assert conv3.input[1] in dqs  # int8 weights untouched by mean compensation
    assert any("re-quantized" in n for n in res.report.notes), res.report.notes
    onnx.checker.check_model(o, full_check=True)


def test_onnxruntime_quantized_model_prunes_and_verifies(tmp_path):
    """A model quantized by onnxruntime.quantization (QDQ format, per-channel int8 weights, uint8
    activations, int32 biases): verified op by op, written with integer weights, and it runs."""
    from pathlib import Path

    from helpers import ort_run
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from onnxprune import prune

    src = Path(__file__).resolve().parents[1] / "models" / "onnx" / "resnet18.ts.onnx"
    shape = [1, 3, 64, 64]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": np.random.default_rng(k).standard_normal(shape).astype(np.float32)}
                            for k in range(2)])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(src), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    m = onnx.load(q)
    res = prune(m, ratio=0.3, latency=False, input_shapes={"input": shape})
    assert res.report.verification["passed"] is True and "op by op" in res.report.verification["note"]
    assert len(res.kept) >= 10
    conv_w = {n.input[1] for n in res.model.graph.node if n.op_type == "Conv"}
    dq_out = {n.output[0]: n.input[0] for n in res.model.graph.node if n.op_type == "DequantizeLinear"}
    inits = {t.name: t.data_type for t in res.model.graph.initializer}
    assert conv_w <= set(dq_out) and all(inits[dq_out[w]] == TensorProto.INT8 for w in conv_w)
    assert res.model.ByteSize() < 0.8 * m.ByteSize()
    out = ort_run(res.model, {"input": np.zeros(shape, np.float32)})
    assert out[0].shape == (1, 10)
