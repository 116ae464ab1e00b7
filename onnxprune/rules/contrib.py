"""ONNX Runtime contrib ops (domain com.microsoft) that its transformer optimizer writes into BERT/ViT
graphs: fused bias + GELU, and the residual Add fused into LayerNormalization."""
from __future__ import annotations

from .base import OpRule, RuleResult, broadcast_relate, register


@register
class BiasGelu(OpRule):
    """Gelu(x + bias) (BiasGelu, FastGelu with its optional bias), Gelu/QuickGelu: channel-wise; the
    bias is a per-channel vector over the last axis, sliced with it."""
    domain = "com.microsoft"
    op_types = ("BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd")

    def relate(self, node, ctx):
        return broadcast_relate(RuleResult(), node, ctx, [i for i in node.input if i], node.output[0])


@register
class SkipLayerNorm(OpRule):
    """LayerNorm(input + skip [+ bias]) over the last axis, with gamma/beta. Outputs: the normalized
    sum, optional mean / inverse std (last dim 1), and optionally the sum itself. The last axis is
    the residual stream: normalized over (the oracle computes it over kept channels)."""
    domain = "com.microsoft"
    op_types = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")

    def relate(self, node, ctx):
        x = node.input[0]
        res = RuleResult()
        data = [i for i in node.input[:2] if i]
        params = [i for i in node.input[2:] if i]
        outs = [o for j, o in enumerate(node.output) if o and j in (0, 3)]
        for o in outs:
            broadcast_relate(res, node, ctx, data, o)
        last = ctx.rank(x) - 1
        c = ctx.shape(x)[last]
        if any(ctx.live(t, len(ctx.shape(t)) - 1) for t in data + outs):
            for p in params:
                if ctx.shape(p)[-1] == c:
                    res.relate((p, len(ctx.shape(p)) - 1), (x, last))
            res.normalizes.append((x, last))
            for o in node.output[1:3]:  # mean, inv std: last dim 1, nothing per channel
                if o:
                    res.claims += [(o, a) for a in ctx.live_axes(o)]
        return res
