"""Decoders with a KV cache (issue #15): the committed Llama-style fixtures (models/llama.py, both
torch exporters) prune MLP neurons and whole KV-head groups, the cache inputs/outputs shrink with
their group (the generic state-IO mechanism: groups.state_spaces, rewrite.resize_io,
oracle.io_positions), and the pruned model matches the masked original, also over a generation loop."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import greedy_tokens

from onnxprune import analyze_model, prune
from onnxprune.verify.oracle import io_positions, masked_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = {f["name"]: f for f in json.loads((ROOT / "models" / "fixtures.json").read_text())
            if f.get("kind") == "decoder" and f["name"].startswith("llama_tiny")}
EXPORTERS = ["ts", "dynamo"]
HEADS_EXPORTERS = EXPORTERS


def _fx(exporter):
    f = FIXTURES[f"llama_tiny.{exporter}"]
    return str(ROOT / f["file"]), {k: list(v) for k, v in f["input_shapes"].items()}


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# --- the generic mechanism on a graph built by hand ----------------------------------------------

def _state_model():
    """k = x @ Wk (4 channels); present = Concat(past, k, axis=1); y = present @ Wo. The 4 channels
    of k are one group with past/present axis 2: a recurrent state the caller feeds back."""
    rng = np.random.default_rng(0)
    wk = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "Wk")
    wo = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "Wo")
    nodes = [helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
             helper.make_node("Concat", ["past", "k"], ["present"], axis=1, name="append"),
             helper.make_node("MatMul", ["present", "Wo"], ["y"], name="o_proj")]
    g = helper.make_graph(nodes, "state", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 8]),
        helper.make_tensor_value_info("past", TensorProto.FLOAT, [1, "past_seq", 4])], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "total", 3]),
        helper.make_tensor_value_info("present", TensorProto.FLOAT, [1, "total", 4])], [wk, wo])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_appended_state_resizes_with_its_group():
    m = _state_model()
    shapes = {"x": [1, 2, 8], "past": [1, 3, 4]}
    a = analyze_model(m, input_shapes=shapes)
    g = a.group_of("k", 2)
    assert g.prunable and g.size == 4, g.reasons
    assert a.resized_io == {("past", 2): g.id, ("present", 2): g.id}
    res = prune(m, ratio=0.5, input_shapes=shapes, latency=False)
    assert res.report.verification["passed"]
    out = res.model
    assert _dims(out.graph.input[1]) == [1, "past_seq", 2]
    assert _dims(out.graph.output[1]) == [1, "total", 2]
    # the kept channels of the cache are the kept columns of Wk, in order
    kept = next(r.kept_indices for r in res.report.groups if r.kept < r.channels)
    x = np.random.default_rng(1).standard_normal((1, 2, 8)).astype(np.float32)
    past = np.random.default_rng(2).standard_normal((1, 3, 4)).astype(np.float32)
    y, present = _session(out).run(None, {"x": x, "past": past[:, :, kept]})
    wk = numpy_helper.to_array(m.graph.initializer[0])
    np.testing.assert_allclose(present[:, 3:], x @ wk[:, kept], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(present[:, :3], past[:, :, kept])


def test_state_input_without_append_stays_frozen():
    """A model input that is not appended to and returned is an interface: it never resizes."""
    m = _state_model()
    m.graph.node[1].input[:] = ["k", "k"]  # present = Concat(k, k): no input in it
    m.graph.input.pop()
    a = analyze_model(m, input_shapes={"x": [1, 2, 8]})
    assert a.resized_io == {}
    assert not a.group_of("k", 2).prunable


# --- the Llama fixtures --------------------------------------------------------------------------

@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mlp_prunes_and_matches_oracle(exporter):
    path, shapes = _fx(exporter)
    res = prune(path, ratio=0.5, input_shapes=shapes, latency=False)
    rep = res.report
    assert rep.verification["passed"], rep.verification
    mlp = [g for g in rep.groups if g.kept < g.channels]
    assert len(mlp) == 2 and all(g.channels == 128 and g.kept == 64 for g in mlp)
    # gate, up and down shrink together: 3 weight members in each MLP group
    a = analyze_model(path, input_shapes=shapes)
    assert sorted(len(a.groups[g.id].weights) for g in mlp) == [3, 3]
    assert rep.pruned.params == rep.baseline.params - 2 * 3 * 64 * 64
    # the cache is untouched
    assert [_dims(i)[1] for i in res.model.graph.input[3:]] == [2] * 4


@pytest.mark.parametrize("exporter", HEADS_EXPORTERS)
def test_kv_heads_prune_and_cache_shrinks(exporter):
    path, shapes = _fx(exporter)
    a = analyze_model(path, input_shapes=shapes, heads=True)
    heads = [g for g in a.prunable_groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.size == 2 for g in heads), [(g.name, g.size, g.reasons) for g in a.groups]
    assert len(a.resized_io) == 8  # past/present key/value of both layers, axis 1
    res = prune(path, ratio=0.5, heads=True, input_shapes=shapes, latency=False)
    rep = res.report
    assert rep.verification["passed"], rep.verification
    for vi in list(res.model.graph.input[3:]) + list(res.model.graph.output[1:]):
        assert _dims(vi)[1] == 1, (vi.name, _dims(vi))
    # per layer: 4 query heads -> 2 (q, o lose 2 x 16 x 64 each), 2 KV heads -> 1 (k, v lose 16 x 64),
    # MLP 128 -> 64 (gate, up, down lose 64 x 64 each)
    assert rep.baseline.params - rep.pruned.params == 2 * (2 * 2 * 16 * 64 + 2 * 16 * 64 + 3 * 64 * 64)


@pytest.mark.parametrize("exporter", HEADS_EXPORTERS)
def test_greedy_generation_matches_masked_original(exporter):
    """10 greedy tokens from the pruned decoder (MLP 30% and KV heads) equal the masked original's,
    the pruned model fed its own smaller cache; and differ from the unpruned model's (pruning did
    something)."""
    path, shapes = _fx(exporter)
    res = prune(path, ratio=0.3, heads=True, input_shapes=shapes, latency=False)
    assert res.report.verification["passed"]
    a = analyze_model(path, input_shapes=shapes, heads=True)
    kept = {r.id: np.array(r.kept_indices) for r in res.report.groups if r.kept < r.channels}
    assert any(a.groups[g].kind == "heads" for g in kept)
    masked = masked_model(a, kept)
    io = io_positions(a, kept)
    rng = np.random.default_rng(5)
    # a prompt of 5 tokens after a random cache of 3 positions (so the cache slices matter)
    feeds0 = {"input_ids": rng.integers(0, 256, (1, 5), dtype=np.int64), "attention_mask": np.ones((1, 8), np.int64),
              "position_ids": np.arange(3, 8, dtype=np.int64)[None]}
    for i in range(2):
        for kv in ("key", "value"):
            feeds0[f"past_key_values.{i}.{kv}"] = rng.standard_normal((1, 2, 3, 16)).astype(np.float32)
    want = greedy_tokens(_session(masked), feeds0, 10)
    got = greedy_tokens(_session(res.model), feeds0, 10, cut=io)
    assert got == want
    assert greedy_tokens(_session(onnx.load(path)), feeds0, 10) != want  # pruning changed the model
    # the removed head's cache slice instead of the kept one: other tokens (the slices are used)
    wrong = {k: [(ax, np.setdiff1d(np.arange(2), p)) for ax, p in v] for k, v in io.items()}
    assert greedy_tokens(_session(res.model), feeds0, 10, cut=wrong) != want
    assert all(len(p) == 1 for v in io.values() for _, p in v) and len(io) == 8


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_default_sizes_agree_with_the_cache(exporter):
    """Without --input-shape: the past length defaults to 8 and the attention mask's total length to
    past + seq (the dynamo export names it total_seq after models.llama renames 'past_seq + seq')."""
    from onnxprune.model.shapes import graph_input_shapes
    path, _ = _fx(exporter)
    shapes = graph_input_shapes(onnx.load(path))
    assert shapes["past_key_values.0.key"] == [1, 2, 8, 16]
    assert shapes["attention_mask"] == [1, shapes["input_ids"][1] + 8]
    res = prune(path, ratio=0.3, heads=True, latency=False)
    assert res.report.verification["passed"]


def test_default_sizes_sum_a_written_total():
    """A total length written as 'past_seq + seq' (the dynamo exporter's own name) is the sum."""
    from onnxprune.model.shapes import graph_input_shapes
    m = _state_model()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    m.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.INT64, [1, "past_seq + seq"]))
    shapes = graph_input_shapes(m, {"x": [1, 5, 8]})
    assert shapes["past"] == [1, 8, 4] and shapes["mask"] == [1, 13]


def test_macs_budget_with_kv_heads():
    """A MACs budget prices KV-head groups like any other (their caches shrink with them) and verifies."""
    path, shapes = _fx("dynamo")
    res = prune(path, macs="60%", heads=True, input_shapes=shapes, latency=False)
    rep = res.report
    assert rep.verification["passed"] and rep.budget.met
    assert rep.pruned.macs <= 0.6 * rep.baseline.macs
    kv = [_dims(i)[1] for i in res.model.graph.input[3:]]
    heads = [g for g in rep.groups if g.kind == "heads"]
    assert any(g.kept < g.channels for g in heads)
    assert kv == [g.kept for g in heads for _ in range(2)]  # key and value of each layer follow its group


@pytest.mark.parametrize("comp", ["mean", "lstsq"])
def test_compensation_with_kv_heads(comp):
    """vbp with mean / lstsq compensation when KV heads go: the checks run the pruned model on the
    kept cache slices (mean: exact against the mean-substituted original)."""
    from onnxprune.analysis.graph import random_feeds
    from onnxprune.scoring.calibration import FeedList
    path, shapes = _fx("ts")
    a = analyze_model(path, input_shapes=shapes)
    calib = FeedList([random_feeds(a.view, seed=s) for s in range(3)])
    res = prune(path, ratio=0.4, scorer="vbp", calib=calib, compensate=comp, heads=True, latency=False,
                input_shapes=shapes)
    ver = res.report.verification
    assert ver["passed"] and any(g.kind == "heads" and g.kept < g.channels for g in res.report.groups)
    check = ver[f"{comp}_compensation"]
    assert check["passed"] if comp == "mean" else check["finite_outputs"]
    assert [_dims(i)[1] for i in res.model.graph.input[3:]] == [1] * 4


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_empty_past_still_resizes(exporter):
    """Analysed at past length 0 (the first generation step), the cache inputs still follow their
    KV-head group: the pruned model's past and present agree."""
    path, _ = _fx(exporter)
    shapes = {"input_ids": [1, 4], "attention_mask": [1, 4], "position_ids": [1, 4]}
    shapes.update({f"past_key_values.{i}.{kv}": [1, 2, 0, 16] for i in range(2) for kv in ("key", "value")})
    res = prune(path, ratio=0.5, heads=True, input_shapes=shapes, latency=False)
    assert res.report.verification["passed"]
    assert [_dims(i)[1] for i in list(res.model.graph.input[3:]) + list(res.model.graph.output[1:])] == [1] * 8


def test_float16_decoder_prunes_heads():
    """The fp16 TorchScript export (models/onnx/llama_tiny_fp16.ts.onnx, `python -m models.llama
    --config tiny --exporter ts --dtype float16`): KV heads and MLP prune, the fp16 cache shrinks,
    verified at the half-precision tolerance."""
    path = str(ROOT / "models" / "onnx" / "llama_tiny_fp16.ts.onnx")
    res = prune(path, ratio=0.3, heads=True, latency=False)
    ver = res.report.verification
    assert ver["passed"] and ver["rel_tol"] == 1e-2
    for vi in list(res.model.graph.input[3:]) + list(res.model.graph.output[1:]):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT16 and _dims(vi)[1] == 1


def test_latency_budget_on_external_data_decoder(tmp_path):
    """A latency budget on a decoder stored with external data (the tool's external-data mode: weights
    referred to by absolute path): the op-level profile and the baseline timing load every candidate
    (KV cache cut to its kept heads) and the solve answers; the tiny decoder is overhead-bound, so
    the answer is the one-line refusal, not a load failure."""
    from onnxprune.errors import OnnxPruneError
    path, _ = _fx("dynamo")
    ext = tmp_path / "llama_ext.onnx"
    onnx.save_model(onnx.load(path), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="llama_ext.onnx.data", size_threshold=0)
    try:
        res = prune(str(ext), budget="0.95x", heads=True, latency=False, cache_dir=str(tmp_path / "cache"))
    except OnnxPruneError as e:
        assert "cannot be met" in str(e) or "within" in str(e), e
    else:
        assert res.report.verification["passed"] and res.report.budget.met
    # the closed loop (baseline and candidates timed in a child process) on the same model
    try:
        res = prune(str(ext), budget="0.9x", heads=True, latency_model="macs", latency=False)
    except OnnxPruneError as e:
        assert "not met" in str(e) or "cannot be met" in str(e), e  # a loaded machine's timings
    else:
        assert res.report.verification["passed"] and res.report.budget.met
