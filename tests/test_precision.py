"""Half-precision models (float16 weights and compute, as onnxconverter-common writes them for GPU
deployment): pruned, verified with a float16 tolerance, weights kept float16. And an input whose
types do not add up is named as invalid, not blamed on the rewrite."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import ort_run
from onnx import TensorProto, helper, numpy_helper

from onnxprune import OnnxPruneError, prune

ROOT = Path(__file__).resolve().parents[1]
SHAPE = [1, 3, 64, 64]


def to_float16(model: onnx.ModelProto, io: bool = True) -> onnx.ModelProto:
    """float32 initializers -> float16; with `io`, inputs/outputs too, else Casts at the boundary."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for n in g.node:  # weights held in Constant nodes too (HardSwish's 3 and 6)
        for a in n.attribute:
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    del g.value_info[:]
    if io:
        for v in [*g.input, *g.output]:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
        return m
    x, y = g.input[0].name, g.output[0].name
    for n in g.node:
        n.input[:] = [x + "_h" if i == x else i for i in n.input]
        n.output[:] = [y + "_h" if o == y else o for o in n.output]
    g.node.insert(0, helper.make_node("Cast", [x], [x + "_h"], to=TensorProto.FLOAT16, name="cast_in"))
    g.node.append(helper.make_node("Cast", [y + "_h"], [y], to=TensorProto.FLOAT, name="cast_out"))
    return m


@pytest.mark.parametrize("name", ["resnet18.ts", "mobilenetv3.ts", "convnext.dynamo"])
@pytest.mark.parametrize("io", [True, False], ids=["fp16-io", "fp32-io"])
def test_float16_models_prune_and_verify(name, io):
    m = to_float16(onnx.load(ROOT / "models" / "onnx" / f"{name}.onnx"), io)
    onnx.checker.check_model(m, full_check=True)
    res = prune(m, ratio=0.3, latency=False, input_shapes={m.graph.input[0].name: SHAPE})
    v = res.report.verification
    assert v["passed"] is True and v["rel_tol"] == 1e-2 and "float16" in v["tolerance_note"]
    assert len(res.kept) >= 5
    assert {t.data_type for t in res.model.graph.initializer if t.data_type in (1, 10)} == {TensorProto.FLOAT16}
    assert res.report.pruned.macs < 0.8 * res.report.baseline.macs
    dt = np.float16 if io else np.float32
    out = ort_run(res.model, {m.graph.input[0].name: np.ones(SHAPE, dt)})
    assert out[0].dtype == dt and np.all(np.isfinite(out[0]))


def test_float32_models_keep_the_tight_tolerance():
    res = prune(str(ROOT / "models" / "onnx" / "resnet18.ts.onnx"), ratio=0.3, latency=False)
    assert res.report.verification["rel_tol"] == 1e-4 and "tolerance_note" not in res.report.verification


def test_inconsistent_input_types_are_named_as_an_invalid_input():
    """A float16 conversion that left a Cast to float32 feeding a float16 Sub: the plain checker
    passes, ONNX Runtime refuses it. The error names the input, not the rewrite."""
    m = to_float16(onnx.load(ROOT / "models" / "onnx" / "resnet18.ts.onnx"))
    g = m.graph
    first = g.node[0]
    g.node.insert(0, helper.make_node("Cast", [g.input[0].name], ["x32"], to=TensorProto.FLOAT, name="bad_cast"))
    g.node.insert(1, helper.make_node("Sub", [g.input[0].name, "x32"], ["xd"], name="bad_sub"))
    g.node.insert(2, helper.make_node("Add", [g.input[0].name, "xd"], ["xa"], name="bad_add"))
    first.input[0] = "xa"
    onnx.checker.check_model(m)  # the plain check cannot see it
    for kw in (dict(ratio=0.3), dict(budget="0.8x")):
        with pytest.raises(OnnxPruneError, match="is not a valid model"):
            prune(m, latency=False, verify=False, **kw)


@pytest.mark.parametrize("per_position", [False, True], ids=["per-channel", "per-position"])
def test_float16_mean_compensation_stays_float16(per_position):
    m = to_float16(onnx.load(ROOT / "models" / "onnx" / "resnet18.ts.onnx"), io=True)
    name = m.graph.input[0].name
    calib = np.random.default_rng(0).standard_normal([6] + SHAPE[1:]).astype(np.float16)
    res = prune(m, ratio=0.3, scorer="vbp", calib=calib, per_position=per_position, latency=False,
                input_shapes={name: SHAPE})
    mc = res.report.verification["mean_compensation"]
    assert mc["passed"] in (True, None) and res.report.verification["passed"]
    if per_position:  # every consumer's map is its exact response: checked, and passed
        assert mc["exact_expected"] and mc["passed"]
        assert any("per-position mean compensation: a constant map added" in n for n in res.report.notes)
    assert {t.data_type for t in res.model.graph.initializer if t.data_type in (1, 10)} == {TensorProto.FLOAT16}
    out = ort_run(res.model, {name: calib[:2]})
    assert out[0].dtype == np.float16 and np.all(np.isfinite(out[0]))
