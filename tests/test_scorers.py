"""Scorers: finite scores of the right length for every prunable group, and what each one promises
(SP-LAMP top channel 1, OCSPruner's slice normalization, bn-scale = |gamma| with an l2 fallback note,
vbp = numpy variance of the activation, streaming = one big batch, seeded random)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import GraphBuilder, group_at
from onnx import helper

from onnxprune import analyze_model
from onnxprune.analysis.graph import random_feeds
from onnxprune.scoring.calibration import CalibSet, FeedList, activation_spaces, activation_stats
from onnxprune.scoring.registry import SCORERS, ScoreContext, score_groups
from onnxprune.scoring.deployed import deployed_weights
from onnxprune.scoring.scorers import magnitude_scores, sp_lamp_saliency

ROOT = Path(__file__).resolve().parents[1]
ALL = ["l1", "l2", "l2-filter", "sp-lamp", "sp-lamp-folded", "saliency", "bn-scale", "vbp", "recon", "random"]


def small_cnn(bn=True, seed=0):
    """conv3x3(1->8)[BN]-Relu -> conv1x1(8->6)-Relu -> GAP -> Flatten -> Gemm(6->4)."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", [1, 8, 8])
    y = b.conv(x, 1, 8, k=3, bias=not bn, name="conv1")
    if bn:
        y = b.bn(y, 8, name="bn1")
    a1 = b.op("Relu", [y], name="relu1")
    y = b.conv(a1, 8, 6, k=1, pads=[0, 0, 0, 0], name="conv2")
    a2 = b.op("Relu", [y], name="relu2")
    y = b.op("Flatten", [b.op("GlobalAveragePool", [a2])], axis=1)
    return b.model([b.gemm(y, 6, 4, name="fc")])


def calib_for(n=12, seed=0, shape=(1, 8, 8)):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


def ctx_for(model, calib=None, batch=5, seed=0):
    a = analyze_model(model)
    cs = None
    if calib is not None:
        cs = CalibSet({a.view.inputs[0]: calib}, batch_size=batch)
    return a, ScoreContext(a, calib=cs, seed=seed)


@pytest.mark.parametrize("scorer", ALL)
def test_every_scorer_finite_right_length(scorer):
    a, ctx = ctx_for(small_cnn(), calib_for())
    scores = score_groups(a, scorer, context=ctx)
    assert set(scores) == {g.id for g in a.prunable_groups} and scores
    for g in a.prunable_groups:
        s = scores[g.id]
        assert s.shape == (g.size,) and np.all(np.isfinite(s)), (scorer, g.name)
        assert np.all(s >= 0)


def test_layer_weight_axes_and_sp_lamp():
    a, ctx = ctx_for(small_cnn())
    table = deployed_weights(a)
    assert ("conv2.weight", 1) in table.inputs and ("fc.weight", 1) in table.inputs  # contracted axes
    assert ("conv1.weight", 0) in table.filters and ("conv2.weight", 0) in table.filters
    assert ("bn1.scale", 0) not in table.filters | table.inputs
    # BN folded into conv1: its statistics, gamma and conv1's bias are not scored on their own
    assert {"bn1.mean", "bn1.var", "bn1.scale"} <= table.skip and "bn1.bias" not in table.skip
    scores = score_groups(a, "sp-lamp", context=ctx)
    assert scores.lamp_normalized
    for g in a.prunable_groups:
        assert scores[g.id].max() == 1.0 and np.all(scores[g.id] <= 1.0)


def test_sp_lamp_without_consumer_uses_producer_term():
    """Eq. 3: a group whose channels no weight contracts (here: the last conv's channels pooled into
    a parameter-free head) is scored by its producer mass alone."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [2, 6, 6])
    y = b.op("Relu", [b.conv(x, 2, 5, k=3, name="c1")])
    y = b.op("Relu", [b.conv(y, 5, 7, k=3, name="c2", bias=False)])
    y = b.op("ReduceMean", [y], axes=[1, 2, 3], keepdims=0)
    a = analyze_model(b.model([y]))
    g = group_at(a, "c2.weight", 0)
    assert g.prunable
    w = a.view.consts["c2.weight"].astype(np.float64)
    np.testing.assert_allclose(sp_lamp_saliency(a, g, deployed_weights(a)), (w.reshape(7, -1) ** 2).sum(1))


def scaled_model():
    """Two members of one 8-channel group with very different scales and opposite rankings:
    conv1's filters ~1000 x (1.0 .. 1.7) rising, conv2's input slices 8 .. 1 falling."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [3, 4, 4])
    w1 = np.ones((8, 3, 1, 1), np.float32) * (1000 * (1.0 + 0.1 * np.arange(8)))[:, None, None, None] / np.sqrt(3)
    w2 = np.ones((4, 8, 1, 1), np.float32) * np.arange(8, 0, -1, dtype=np.float32)[None, :, None, None] / 2.0
    y = b.op("Conv", [x, b.const(w1, "w1")], name="conv1", kernel_shape=[1, 1])
    y = b.op("Relu", [y])
    y = b.op("Conv", [y, b.const(w2, "w2")], name="conv2", kernel_shape=[1, 1])
    return b.model([b.op("Relu", [y])])


def test_saliency_divides_each_slice_by_the_root_of_its_size():
    """OCSPruner: conv1 slices have 3 elements, conv2 input slices 4; sum w^2 / sqrt(n), averaged."""
    a, ctx = ctx_for(scaled_model())
    g = group_at(a, "w1", 0)
    sal = score_groups(a, "saliency", context=ctx)[g.id]
    m = {mm.tensor: mm for mm in g.weights}
    v1 = 1e6 * (1.0 + 0.1 * np.arange(8)) ** 2 / np.sqrt(3)
    v2 = np.arange(8, 0, -1, dtype=np.float64) ** 2 / np.sqrt(4)
    np.testing.assert_allclose(sal[m["w1"].index_map], (v1 + v2) / 2, rtol=1e-5)


def test_bn_scale_is_abs_gamma_and_falls_back_with_note():
    model = small_cnn(bn=True)
    gamma = np.array([0.5, -3.0, 1.0, -0.1, 2.0, 0.2, -1.5, 0.05], np.float32)
    for t in model.graph.initializer:
        if t.name == "bn1.scale":
            t.CopyFrom(helper.make_tensor("bn1.scale", 1, [8], gamma))
    a, ctx = ctx_for(model)
    s = score_groups(a, "bn-scale", context=ctx)
    g = group_at(a, "bn1.scale", 0)
    mm = next(m for m in g.members if m.tensor == "bn1.scale")
    np.testing.assert_allclose(s[g.id][mm.index_map], np.abs(gamma), rtol=1e-6)
    notes_with_bn = list(ctx.notes)
    # the 6-channel group (conv2, no BN) fell back to l2 and says so
    g2 = group_at(a, "conv2.weight", 0)
    np.testing.assert_allclose(s[g2.id], magnitude_scores(a, g2, 2))
    assert any("bn-scale" in n and "l2" in n for n in notes_with_bn)

    a, ctx = ctx_for(small_cnn(bn=False))
    s = score_groups(a, "bn-scale", context=ctx)
    for g in a.prunable_groups:
        np.testing.assert_allclose(s[g.id], magnitude_scores(a, g, 2))
    assert len(ctx.notes) == 1 and f"{len(a.prunable_groups)} of {len(a.prunable_groups)}" in ctx.notes[0]


def run_exposed(model, tensors, x):
    m = type(model)()
    m.CopyFrom(model)
    for t in tensors:
        m.graph.output.append(helper.make_empty_tensor_value_info(t))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(tensors, s.run(tensors, {"x": x})))


def test_vbp_equals_numpy_variance():
    x = calib_for(20)
    model = small_cnn()
    a, ctx = ctx_for(model, x, batch=6)
    scores = score_groups(a, "vbp", context=ctx)
    acts = run_exposed(a.view.model, ["relu1_out"], x)
    g = group_at(a, "relu1_out", 1)
    pos_to_ch = next(m for m in g.members if m.tensor == "relu1_out").index_map
    expect = np.empty(g.size)
    expect[pos_to_ch] = acts["relu1_out"].astype(np.float64).var(axis=(0, 2, 3))
    np.testing.assert_allclose(scores[g.id], expect, rtol=1e-5)
    # statistics are kept for compensation
    assert ("relu1_out", 1) in ctx.cache["act_stats"]


def test_vbp_pools_positions_of_a_flatten_block_map():
    """conv -> Relu -> Flatten -> Gemm: the Gemm input space has C*H*W positions mapping to C
    channels; the channel's variance is over batch AND its spatial positions."""
    b = GraphBuilder(seed=5)
    x = b.input("x", [1, 4, 4])
    a1 = b.op("Relu", [b.conv(x, 1, 3, k=3, name="conv1")], name="act")
    flat = b.op("Flatten", [a1], axis=1, name="flat")
    model = b.model([b.gemm(flat, 48, 5, name="fc")])
    xs = calib_for(9, shape=(1, 4, 4))
    a, ctx = ctx_for(model, xs, batch=4)
    g = group_at(a, "conv1.weight", 0)
    assert g.prunable
    scores = score_groups(a, "vbp", context=ctx)[g.id]
    act = run_exposed(a.view.model, ["act_out"], xs)["act_out"].astype(np.float64)
    pos_to_ch = next(m for m in g.members if m.tensor == "conv1.weight").index_map
    expect = np.empty(3)
    expect[pos_to_ch] = act.var(axis=(0, 2, 3))
    assert activation_spaces(a) == [("flat_out", 1)]
    np.testing.assert_allclose(scores, expect, rtol=1e-6)


def test_streaming_batches_equal_one_big_batch():
    x = calib_for(23, seed=4) * 3.0 + 1.0
    a = analyze_model(small_cnn())
    spaces = activation_spaces(a)
    big = activation_stats(a.view, FeedList([{"x": x}]), spaces)
    small = activation_stats(a.view, CalibSet({"x": x}, batch_size=4), spaces)
    tiny_budget = activation_stats(a.view, FeedList([{"x": x}]), spaces, budget_bytes=1)  # split to 1 row
    for sp in spaces:
        for other in (small, tiny_budget):
            assert other[sp].n == big[sp].n
            np.testing.assert_allclose(other[sp].mean, big[sp].mean, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(other[sp].m2, big[sp].m2, rtol=1e-6)


def test_random_is_seeded():
    a = analyze_model(small_cnn())
    s0 = score_groups(a, "random", seed=0)
    s0b = score_groups(a, "random", seed=0)
    s1 = score_groups(a, "random", seed=1)
    for gid in s0:
        np.testing.assert_array_equal(s0[gid], s0b[gid])
    assert any(not np.array_equal(s0[g], s1[g]) for g in s0)


def test_data_scorer_without_calib_is_a_clear_error():
    from onnxprune.errors import OnnxPruneError

    a = analyze_model(small_cnn())
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        score_groups(a, "vbp")


def fixtures():
    out = []
    f = ROOT / "models" / "fixtures.json"
    if f.exists():
        out += [(e["name"], ROOT / e["file"], e.get("input_shapes")) for e in json.loads(f.read_text())]
    man = ROOT / "models" / "digits" / "manifest.json"
    if man.exists():
        for name, e in json.loads(man.read_text()).items():
            if name.startswith("_"):
                continue
            for kind, o in (e.get("onnx") or {}).items():
                out.append((f"digits/{name}.{kind}", ROOT / "models" / "digits" / o["file"], None))
    return out


@pytest.mark.parametrize("name,path,shapes", fixtures(), ids=[f[0] for f in fixtures()])
def test_every_scorer_on_fixture(name, path, shapes):
    if not path.exists():
        pytest.skip(f"{path} not present")
    a = analyze_model(str(path), input_shapes=shapes)
    ctx = ScoreContext(a, calib=FeedList([random_feeds(a.view, seed=s) for s in range(2)]), seed=0)
    assert a.prunable_groups, name
    for scorer in ALL:
        scores = score_groups(a, scorer, context=ctx)
        assert set(scores) == {g.id for g in a.prunable_groups}
        for g in a.prunable_groups:
            assert scores[g.id].shape == (g.size,) and np.all(np.isfinite(scores[g.id])), (scorer, g.name)
    assert set(ALL) <= set(SCORERS)

