"""Gemm and MatMul: the contracted axis mixes channels; weight columns are the output channels."""
from __future__ import annotations

from onnxprune.analysis.graph import attr
import numpy as np

from .base import AttentionAxes, CompensationTarget, Opaque, OpRule, RuleResult, WeightRole, register


@register
class Gemm(OpRule):
    op_types = ("Gemm",)
    weighted = layer = linear = True
    opts_out = {"is_depthwise": "a dense layer"}

    def macs(self, node, view):
        a, y = view.shape(node.input[0]), view.shape(node.output[0])
        return int(y[0] * y[1] * (a[0] if attr(node, "transA", 0) else a[1]))

    def weight_roles(self, node, view):
        tb = int(attr(node, "transB", 0))
        return [WeightRole(1, 0 if tb else 1, 1 if tb else 0)] if node.input[1] in view.consts else []

    def compensation_target(self, node, view, tensor, axis):
        if node.input[0] != tensor or node.input[1] not in view.consts:
            return None
        tb = int(attr(node, "transB", 0))
        return CompensationTarget(1, out_axis=0 if tb else 1, in_axis=1 if tb else 0, y_axis=1,
                                  scale=float(attr(node, "alpha", 1.0)), bias_slot=2, bias_scale_attr="beta")

    def projection_input(self, node, view):
        s = view.shape(node.input[0])
        if node.input[1] not in view.consts or s is None:
            return None
        return (node.input[0], 0 if attr(node, "transA", 0) else len(s) - 1)

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
    weighted = layer = linear = True
    opts_out = {"is_depthwise": "a dense layer"}

    def macs(self, node, view):
        a, y = view.shape(node.input[0]), view.shape(node.output[0])
        return int(np.prod(y, dtype=np.int64) * a[-1])

    def weight_roles(self, node, view):
        a, b = node.input[0], node.input[1]
        roles = []
        if b in view.consts:
            rb = view.consts[b].ndim
            roles.append(WeightRole(1, rb - 1, rb - 2))
        if a in view.consts:  # Y = W @ X: W's rows are the output channels
            ra = view.consts[a].ndim
            roles.append(WeightRole(0, ra - 2, ra - 1))
        return roles

    def compensation_target(self, node, view, tensor, axis):
        b = node.input[1]
        if node.input[0] != tensor or b not in view.consts:
            return None
        if view.consts[b].ndim != 2 or axis != len(view.shape(tensor)) - 1:
            return None  # batched weights: no per-channel bias
        return CompensationTarget(1, out_axis=1, in_axis=0, y_axis=len(view.shape(node.output[0])) - 1)

    def projection_input(self, node, view):
        s = view.shape(node.input[0])
        if node.input[1] not in view.consts or s is None:
            return None
        return (node.input[0], len(s) - 1)

    def attention(self, node, view):
        """Two activations multiplied (q @ k^T, p @ v): the contracted and free feature axes are
        head_dim, the leading (batch x head) axes index heads."""
        if any(i in view.consts for i in node.input):
            return None
        a, b, y = node.input[0], node.input[1], node.output[0]
        sa, sb, sy = view.shape(a), view.shape(b), view.shape(y)
        if not (sa and sb and sy):
            return None
        return AttentionAxes(head_dim=((a, len(sa) - 1), (b, len(sb) - 2), (b, len(sb) - 1), (y, len(sy) - 1)),
                             heads=tuple((y, o) for o in range(len(sy) - 2)), projected=(a, b))

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
