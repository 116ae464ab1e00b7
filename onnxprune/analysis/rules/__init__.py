"""Per-op channel rules. Importing this package registers them all; see ``base`` for the contract."""
from onnxprune.analysis.rules import (contrib, control, conv, elementwise, genai, integer, linear, norm, pool,  # noqa: F401
                                      recurrent, shape)  # (registration side effects)
from .base import (LAYOUT_OPS, RULES, WEIGHT_HOOKS, AttentionAxes, ChannelAffine, CompensationTarget, Opaque, OpRule, Relation, RewriteContext,
                   RuleContext, RuleResult, Space, WeightRole, counts_macs, hooks_missing, register, rule_for)
from .elementwise import CHANNELWISE

__all__ = ["CHANNELWISE", "LAYOUT_OPS", "RULES", "WEIGHT_HOOKS", "AttentionAxes", "ChannelAffine", "CompensationTarget", "Opaque",
           "OpRule", "Relation", "RewriteContext", "RuleContext", "RuleResult", "Space", "WeightRole", "counts_macs",
           "hooks_missing", "register", "rule_for"]
