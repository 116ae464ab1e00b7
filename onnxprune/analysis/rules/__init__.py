"""Per-op channel rules. Importing this package registers them all; see ``base`` for the contract."""
from onnxprune.analysis.rules import contrib, conv, elementwise, linear, norm, pool, shape  # noqa: F401  (registration side effects)
from .base import RULES, Opaque, OpRule, Relation, RewriteContext, RuleContext, RuleResult, Space, register, rule_for

__all__ = ["RULES", "Opaque", "OpRule", "Relation", "RewriteContext", "RuleContext", "RuleResult", "Space",
           "register", "rule_for"]
