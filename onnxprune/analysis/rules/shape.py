"""Layout ops: Transpose, Reshape/Flatten/Squeeze/Unsqueeze, Concat, Split, Slice, Gather, Expand,
Tile, Shape. They move channels between axes (index maps) without mixing them. Target shapes
computed at run time are traced by ``shape_entries`` / ``shape_resolvers`` and related by
``shape_targets``."""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.graph import attr
from .base import (Opaque, OpRule, RuleResult, align_blocks, block_pairs, broadcast_relate, norm_axis, read_ints,
                   register, rule_for)
from .gs_nodes import node_proto
from .shape_entries import clamp_index, follow_entries, shape_op_range
from .shape_targets import relate_shape_entries, rewrite_shape_entries
from .elementwise import CHANNELWISE


@register
class Transpose(OpRule):
    op_types = ("Transpose",)

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        r = ctx.rank(x)
        perm = attr(node, "perm") or list(reversed(range(r)))
        res = RuleResult()
        for i, p in enumerate(perm):
            if ctx.live(x, p) or ctx.live(y, i):
                res.relate((x, p), (y, i))
        return res


def _maybe_identity(pairs, n_a, n_b):
    a, b = pairs
    if n_a == n_b and np.array_equal(a, np.arange(n_a)) and np.array_equal(b, np.arange(n_b)):
        return None
    return pairs


@register
class ReshapeLike(OpRule):
    """Reshape/Flatten/Squeeze/Unsqueeze from static shapes: aligned blocks of axes share elements;
    one channel axis per block may map to one axis on the other side (block or modulo map). A Reshape
    that splits a channel axis (channel shuffle) couples channels; one that mixes two channel axes
    is opaque. Reshape shape constants are rewritten with the kept sizes."""
    op_types = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        sx, sy = ctx.shape(x), ctx.shape(y)
        res = RuleResult()
        if node.op_type == "Squeeze" and attr(node, "axes") is None and not (len(node.input) > 1 and node.input[1]) \
                and any(ctx.live(x, a) and sx[a] > 1 for a in range(len(sx))):
            # normalize pins the axes where shapes are static; here a pruned-to-1 channel axis would go too
            raise Opaque("Squeeze without axes would also remove a channel axis pruned to one channel")
        for ins, outs in align_blocks(sx, sy):
            lin = [a for a in ins if ctx.live(x, a) and sx[a] > 1]
            lout = [b for b in outs if ctx.live(y, b) and sy[b] > 1]
            res.claims += [(x, a) for a in ins if ctx.live(x, a) and sx[a] == 1]
            res.claims += [(y, b) for b in outs if ctx.live(y, b) and sy[b] == 1]
            if len(lin) > 1 or len(lout) > 1:
                raise Opaque(f"{node.op_type} merges or splits two channel axes")
            if not lin and not lout:
                continue
            if lin and lout:
                cands = [(lin[0], lout[0])]
            elif lin:
                cands = [(lin[0], b) for b in _split_preference(outs, sy, ctx, _upstream_groups(ctx.view, x), y)]
            else:
                cands = [(a, lout[0]) for a in _split_preference(ins, sx, ctx)]
            for a, b in cands:
                pairs = block_pairs(sx, sy, a, b)
                if pairs is not None:
                    break
            else:
                raise Opaque(f"{node.op_type} scrambles a channel axis")
            res.relate((x, a), (y, b), _maybe_identity(pairs, sx[a], sy[b]))
        if node.op_type == "Reshape":
            relate_shape_entries(res, ctx, node.input[1], x, y, allowzero=int(attr(node, "allowzero", 0)))
        return res

    def rewrite(self, node, rctx):
        if node.op == "Reshape":
            rewrite_shape_entries(node, rctx, 1)


def _split_preference(axes, shape, ctx, groups=None, y=None):
    """When a channel axis is split into several (channel shuffle, attention heads), which piece
    carries the channels: by default the largest (finest groups: shuffle columns, head_dim); with
    the `heads` option the piece before the last one (the head axis of (..., heads, head_dim)).
    After a grouped conv split as (groups, per group), the per-group piece: the conv already ties
    in-group positions across groups, and the group index would tie them all into one. A piece that
    is later taken apart by fixed indices (packed q/k/v: (3, E) then Gather 0/1/2) never carries them."""
    axes = [a for a in axes if shape[a] > 1]
    if y is not None and len(axes) >= 2:
        sel = [a for a in axes if _selection_axis(ctx.view, y, a)]
        if sel and len(sel) < len(axes):
            rest = _split_preference([a for a in axes if a not in sel], shape, ctx, groups)
            return rest + sel
    if ctx.options.get("heads") and len(axes) >= 2:
        return [axes[-2]] + [a for a in axes if a != axes[-2]]
    if groups and len(axes) == 2 and shape[axes[0]] == groups:
        return [axes[1], axes[0]]
    return sorted(axes, key=lambda a: -shape[a])


def _selection_axis(view, t, a, depth=0) -> bool:
    """Is axis `a` of `t` taken apart by fixed indices downstream (a scalar constant Gather, or a
    Split), following Transpose / Squeeze / Unsqueeze / Identity? Such an axis indexes q/k/v."""
    if depth > 6:
        return False
    for k, slot in view.consumers.get(t, []):
        n = view.nodes[k]
        if slot != 0:
            continue
        r = len(view.shape(t) or ())
        op = n.op_type
        if op in ("Gather", "Split") and norm_axis(int(attr(n, "axis", 0)), r) == a:
            if op == "Split" or (view.const(n.input[1]) is not None and np.ndim(view.const(n.input[1])) == 0):
                return True
        elif op == "Transpose":
            perm = list(attr(n, "perm", None) or range(r - 1, -1, -1))
            if _selection_axis(view, n.output[0], perm.index(a), depth + 1):
                return True
        elif op == "Identity":
            if _selection_axis(view, n.output[0], a, depth + 1):
                return True
        elif op in ("Squeeze", "Unsqueeze"):
            try:
                ax = read_ints(n, view, "axes", 1)
            except Opaque:
                continue
            if ax is None:
                continue
            if op == "Squeeze":
                ax = [norm_axis(x, r) for x in ax]
                if a in ax:
                    continue
                b = a - sum(1 for x in ax if x < a)
            else:
                ro = r + len(ax)
                ax = {norm_axis(x, ro) for x in ax}
                b = [i for i in range(ro) if i not in ax][a]
            if _selection_axis(view, n.output[0], b, depth + 1):
                return True
    return False


def _upstream_groups(view, t, depth=0):
    """Channel groups of a grouped (not depthwise) layer that produces `t` through channel-wise ops
    (its rule's output_channel_groups)."""
    k = view.producer.get(t)
    if k is None or depth > 6:
        return None
    n = view.nodes[k]
    rule = rule_for(n)
    if rule is not None and rule.layer:
        return rule.output_channel_groups(n, view)
    if n.op_type in CHANNELWISE and all(i == n.input[0] or view.const(i) is not None for i in n.input[1:] if i):
        return _upstream_groups(view, n.input[0], depth + 1)
    return None


@register
class Concat(OpRule):
    op_types = ("Concat",)

    def relate(self, node, ctx):
        y = node.output[0]
        r = ctx.rank(y)
        axis = norm_axis(int(attr(node, "axis")), r)
        ins = [t for t in node.input if t and ctx.shape(t)[axis] > 0]
        res = RuleResult()
        if ctx.live(y, axis) or any(ctx.live(t, axis) for t in ins):
            off = 0
            for t in ins:
                n = ctx.shape(t)[axis]
                j = np.arange(n)
                res.relate((t, axis), (y, axis), (j, j + off) if len(ins) > 1 else None)
                off += n
        # a KV cache: present = Concat(past, new) with past a graph input and present a graph output
        # (the caller feeds present back as past): both may resize with their group (groups.state_spaces);
        # an empty past (the first generation step) still follows it
        past = [t for t in node.input if t in ctx.view.inputs] if y in ctx.view.outputs else []
        ins += [t for t in past if t not in ins]
        for a in range(r):
            if a != axis and (ctx.live(y, a) or any(ctx.live(t, a) for t in ins)):
                for t in ins:
                    res.relate((t, a), (y, a))
        res.state_io += [(t, a) for t in (past + [y] if past else []) for a in range(r) if a != axis]
        return res


def _split_sizes(node, view, dim, n_out):
    sizes = read_ints(node, view, "split", 1, None)
    if sizes is None:
        n = int(attr(node, "num_outputs", n_out))
        q = -(-dim // n)
        sizes = [q] * (n - 1) + [dim - q * (n - 1)]
    return sizes


@register
class Split(OpRule):
    op_types = ("Split",)

    def relate(self, node, ctx):
        x = node.input[0]
        r = ctx.rank(x)
        axis = norm_axis(int(attr(node, "axis", 0)), r)
        sizes = _split_sizes(node, ctx.view, ctx.shape(x)[axis], len(node.output))
        res = RuleResult()
        outs = list(node.output)
        if ctx.live(x, axis) or any(ctx.live(o, axis) for o in outs if o):
            off = 0
            for o, n in zip(outs, sizes):
                if o:
                    j = np.arange(n)
                    res.relate((x, axis), (o, axis), (j + off, j))
                off += n
        for a in range(r):
            if a != axis and (ctx.live(x, a) or any(ctx.live(o, a) for o in outs if o)):
                for o in outs:
                    if o:
                        res.relate((x, a), (o, a))
        return res

    def rewrite(self, node, rctx):
        x = node.inputs[0].name
        r = len(rctx.view.shape(x))
        axis = norm_axis(int(node.attrs.get("axis", 0)), r)
        if rctx.kept(x, axis) is None:
            return
        sizes = np.array([rctx.size(o.name, axis) for o in node.outputs], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if rctx.view.opset >= 13:
            rctx.set_input_const(1, sizes)
        else:
            node.attrs["split"] = [int(s) for s in sizes]


def _slice_params(node, view, sx):
    r = len(sx)
    if view.opset < 10:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts = read_ints(node, view, "starts", 1)
        ends = read_ints(node, view, "ends", 2)
        axes = read_ints(node, view, "axes", 3, list(range(len(starts))))
        steps = read_ints(node, view, "steps", 4, [1] * len(starts))
    out = {}
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = norm_axis(a, r)
        d = sx[a]
        out[a] = (clamp_index(s, d), clamp_index(e, d), st)
    return out


@register
class Slice(OpRule):
    op_types = ("Slice",)

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        sx = ctx.shape(x)
        params = _slice_params(node, ctx.view, sx)
        res = RuleResult()
        for a in range(len(sx)):
            if not (ctx.live(x, a) or ctx.live(y, a)):
                continue
            s, e, st = params.get(a, (0, sx[a], 1))
            if (s, e, st) == (0, sx[a], 1):
                res.relate((x, a), (y, a))
            elif st == 1:
                j = np.arange(ctx.shape(y)[a])
                res.relate((x, a), (y, a), (j + s, j))
            else:
                raise Opaque("strided Slice on a channel axis")
        return res

    def rewrite(self, node, rctx):
        x = node.inputs[0].name
        sx = rctx.view.shape(x)
        params = _slice_params(node_proto(node, with_inputs=True), rctx.view, sx)
        new = {}
        for a, (s, e, st) in params.items():
            k = rctx.kept(x, a)
            if k is None or (s, e, st) == (0, sx[a], 1):
                continue
            ns = int(np.sum(k < s))
            new[a] = (ns, ns + int(np.sum((k >= s) & (k < e))))
        if not new:
            return
        if rctx.view.opset < 10:
            axes = [norm_axis(a, len(sx)) for a in (node.attrs.get("axes") or range(len(node.attrs["starts"])))]
            node.attrs["starts"] = [new.get(a, (s, None))[0] for a, s in zip(axes, node.attrs["starts"])]
            node.attrs["ends"] = [new.get(a, (None, e))[1] for a, e in zip(axes, node.attrs["ends"])]
            return
        starts = np.array(rctx.view.const(node.inputs[1].name)).copy()
        ends = np.array(rctx.view.const(node.inputs[2].name)).copy()
        axes = (rctx.view.const(node.inputs[3].name) if len(node.inputs) > 3 and node.inputs[3].name
                else np.arange(len(starts)))
        for i, a in enumerate(axes):
            a = norm_axis(int(a), len(sx))
            if a in new:
                starts[i], ends[i] = new[a]
        rctx.set_input_const(1, starts)
        rctx.set_input_const(2, ends)


@register
class Gather(OpRule):
    """Gather with constant indices along a non-channel axis (class token, q/k/v selection), or a
    1-D constant selection of channels (output j is input channel idx[j]: tied; the indices are
    rewritten to the kept positions); a scalar constant index on a channel axis freezes that axis only."""
    op_types = ("Gather",)

    def relate(self, node, ctx):
        x, idx, y = node.input[0], node.input[1], node.output[0]
        r = ctx.rank(x)
        axis = norm_axis(int(attr(node, "axis", 0)), r)
        q = len(ctx.shape(idx))
        res = RuleResult()
        if ctx.live(x, axis) and q == 0 and ctx.is_const(idx):
            # one fixed channel (TorchScript's packed q/k/v: Gather(qkv, 0)): that axis's group keeps
            # every channel; the other axes pass through
            res.refused[(x, axis)] = "Gather reads one fixed channel of this axis (scalar index)"
        elif ctx.live(x, axis) or (q == 1 and ctx.live(y, axis)):
            sel = ctx.const(idx) if ctx.is_const(idx) else None
            if sel is None or q != 1:
                raise Opaque("Gather along a channel axis with run-time or scalar indices")
            n = ctx.shape(x)[axis]
            sel = np.asarray(sel, np.int64).reshape(-1)
            res.relate((x, axis), (y, axis), (np.where(sel < 0, sel + n, sel), np.arange(len(sel))))
        for a in range(r):
            if a == axis:
                continue
            b = a if a < axis else a + q - 1
            if ctx.live(x, a) or ctx.live(y, b):
                res.relate((x, a), (y, b))
        for b in ctx.live_axes(y):
            if axis <= b < axis + q and not (q == 1 and b == axis and res.relations):
                raise Opaque("Gather indices become a channel axis")
        return res

    def rewrite(self, node, rctx):
        x, y = node.inputs[0].name, node.outputs[0].name
        axis = int(node.attrs.get("axis", 0))
        axis = axis + len(rctx.view.shape(x)) if axis < 0 else axis
        if len(rctx.view.shape(node.inputs[1].name) or ()) != 1:
            return  # scalar / n-D indices: never on a channel axis (relate refuses those)
        kx, ky = rctx.kept(x, axis), rctx.kept(y, axis)
        if kx is None and ky is None:
            return
        n = rctx.view.shape(x)[axis]
        sel = np.asarray(rctx.view.const(node.inputs[1].name), np.int64).reshape(-1)
        sel = np.where(sel < 0, sel + n, sel)
        if ky is not None:
            sel = sel[ky]
        if kx is not None:
            sel = np.searchsorted(kx, sel)  # kept channels are tied: every selected one is kept
        rctx.set_input_const(1, sel.astype(np.int64))


@register
class Expand(OpRule):
    op_types = ("Expand",)

    def relate(self, node, ctx):
        x, s, y = node.input[0], node.input[1], node.output[0]
        res = broadcast_relate(RuleResult(), node, ctx, [x], y)
        relate_shape_entries(res, ctx, s, None, y)
        return res

    def rewrite(self, node, rctx):
        rewrite_shape_entries(node, rctx, 1)


@register
class Tile(OpRule):
    op_types = ("Tile",)

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        reps = read_ints(node, ctx, "repeats", 1)
        res = RuleResult()
        for a in sorted(set(ctx.live_axes(x)) | set(ctx.live_axes(y))):
            if reps[a] != 1:
                raise Opaque("Tile repeats a channel axis")
            res.relate((x, a), (y, a))
        return res


@register
class Shape(OpRule):
    """The shape of a channel tensor may feed Reshape/Expand targets (those rules relate the dims
    they read); reading a channel count for anything else (arithmetic) is opaque."""
    op_types = ("Shape", "Size")

    def relate(self, node, ctx):
        x = node.input[0]
        live = ctx.live_axes(x)
        res = RuleResult()
        if not live:
            return res
        if node.op_type == "Size":
            raise Opaque("Size of a channel tensor")
        ctx.rank(x)  # an unknown shape is opaque
        start, end = shape_op_range(ctx.view, node)
        for a in live:  # each axis on its own: one dim read into arithmetic freezes only its group
            why = _channel_entries_escape(ctx.view, node.output[0], {a - start} if start <= a < end else set())
            if why:
                res.refused[(x, a)] = why
            else:
                res.claims.append((x, a))
        return res


def _channel_entries_escape(view, t, entries: set[int], depth=0) -> str | None:
    """Follow the entries of shape tensor `t` that hold channel counts through shape plumbing (Cast,
    Gather/Slice with constant indices, Concat, Unsqueeze/Squeeze): fine where they only reach
    Reshape/Expand targets (whose rules relate the dims they read) or drop out (Gather of N,H,W then
    ReduceProd, as tf2onnx lowers Dense on NHWC); a reason when one reaches arithmetic."""
    if not entries:
        return None
    if depth > 12 or t in view.outputs:
        return "channel count read at run time"
    for k, slot in view.consumers.get(t, []):
        n = view.nodes[k]
        op = n.op_type
        if (op in ("Reshape", "Expand") and slot == 1) or (op == "Resize" and slot == 3):
            continue  # shape targets: their rules relate (or refuse) the dims they read
        nxt = follow_entries(view, n, slot, entries)
        if nxt is None:
            return ("channel count read at run time" if op not in ("Gather", "Slice", "Concat")
                    else "shape of a channel tensor is used at run time")
        why = _channel_entries_escape(view, n.output[0], nxt, depth + 1)
        if why:
            return why
    return None
