"""Ops that work on spatial axes: pooling, Pad, Resize/Upsample, DepthToSpace/SpaceToDepth."""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.graph import attr
from .base import Opaque, OpRule, RuleResult, read_ints, register
from .gs_nodes import node_proto
from .shape_targets import relate_shape_entries, rewrite_shape_entries


def _channel_passthrough(node, ctx, x, y, allowed=(0, 1)):
    res = RuleResult()
    for a in sorted(set(ctx.live_axes(x)) | set(ctx.live_axes(y))):
        if a not in allowed:
            raise Opaque(f"{node.op_type} works on axis {a}, which carries channels")
        res.relate((x, a), (y, a))
    return res


@register
class Pool(OpRule):
    op_types = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
                "MaxRoiPool")

    def relate(self, node, ctx):
        if len(node.output) > 1 and node.output[1]:
            raise Opaque("MaxPool indices output")
        return _channel_passthrough(node, ctx, node.input[0], node.output[0])


@register
class Pad(OpRule):
    op_types = ("Pad",)

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        r = ctx.rank(x)
        pads = read_ints(node, ctx, "pads", 1, [0] * (2 * r))
        axes = read_ints(node, ctx, "axes", 3, None) if len(node.input) > 3 and node.input[3] else None
        axes = [a + r if a < 0 else a for a in axes] if axes else list(range(r))
        padded = {ax for i, ax in enumerate(axes) if pads[i] or pads[i + len(axes)]}
        res = RuleResult()
        for a in sorted(set(ctx.live_axes(x)) | set(ctx.live_axes(y))):
            if a in padded:
                raise Opaque("Pad pads a channel axis")
            res.relate((x, a), (y, a))
        return res


@register
class Resize(OpRule):
    """Channel axes must keep scale 1; a `sizes` input carries the channel count and is rewritten."""
    op_types = ("Resize", "Upsample")

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        sx, sy = ctx.shape(x), ctx.shape(y)
        res = RuleResult()
        for a in sorted(set(ctx.live_axes(x)) | set(ctx.live_axes(y))):
            if sx[a] != sy[a]:
                raise Opaque("Resize scales a channel axis")
            res.relate((x, a), (y, a))
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] and res.relations:
            if not ctx.is_const(node.input[3]):
                # paddle2onnx: sizes = Concat(Slice(Shape(x), 0, 2), [H, W]); entries read from a shape
                # follow the pruned width by themselves, constant pieces are rewritten
                if attr(node, "axes", None) is not None:
                    raise Opaque("Resize sizes computed at run time")
                relate_shape_entries(res, ctx, node.input[3], None, y)
        return res

    def rewrite(self, node, rctx):
        if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
            if rctx.view.const(node.inputs[3].name) is None:
                rewrite_shape_entries(node, rctx, 3)
                return
            x = node.inputs[0].name
            sizes = np.array(rctx.view.const(node.inputs[3].name)).copy()
            r = len(rctx.view.shape(x))
            ax = read_ints(node_proto(node), rctx.view, "axes", None, None)
            axes = [a + r if a < 0 else a for a in ax] if ax else list(range(r))
            changed = False
            for i, a in enumerate(axes):
                if rctx.kept(x, a) is not None:
                    sizes[i] = rctx.size(x, a)
                    changed = True
            if changed:
                rctx.set_input_const(3, sizes)


@register
class DepthToSpace(OpRule):
    """DepthToSpace (pixel shuffle) / SpaceToDepth: one channel on the narrow side owns r*r channels
    on the deep side (DCR: deep k = block * C + c; CRD: k = c * r*r + block), a block map like
    Flatten's. Pruning a channel removes its whole block, so the deep width stays a multiple of r*r
    and nothing in the node changes. Spatial axes carry no channels."""
    op_types = ("DepthToSpace", "SpaceToDepth")

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        for t in (x, y):
            if any(a != 1 for a in ctx.live_axes(t)):
                raise Opaque(f"{node.op_type} moves a channel axis into space")
        res = RuleResult()
        if not (ctx.live(x, 1) or ctx.live(y, 1)):
            return res
        r2 = int(attr(node, "blocksize")) ** 2
        deep, narrow = (x, y) if node.op_type == "DepthToSpace" else (y, x)
        c = ctx.shape(narrow)[1]
        k = np.arange(c * r2)
        mode = attr(node, "mode", b"DCR")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        crd = node.op_type == "DepthToSpace" and mode.upper() == "CRD"
        owner = k // r2 if crd else k % c
        if deep == x:
            res.relate((x, 1), (y, 1), (k, owner))
        else:
            res.relate((x, 1), (y, 1), (owner, k))
        return res
