"""OpRule is the only home of per-op knowledge: every rule of an op with weights implements the
weight hooks (MACs, compensation target, depthwise test, weight roles) or opts out of each with a
reason, so a new weighted rule that forgets one fails here instead of silently counting 0 MACs,
skipping compensation or missing a depthwise conv."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnxprune.analysis.rules import RULES, WEIGHT_HOOKS, OpRule, counts_macs, hooks_missing
from onnxprune.analysis.rules import elementwise, shape

PKG = Path(__file__).resolve().parents[1] / "onnxprune"
RULE_CLASSES = sorted({type(r) for r in RULES.values()}, key=lambda c: c.__name__)


def overridden(cls) -> set[str]:
    return {h for h in WEIGHT_HOOKS if getattr(cls, h) is not getattr(OpRule, h)}


@pytest.mark.parametrize("cls", RULE_CLASSES, ids=lambda c: c.__name__)
def test_weighted_rules_declare_every_hook(cls):
    rule = RULES[next(k for k, r in RULES.items() if type(r) is cls)]
    assert not hooks_missing(rule), (f"{cls.__name__} has weights: implement {hooks_missing(rule)} or list them "
                                     "in opts_out with a reason")
    assert set(rule.opts_out) <= set(WEIGHT_HOOKS), f"{cls.__name__} opts out of unknown hooks"
    assert all(isinstance(why, str) and why.strip() for why in rule.opts_out.values())
    if overridden(cls) or rule.opts_out:
        # a rule that knows about weight hooks is a weighted rule: it cannot skip the check above
        assert rule.weighted, f"{cls.__name__} implements weight hooks but does not say weighted = True"


def test_ops_with_weights_are_weighted():
    for op in ("Conv", "ConvTranspose", "ConvInteger", "Gemm", "MatMul", "BatchNormalization",
               "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LSTM", "GRU", "RNN",
               "com.microsoft::Attention", "com.microsoft::SkipLayerNormalization",
               "com.microsoft::EmbedLayerNormalization"):
        assert RULES[op].weighted, op
    for op in ("Conv", "ConvTranspose", "ConvInteger", "Gemm", "MatMul", "LSTM", "GRU", "RNN"):
        assert counts_macs(RULES[op]), f"{op} counts no MACs"


def test_the_check_catches_a_forgotten_hook():
    class HalfDone(OpRule):
        op_types = ("MadeUp",)
        weighted = True
        opts_out = {"is_depthwise": "not a convolution"}

        def macs(self, node, view):
            return 1

    assert hooks_missing(HalfDone()) == ["compensation_target", "weight_roles"]

    class NoReason(HalfDone):
        opts_out = {"is_depthwise": "", "compensation_target": "", "weight_roles": ""}

    assert hooks_missing(NoReason()) == ["compensation_target", "is_depthwise", "weight_roles"]


def test_norm_ops_come_from_the_rules():
    """bn-scale's normalizations (formerly scorers.NORM_OPS) are the rules with is_norm."""
    assert {k for k, r in RULES.items() if r.is_norm} == {
        "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
        "SimplifiedLayerNormalization"}


def test_one_channelwise_list():
    assert shape.CHANNELWISE is elementwise.CHANNELWISE
    assert set(elementwise.UNARY) <= set(elementwise.CHANNELWISE)


@pytest.mark.parametrize("path", ["profiling/cost.py", "transform/compensate.py", "analysis/groups.py",
                                  "scoring/scorers.py"])
def test_no_op_type_switches_outside_the_rules(path):
    # compensation writes bias Adds itself and may fold into the one that follows: that test stays
    src = (PKG / path).read_text().replace('op_type == "Add"', "")
    switches = re.findall(r"op_type\s*(?:==|!=|in\s*[\(\[\{\"'])", src)
    assert not switches, f"{path} branches on op types: ask rule_for(node) instead"
    assert "NORM_OPS" not in src and "MAC_OPS" not in src
