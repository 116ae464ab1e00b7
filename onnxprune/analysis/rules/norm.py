"""Normalizations and reductions. Per-channel ones (BN, InstanceNorm) couple their parameters;
ones over the channel axis (LayerNorm over C, Softmax/Reduce over C) see fewer channels after pruning,
which the oracle models by computing them over the kept channels only."""
from __future__ import annotations

import math

import numpy as np

from onnxprune.analysis.graph import attr
from .base import PER_CHANNEL_PARAMS, ChannelAffine, Opaque, OpRule, RuleResult, WeightRole, norm_axis, read_ints, register


def _identity_live(res, ctx, x, y, skip=()):
    for a in sorted(set(ctx.live_axes(x)) | set(ctx.live_axes(y))):
        if a not in skip:
            res.relate((x, a), (y, a))


@register
class BatchNorm(OpRule):
    op_types = ("BatchNormalization", "InstanceNormalization")
    weighted = is_norm = True
    opts_out = PER_CHANNEL_PARAMS

    def weight_roles(self, node, view):
        return [WeightRole(i, 0, None) for i, p in enumerate(node.input) if i and p in view.consts]

    def channel_affine(self, node, view):
        """Inference BN: scale = gamma / sqrt(var + eps), shift = beta - mean * scale (InstanceNorm
        normalizes with run-time statistics: not a fixed map)."""
        ins = list(node.input) + [""] * 5
        if node.op_type != "BatchNormalization" or not all(ins[i] in view.consts for i in range(1, 5)):
            return None
        gamma, beta, mean, var = (view.consts[ins[i]].astype(np.float64).reshape(-1) for i in range(1, 5))
        scale = gamma / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
        return ChannelAffine(scale, beta - mean * scale, learned_scale=1, learned_shift=2)

    def relate(self, node, ctx):
        if node.op_type == "BatchNormalization" and any(o for o in node.output[1:]):
            raise Opaque("BatchNormalization in training mode")
        x, y = node.input[0], node.output[0]
        res = RuleResult()
        res.relate((x, 1), (y, 1))
        for p in node.input[1:]:
            if p:
                res.relate((p, 0), (y, 1))
        _identity_live(res, ctx, x, y, skip=(1,))
        if node.op_type == "InstanceNormalization":
            # statistics over axes 2..: channels carried there (GroupNorm with one group, exported as
            # Reshape(N, 1, C*H*W) -> InstanceNormalization) are normalized over, like LayerNorm over C
            res.normalizes.extend((x, a) for a in ctx.live_axes(x) if a >= 2)
        return res


@register
class GroupNorm(OpRule):
    op_types = ("GroupNormalization",)
    weighted = is_norm = True
    opts_out = PER_CHANNEL_PARAMS

    def weight_roles(self, node, view):
        """scale / bias per channel (opset 21; opset 18's are per group, i.e. one value here)."""
        return [WeightRole(i, 0, None) for i, p in enumerate(node.input)
                if i and p in view.consts and view.consts[p].shape == view.shape(node.input[0])[1:2]]

    def relate(self, node, ctx):
        """One group (num_groups=1) is a LayerNorm over (C, H, W): channels pass, and the statistics
        see only the kept ones (the oracle computes them over the kept channels). More groups tie
        channels into fixed groups: opaque."""
        if int(attr(node, "num_groups", 0)) != 1:
            raise Opaque("GroupNormalization ties channels into fixed groups (num_groups > 1)")
        x, y = node.input[0], node.output[0]
        res = RuleResult()
        res.relate((x, 1), (y, 1))
        res.normalizes.append((x, 1))
        c = ctx.shape(x)[1]
        for p in node.input[1:3]:
            if p and ctx.shape(p) == (c,) and c > 1:
                res.relate((p, 0), (y, 1))
        _identity_live(res, ctx, x, y, skip=(1,))
        return res


@register
class LayerNorm(OpRule):
    op_types = ("LayerNormalization",)
    weighted = is_norm = True
    opts_out = PER_CHANNEL_PARAMS

    def weight_roles(self, node, view):
        """gamma / beta: output channels on their last axis (the normalized axes end there)."""
        return [WeightRole(i, view.consts[p].ndim - 1, None) for i, p in enumerate(node.input)
                if i and p in view.consts and view.consts[p].ndim]

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        r = ctx.rank(x)
        axis = norm_axis(int(attr(node, "axis", -1)), r)
        res = RuleResult()
        _identity_live(res, ctx, x, y)
        for a in range(axis, r):
            if ctx.live(x, a) or ctx.live(y, a) or any(ctx.live(p, len(ctx.shape(p)) - (r - a)) for p in node.input[1:3] if p):
                res.relate((x, a), (y, a))
                res.normalizes.append((x, a))
                for p in node.input[1:3]:
                    if p:
                        ps = ctx.shape(p)
                        pa = len(ps) - (r - a)
                        if pa >= 0 and ps[pa] == ctx.shape(x)[a]:
                            res.relate((p, pa), (x, a))
        return res


@register
class Softmax(OpRule):
    op_types = ("Softmax", "LogSoftmax", "Hardmax")

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        r = ctx.rank(x)
        default = -1 if ctx.opset() >= 13 else 1
        axis = norm_axis(int(attr(node, "axis", default)), r)
        over = {axis} if ctx.opset() >= 13 else set(range(axis, r))
        res = RuleResult()
        _identity_live(res, ctx, x, y)
        res.normalizes.extend((x, a) for a in ctx.live_axes(x) if a in over)
        return res


@register
class Reduce(OpRule):
    """Reduction over spatial axes passes channels; over the channel axis it normalizes."""
    op_types = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum")

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        r = ctx.rank(x)
        keep = int(attr(node, "keepdims", 1))
        axes = read_ints(node, ctx, "axes", 1, None)
        if axes is None or len(axes) == 0:
            if int(attr(node, "noop_with_empty_axes", 0)):
                axes = []
            else:
                axes = list(range(r))
        axes = {norm_axis(a, r) for a in axes}
        res = RuleResult()
        stale = node.op_type in ("ReduceSum", "ReduceSumSquare") and any(ctx.live(x, a) for a in axes) and \
            _divided_by_count(ctx.view, y, math.prod(ctx.shape(x)[a] for a in axes))
        o = 0
        for a in range(r):
            if a in axes:
                if ctx.live(x, a) and stale:
                    # a mean spelled as sum / constant count (tf2onnx's LayerNorm variance): the count
                    # would not follow the pruned width
                    res.refused[(x, a)] = "sum over channels divided by their count as a constant"
                elif ctx.live(x, a):
                    res.normalizes.append((x, a))
                if keep:
                    o += 1
                continue
            if ctx.live(x, a) or ctx.live(y, o):
                res.relate((x, a), (y, o))
            o += 1
        return res


def _divided_by_count(view, t, count: int, depth=0) -> bool:
    """Whether `t` is divided by the constant `count` (or multiplied by 1/count) downstream, through
    Squeeze/Unsqueeze/Cast/Identity/Reshape."""
    if depth > 4:
        return False
    for k, slot in view.consumers.get(t, []):
        n = view.nodes[k]
        if n.op_type in ("Squeeze", "Unsqueeze", "Cast", "Identity", "Reshape") and slot == 0:
            if _divided_by_count(view, n.output[0], count, depth + 1):
                return True
        elif n.op_type in ("Div", "Mul") and len(n.input) == 2:
            c = view.const(n.input[1 - slot])
            if c is None or np.size(c) != 1 or (n.op_type == "Div" and slot != 0):
                continue
            v = float(np.asarray(c).reshape(-1)[0])
            want = count if n.op_type == "Div" else 1.0 / count
            if count > 1 and abs(v - want) <= 1e-6 * abs(want):
                return True
    return False


@register
class LpNorm(OpRule):
    op_types = ("LpNormalization",)

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        axis = norm_axis(int(attr(node, "axis", -1)), ctx.rank(x))
        res = RuleResult()
        _identity_live(res, ctx, x, y)
        if ctx.live(x, axis):
            res.normalizes.append((x, axis))
        return res
