"""Failure class 2 of issue #14, control flow: a voice-activity-style model with nested If nodes
and LSTMs in the branches (built with onnx.helper).

- graphsurgeon's fold_constants flattened an If with a constant condition whose chosen branch was
  folded to a constant (a zero initial LSTM state): the If's output was left without a producer and
  the checker said "Nodes in a graph must be topologically sorted". normalize() now redoes such a
  round without flattening.
- The compute in the branches was invisible (MACs and params 0): it is counted, said to be frozen,
  and a --macs budget on it is not "met" by an unchanged model.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import ort_run
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from onnxprune import analyze_model
from onnxprune.model.normalize import normalize, undefined_reads

H, I, T = 8, 4, 5
LSTM_MACS = T * 1 * (4 * H * I + 4 * H * H)  # seq x batch x (W + R)
LSTM_PARAMS = 4 * H * I + 4 * H * H + 8 * H


def vi(name, shape=None, dtype=TP.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


class Weights:
    def __init__(self):
        self.rng = np.random.default_rng(0)

    def lstm(self, tag, x, h0=""):
        def w(name, shape):
            return numpy_helper.from_array((self.rng.standard_normal(shape) * 0.3).astype(np.float32), name)
        inits = [w(f"{tag}_W", (1, 4 * H, I)), w(f"{tag}_R", (1, 4 * H, H)), w(f"{tag}_B", (1, 8 * H))]
        nodes = [helper.make_node("LSTM", [x, f"{tag}_W", f"{tag}_R", f"{tag}_B", "", h0], [f"{tag}_Y", f"{tag}_Yh"],
                                  hidden_size=H, name=f"{tag}_lstm"),
                 helper.make_node("Squeeze", [f"{tag}_Yh", "ax0"], [f"{tag}_out"], name=f"{tag}_sq")]
        return nodes, inits


def state_if(tag):
    """If(constant true) -> zeros (then) / the state input (else): the chosen branch folds to a
    constant while the If itself cannot (its else branch reads a graph input)."""
    cond = helper.make_node("Constant", [], [f"{tag}_c"], name=f"{tag}_k",
                            value=helper.make_tensor(f"{tag}_cv", TP.BOOL, [], [True]))
    shape = numpy_helper.from_array(np.array([1, 1, H], np.int64), f"{tag}_shape")
    then_g = helper.make_graph([helper.make_node("ConstantOfShape", [f"{tag}_shape"], [f"{tag}_z"], name=f"{tag}_zeros")],
                               f"{tag}_then", [], [vi(f"{tag}_z")])
    else_g = helper.make_graph([helper.make_node("Identity", ["h_in"], [f"{tag}_o"], name=f"{tag}_state")],
                               f"{tag}_else", [], [vi(f"{tag}_o")])
    node = helper.make_node("If", [f"{tag}_c"], [f"{tag}_h0"], then_branch=then_g, else_branch=else_g, name=f"{tag}_if")
    return [cond, node], [shape], f"{tag}_h0"


def branch(wts, tag):
    """LSTM with the state If, plus an inner If on the input whose two branches hold an LSTM each."""
    sn, si, h0 = state_if(tag + "s")
    ln, li = wts.lstm(tag, "x", h0)
    tn, ti = wts.lstm(tag + "t", "x")
    en, ei = wts.lstm(tag + "e", "x")
    inner = helper.make_node("If", ["is_long"], [f"{tag}_inner"], name=f"{tag}_inner_if",
                             then_branch=helper.make_graph(tn, f"{tag}_it", [], [vi(f"{tag}t_out")], ti),
                             else_branch=helper.make_graph(en, f"{tag}_ie", [], [vi(f"{tag}e_out")], ei))
    add = helper.make_node("Add", [f"{tag}_out", f"{tag}_inner"], [f"{tag}_sum"], name=f"{tag}_add")
    return helper.make_graph(sn + ln + [inner, add], tag, [], [vi(f"{tag}_sum")], si + li)


def vad_model() -> onnx.ModelProto:
    """sr == 16000 selects one of two branches (nested Ifs, three LSTMs on each path), then a
    MatMul head: all compute but the head is inside If branches."""
    wts = Weights()
    nodes = [helper.make_node("Equal", ["sr", "k16"], ["is16"], name="is16"),
             helper.make_node("Greater", ["sr", "k8"], ["is_long"], name="is_long"),
             helper.make_node("If", ["is16"], ["h"], then_branch=branch(wts, "a"), else_branch=branch(wts, "b"),
                              name="outer_if"),
             helper.make_node("MatMul", ["h", "fcw"], ["y"], name="fc")]
    inits = [numpy_helper.from_array(np.int64(16000), "k16"), numpy_helper.from_array(np.int64(8000), "k8"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(wts.rng.standard_normal((H, 2)).astype(np.float32), "fcw")]
    g = helper.make_graph(nodes, "vad", [vi("x", [T, 1, I]), vi("sr", [], TP.INT64), vi("h_in", [1, 1, H])],
                          [vi("y", [1, 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(m)
    return m


def feeds(sr):
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((T, 1, I)).astype(np.float32), "sr": np.array(sr, np.int64),
            "h_in": rng.standard_normal((1, 1, H)).astype(np.float32)}


def test_normalize_keeps_nested_if_outputs_defined():
    m = vad_model()
    n = normalize(m)
    assert undefined_reads(n.graph) == []
    onnx.checker.check_model(n)
    for sr in (16000, 8000):  # both branches compute what the original computes
        np.testing.assert_allclose(ort_run(n, feeds(sr))[0], ort_run(m, feeds(sr))[0], rtol=1e-5, atol=1e-6)
    # the pattern is really there: flattening this graph leaves a dangling If output
    import onnx_graphsurgeon as gs
    g = gs.import_onnx(m)
    g.fold_constants(error_ok=True).cleanup()
    assert undefined_reads(gs.export_onnx(g).graph)


def test_undefined_reads_sees_subgraphs():
    body = helper.make_graph([helper.make_node("Relu", ["ghost"], ["r"])], "b", [], [vi("r")])
    node = helper.make_node("If", ["c"], ["o"], then_branch=body, else_branch=body)
    g = helper.make_graph([node], "g", [vi("c", [], TP.BOOL)], [vi("o")])
    assert undefined_reads(g) == ["ghost"]
    assert undefined_reads(g, frozenset({"ghost"})) == []


def test_branch_compute_is_counted_and_said_frozen():
    a = analyze_model(vad_model())
    from onnxprune.profiling.cost import subgraph_costs, total_macs, total_params
    # outer branch: one LSTM + the costlier inner branch (one LSTM); plus the head MatMul
    assert total_macs(a.view) == 2 * LSTM_MACS + H * 2
    costs = subgraph_costs(a.view)
    assert [c.node for c in costs] == ["If 'outer_if'"]
    assert costs[0].params >= 6 * LSTM_PARAMS  # six LSTMs in all branches (plus folded zero states)
    assert total_params(a.view) == costs[0].params + H * 2
    assert not a.prunable_groups
    k = next(i for i, n in enumerate(a.view.nodes) if n.op_type == "If")
    assert "subgraphs are not analyzed" in a.opaque[k]
    g = a.group_of("h", 1)
    assert g is not None and any("control flow" in r for r in g.reasons)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxprune", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("target", [["--macs", "80%"], ["--ratio", "0.3"]])
def test_cli_does_not_pretend(tmp_path, target):
    """A budget on compute that is all in branches is not met by an unchanged model; a ratio says
    there is nothing to prune. Exit 2, one line, nothing written."""
    src, out = tmp_path / "vad.onnx", tmp_path / "out.onnx"
    onnx.save(vad_model(), src)
    r = run_cli(src, out, *target, "--no-latency")
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("onnxprune: error:") and ("cannot be met" in last or "nothing to prune" in last), last
    assert not out.exists()
    r = run_cli("analyze", src, "--no-latency", "-q")
    assert r.returncode == 0, r.stderr
    assert "cannot load" not in r.stdout + r.stderr and "control flow" in r.stdout
