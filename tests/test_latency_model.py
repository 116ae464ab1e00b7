"""Op-level latency model (issue #11): fitting on synthetic step-latency data, group association,
presence rules, the median CI helper, profile parsing, and one small fixture end to end
(structure only: timings on a shared machine are never asserted)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnxprune.profiling.latency_fit import (Presence, associate_dims, fit_node, fit_presence, fit_time, fit_total, plain_map,
                                             padded)
from onnxprune.profiling.median_ci import measure_until_stable, median_ci, summarize
from onnxprune.profiling.node_profile import parse_profile, stable_keys

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "models" / "onnx"


def step_conv_ms(c_in, c_out, b_in=8, b_out=16):
    """A conv kernel's time: channels padded to blocks, work = padded c_in x padded c_out."""
    return 0.02 + 3e-5 * padded(c_in, b_in) * padded(c_out, b_out)


def test_fit_recovers_block_sizes_and_predicts_held_out():
    rng = np.random.default_rng(0)
    w = rng.integers(20, 129, size=(40, 2)).astype(float)
    t = step_conv_ms(w[:, 0], w[:, 1]) * (1 + 0.005 * rng.standard_normal(40))
    fit = fit_time(t, w)
    assert fit.blocks == (8, 16)
    held = rng.integers(20, 129, size=(200, 2)).astype(float)
    err = fit.predict(held) / step_conv_ms(held[:, 0], held[:, 1]) - 1
    assert np.max(np.abs(err)) < 0.03


def test_fit_elementwise_step_and_flat_node():
    rng = np.random.default_rng(1)
    w = rng.integers(10, 300, size=(30, 1)).astype(float)
    t = 0.005 + 1e-4 * padded(w[:, 0], 32)
    fit = fit_time(t, w)
    assert fit.blocks == (32,)
    np.testing.assert_allclose(fit.predict(np.array([[33.0], [64.0], [65.0]])), 0.005 + 1e-4 * np.array([64, 64, 96]),
                               rtol=1e-3)
    flat = fit_time(np.full(5, 0.3), np.zeros((5, 0)))
    assert flat.predict(np.zeros((3, 0))).tolist() == pytest.approx([0.3] * 3)


def test_coefficients_never_negative():
    rng = np.random.default_rng(2)
    w = rng.integers(1, 64, size=(25, 2)).astype(float)
    t = 0.1 + 1e-3 * w[:, 0] * w[:, 1] + 0.01 * rng.standard_normal(25)
    fit = fit_time(np.abs(t), w)
    assert min(fit.coef) >= 0
    assert np.all(fit.predict(np.ones((4, 2))) >= 0)


def test_associate_dims_finds_groups_through_padding_and_multiples():
    rng = np.random.default_rng(3)
    widths = rng.integers(10, 100, size=(12, 4)).astype(float)
    dims = np.stack([np.ones(12), padded(widths[:, 2], 8), 3 * widths[:, 0], 224 * np.ones(12),
                     widths[:, 1] * widths[:, 3]], axis=1)
    got = associate_dims(dims, widths)
    assert got[:4] == [-1, 2, 0, -1]
    assert got[4] in (-2, 1, 3)  # a product of two groups is not one group's function: never misassigned to 0 or 2


def test_presence_rule_from_alignment():
    rng = np.random.default_rng(4)
    widths = rng.integers(9, 100, size=(30, 5)).astype(float)
    widths[::3, 2] = (widths[::3, 2] // 8) * 8
    present = widths[:, 2] % 8 == 0
    rule = fit_presence(present, widths, (2,))
    assert rule.groups == (2,) and rule.block == 8 and not rule.negate_all
    np.testing.assert_array_equal(rule.mask(widths), present.astype(float))
    nchw = fit_presence(~present, widths, (2,))
    np.testing.assert_array_equal(nchw.mask(widths), (~present).astype(float))
    random_presence = rng.random(30) < 0.5
    fallback = fit_presence(random_presence, rng.integers(9, 100, size=(30, 5)).astype(float) * 2 + 1, ())
    assert fallback.groups == () and fallback.fraction == pytest.approx(random_presence.mean())


def test_fit_node_end_to_end_synthetic():
    rng = np.random.default_rng(5)
    widths = rng.integers(16, 200, size=(36, 3)).astype(float)
    present = np.ones(36, bool)
    dims = np.stack([np.ones(36), widths[:, 1], 56 * np.ones(36), widths[:, 2]], axis=1)
    times = step_conv_ms(widths[:, 1], widths[:, 2])
    node = fit_node("conv", "Conv", present, dims, times, widths)
    assert node.groups == (1, 2) and node.time.blocks == (8, 16)
    assert node.presence == Presence()
    np.testing.assert_allclose(node.predict(widths), times, rtol=0.02)


def test_fit_total_fixed_part():
    sums = np.linspace(5, 50, 20)
    fixed, scale = fit_total(sums, 0.7 + 1.02 * sums)
    assert fixed == pytest.approx(0.7, abs=1e-6) and scale == pytest.approx(1.02, abs=1e-6)


def test_plain_map_is_affine_not_a_ratio():
    # profiling adds ~4 ms of per-node events at every width: plain = 0.97 * (profiled - 4.1)
    rng = np.random.default_rng(3)
    prof = np.array([19.8, 15.7, 15.1, 7.8, 13.8, 11.8, 13.9, 13.3, 6.2, 11.7, 15.8])
    plain = 0.97 * (prof - 4.1) * (1 + 0.01 * rng.standard_normal(len(prof)))
    plain[4] *= 1.4  # one design timed while the machine was busy
    a, b = plain_map(prof, plain)
    assert b == pytest.approx(0.97, abs=0.05) and a == pytest.approx(-0.97 * 4.1, abs=0.5)
    narrow = 5.0
    assert (a + b * narrow) / (0.97 * (narrow - 4.1)) - 1 == pytest.approx(0, abs=0.35)
    ratio = np.median(plain / prof)
    assert ratio * narrow > 3 * 0.97 * (narrow - 4.1)  # what the ratio map predicted: 3x+ too slow


def test_plain_map_falls_back_to_the_ratio():
    prof = np.array([10.0, 10.2, 9.9, 10.1])
    assert plain_map(prof, 0.8 * prof) == (0.0, pytest.approx(0.8))  # no spread to fit a slope
    assert plain_map(prof[:3] * [1, 2, 3], 0.8 * prof[:3]) == (0.0, pytest.approx(np.median(0.8 / np.array([1, 2, 3]))))
    prof = np.linspace(5, 20, 8)
    a, b = plain_map(prof, 3.0 * prof)  # an implausible slope: the median ratio
    assert (a, b) == (0.0, pytest.approx(3.0))


def test_median_ci_brackets_the_median():
    rng = np.random.default_rng(6)
    samples = 10 + rng.exponential(0.5, 400)
    med, lo, hi = median_ci(samples)
    assert lo <= med <= hi and hi - lo < 0.2
    assert summarize(samples, 0.02).converged
    assert not summarize([1.0, 5.0, 9.0, 2.0, 7.0], 0.02).converged


def test_measure_until_stable_stops_on_ci_or_cap():
    rng = np.random.default_rng(7)
    quiet = measure_until_stable(lambda: 5.0 + rng.normal(0, 0.01), rel_halfwidth=0.02, time_cap_s=5)
    assert quiet.converged and quiet.n < 20 and quiet.median_ms == pytest.approx(5.0, abs=0.05)
    noisy = measure_until_stable(lambda: float(rng.choice([1.0, 10.0])), rel_halfwidth=0.02, time_cap_s=0.05,
                                 max_runs=200)
    assert not noisy.converged and noisy.lo_ms <= noisy.median_ms <= noisy.hi_ms


def test_stable_keys_anchor_generated_nodes():
    names = ["/a/Conv", "ReorderOutput", "x_nchwc", "ReorderOutput_token_7", "ReorderInput_token_9", "/b/Add"]
    ops = ["FusedConv", "ReorderOutput", "Conv", "ReorderOutput", "ReorderInput", "Add"]
    assert stable_keys(names, ops) == ["/a/Conv", "ReorderOutput@/a/Conv#1", "x_nchwc", "ReorderOutput@x_nchwc#1",
                                       "ReorderInput@x_nchwc#2", "/b/Add"]


def test_parse_profile_per_run_medians():
    events = []
    for r, (ts, total) in enumerate([(0, 100), (1000, 120), (2000, 110)]):
        events.append(dict(cat="Session", name="model_run", ts=ts, dur=total))
        for j, (name, op, dur) in enumerate([("/c", "Conv", 40 + r), ("ReorderOutput", "ReorderOutput", 10)]):
            events.append(dict(cat="Node", name=name + "_kernel_time", ts=ts + 10 * j + 1, dur=dur,
                               args=dict(op_name=op, input_type_shape=[{"float": [1, 8, 4, 4]}],
                                         output_type_shape=[{"float": [1, 16, 4, 4]}])))
    run = parse_profile(json.loads(json.dumps(events)), skip_runs=1)
    assert set(run.nodes) == {"/c", "ReorderOutput@/c#1"}
    assert run.nodes["/c"].ms == pytest.approx(0.0415) and run.nodes["/c"].dims == (1, 8, 4, 4, 1, 16, 4, 4)
    assert run.wall.median_ms == pytest.approx(0.115) and run.wall.n == 2


def test_fixture_end_to_end_structure(tmp_path):
    from onnxprune.api import analyze_model
    from onnxprune.profiling.latency_model import OpLatencyModel, build_latency_model

    analysis = analyze_model(str(FIXTURES / "resnet18.ts.onnx"))
    groups = analysis.prunable_groups[:6]
    m = build_latency_model(analysis, groups, threads=1, n_designs=10, time_cap_s=20, cache_dir=tmp_path)
    assert m.n_designs >= 9 and m.nodes and m.baseline_ms > 0
    # the plain map is fitted on the model's own predictions: its errors at the designs timed plain
    # straddle zero (fitted on the measured profiled times, a biased node model left them one-signed)
    assert len(m.fit_rel_errors) >= 4 and min(m.fit_rel_errors) <= 0 <= max(m.fit_rel_errors)
    full = {g.id: g.size for g in groups}
    small = {g.id: max(1, g.size // 4) for g in groups}
    assert np.isfinite(m.predict(full)) and np.isfinite(m.predict(small))
    terms = m.terms()
    assert all(set(t.groups) <= set(full) for t in terms)
    w = m.width_matrix(small)
    total = m.fixed_ms + sum(float(t.fn(*[w[0, m.group_ids.index(g)] for g in t.groups])) for t in terms)
    assert total == pytest.approx(m.predict(small), rel=1e-9)
    two = next((t for t in terms if len(t.groups) == 2), None)
    if two is not None:
        assert two.table(m.group_sizes).shape == tuple(m.group_sizes[g] for g in two.groups)
    again = build_latency_model(analysis, groups, threads=1, n_designs=10, cache_dir=tmp_path)
    assert again.from_cache and again.predict(small) == pytest.approx(m.predict(small))
    assert isinstance(again, OpLatencyModel)
    points = m.check(analysis, k=2, seed=3, time_cap_s=0.3)
    assert len(points) == 2 and all(p.measured_ms > 0 and np.isfinite(p.predicted_ms) for p in points)


def test_plan_designs_are_knapsack_plans_and_timed_plain(tmp_path):
    """The build's second phase measures the knapsack's own plans on a first fit: each within its
    level of the predicted unpruned latency, at the default alignment, and each timed plain."""
    from onnxprune.api import analyze_model
    from onnxprune.planning.choices import ALIGN_BLOCK, ALIGN_MIN_SIZE
    from onnxprune.profiling.latency_model import measure_and_fit, plan_widths

    analysis = analyze_model(str(FIXTURES / "resnet18.ts.onnx"))
    groups = analysis.prunable_groups[:6]
    m, data = measure_and_fit(analysis, groups, threads=1, n_designs=9, n_plans=3, time_cap_s=10, key="t")
    assert len(data.runs) == 12 and data.widths.shape == (12, 6)
    assert {9, 10, 11} <= set(data.plain_ms) and not data.typical[9:].any()
    assert m.n_designs == 12
    full = m.predict({})
    plans = plan_widths(m, analysis, groups, 4, seed=1)
    targets = [t for t, _ in plans]
    predicted = [m.predict(w) for _, w in plans]
    assert targets[0] == pytest.approx(0.9 * full) and all(a > b for a, b in zip(targets, targets[1:]))
    for (target, w), p in zip(plans, predicted):
        assert p <= target * (1 + 1e-9)
        for g in groups:
            assert 1 <= w[g.id] <= g.size
            if g.size >= ALIGN_MIN_SIZE:
                assert w[g.id] % ALIGN_BLOCK == 0 or w[g.id] in (g.size, max(1, int(g.frozen.sum())))
    assert predicted[0] > predicted[-1]


def test_alignment_regime_is_learned():
    """ORT runs a conv in NCHWc when its input width is a multiple of 8: a different cost there."""
    rng = np.random.default_rng(8)
    w = rng.integers(20, 129, size=(60, 2)).astype(float)
    w[::3, 0] = w[::3, 0] // 8 * 8
    aligned = w[:, 0] % 8 == 0
    t = np.where(aligned, 0.6, 1.0) * step_conv_ms(w[:, 0], w[:, 1], 1, 1)
    fit = fit_time(t, w)
    assert fit.align_block == 8
    held = rng.integers(20, 129, size=(100, 2)).astype(float)
    held[::2, 0] = held[::2, 0] // 8 * 8
    truth = np.where(held[:, 0] % 8 == 0, 0.6, 1.0) * step_conv_ms(held[:, 0], held[:, 1], 1, 1)
    assert np.max(np.abs(fit.predict(held) / truth - 1)) < 0.05


def test_segments_resolve_fused_and_layout_names():
    from onnx import helper

    from onnxprune.profiling.segments import segment_map

    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="/conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="/relu1"),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="/blk/fc/MatMul"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="/blk/fc/Add")]
    g = helper.make_graph(nodes, "g", [], [])
    smap = segment_map(helper.make_model(g), {"W1", "W2"})
    assert smap.resolve("r1_nchwc") == "/conv1"  # NCHWc conv fused with its Relu, named after the tensor
    assert smap.resolve("ReorderOutput@r1_nchwc#1") == "/conv1"
    assert smap.resolve("/conv1") == "/conv1"
    assert smap.resolve("/blk/fc/MatMul/MatMulAddFusion") == "/blk/fc/MatMul"
    assert smap.resolve("/blk/fc/Add") == "/blk/fc/MatMul"
    assert smap.resolve("gemm_input_reshape") is None


def test_quadratic_width_term_chosen_by_cross_validation():
    """A segment whose input and output widths are one group (a matmul from a group to itself, or a
    block of kernels on one group) costs ~w^2: the cross-validated form takes the quadratic term,
    and predicts unseen widths; a linear kernel keeps a fit that is linear in w."""
    rng = np.random.default_rng(11)
    w = rng.integers(30, 385, size=(40, 1)).astype(float)
    quad = 0.02 + 2e-5 * padded(w[:, 0], 8) + 4e-7 * padded(w[:, 0], 8) ** 2
    fit = fit_time(quad * (1 + 0.01 * rng.standard_normal(40)), w)
    assert fit.quad and fit.blocks == (8,)
    held = rng.integers(30, 385, size=(200, 1)).astype(float)
    truth = 0.02 + 2e-5 * padded(held[:, 0], 8) + 4e-7 * padded(held[:, 0], 8) ** 2
    assert np.max(np.abs(fit.predict(held) / truth - 1)) < 0.04
    lin = fit_time(0.01 + 1e-4 * padded(w[:, 0], 4), w)
    np.testing.assert_allclose(lin.predict(np.array([[61.0], [64.0], [100.0]])), 0.01 + 1e-4 * np.array([64, 64, 100]),
                               rtol=2e-3)


def test_refit_keeps_the_chosen_form():
    rng = np.random.default_rng(12)
    w = rng.integers(20, 129, size=(40, 2)).astype(float)
    t = step_conv_ms(w[:, 0], w[:, 1])
    first = fit_time(t, w)
    again = fit_time(1.3 * t, w, like=first)
    assert (again.blocks, again.quad, again.align_block) == (first.blocks, first.quad, first.align_block)
    np.testing.assert_allclose(again.predict(w), 1.3 * first.predict(w), rtol=1e-6)


def test_joint_alignment_regime_when_both_sides_must_be_aligned():
    """ORT converts a conv to NCHWc only when its input and output channels are both multiples of 8:
    one regime for "all aligned" (align_block -8), which per-group indicators cannot express (a shift
    for each side alone mispredicts the designs aligned on one side only)."""
    def truth(w):
        both = (w[:, 0] % 8 == 0) & (w[:, 1] % 8 == 0)
        return np.where(both, 0.5, 1.0) * step_conv_ms(w[:, 0], w[:, 1], 1, 1)

    rng = np.random.default_rng(8)
    w = rng.integers(20, 129, size=(40, 2)).astype(float)
    for i in range(2, 40, 3):  # as the design rounds a third of its points: each group with p = 1/2
        for g in range(2):
            if rng.random() < 0.5:
                w[i, g] = w[i, g] // 8 * 8
    w[0] = [128, 128]
    fit = fit_time(truth(w) * (1 + 0.01 * rng.standard_normal(40)), w)
    assert fit.align_block == -8
    held = rng.integers(20, 129, size=(300, 2)).astype(float)
    held[::3] = held[::3] // 8 * 8
    assert np.max(np.abs(fit.predict(held) / truth(held) - 1)) < 0.05


def test_depthwise_fast_path_at_multiples_of_4():
    """Measured on MobileNetV2 (ORT 1.x, AVX2): a depthwise conv at a width that is a multiple of 4
    runs several times faster than at the widths around it. The fit learns that regime at block 4
    (not only 8/16) and predicts both sides."""
    def truth(w):
        return np.where(w[:, 0] % 4 == 0, 0.004, 0.017) * w[:, 0] + 0.01

    rng = np.random.default_rng(14)
    w = rng.integers(14, 97, size=(40, 1)).astype(float)
    w[2::3, 0] = w[2::3, 0] // 8 * 8
    fit = fit_time(truth(w) * (1 + 0.02 * rng.standard_normal(40)), w)
    assert fit.align_block == 4
    held = np.arange(14, 97, dtype=float)[:, None]
    assert np.median(np.abs(fit.predict(held) / truth(held) - 1)) < 0.05


def test_width_correction_recovers_a_planted_linear_term_and_refuses_noise():
    from onnxprune.profiling.latency_fit import width_correction
    rng = np.random.default_rng(0)
    n = 30
    u = rng.uniform(0.2, 1.0, size=(n, 2))
    X = np.column_stack([np.ones(n), u])
    mapped = 5.0 + 10.0 * u.mean(1)
    full = 15.0
    planted = np.array([0.02, 0.05, -0.08])
    plain = mapped + full * X @ planted + rng.normal(0, 0.01, n)
    c = width_correction(plain, mapped, X, full)
    assert c is not None and np.allclose(c, planted, atol=0.01)
    # nothing but noise: left-out designs are not predicted better, so no correction
    assert width_correction(mapped * (1 + rng.normal(0, 0.02, n)), mapped, X, full) is None
    assert width_correction(plain[:8], mapped[:8], X[:8], full) is None  # too few designs for 3 terms


def test_width_correction_is_in_the_solver_terms(tmp_path):
    """A model with a width correction: predict() and the terms the coupled knapsack sums agree."""
    from onnxprune.profiling.latency_fit import NodeModel, Presence, TimeFit
    from onnxprune.profiling.latency_model import OpLatencyModel

    node = NodeModel("n", "segment", (0, 1), Presence(), TimeFit(blocks=(1, 1), coef=(0.5, 0.01, 0.02, 0.0), pairs=True))
    m = OpLatencyModel(key="k", provider="cpu", threads=None, input_shapes={}, group_ids=[7, 9],
                       group_sizes={7: 16, 9: 32}, nodes=[node], fixed_ms=1.0, scale=1.0, baseline_ms=2.0,
                       width_ms={7: 0.03, 9: -0.01})
    w = {7: 5, 9: 20}
    base = OpLatencyModel(**{**m.__dict__, "width_ms": {}})
    assert m.predict(w) == pytest.approx(base.predict(w) + 0.03 * 5 - 0.01 * 20)
    terms = m.terms()
    total = m.fixed_ms + sum(float(t.fn(*[w[g] for g in t.groups])) for t in terms)
    assert total == pytest.approx(m.predict(w))
    again = OpLatencyModel.from_json(json.loads(json.dumps(m.to_json())))
    assert again.predict(w) == pytest.approx(m.predict(w))
