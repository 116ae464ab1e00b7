"""Latency measurement on tiny onnx.helper models, provider errors, and the text parsers."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.profiling.timing import (Budget, LatencyError, LatencyStats, make_session, measure_latencies,
                               timed_run,
                               parse_budget, parse_latency_output)

ROWS, DIM = 64, 256


def matmul_chain(widths: list[int], seed: int = 0) -> onnx.ModelProto:
    """x[ROWS, DIM] @ W1[DIM, w1] @ W2[w1, w2] ... with random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, prev_w = "x", DIM
    for k, w in enumerate(widths):
        inits.append(numpy_helper.from_array(rng.standard_normal((prev_w, w)).astype(np.float32) * 0.05, f"W{k}"))
        out = "y" if k == len(widths) - 1 else f"h{k}"
        nodes.append(helper.make_node("MatMul", [prev, f"W{k}"], [out]))
        prev, prev_w = out, w
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, DIM])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, prev_w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def feeds():
    return {"x": np.random.default_rng(1).standard_normal((ROWS, DIM)).astype(np.float32)}


def test_session_settings():
    sess = make_session(matmul_chain([8]), threads=1)
    so = sess.get_session_options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert sess.get_providers() == ["CPUExecutionProvider"]
    # bytes and ModelProto both work
    assert make_session(matmul_chain([8]).SerializeToString()).get_inputs()[0].name == "x"


def test_measure_orders_and_separates_big_from_small(feeds):
    big = matmul_chain([DIM] * 4)  # 4 x 64x256x256 = 16.8M MACs
    small = matmul_chain([8])       # 64x256x8 = 131k MACs: 128x fewer
    # one thread: on a loaded machine, thread hand-offs would blur the small model's time
    stats = measure_latencies([big, small, big.SerializeToString()], feeds, threads=1, warmup=2, min_time_s=0.3,
                              time_budget_s=3.0)
    assert len(stats) == 3
    for s in stats:
        assert isinstance(s, LatencyStats)
        assert s.n >= 3 and s.median_ms > 0 and s.mean_ms > 0 and s.std_ms >= 0
        assert s.p10_ms <= s.median_ms <= s.p90_ms
    assert stats[1].median_ms * 3 < stats[0].median_ms  # order kept: small is the middle one
    assert stats[1].median_ms * 3 < stats[2].median_ms


def test_measure_fixed_repeats_and_feed_per_model(feeds):
    stats = measure_latencies([matmul_chain([8]), matmul_chain([16])], [feeds, dict(feeds, extra=np.zeros(1))],
                              warmup=1, repeats=7, time_budget_s=None)
    assert [s.n for s in stats] == [7, 7]
    assert measure_latencies([], feeds) == []


def count_runs(rewarm: bool, tmp_path, feeds) -> int:
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / f"p{int(rewarm)}")
    sess = ort.InferenceSession(matmul_chain([8]).SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert timed_run(sess, feeds, rewarm) > 0
    events = json.load(open(sess.end_profiling()))
    return sum(1 for e in events if e.get("name") == "model_run")


def test_timed_run_rewarms_with_one_untimed_run(tmp_path, feeds):
    # a model timed right after another runs with the other's data in the caches: one untimed run
    # first (module docstring of profiling/timing.py)
    assert count_runs(False, tmp_path, feeds) == 1
    assert count_runs(True, tmp_path, feeds) == 2


def test_measure_stops_when_the_medians_are_known(feeds):
    models = [matmul_chain([8]), matmul_chain([16])]
    # any interval within 10x the median is reached at the first check (8 rounds). At 50%, one
    # interrupted run of a microsecond model among 8 (the CI spans min..max) failed it on a quiet machine
    loose = measure_latencies(models, feeds, warmup=1, time_budget_s=None, rel_halfwidth=10.0)
    assert [s.n for s in loose] == [8, 8]
    full = measure_latencies(models, feeds, warmup=1, time_budget_s=None, min_time_s=0.0)
    assert all(s.n >= 50 for s in full)  # without it, the fixed round count


def test_measure_errors(feeds):
    with pytest.raises(LatencyError, match="no feed for input"):
        measure_latencies([matmul_chain([8])], {"z": feeds["x"]}, repeats=1)
    with pytest.raises(LatencyError, match="2 models"):
        measure_latencies([matmul_chain([8])] * 2, [feeds], repeats=1)


def test_unavailable_provider_is_an_error_not_a_fallback():
    available = ort.get_available_providers()
    missing = [name for name, ep in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider"))
               if ep not in available]
    if not missing:
        pytest.skip("every provider is available here")
    with pytest.raises(LatencyError, match="not available") as e:
        make_session(matmul_chain([8]), provider=missing[0])
    assert "CPUExecutionProvider" in str(e.value)  # names what is available
    assert isinstance(e.value, ValueError)
    with pytest.raises(LatencyError, match="unknown execution provider"):
        make_session(matmul_chain([8]), provider="no-such-ep")


@pytest.mark.parametrize("text,ms", [
    ("latency_ms: 3.21", 3.21),
    ("warming up\nlatency_us: 3210\nbye\n", 3.21),
    ("LATENCY_S=0.00321", 3.21),
    ("latency_ms: 1.0\nlatency_ms: 2.5e0", 2.5),  # the last keyed line wins
    ("run 1 of 3\n 4.5 \n\n", 4.5),               # bare number on the last non-empty line: ms
])
def test_parse_latency_output(text, ms):
    assert parse_latency_output(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "done", "latency: 3", "latency_ms: -1", "3.2 ms\nok"])
def test_parse_latency_output_rejects(text):
    with pytest.raises(ValueError):
        parse_latency_output(text)


@pytest.mark.parametrize("text,kind,value", [
    ("11ms", "abs", 11.0), ("900us", "abs", 0.9), ("0.011s", "abs", 11.0), (" 2.5 MS ", "abs", 2.5),
    ("0.6x", "rel", 0.6), ("60%", "rel", 0.6), ("1x", "rel", 1.0),
])
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert b.kind == kind and b.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["11", "fast", "0ms", "-3ms", "1.5x", "0%", "120%", "ms", "11 ms ms"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError, match="bad latency budget"):
        parse_budget(text)


def test_budget_to_ms():
    assert Budget("rel", 0.5).to_ms(8.0) == 4.0
    assert Budget("abs", 3.0).to_ms(8.0) == 3.0
