"""The Python API and the CLI accept and refuse the same arguments; flags are never silently ignored."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import GraphBuilder

from onnxprune import OnnxPruneError, prune
from onnxprune.planning.ratio import select_by_ratio

ROOT = Path(__file__).resolve().parents[1]
MBV2 = str(ROOT / "models" / "onnx" / "mobilenetv2.ts.onnx")
BERT = str(ROOT / "models" / "onnx" / "bert.ts.onnx")


def conv_chain(width=24, batch="N"):
    b = GraphBuilder(seed=3)
    x = b.input("x", [3, 8, 8], batch=batch)
    y = b.op("Relu", [b.conv(x, 3, width, name="conv1")])
    y = b.op("Relu", [b.conv(y, width, width, name="conv2")])
    y = b.conv(y, width, 4, k=1, pads=[0, 0, 0, 0], name="conv3")
    return b.model([y])


def kept_counts(res):
    return sorted(g.kept for g in res.report.groups if not g.frozen)


def test_round_to_applies_to_ratio_pruning():
    res = prune(conv_chain(), ratio=0.3, round_to=8, latency=False)
    assert kept_counts(res) == [16, 16]  # 24 - round(7.2) = 17 -> nearest multiple of 8
    assert res.report.settings["round_to"] == 8 and res.report.verification["passed"]


def test_ratio_dw_with_global_ranks_depthwise_groups_apart():
    from onnxprune.api import analyze_model
    from onnxprune.scoring.registry import score_groups

    a = analyze_model(MBV2)
    scores = score_groups(a, "l2")
    both = select_by_ratio(a.groups, scores, 0.2, ratio_dw=0.6, global_rank=True)
    dw = [g for g in a.prunable_groups if g.depthwise]
    assert dw
    removed_dw = sum(g.size - len(both.get(g.id, range(g.size))) for g in dw)
    assert removed_dw == pytest.approx(0.6 * sum(g.size for g in dw), abs=1)
    plain = select_by_ratio(a.groups, scores, 0.2, global_rank=True)
    removed_plain = sum(g.size - len(plain.get(g.id, range(g.size))) for g in dw)
    assert removed_plain < removed_dw


def test_exclude_as_string_or_comma_list_and_unmatched_note():
    for exclude in ("conv2", ["conv2,nomatch*"]):
        res = prune(conv_chain(), ratio=0.5, exclude=exclude, latency=False)
        frozen = [g for g in res.report.groups if g.frozen and any("exclude" in r for r in g.reasons)]
        assert frozen, exclude
    assert any("'nomatch*' matches no node" in n for n in res.report.notes)


def test_api_settings_and_refusals():
    res = prune(conv_chain(), macs="60%", latency=False)
    assert res.report.settings["ratio"] is None
    with pytest.raises(OnnxPruneError, match="not both"):
        prune(conv_chain(), ratio=0.3, macs="50%", latency=False)
    with pytest.raises(OnnxPruneError, match=r"\[0, 1\)"):
        prune(conv_chain(), ratio=1.5, latency=False)
    with pytest.raises(OnnxPruneError, match="list of feed dicts"):
        prune(conv_chain(), ratio=0.3, scorer="vbp", calib=[np.zeros((2, 3, 8, 8), np.float32)], latency=False)
    with pytest.raises(OnnxPruneError, match="fixed at 1"):
        prune(conv_chain(batch=1), ratio=0.3, batch=4, latency=False)


def test_input_shape_shares_symbolic_dims_across_inputs():
    res = prune(BERT, ratio=0.3, input_shapes="input_ids=2x24", latency=False)
    shapes = res.report.settings["input_shapes"]
    assert all(v == [2, 24] for v in shapes.values()) and len(shapes) == 2
    assert res.report.verification["passed"]
    with pytest.raises(OnnxPruneError, match="given as both"):
        prune(BERT, ratio=0.3, input_shapes=["input_ids=2x24", "attention_mask=3x24"], latency=False)
    with pytest.raises(OnnxPruneError, match="given twice"):
        prune(BERT, ratio=0.3, input_shapes=["input_ids=2x24", "input_ids=2x24"], latency=False)


def test_latency_cmd_times_the_report_with_ratio(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("import os, sys\nprint('latency_ms:', os.path.getsize(sys.argv[1]) / 1000)\n")
    cmd = f"{sys.executable} {script} {{model}}"
    res = prune(conv_chain(), ratio=0.5, latency_cmd=cmd)
    b, p = res.report.baseline, res.report.pruned
    assert b.latency_note == "measured by --latency-cmd"
    assert p.latency_ms < b.latency_ms  # the stand-in "latency" is the file size: smaller after pruning


def test_latency_budget_on_custom_op_model_says_what_to_do():
    b = GraphBuilder(seed=1)
    x = b.input("x", [3, 8, 8])
    y = b.op("Mystery", [b.conv(x, 3, 8, name="conv1")], domain="com.example")
    y = b.conv(b.op("Relu", [b.conv(y, 8, 8, name="conv2")]), 8, 4, name="conv3")
    with pytest.raises(OnnxPruneError, match="--latency-cmd"):
        prune(b.model([y], output_shapes=[["N", 4, 8, 8]]), budget="0.8x", verify=False)


@pytest.mark.parametrize("dims,want", [(["N", "H", "W", 3], [1, 224, 224, 3]), (["N", 3, "H", "W"], [1, 3, 224, 224]),
                                       (["N", "C", "H", "W"], [1, 16, 224, 224])])
def test_default_shapes_find_the_spatial_axes(dims, want):
    from onnx import TensorProto, helper

    from onnxprune.model.shapes import graph_input_shapes

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert graph_input_shapes(helper.make_model(g))["x"] == want


@pytest.mark.parametrize("kw,why", [(dict(exclude="*"), "no channel group was found"),
                                    (dict(exclude="conv2"), "every channel group is frozen"),
                                    (dict(ratio=0.01), "leaves every group at full width")])
def test_a_run_that_removes_nothing_says_why(kw, why):
    kw = {"ratio": 0.3, **kw}
    res = prune(conv_chain(), latency=False, **kw)
    assert any(n.startswith("no channel was removed") and why in n for n in res.report.notes), res.report.notes
    assert res.report.pruned.macs == res.report.baseline.macs


def test_a_run_that_removes_something_has_no_such_note():
    res = prune(conv_chain(), ratio=0.3, latency=False)
    assert not any(n.startswith("no channel was removed") for n in res.report.notes)


def test_macs_behind_a_custom_op_without_shapes_are_said_to_be_missing():
    b = GraphBuilder(seed=1)
    x = b.input("x", [3, 8, 8])
    y = b.op("Mystery", [b.conv(x, 3, 8, name="conv1")], domain="com.example")
    y = b.conv(b.op("Relu", [b.conv(y, 8, 8, name="conv2")]), 8, 4, name="conv3")
    res = prune(b.model([y], output_shapes=[["N", 4, 8, 8]]), ratio=0.3, verify=False, latency=False)
    note = next(n for n in res.report.notes if n.startswith("MACs leave out"))
    assert "2 node(s)" in note and "conv2" in note
    res = prune(conv_chain(), ratio=0.3, latency=False)
    assert not any(n.startswith("MACs leave out") for n in res.report.notes)


def test_a_prune_config_runs_as_the_keywords_do():
    from onnxprune import PruneConfig
    from onnxprune.config import AnalysisConfig, RuntimeConfig, TargetConfig, config_from_keywords

    cfg = PruneConfig(target=TargetConfig(ratio=0.5), analysis=AnalysisConfig(exclude=["conv2"]),
                      runtime=RuntimeConfig(latency=False))
    assert cfg == config_from_keywords(ratio=0.5, exclude="conv2", latency=False)
    by_config, by_keywords = prune(conv_chain(), cfg), prune(conv_chain(), ratio=0.5, exclude="conv2", latency=False)
    assert kept_counts(by_config) == kept_counts(by_keywords)
    assert by_config.report.settings == by_keywords.report.settings
    with pytest.raises(TypeError, match="not both"):
        prune(conv_chain(), cfg, ratio=0.3)
    with pytest.raises(TypeError):
        prune(conv_chain(), ratiio=0.3)  # a misspelt option is not silently ignored


def test_prune_config_is_validated_when_built():
    from onnxprune import PruneConfig
    from onnxprune.config import RuntimeConfig, ScoringConfig, TargetConfig, budget_spec, config_from_keywords

    with pytest.raises(OnnxPruneError, match=r"\[0, 1\)"):
        PruneConfig(target=TargetConfig(ratio=1.5))
    with pytest.raises(OnnxPruneError, match="latency budgets"):
        PruneConfig(target=TargetConfig(budget=budget_spec(macs="50%")), runtime=RuntimeConfig(latency_model="macs"))
    with pytest.raises(OnnxPruneError, match="calib limit"):
        PruneConfig(scoring=ScoringConfig(calib_limit=0))
    with pytest.raises(OnnxPruneError, match="one budget"):
        config_from_keywords(macs="50%", params="50%")
    cfg = config_from_keywords(budget="0.6x", input_shapes="x=1x3x8x8")
    assert cfg.target.ratio is None and cfg.target.budget.metric == "latency" and cfg.target.budget.fraction == 0.6
    assert cfg.analysis.input_shapes == {"x": [1, 3, 8, 8]}
    assert config_from_keywords().target.ratio == 0.3  # the API's default; the CLI asks for one instead


def test_cli_builds_the_config_the_keywords_build():
    from onnxprune.cli import build_parser
    from onnxprune.commands import config_from_args
    from onnxprune.config import config_from_keywords

    args = build_parser().parse_args(["prune", "in.onnx", "out.onnx", "--macs", "50%", "--exclude", "a,b",
                                      "--input-shape", "x=1x3x8x8", "--no-latency", "--stages", "2"])
    assert config_from_args(args) == config_from_keywords(macs="50%", exclude=["a,b"], input_shapes=["x=1x3x8x8"],
                                                          latency=False, stages=2)
    args = build_parser().parse_args(["prune", "in.onnx", "out.onnx"])
    with pytest.raises(OnnxPruneError, match="nothing to do"):
        config_from_args(args)


def test_report_records_read_like_the_dicts_they_were():
    res = prune(conv_chain(), macs="60%", latency=False)
    rep = res.report
    assert rep.verification.passed is True and rep.verification["passed"] is True
    assert rep.budget.met and rep.budget["met"] and rep.budget.iterations[0].measured == rep.budget["iterations"][0]["measured"]
    assert rep.settings.ratio is None and "compensate" in rep.settings
    d = rep.to_dict()
    assert list(d["verification"])[:3] == ["passed", "max_abs_diff", "tolerance"]
    assert "method" not in d["budget"] and "stage" not in d["budget"]["iterations"][0]
