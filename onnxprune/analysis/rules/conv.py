"""Conv (dense, grouped, depthwise) and ConvTranspose."""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.graph import attr
from .base import CompensationTarget, Opaque, OpRule, RuleResult, WeightRole, register


def conv_io(node, ctx, bias_slot: int | None = 2):
    """(x, w, bias or "", y, weight shape, input channels, group) of a Conv/ConvTranspose."""
    x, w = node.input[0], node.input[1]
    b = node.input[bias_slot] if bias_slot is not None and len(node.input) > bias_slot else ""
    y = node.output[0]
    if not ctx.is_const(w):
        raise Opaque(f"{node.op_type} weight is not a constant")
    _spatial_live(node, ctx, x)
    _spatial_live(node, ctx, y)
    return x, w, b, y, ctx.shape(w), ctx.shape(x)[1], int(attr(node, "group", 1))


def conv_macs(node, view) -> int:
    """Output elements x (input channels per group x kernel taps)."""
    w, y = view.shape(node.input[1]), view.shape(node.output[0])
    return int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))


def conv_is_depthwise(node, view) -> bool:
    x = view.shape(node.input[0])
    g = int(attr(node, "group", 1))
    return bool(x) and g > 1 and g == x[1]


def is_padded(node) -> bool:
    pads = attr(node, "pads", None)
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return bool((pads is not None and any(int(p) for p in pads)) or auto in ("SAME_UPPER", "SAME_LOWER"))


def _spatial_live(node, ctx, t):
    for a in ctx.live_axes(t):
        if a not in (1,):
            raise Opaque(f"axis {a} of '{t}' carries channels here but is a spatial/batch axis of {node.op_type}")


@register
class Conv(OpRule):
    """W[0] = Y axis 1 = B. group=1: X axis 1 = W[1] (summed: a mixing point).
    Depthwise (group = C_in): X axis 1 is coupled to Y axis 1 (block map for channel multipliers).
    Other grouped convs: every group keeps the same in-group positions (in and out)."""
    op_types = ("Conv",)
    weighted = layer = linear = True

    def macs(self, node, view):
        return conv_macs(node, view)

    def is_depthwise(self, node, view):
        return conv_is_depthwise(node, view)

    def output_channel_groups(self, node, view):
        g = int(attr(node, "group", 1))
        c = (view.shape(node.output[0]) or (0, 0))[1]
        return g if 1 < g < c else None

    def weight_roles(self, node, view):
        return [WeightRole(1, 0, 1)] if node.input[1] in view.consts else []

    def compensation_target(self, node, view, tensor, axis):
        if node.input[0] != tensor or axis != 1 or node.input[1] not in view.consts:
            return None
        # a padded conv sees zeros, not the constant, in its border windows
        return CompensationTarget(1, out_axis=0, in_axis=1, y_axis=1, groups=int(attr(node, "group", 1)),
                                  bias_slot=2, approximate=is_padded(node))

    def relate(self, node, ctx):
        return conv_relations(*conv_io(node, ctx))

    def rewrite(self, node, rctx):
        x, w = node.inputs[0].name, node.inputs[1].name
        g = int(node.attrs.get("group", 1))
        cin = rctx.view.shape(x)[1]
        W = rctx.view.shape(w)
        if g > 1 and g == cin and W[1] == 1:
            node.attrs["group"] = rctx.size(x, 1)


def conv_relations(x, w, b, y, W, cin, g) -> RuleResult:
    """Spaces of a convolution with weight W (M, C/group, k...): see Conv."""
    m = W[0]
    res = RuleResult()
    res.relate((w, 0), (y, 1))
    if b:
        res.relate((b, 0), (y, 1))
    if g == 1:
        res.relate((x, 1), (w, 1))
        res.mixes.append((x, 1))
    elif g == cin and W[1] == 1:
        mult = m // cin
        o = np.arange(m)
        res.relate((x, 1), (y, 1), (o // mult, o) if mult > 1 else None)
    else:
        cg, mg = cin // g, m // g
        c = np.arange(cin)
        res.relate((x, 1), (w, 1), (c, c % cg))
        o = np.arange(m)
        res.relate((y, 1), (y, 1), (o, o % mg))  # out channels of all groups pruned alike
        res.mixes.append((x, 1))
    return res


@register
class ConvTranspose(OpRule):
    """W is (C_in, C_out/group, k...). group=1: X axis 1 = W[0] (mixing), W[1] = Y axis 1 = B.
    Depthwise transpose conv (group = C_in, one output per group) couples X and Y. Other grouped
    ones: as grouped Conv, every group keeps the same in-group positions (in and out)."""
    op_types = ("ConvTranspose",)
    weighted = layer = linear = True
    opts_out = {"compensation_target": "a removed input channel reaches overlapping output windows: no "
                                       "per-channel bias stands in for it (per-position compensation runs it)",
                "is_depthwise": "DEPrune's depthwise ratio is for convolutions"}

    def macs(self, node, view):
        w, x = view.shape(node.input[1]), view.shape(node.input[0])
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))

    def weight_roles(self, node, view):
        return [WeightRole(1, 1, 0)] if node.input[1] in view.consts else []

    def relate(self, node, ctx):
        x, w, b, y, W, cin, g = conv_io(node, ctx)
        if attr(node, "output_shape") is not None and len(attr(node, "output_shape")) > len(ctx.shape(y)) - 2:
            raise Opaque("ConvTranspose output_shape includes channels")
        res = RuleResult()
        if g == 1:
            res.relate((x, 1), (w, 0))
            res.mixes.append((x, 1))
            res.relate((w, 1), (y, 1))
            if b:
                res.relate((b, 0), (y, 1))
        elif g == cin and W[1] == 1:
            res.relate((x, 1), (w, 0)).relate((x, 1), (y, 1))
            if b:
                res.relate((b, 0), (y, 1))
        else:
            cg, mg = cin // g, W[1]
            c = np.arange(cin)
            res.relate((x, 1), (w, 0))
            res.relate((x, 1), (x, 1), (c, c % cg))  # in-group positions pruned alike in every group
            res.mixes.append((x, 1))
            o = np.arange(mg * g)
            res.relate((y, 1), (w, 1), (o, o % mg))
            if b:
                res.relate((b, 0), (y, 1))
        return res

    def rewrite(self, node, rctx):
        x, w = node.inputs[0].name, node.inputs[1].name
        g = int(node.attrs.get("group", 1))
        if g > 1 and g == rctx.view.shape(x)[1] and rctx.view.shape(w)[1] == 1:  # depthwise only
            node.attrs["group"] = rctx.size(x, 1)
