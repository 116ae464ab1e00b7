"""ONNX Runtime's com.microsoft DynamicQuantizeLSTM (what quantize_dynamic makes of an LSTM), built
with onnx.helper and run through the real command line (issue #14, class 2):

- the LSTM alone has no channel group: exit 2 "nothing to prune", one line, nothing written;
- followed by an MLP head, the head prunes and verifies, the LSTM's hidden channels are frozen with
  a reason in the report, and its MACs are counted;
- "Field 'shape' of 'type' is required": declared graph outputs after the contrib op, with
  value_info entries that have a type but no shape (the contrib op's outputs cannot be inferred),
  must load and prune (the written model passes the checker), never exit 1; likewise an output or
  an input that declares no shape at all (exit 0, or 2 with a line that says what to give)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
T, B, I, H, HIDDEN, OUT = 6, 1, 8, 8, 32, 4  # steps, batch, input, LSTM hidden, MLP hidden, outputs
LSTM_MACS = T * B * (I * 4 * H + H * 4 * H)  # every step: W x and R h for the four gates
HEAD_MACS = T * B * (H * HIDDEN + HIDDEN * OUT)


def lstm_model(head: bool, outputs=None, shapeless_value_info=(), input_shape=(T, B, I)) -> onnx.ModelProto:
    """x [T, B, I] -> DynamicQuantizeLSTM (int8 W, R with per-tensor scales and zero points) ->
    (with `head`) Squeeze -> MatMul + bias -> Relu -> MatMul. `outputs`: the declared graph outputs
    (name -> shape or None for a type without a shape)."""
    rng = np.random.default_rng(0)

    def t(name, a):
        return numpy_helper.from_array(a, name)
    inits = [t("W_q", rng.integers(-100, 100, (1, I, 4 * H)).astype(np.int8)),
             t("R_q", rng.integers(-100, 100, (1, H, 4 * H)).astype(np.int8)),
             t("B", (rng.standard_normal((1, 8 * H)) * 0.1).astype(np.float32)),
             t("W_scale", np.full((1,), 0.01, np.float32)), t("W_zp", np.zeros((1,), np.int8)),
             t("R_scale", np.full((1,), 0.01, np.float32)), t("R_zp", np.zeros((1,), np.int8))]
    nodes = [helper.make_node("DynamicQuantizeLSTM", ["x", "W_q", "R_q", "B", "", "", "", "", "W_scale", "W_zp",
                                                      "R_scale", "R_zp"], ["Y", "Yh", "Yc"],
                              domain="com.microsoft", hidden_size=H, name="dqlstm")]
    if head:
        nodes += [helper.make_node("Squeeze", ["Y", "ax1"], ["ys"], name="sq"),
                  helper.make_node("MatMul", ["ys", "fw"], ["m1"], name="fc1"),
                  helper.make_node("Add", ["m1", "fb"], ["a1"], name="fc1_bias"),
                  helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
                  helper.make_node("MatMul", ["r1", "fw2"], ["out"], name="fc2")]
        inits += [t("ax1", np.array([1], np.int64)), t("fw", (rng.standard_normal((H, HIDDEN)) * 0.3).astype(np.float32)),
                  t("fb", (rng.standard_normal((HIDDEN,)) * 0.1).astype(np.float32)),
                  t("fw2", (rng.standard_normal((HIDDEN, OUT)) * 0.3).astype(np.float32))]
    outputs = outputs or ({"out": [T, B, OUT]} if head else {"Yh": [1, B, H]})
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape) if input_shape else None)
    g = helper.make_graph(nodes, "dq_lstm", [x], [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                                  for n, s in outputs.items()], inits,
                          value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                      for n in shapeless_value_info])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)


def run_cli(tmp_path, model: onnx.ModelProto, *flags):
    src, out, rep = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(model, src)
    ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])  # the fixture itself is a valid model
    r = subprocess.run([sys.executable, "-m", "onnxprune", str(src), str(out), "--report", str(rep), "-q",
                        "--no-latency", *flags], capture_output=True, text=True, cwd=ROOT, timeout=300)
    return r, out, rep


def error_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.startswith("onnxprune:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_the_lstm_alone_is_nothing_to_prune(tmp_path):
    r, out, rep = run_cli(tmp_path, lstm_model(head=False), "--ratio", "0.3")
    assert r.returncode == 2, r.stderr
    assert "nothing to prune" in error_line(r)
    assert not out.exists() and not rep.exists()


def test_the_head_prunes_and_verifies_behind_a_frozen_counted_lstm(tmp_path):
    r, out, rep = run_cli(tmp_path, lstm_model(head=True), "--ratio", "0.5")
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["verification"]["passed"]
    groups = {g["name"]: g for g in report["groups"]}
    assert groups["fc1"]["kept"] == HIDDEN // 2 and not groups["fc1"]["frozen"]
    lstm = next(g for g in report["groups"] if "Y:3" in g["members"])  # the LSTM's hidden channels
    assert lstm["frozen"] and lstm["kept"] == H
    assert any("DynamicQuantizeLSTM" in reason and "dqlstm" in reason for reason in lstm["reasons"]), lstm
    assert report["baseline"]["macs"] == LSTM_MACS + HEAD_MACS
    assert report["pruned"]["macs"] == LSTM_MACS + HEAD_MACS // 2  # the LSTM's share stays
    pruned = onnx.load(str(out))
    feed = {"x": np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)}
    assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0].shape == (T, B, OUT)
    assert {t.name: tuple(t.dims) for t in pruned.graph.initializer}["fw"] == (H, HIDDEN // 2)


def test_shapeless_value_info_after_the_contrib_op_keeps_the_declared_outputs(tmp_path):
    """The declared outputs have shapes, the value_info of the contrib op's outputs only types (the
    pattern behind "Field 'shape' of 'type' is required"): normalization must not take the
    shapeless entries over the declared outputs, and the written model passes the checker."""
    declared = {"out": [T, B, OUT], "Yh": [1, B, H], "Yc": [1, "b", H]}
    model = lstm_model(head=True, outputs=declared, shapeless_value_info=("Y", "Yh", "Yc", "ys", "out"))
    onnx.checker.check_model(model)
    r, out, rep = run_cli(tmp_path, model, "--ratio", "0.3")
    assert r.returncode == 0, r.stderr
    assert json.loads(rep.read_text())["verification"]["passed"]
    written = onnx.load(str(out))
    onnx.checker.check_model(written)
    assert {o.name: o.type for o in written.graph.output} == {o.name: o.type for o in model.graph.output}


def test_an_output_without_a_shape_prunes(tmp_path):
    """A graph output with a type and no shape (the checker objects, ONNX Runtime runs it)."""
    model = lstm_model(head=True, outputs={"out": None, "Yh": None})
    r, out, rep = run_cli(tmp_path, model, "--ratio", "0.3")
    assert r.returncode == 0, r.stderr
    assert json.loads(rep.read_text())["verification"]["passed"]
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_an_input_without_a_shape_asks_for_input_shape(tmp_path):
    """An input that declares no shape (not even its rank): exit 2 naming --input-shape, and given
    one of any rank, it prunes (the rank is not taken as 0)."""
    model = lstm_model(head=True, input_shape=None)
    r, out, _ = run_cli(tmp_path, model, "--ratio", "0.3")
    assert r.returncode == 2 and "--input-shape x=" in error_line(r), r.stderr
    assert not out.exists()
    r, out, rep = run_cli(tmp_path, model, "--ratio", "0.3", "--input-shape", f"x={T}x{B}x{I}")
    assert r.returncode == 0, r.stderr
    assert json.loads(rep.read_text())["verification"]["passed"]
