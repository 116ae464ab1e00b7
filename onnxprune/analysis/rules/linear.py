"""Gemm and MatMul: the contracted axis mixes channels; weight columns are the output channels."""
from __future__ import annotations

from onnxprune.analysis.graph import attr
from .base import Opaque, OpRule, RuleResult, register


@register
class Gemm(OpRule):
    op_types = ("Gemm",)

    def relate(self, node, ctx):
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 else ""
        y = node.output[0]
        ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
        res = RuleResult()
        ka, ma = (0, 1) if ta else (1, 0)
        kb, nb = (1, 0) if tb else (0, 1)
        res.relate((a, ka), (b, kb))
        res.mixes.extend([(a, ka), (b, kb)])
        res.relate((b, nb), (y, 1))
        if ctx.live(a, ma) or ctx.live(y, 0):
            res.relate((a, ma), (y, 0))
        if c:
            cs = ctx.shape(c)
            ys = ctx.shape(y)
            if len(cs) >= 1 and cs[-1] == ys[1] and ys[1] > 1:
                res.relate((c, len(cs) - 1), (y, 1))
            if len(cs) == 2 and cs[0] == ys[0] and ys[0] > 1 and (ctx.live(y, 0) or ctx.live(c, 0)):
                res.relate((c, 0), (y, 0))
        return res


@register
class MatMul(OpRule):
    """Y = A @ B with numpy batching. The contracted axes of A and B are one space (summed: mixing).
    A constant B is a weight and anchors spaces; two activations (attention) pass spaces through."""
    op_types = ("MatMul",)

    def relate(self, node, ctx):
        a, b, y = node.input[0], node.input[1], node.output[0]
        sa, sb, sy = ctx.shape(a), ctx.shape(b), ctx.shape(y)
        if len(sa) < 2 or len(sb) < 2:
            raise Opaque("MatMul with 1-D operand")
        ra, rb, ry = len(sa), len(sb), len(sy)
        res = RuleResult()
        anchor = ctx.is_const(b) or ctx.is_const(a)
        ka, kb = ra - 1, rb - 2
        if anchor or ctx.live(a, ka) or ctx.live(b, kb):
            res.relate((a, ka), (b, kb))
            res.mixes.extend([(a, ka), (b, kb)])
        # a constant B's columns are output channels; a constant A's rows are (Y = W @ X). The free
        # axis of the activation operand only joins a space when it is already one.
        if ctx.is_const(b) or ctx.live(b, rb - 1) or ctx.live(y, ry - 1):
            res.relate((b, rb - 1), (y, ry - 1))
        if ctx.is_const(a) or ctx.live(a, ra - 2) or ctx.live(y, ry - 2):
            res.relate((a, ra - 2), (y, ry - 2))
        for o in range(ry - 2):  # batch axes broadcast like elementwise ops
            for t, s in ((a, sa), (b, sb)):
                ax = o - (ry - len(s))
                if ax < 0:
                    continue
                if s[ax] == sy[o] and sy[o] > 1:
                    if ctx.live(t, ax) or ctx.live(y, o):
                        res.relate((t, ax), (y, o))
                elif ctx.live(t, ax):
                    res.claims.append((t, ax))
        return res
