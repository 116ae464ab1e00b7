"""Failure class 1 of issue #14: latency candidates obey a final prune's member constraints, and a
native crash of ONNX Runtime (SIGFPE inside a kernel) never takes the tool down.

Fixture: a group made of three 128-channel Conv outputs tied by a Concat, with a depthwise conv
on the second segment. Cut to its top 48 canonical channels without the member constraint, the
group kept only the first segment: the depthwise conv got group=0 and a [0, 1, 5, 5] weight, and
ONNX Runtime divided by zero."""
from __future__ import annotations

import signal

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, group_at
from onnx import TensorProto, helper, numpy_helper

from onnxprune import OnnxPruneError, analyze_model
from onnxprune.model.isolated_child import probe_run
from onnxprune.model.probe import check_runs_natively
from onnxprune.model.runtime import IsolatedWorker, NativeCrash, run_isolated
from onnxprune.profiling.latency_table import (build_latency_table, candidate_kept, group_candidates, keep_order,
                                               measure_medians, sample_widths, top_width_kept)
from onnxprune.transform.rewrite import rewrite

SHAPES = {"x": [1, 8, 12, 12]}


def concat_segments_model() -> onnx.ModelProto:
    """x -> three 1x1 convs to 128 channels (the second through a 5x5 depthwise conv) -> Concat
    -> 1x1 conv to 4 (the model output): one channel group of 384 with three members of 128."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [8, 12, 12])
    segs = [b.op("Relu", [b.conv(x, 8, 128, k=1, name=f"seg{i}")]) for i in range(3)]
    segs[1] = b.conv(segs[1], 128, 128, k=5, group=128, name="dw")
    cat = b.op("Concat", segs, name="cat", axis=1)
    return b.model([b.conv(cat, 384, 4, k=1, name="head")])


def crashing_model() -> onnx.ModelProto:
    """What the unconstrained candidate held: a depthwise conv with group=0 on 0 channels (here
    a Slice empties them). ONNX Runtime loads it and dies of SIGFPE running it."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [4, 8, 8], batch=1)
    empty = b.op("Slice", [x, b.const([0]), b.const([0]), b.const([1])], name="empty")
    w = b.const(np.zeros((0, 1, 5, 5), np.float32), "dw.weight")
    y = b.op("Conv", [empty, w], name="dw", group=0, pads=[2, 2, 2, 2], kernel_shape=[5, 5])
    return b.model([b.op("Add", [y, b.const(np.float32(1))], name="out")])


def member_widths(group, kept: np.ndarray) -> list[int]:
    """Channels each member keeps when the group keeps the canonical channels `kept`."""
    return [int(np.isin(m.index_map, kept).sum()) for m in group.members]


@pytest.fixture(scope="module")
def concat_group():
    a = analyze_model(concat_segments_model(), input_shapes=SHAPES)
    g = group_at(a, "cat_out", 1)
    assert g.size == 384 and g.prunable and g.depthwise
    assert sorted({len(m.index_map) for m in g.members}) == [128, 384]
    return a, g


def test_unconstrained_width_would_empty_a_member(concat_group):
    """The pattern is really there: the top 48 canonical channels all lie in the first segment."""
    _, g = concat_group
    widths = member_widths(g, top_width_kept(g, keep_order(g, None), 48))
    assert 0 in widths


def test_candidates_keep_a_channel_in_every_member(concat_group):
    a, g = concat_group
    cands = group_candidates(g)
    assert len(cands) >= len(sample_widths(g.size)) - 2  # widths that collapse onto one are merged
    for kept in cands:
        assert min(member_widths(g, kept)) >= 1, member_widths(g, kept)
        assert len(kept) < g.size
    kept48 = candidate_kept(g, keep_order(g, None), 48)
    assert len(kept48) == 50  # 48 from the first segment, one each from the other two
    for kept in cands:  # every candidate model is sound: nothing 0-sized, and ORT runs it
        m = rewrite(a, {g.id: kept})
        for t in m.graph.initializer:
            assert all(d > 0 for d in t.dims), (t.name, list(t.dims))
        for n in m.graph.node:
            assert all(at.i != 0 for at in n.attribute if at.name == "group"), n.name
        check_runs_natively(m, SHAPES)


def test_latency_table_on_the_concat_fixture(concat_group, tmp_path):
    a, g = concat_group
    table = build_latency_table(a, [g], cache_dir=tmp_path, use_cache=False, time_per_group_s=0.3)
    assert table.skipped == []
    widths = sorted(int(w) for w, _ in table.samples[g.id])
    assert widths[0] >= 3 and widths[-1] == g.size
    assert np.all(np.isfinite([d for _, d in table.samples[g.id]]))


def test_signal_in_the_child_is_a_clean_error():
    with pytest.raises(NativeCrash, match="SIGFPE") as e:
        run_isolated(signal.raise_signal, signal.SIGFPE)
    assert isinstance(e.value, OnnxPruneError)
    assert run_isolated(int, "7") == 7  # the next call gets a fresh child


def test_child_exceptions_and_timeouts():
    with IsolatedWorker() as w:
        with pytest.raises(ValueError, match="invalid literal"):
            w.call(int, "x")
        with pytest.raises(NativeCrash, match="no answer within 0.2 s"):
            w.call(signal.pause, timeout_s=0.2)
        assert w.call(len, [1, 2, 3]) == 3
    with pytest.raises(TypeError, match="module-level function"):
        run_isolated(lambda: 1)


def test_onnxruntime_sigfpe_is_caught():
    """A real kernel crash: ONNX Runtime divides by zero in the group=0 conv, in the child."""
    m = crashing_model()
    feeds = {"x": np.ones((1, 4, 8, 8), np.float32)}
    with pytest.raises(NativeCrash, match="SIGFPE"):
        run_isolated(probe_run, m.SerializeToString(), feeds)
    with pytest.raises(NativeCrash, match=r"crashed timing the model: killed by SIGFPE"):
        measure_medians([m], feeds, provider="cpu", threads=1, time_budget_s=0.2)
    with pytest.raises(OnnxPruneError, match=r"^ONNX Runtime crashed running the model \(inputs x=1x4x8x8\): killed by SIGFPE"):
        check_runs_natively(m)


def test_cli_reports_a_crashing_model_in_one_line(tmp_path):
    import subprocess
    import sys
    p = tmp_path / "crash.onnx"
    onnx.save(crashing_model(), p)
    out = tmp_path / "out.onnx"
    r = subprocess.run([sys.executable, "-m", "onnxprune", str(p), str(out), "--ratio", "0.3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("onnxprune: error: ONNX Runtime crashed running") and "SIGFPE" in last, r.stderr
    assert not out.exists()
