"""Unary activations, broadcasting binary/n-ary ops, Cast/Identity/Dropout."""
from __future__ import annotations

import math

from onnxprune.analysis.graph import attr
from .base import Opaque, OpRule, RuleResult, broadcast_relate, norm_axis, register

UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Erf", "Softplus", "Softsign", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Not", "Mish", "Gelu", "Sin", "Cos", "IsNaN", "IsInf", "Identity", "Cast",
    "CastLike", "Swish", "Shrink",
)

# Ops whose output channel c depends on input channel c only (with per-channel or scalar constants):
# the one list other rules and the analysis follow channels through.
CHANNELWISE = UNARY + ("Add", "Sub", "Mul", "Div", "PRelu", "Clip", "BatchNormalization")


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
class Range(OpRule):
    """Scalars in, an index vector out (positions for a causal mask or RoPE): no channel space,
    unless its output meets one (then opaque)."""
    op_types = ("Range",)

    def relate(self, node, ctx):
        if ctx.live_axes(node.output[0]):
            raise Opaque("Range output used as a channel axis")
        return RuleResult()


@register
class Dropout(OpRule):
    op_types = ("Dropout",)

    def relate(self, node, ctx):
        if len(node.output) > 1 and node.output[1] and node.output[1] in ctx.view.consumers:
            raise Opaque("Dropout mask output is used")
        return broadcast_relate(RuleResult(), node, ctx, [node.input[0]], node.output[0])


@register
class QuantDequant(OpRule):
    """QuantizeLinear / DequantizeLinear of activations: elementwise, channel by channel. A removed
    channel needs no special value: the oracle zeroes channels where they enter mixing nodes, and
    0 stays exact through Q/DQ anyway (quantize(0) = zero_point, dequantize(zero_point) = 0).
    Per-axis scale / zero_point on a channel axis are per-channel constants: members, sliced."""
    op_types = ("QuantizeLinear", "DequantizeLinear")

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        if int(attr(node, "block_size", 0) or 0):
            raise Opaque(f"{node.op_type} with blocked quantization")
        res = broadcast_relate(RuleResult(), node, ctx, [x], y)
        params = [t for t in node.input[1:3] if t]
        if all(math.prod(ctx.shape(t)) == 1 for t in params):
            return res  # per tensor
        axis = norm_axis(int(attr(node, "axis", 1)), ctx.rank(x))
        if not (ctx.live(x, axis) or ctx.live(y, axis)):
            return res
        for t in params:
            if not ctx.is_const(t) or len(ctx.shape(t)) != 1:
                raise Opaque(f"{node.op_type}: per-axis scale / zero_point '{t}' is not a constant vector")
            res.relate((t, 0), (y, axis))
        return res
