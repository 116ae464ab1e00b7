"""Unary activations, broadcasting binary/n-ary ops, Cast/Identity/Dropout."""
from __future__ import annotations

from .base import Opaque, OpRule, RuleResult, broadcast_relate, register

UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Erf", "Softplus", "Softsign", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Not", "Mish", "Gelu", "Sin", "Cos", "IsNaN", "IsInf", "Identity", "Cast",
    "CastLike", "Swish", "Shrink",
)


@register
class Unary(OpRule):
    """y = f(x) channel by channel: every live axis passes through unchanged."""
    op_types = UNARY

    def relate(self, node, ctx):
        return broadcast_relate(RuleResult(), node, ctx, [node.input[0]], node.output[0])


@register
class Broadcasting(OpRule):
    """Add/Mul/... of tensors or per-channel constants. Two channel tensors couple their groups
    (residual Add, x * sigmoid(x)); per-channel constants become members and are sliced."""
    op_types = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Clip", "Where",
                "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod",
                "BitShift")

    def relate(self, node, ctx):
        return broadcast_relate(RuleResult(), node, ctx, list(node.input), node.output[0])


@register
class Dropout(OpRule):
    op_types = ("Dropout",)

    def relate(self, node, ctx):
        if len(node.output) > 1 and node.output[1] and node.output[1] in ctx.view.consumers:
            raise Opaque("Dropout mask output is used")
        return broadcast_relate(RuleResult(), node, ctx, [node.input[0]], node.output[0])
