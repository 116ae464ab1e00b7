"""ONNX Runtime contrib ops (domain com.microsoft) that its transformer optimizer writes into BERT/ViT
graphs: fused bias + GELU, and the residual Add fused into LayerNormalization."""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.graph import attr
from .base import (PER_CHANNEL_PARAMS, AttentionAxes, Opaque, OpRule, RuleResult, WeightRole, broadcast_relate,
                   register)


def last_axis_params(node, view, first: int) -> list[WeightRole]:
    """Constant inputs from slot ``first`` on, as per-channel vectors over their last axis."""
    return [WeightRole(i, view.consts[p].ndim - 1, None) for i, p in enumerate(node.input)
            if i >= first and p in view.consts and view.consts[p].ndim]


@register
class BiasGelu(OpRule):
    """Gelu(x + bias) (BiasGelu, FastGelu with its optional bias), Gelu/QuickGelu: channel-wise; the
    bias is a per-channel vector over the last axis, sliced with it."""
    domain = "com.microsoft"
    op_types = ("BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd")
    weighted = True
    opts_out = PER_CHANNEL_PARAMS

    def weight_roles(self, node, view):
        return last_axis_params(node, view, 1)

    def relate(self, node, ctx):
        return broadcast_relate(RuleResult(), node, ctx, [i for i in node.input if i], node.output[0])


@register
class SkipLayerNorm(OpRule):
    """LayerNorm(input + skip [+ bias]) over the last axis, with gamma/beta. Outputs: the normalized
    sum, optional mean / inverse std (last dim 1), and optionally the sum itself. The last axis is
    the residual stream: normalized over (the oracle computes it over kept channels)."""
    domain = "com.microsoft"
    op_types = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
    weighted = True
    opts_out = PER_CHANNEL_PARAMS

    def weight_roles(self, node, view):
        return last_axis_params(node, view, 2)

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


@register
class FusedAttention(OpRule):
    """ONNX Runtime's fused self-attention: input [B, S, Hin] x packed weights [Hin, 3H] (+ bias [3H])
    -> [B, S, H], `num_heads` heads of H / num_heads. The input's hidden axis is contracted with the
    weight rows (the residual stream). The output channels belong to heads: with --heads, a head's
    q, k and v columns, bias entries and output channels are tied into one channel (the head), and
    `num_heads` is rewritten; without it they stay as they are."""
    domain = "com.microsoft"
    op_types = ("Attention",)
    weighted = True
    opts_out = {"macs": "ONNX Runtime's fused attention is not counted (its MACs are left out of the totals)",
                "compensation_target": "packed q/k/v weights: removed input channels are not compensated",
                "is_depthwise": "not a convolution"}

    def weight_roles(self, node, view):
        return [WeightRole(1, 1, 0)] if node.input[1] in view.consts else []

    def attention(self, node, view):
        """Input: the residual stream; output: the heads."""
        x, y = node.input[0], node.output[0]
        sx, sy = view.shape(x), view.shape(y)
        return AttentionAxes(heads=((y, len(sy) - 1),) if sy else (), embed=((x, len(sx) - 1),) if sx else ())

    def relate(self, node, ctx):
        x, w, b, y = node.input[0], node.input[1], (node.input[2] if len(node.input) > 2 else ""), node.output[0]
        res = RuleResult()
        rx, ry = ctx.rank(x), ctx.rank(y)
        for a in range(min(rx, ry) - 1):  # batch, sequence
            if ctx.live(x, a) or ctx.live(y, a):
                res.relate((x, a), (y, a))
        if not ctx.is_const(w):
            raise Opaque("Attention weights computed at run time")
        if ctx.live(x, rx - 1) or ctx.live(w, 0):
            res.relate((x, rx - 1), (w, 0))
            res.mixes.append((x, rx - 1))
        heads = [(y, ry - 1), (w, 1)] + ([(b, 0)] if b else [])
        if not any(ctx.live(t, a) for t, a in heads):
            return res
        n_heads = int(attr(node, "num_heads", 0) or 0)
        total = ctx.shape(w)[1]
        if attr(node, "qkv_hidden_sizes", None) is not None or n_heads < 1 or total % 3 or (total // 3) % n_heads:
            why = "Attention with unequal q/k/v sizes"
        elif not ctx.options.get("heads"):
            why = "fused Attention output: whole heads are pruned with heads=True / --heads"
        else:
            hid, d = total // 3, total // 3 // n_heads
            j = np.arange(hid)
            first = (j // d) * d  # every channel of a head tied to the head's first channel
            cols = np.concatenate([j, j, hid + j, 2 * hid + j])
            outs = np.concatenate([j, first, j, j])
            res.relate((w, 1), (y, ry - 1), (cols, outs))
            if b:
                res.relate((b, 0), (w, 1))
            return res
        for sp in heads:
            res.refused[sp] = why
        return res

    def rewrite(self, node, rctx):
        y = node.outputs[0].name
        kept = rctx.kept(y, len(rctx.view.shape(y)) - 1)
        if kept is None:
            return
        total = rctx.view.shape(node.inputs[1].name)[1]
        d = total // 3 // int(node.attrs["num_heads"])
        node.attrs["num_heads"] = int(len(kept) // d)


@register
class EmbedLayerNorm(OpRule):
    """ONNX Runtime's fused BERT embeddings: word/position/segment lookups summed, then LayerNorm over
    the hidden axis. The hidden axis of every table, gamma, beta, the output and the optional
    embedding sum are one space, normalized over (the residual stream's start)."""
    domain = "com.microsoft"
    op_types = ("EmbedLayerNormalization",)
    weighted = True
    opts_out = {**PER_CHANNEL_PARAMS, "macs": "table lookups and a norm: no multiply-accumulates counted"}

    def weight_roles(self, node, view):
        """Word/position/segment tables (hidden axis 1) and gamma/beta (axis 0)."""
        return [WeightRole(i, 1 if i < 5 else 0, None) for i, p in enumerate(node.input)
                if 2 <= i <= 6 and p in view.consts]

    def relate(self, node, ctx):
        ins = list(node.input) + [""] * (9 - len(node.input))
        tables = [t for t in (ins[2], ins[3], ins[4]) if t]
        params = [t for t in (ins[5], ins[6]) if t]
        outs = [o for j, o in enumerate(node.output) if o and j in (0, 2)]
        res = RuleResult()
        if not any(ctx.live(t, 1) for t in tables) and not any(ctx.live(o, ctx.rank(o) - 1) for o in outs) \
                and not any(ctx.live(p, 0) for p in params):
            return res
        if not all(ctx.is_const(t) for t in tables + params):
            raise Opaque("EmbedLayerNormalization with run-time tables")
        anchor = (tables[0], 1)
        for t in tables[1:]:
            res.relate((t, 1), anchor)
        for p in params:
            res.relate((p, 0), anchor)
        for o in outs:
            res.relate((o, ctx.rank(o) - 1), anchor)
        res.normalizes.append(anchor)
        return res
