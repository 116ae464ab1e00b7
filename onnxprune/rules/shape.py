"""Layout ops: Transpose, Reshape/Flatten/Squeeze/Unsqueeze, Concat, Split, Slice, Gather, Expand,
Tile, Shape. They move channels between axes (index maps) without mixing them."""
from __future__ import annotations

import numpy as np

from ..graph import attr
from .base import Opaque, OpRule, RuleResult, align_blocks, block_pairs, norm_axis, read_ints, register


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
                cands = [(lin[0], b) for b in _split_preference(outs, sy, ctx)]
            else:
                cands = [(a, lout[0]) for a in _split_preference(ins, sx, ctx)]
            for a, b in cands:
                pairs = block_pairs(sx, sy, a, b)
                if pairs is not None:
                    break
            else:
                raise Opaque(f"{node.op_type} scrambles a channel axis")
            if node.op_type == "Reshape" and _shape_entry(ctx.view, node.input[1], b) is None:
                raise Opaque("Reshape target shape is computed at run time")
            res.relate((x, a), (y, b), _maybe_identity(pairs, sx[a], sy[b]))
        return res

    def rewrite(self, node, rctx):
        if node.op != "Reshape":
            return
        y = node.outputs[0].name
        changes = {b: rctx.size(y, b) for b in rctx.changed(y)}
        if not changes:
            return
        shape_t = node.inputs[1].name
        if rctx.view.const(shape_t) is not None:
            v = np.array(rctx.view.const(shape_t)).copy()
            for b, n in changes.items():
                if v[b] != -1:
                    v[b] = n
            rctx.set_input_const(1, v)
            return
        # computed shape: Concat of pieces; rewrite the constant piece holding each entry
        concat = node.inputs[1].inputs[0]
        for b, n in changes.items():
            kind, slot, off = _shape_entry(rctx.view, shape_t, b)
            if kind == "const":
                v = np.array(rctx.view.const(concat.inputs[slot].name)).copy()
                if v[off] != -1:
                    v[off] = n
                    rctx.set_input_const(slot, v, node=concat)


def _split_preference(axes, shape, ctx):
    """When a channel axis is split into several (channel shuffle, attention heads), which piece
    carries the channels: by default the largest (finest groups: shuffle columns, head_dim); with
    the `heads` option the piece before the last one (the head axis of (..., heads, head_dim))."""
    axes = [a for a in axes if shape[a] > 1]
    if ctx.options.get("heads") and len(axes) >= 2:
        return [axes[-2]] + [a for a in axes if a != axes[-2]]
    return sorted(axes, key=lambda a: -shape[a])


def _shape_entry(view, shape_t, index):
    """Where entry `index` of a Reshape shape comes from: ('const', slot, offset) / ('minus1',..) / None."""
    c = view.const(shape_t)
    if c is not None:
        return ("const", 1, index) if c[index] != -1 else ("minus1", None, None)
    k = view.producer.get(shape_t)
    if k is None or view.nodes[k].op_type != "Concat":
        return None
    off = 0
    for slot, piece in enumerate(view.nodes[k].input):
        s = view.shape(piece)
        if s is None or len(s) != 1:
            return None
        if off <= index < off + s[0]:
            pc = view.const(piece)
            if pc is None:
                return None
            return ("const", slot, index - off) if pc[index - off] != -1 else ("minus1", None, None)
        off += s[0]
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
        for a in range(r):
            if a != axis and (ctx.live(y, a) or any(ctx.live(t, a) for t in ins)):
                for t in ins:
                    res.relate((t, a), (y, a))
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
        s = min(max(s + d if s < 0 else s, 0), d)
        e = min(max(e + d if e < 0 else e, 0), d)
        out[a] = (s, e, st)
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
        params = _slice_params(node_shim(node), rctx.view, sx)
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


def node_shim(gs_node):
    from .pool import node_proto

    n = node_proto(gs_node)
    n.input.extend([t.name for t in gs_node.inputs])
    return n


@register
class Gather(OpRule):
    """Gather with constant indices along a non-channel axis (class token, q/k/v selection)."""
    op_types = ("Gather",)

    def relate(self, node, ctx):
        x, idx, y = node.input[0], node.input[1], node.output[0]
        r = ctx.rank(x)
        axis = norm_axis(int(attr(node, "axis", 0)), r)
        if ctx.live(x, axis):
            raise Opaque("Gather along a channel axis")
        q = len(ctx.shape(idx))
        res = RuleResult()
        for a in range(r):
            if a == axis:
                continue
            b = a if a < axis else a + q - 1
            if ctx.live(x, a) or ctx.live(y, b):
                res.relate((x, a), (y, b))
        for b in ctx.live_axes(y):
            if axis <= b < axis + q:
                raise Opaque("Gather indices become a channel axis")
        return res


@register
class Expand(OpRule):
    op_types = ("Expand",)

    def relate(self, node, ctx):
        x, s, y = node.input[0], node.input[1], node.output[0]
        from .base import broadcast_relate

        res = broadcast_relate(RuleResult(), node, ctx, [x], y)
        if res.relations and not ctx.is_const(s):
            raise Opaque("Expand shape computed at run time")
        return res

    def rewrite(self, node, rctx):
        y = node.outputs[0].name
        ch = rctx.changed(y)
        if not ch:
            return
        ry = len(rctx.view.shape(y))
        v = np.array(rctx.view.const(node.inputs[1].name)).copy()
        for b in ch:
            i = b - (ry - len(v))
            if i >= 0 and v[i] == rctx.view.shape(y)[b]:
                v[i] = rctx.size(y, b)
        rctx.set_input_const(1, v)


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
    """Shape of a channel tensor is fine as long as nobody reads the channel dims from it."""
    op_types = ("Shape", "Size")

    def relate(self, node, ctx):
        x = node.input[0]
        live = ctx.live_axes(x)
        res = RuleResult(claims=[(x, a) for a in live])
        if not live:
            return res
        if node.op_type == "Size":
            raise Opaque("Size of a channel tensor")
        r = ctx.rank(x)
        start = norm_axis(int(attr(node, "start", 0)), r)
        for k, _ in ctx.view.consumers.get(node.output[0], []):
            c = ctx.view.nodes[k]
            if c.op_type != "Gather" or not ctx.is_const(c.input[1]):
                raise Opaque("shape of a channel tensor is used at run time")
            read = {norm_axis(int(i), r - start) + start for i in np.atleast_1d(ctx.const(c.input[1]))}
            if read & set(live):
                raise Opaque("channel count read at run time")
        return res
