"""Integer ops of dynamically quantized models (ONNX Runtime's quantize_dynamic): DynamicQuantizeLinear
feeding ConvInteger or MatMulInteger, whose int32 output is cast to float and multiplied by the scales."""
from __future__ import annotations

import math

from .base import Opaque, OpRule, RuleResult, broadcast_relate, register
from .conv import Conv, conv_io, conv_relations
from .linear import MatMul


@register
class ConvInteger(Conv):
    """A Conv on integers: (x - x_zero_point) * (w - w_zero_point) summed, no bias. Channels as in
    Conv (W axis 0 = Y axis 1, X axis 1 = W axis 1, depthwise and grouped alike); the zero points
    must be per tensor (a removed input channel then contributes nothing when it holds x_zero_point)."""
    op_types = ("ConvInteger",)
    linear = False
    opts_out = {"compensation_target": "integer weights and an int32 output: no float bias to fold a "
                                       "constant into"}

    def relate(self, node, ctx):
        for t in node.input[2:4]:
            if t and math.prod(ctx.shape(t)) != 1:
                raise Opaque(f"ConvInteger zero point '{t}' is not per tensor")
        return conv_relations(*conv_io(node, ctx, bias_slot=None))

    # macs, is_depthwise, weight_roles and rewrite (the depthwise group) are Conv's

    def compensation_target(self, node, view, tensor, axis):
        return None

    def removed_value(self, node, tensor):
        return node.input[2] if tensor == node.input[0] and len(node.input) > 2 else ""


@register
class DynamicQuantizeLinear(OpRule):
    """y = saturate(round(x / scale) + zero_point), channel by channel, with scale and zero point from
    the min and max of the whole tensor: every channel axis is normalized over (after pruning they come
    from the kept channels only, as the oracle computes them). Scale and zero point are scalars."""
    op_types = ("DynamicQuantizeLinear",)

    def relate(self, node, ctx):
        x = node.input[0]
        res = broadcast_relate(RuleResult(), node, ctx, [x], node.output[0])
        res.normalizes.extend((x, a) for a in ctx.live_axes(x))
        return res


@register
class MatMulInteger(MatMul):
    """A MatMul on integers: (A - a_zero_point) @ (B - b_zero_point), int32 out (ONNX Runtime's
    quantize_dynamic writes it for MatMul/Gemm, with a Cast and a Mul by the scales after it).
    Channels as in MatMul (a constant B's columns are output channels, its rows the contracted
    input channels); the zero points must be per tensor, so a removed input channel that holds
    a_zero_point contributes nothing, and B's slices keep their one zero point."""
    op_types = ("MatMulInteger",)
    linear = False
    opts_out = {"compensation_target": "integer weights and an int32 output: no float bias to fold a "
                                       "constant into", "is_depthwise": "a dense layer"}

    def relate(self, node, ctx):
        for t in node.input[2:4]:
            if t and math.prod(ctx.shape(t)) != 1:
                raise Opaque(f"MatMulInteger zero point '{t}' is not per tensor")
        return super().relate(node, ctx)

    def compensation_target(self, node, view, tensor, axis):
        return None

    def attention(self, node, view):
        return None  # integer q @ k^T is not written by exporters; treated as a plain product

    def removed_value(self, node, tensor):
        return node.input[2] if tensor == node.input[0] and len(node.input) > 2 else ""
