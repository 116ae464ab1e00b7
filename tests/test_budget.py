"""Budgets: parsing, knapsack items, the closed loop (pure), and exact analytic budgets end to end."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxprune import OnnxPruneError, prune
from onnxprune.analysis.groups import ChannelGroup
from onnxprune.planning.budget import meet_budget, parse_budget_spec
from onnxprune.planning.choices import group_choices, kept_for
from onnxprune.profiling.latency_model import OpLatencyModel

ROOT = Path(__file__).resolve().parents[1]
MBV2 = str(ROOT / "models" / "onnx" / "mobilenetv2.ts.onnx")
R18 = str(ROOT / "models" / "onnx" / "resnet18.dynamo.onnx")


@pytest.mark.parametrize("metric,text,abs_,frac", [
    ("latency", "11ms", 11.0, None), ("latency", "900us", 0.9, None), ("latency", "0.6x", None, 0.6),
    ("macs", "50%", None, 0.5), ("macs", "1.2G", 1.2e9, None), ("params", "3M", 3e6, None),
    ("params", "500K", 5e5, None), ("peak_memory", "3.6MB", 3.6e6, None), ("peak_memory", "1KiB", 1024, None),
])
def test_parse_budget_spec(metric, text, abs_, frac):
    s = parse_budget_spec(metric, text)
    assert s.absolute == pytest.approx(abs_) if abs_ else s.absolute is None
    assert s.fraction == pytest.approx(frac) if frac else s.fraction is None


@pytest.mark.parametrize("metric,text", [("macs", "lots"), ("macs", "150%"), ("params", "-3M"),
                                         ("peak_memory", "3Mparsecs"), ("latency", "11")])
def test_parse_budget_spec_rejects(metric, text):
    with pytest.raises((OnnxPruneError, ValueError)):
        parse_budget_spec(metric, text)


def _group(gid, size, frozen=()):
    fr = np.zeros(size, dtype=bool)
    fr[list(frozen)] = True
    return ChannelGroup(gid, size, [], fr)


def test_group_choices_keep_frozen_and_round():
    g = _group(0, 10, frozen=[3])
    (c,) = group_choices([g], {0: np.arange(10.0)}, round_to=4)
    assert list(c.widths) == [4, 8, 10]
    assert c.order[0] == 3  # frozen first
    assert list(c.order[1:4]) == [9, 8, 7]  # then by score
    kept = kept_for([c], [0])
    assert list(kept[0]) == [3, 7, 8, 9]
    assert np.all(np.diff(c.values) > 0)


def test_meet_budget_closed_loop_corrects_a_biased_cost_model():
    """Costs predict 2x the real saving (like summed per-group latencies): the loop must still land
    inside [0.9, 1.0] x budget using measurements."""
    g = [_group(i, 16) for i in range(4)]
    choices = group_choices(g, {i: np.linspace(1, 2, 16) for i in range(4)})
    for c in choices:
        c.costs = (c.widths - 16) * 1.0  # predicted: 1 unit per removed channel
    baseline = 100.0

    def evaluate(kept):
        removed = sum(16 - len(kept.get(c.group.id, np.arange(16))) for c in choices)
        return baseline - 0.5 * removed  # real saving is half the predicted one

    res = meet_budget(choices, baseline, 85.0, evaluate, metric="latency")
    assert res.met and 0.9 * 85.0 <= res.measured <= 85.0
    assert len(res.iterations) > 1


def test_next_target_takes_the_smaller_of_the_two_one_point_steps():
    from onnxprune.planning.budget import next_target
    # off by a constant (a small net: 13 ms slower than predicted at every width): the ratio of savings
    # (6 measured for 19 predicted) would aim at 18.8 and cut far too deep; moving by the miss aims at 47
    assert next_target([(60.0, 73.0)], 79.0, 60.0) == pytest.approx(47.0)
    # savings larger than predicted: the ratio's step (to 92.5) is the smaller one
    assert next_target([(90.0, 80.0)], 100.0, 85.0) == pytest.approx(92.5)
    # two points: the secant through them
    assert next_target([(60.0, 73.0), (47.0, 61.0)], 79.0, 60.0) == pytest.approx(47.0 - 1.0 * 13 / 12)


def test_first_latency_solve_aims_inside_the_band():
    """An exact cost model, and a measurement that reads 3% slow (noise, load): solving for the
    budget itself lands the first try over it; aiming at the band's middle (0.95x) lands it inside."""
    g = [_group(i, 64) for i in range(4)]
    choices = group_choices(g, {i: np.linspace(1, 2, 64) for i in range(4)})
    for c in choices:
        c.costs = (c.widths - 64) * 0.1

    def evaluate(kept):
        return 1.03 * (100.0 - 0.1 * sum(64 - len(kept.get(c.group.id, np.arange(64))) for c in choices))

    plain = meet_budget(choices, 100.0, 80.0, evaluate, metric="latency")
    assert plain.iterations[0].target == 80.0 and plain.iterations[0].measured > 80.0
    aimed = meet_budget(choices, 100.0, 80.0, evaluate, metric="latency", aim_first=True)
    first = aimed.iterations[0]
    assert first.target == pytest.approx(76.0) and 72.0 <= first.measured <= 80.0 and len(aimed.iterations) == 1


def test_meet_budget_infeasible_says_so():
    g = [_group(0, 8)]
    choices = group_choices(g, {0: np.ones(8)})
    choices[0].costs = (choices[0].widths - 8) * 1.0
    with pytest.raises(OnnxPruneError, match="cannot be met"):
        meet_budget(choices, 100.0, 10.0, lambda kept: 100.0, metric="latency")


def test_meet_budget_remeasures_a_noisy_miss_at_the_floor():
    """Costs so far off that the loop goes straight to one channel per group, where the first median
    lands 0.2% over the budget by noise: two more measurements decide (median of three), instead of
    declaring a feasible budget impossible. A real miss is still refused, quoting the floor's figure."""
    g = [_group(0, 2)]
    choices = group_choices(g, {0: np.linspace(1, 2, 2)})
    choices[0].costs = (choices[0].widths - 2) * 100.0  # predicts a huge saving: width 1 from the start
    noisy = iter([90.2, 89.5, 89.7])

    def evaluate(kept):
        return next(noisy) if len(kept.get(0, np.arange(2))) == 1 else 100.0

    res = meet_budget(choices, 100.0, 90.0, evaluate, metric="latency")
    assert res.met and res.measured == pytest.approx(89.7) and res.iterations[-1]["remeasured"] == 3
    calls = iter([93.0, 96.0, 99.0])
    with pytest.raises(OnnxPruneError, match="still measures 96.000 ms"):
        meet_budget(choices, 100.0, 90.0, lambda kept: next(calls), metric="latency")


def test_config_refuses_flags_that_would_be_ignored():
    from onnxprune.config import config_from_keywords

    ok = dict(ratio=None, ratio_dw=None, budget="0.8x", round_to=None, stages=1,
              latency_model="table", seed=0, calib_batch=None, calib_limit=None, threads=None, batch=None)
    config_from_keywords(**ok)
    for bad, msg in [(dict(ratio=0.3), "not both"), (dict(ratio_dw=0.5), "ratio-dw"), (dict(stages=0), "stages"),
                     (dict(round_to=0), "round_to"), (dict(latency_model="bogus"), "latency model"),
                     (dict(seed=-1), "seed"), (dict(calib_batch=0), "calib batch"),
                     (dict(budget=None, macs="50%", round_to="auto"), "auto"),
                     (dict(budget=None, ratio=0.3, stages=2), "stages"),
                     (dict(budget=None, ratio=0.3, latency_model="macs"), "latency budgets"),
                     (dict(budget=None, ratio=1.2), r"\[0, 1\)")]:
        with pytest.raises(OnnxPruneError, match=msg):
            config_from_keywords(**{**ok, **bad})


@pytest.mark.parametrize("kind,text,frac", [("macs", "50%", 0.5), ("params", "0.4x", 0.4)])
def test_analytic_budget_met_and_used(kind, text, frac):
    res = prune(MBV2, scorer="sp-lamp", latency=False, **{kind: text})
    rep = res.report
    base, got = getattr(rep.baseline, kind), getattr(rep.pruned, kind)
    assert got <= frac * base
    assert got >= 0.9 * frac * base
    assert rep.verification["passed"]
    assert rep.budget["met"]


def test_latency_budget_with_the_macs_latency_model():
    """--budget with --latency-model macs: analytic costs, measured closed loop; the report says
    which model priced the choices (this combination used to crash building the report)."""
    # the tiny fixture is overhead-bound: 0.7x needs about a tenth of the MACs, which is asked for here
    res = prune(R18, budget="0.7x", latency_model="macs", latency=False, min_macs=0.0)
    b = res.report.budget
    assert b["latency_model"] == "macs" and b["metric"] == "latency"
    # whether the budget is met depends on timing (the benchmarks measure that): here, that the loop
    # measured the written model and reported it
    assert b["measured"] > 0 and b["iterations"] and isinstance(b["met"], bool)
    assert res.report.pruned.macs < res.report.baseline.macs
    assert res.report.verification["passed"]


@pytest.mark.parametrize("name", ["resnet50.ts", "vgg16.ts"])
def test_peak_memory_budget_when_the_peak_moves_between_tensors(name):
    """On these fixtures the linearized knapsack's peak jumps between two tensors at every try; the
    budget is still met (monotone uniform keep fraction, bisected) and the report says how."""
    res = prune(str(ROOT / "models" / "onnx" / f"{name}.onnx"), peak_memory="80%", latency=False)
    rep = res.report
    assert rep.budget["met"] and rep.pruned.peak_memory_bytes <= 0.8 * rep.baseline.peak_memory_bytes
    assert rep.pruned.peak_memory_bytes >= 0.6 * rep.baseline.peak_memory_bytes  # not pruned to the bone
    assert "uniform keep fraction" in rep.budget.get("method", "")
    assert rep.verification["passed"]


def test_peak_memory_budget():
    res = prune(R18, peak_memory="60%", latency=False)
    rep = res.report
    assert rep.pruned.peak_memory_bytes <= 0.6 * rep.baseline.peak_memory_bytes
    assert rep.verification["passed"]


def test_one_budget_at_a_time():
    with pytest.raises(OnnxPruneError, match="one budget"):
        prune(MBV2, macs="50%", params="50%", latency=False)


def test_round_to_auto_keeps_widest_width_of_a_latency_step():
    from onnxprune.planning.choices import snap_to_steps, solve_budget

    g = _group(0, 8)
    (c,) = group_choices([g], {0: np.arange(8.0)})
    # latency steps: widths 1-4 cost -2.0 (one step), widths 5-8 cost ~0 (noise within a step)
    c.costs = np.array([-2.0, -2.0, -1.999, -1.998, -0.001, 0.0, 0.001, 0.0])
    snap_to_steps([c], quantum=0.01)
    sol = solve_budget([c], 10.0, 8.5)  # must drop a step: budget 8.5 on a baseline of 10
    assert c.widths[sol.choice[0]] == 4  # the widest width on the cheap step, not 1


def test_stages_compose_back_to_the_original_groups():
    res = prune(MBV2, macs="40%", stages=3, scorer="sp-lamp", latency=False)
    rep = res.report
    assert rep.verification["passed"]
    assert 0.9 * 0.4 * rep.baseline.macs <= rep.pruned.macs <= 0.4 * rep.baseline.macs
    assert {it["stage"] for it in rep.budget["iterations"]} == {1, 2, 3}
    # the last stage's exact count is the written model's
    assert rep.budget["measured"] == pytest.approx(rep.pruned.macs)


@pytest.mark.parametrize("op,gates,layout", [("LSTM", 4, 0), ("GRU", 3, 1), ("RNN", 1, 0)])
def test_recurrent_macs_are_counted(op, gates, layout):
    """Every step of every sequence: x W^T and h R^T per direction; the recurrent node is frozen
    (no channel rule) but its MACs belong in the totals a --macs budget is a share of."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.profiling.cost import total_macs
    from onnxprune.analysis.graph import build_view

    seq, batch, inp, hid, dirs = 7, 2, 5, 6, 2
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((dirs, gates * hid, inp)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((dirs, gates * hid, hid)).astype(np.float32), "R")
    xs = [batch, seq, inp] if layout else [seq, batch, inp]
    node = helper.make_node(op, ["x", "W", "R"], ["y"], hidden_size=hid, direction="bidirectional", layout=layout)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, r])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    assert total_macs(build_view(m)) == seq * batch * dirs * gates * hid * (inp + hid)


def test_knapsack_value_members_weights_groups_by_their_weight_members():
    """--knapsack-value members: a group's LAMP values times its number of weight members (a residual
    stream feeding many layers is worth more than a channel inside one block)."""
    from onnxprune.api import analyze_model
    from onnxprune.config import config_from_keywords
    from onnxprune.planning.choices import group_choices
    from onnxprune.scoring.registry import score_groups

    a = analyze_model(str(ROOT / "models" / "onnx" / "resnet18.ts.onnx"))
    scores = score_groups(a, "l2")
    plain = group_choices(a.prunable_groups, scores)
    members = group_choices(a.prunable_groups, scores, value="members")
    for p, m in zip(plain, members):
        np.testing.assert_allclose(m.values, p.values * len(p.group.weights))
    assert len({len(p.group.weights) for p in plain}) > 1  # streams and in-block groups differ
    with pytest.raises(OnnxPruneError, match="knapsack value must be one of"):
        group_choices(a.prunable_groups, scores, value="size")
    kw = dict(ratio_dw=None, round_to=None, stages=1, latency_model="table", seed=0, calib_batch=None,
              calib_limit=None, threads=None, batch=None)
    with pytest.raises(OnnxPruneError, match="applies to budgets"):
        config_from_keywords(ratio=0.3, knapsack_value="members", **kw)


def test_budget_knapsack_value_defaults_to_members_and_the_report_says_so():
    """A budget without --knapsack-value solves the members-weighted knapsack (the default since it
    kept more accuracy at equal latency, README Budgets) and records it; --ratio records none."""
    import onnxprune

    path = str(ROOT / "models" / "onnx" / "resnet18.ts.onnx")
    kw = dict(macs="50%", verify=False, latency=False)
    default = onnxprune.prune(path, **kw)
    members = onnxprune.prune(path, knapsack_value="members", **kw)
    lamp = onnxprune.prune(path, knapsack_value="lamp", **kw)
    assert default.report.budget.knapsack_value == "members"
    assert lamp.report.budget.knapsack_value == "lamp"
    widths = {r: {g: len(k) for g, k in res.kept.items()} for r, res in
              (("default", default), ("members", members), ("lamp", lamp))}
    assert widths["default"] == widths["members"]
    assert widths["default"] != widths["lamp"]  # the two objectives keep different widths here


def overhead_bound_timer(model: str, fixed_ms: float) -> str:
    """A --latency-cmd whose "latency" is deterministic: `fixed_ms` of overhead plus the rest in
    proportion to the candidate's file size (its weights), 1 ms for `model` itself. No timing noise,
    so a test of what the budget loop decides does not depend on the machine's load."""
    size = os.path.getsize(model)
    return (f"{sys.executable} -c \"import os, sys; print('latency_ms:', {fixed_ms} + {1 - fixed_ms} * "
            f"os.path.getsize(sys.argv[1]) / {size})\" {{model}}")


def test_latency_budget_refuses_a_model_under_the_macs_floor():
    """Issue #11: a latency budget never returns a model with less than x0.2 of the MACs unless the
    user asks for that little. With 0.4 ms of the 1 ms fixed, 0.5x needs the weights at x0.17 or
    less: the loop meets the budget (0.45-0.5 ms), and only the floor check refuses the result."""
    timer = overhead_bound_timer(R18, fixed_ms=0.4)
    with pytest.raises(OnnxPruneError, match=r"needs MACs x0\.\d+.*below x0\.2.*--min-macs"):
        prune(R18, budget="0.5x", latency_model="macs", latency=False, latency_cmd=timer)
    res = prune(R18, budget="0.5x", latency_model="macs", latency=False, latency_cmd=timer, min_macs=0.05)
    assert res.report.budget.met and res.report.budget.macs_fraction < 0.2  # what the floor refused


def test_a_budget_within_measurement_noise_says_so():
    """Issue #11: a budget that cannot be told apart from the unpruned model within the timing noise
    (medians are measured to +-2% at best) is refused with that reason, not pruned for noise."""
    with pytest.raises(OnnxPruneError, match="within the measurement noise of the unpruned model"):
        prune(R18, budget="0.99x", latency_model="macs", latency=False)


def test_op_latency_model_budget_reports_each_solve(tmp_path):
    """The default latency model: the op-level model (built once, cached), the coupled knapsack, and
    a report with predicted next to measured for every solve, the model's record and the MACs kept.
    Whether the first solve lands in band is timing (benchmarks/latency_budget.py measures it)."""
    res = prune(R18, budget="0.85x", latency=False, min_macs=0.0, cache_dir=str(tmp_path))
    b = res.report.budget
    assert b.latency_model == "op"
    info = b.latency_model_info
    assert info["designs"] >= 10 and info["scale"] > 0 and info["baseline_ci_ms"][0] <= b.baseline <= \
        info["baseline_ci_ms"][1]
    assert all(it.predicted is not None and it.measured > 0 for it in b.iterations)
    assert 0.0 < b.macs_fraction <= 1.0
    assert res.report.verification["passed"]
    assert list(tmp_path.glob("opmodel-*.json"))  # cached for the next run
    # the model's own fit to the designs it timed unprofiled, which the summary shows where it is loose
    cached = OpLatencyModel.from_json(json.loads(next(tmp_path.glob("opmodel-*.json")).read_text()))
    fit = np.median(np.abs(cached.fit_rel_errors))
    assert info["fit_designs"] >= 5 and info["fit_median_abs_error"] == pytest.approx(fit, abs=1e-4)


def test_the_summary_says_when_the_latency_model_fits_loosely():
    from onnxprune.report.records import BudgetReport
    from onnxprune.report.summary import LOOSE_FIT, _budget_lines

    def lines(fit):
        return _budget_lines(BudgetReport(
            metric="latency", spec="0.8x", budget=0.5, baseline=0.63, predicted=0.4, measured=0.49, met=True,
            iterations=[], round_to=None, stages=1, knapsack_value="members", latency_model="op",
            latency_model_info=dict(fit_median_abs_error=fit, fit_designs=29)))
    assert len(lines(LOOSE_FIT / 2)) == 1
    loose = lines(0.139)
    assert len(loose) == 2 and "to 13.9% (median over 29 designs" in loose[1]


def test_an_unreachable_budget_names_the_flags_that_would_reach_further():
    """A ViT pruned without --heads / --embed-dim keeps its heads and residual stream whole, so 50% of
    its MACs is out of reach (15% even with --heads): the one-line refusal says which flags would prune more, and with them
    the budget is met."""
    vit = str(ROOT / "models" / "onnx" / "vit.ts.onnx")
    with pytest.raises(OnnxPruneError, match=r"cannot be met.*give --heads .* and --embed-dim .* to prune more"):
        prune(vit, macs="35%", latency=False)
    with pytest.raises(OnnxPruneError, match=r"cannot be met.*give --embed-dim \(the residual stream\) to prune more"):
        prune(vit, macs="15%", latency=False, heads=True)
    res = prune(vit, macs="15%", latency=False, heads=True, embed_dim=True)
    assert res.report.budget.met and res.report.verification["passed"]
