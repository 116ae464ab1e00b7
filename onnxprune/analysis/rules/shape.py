"""Layout ops: Transpose, Reshape/Flatten/Squeeze/Unsqueeze, Concat, Split, Slice, Gather, Expand,
Tile, Shape. They move channels between axes (index maps) without mixing them."""
from __future__ import annotations

import math

import numpy as np

from onnxprune.analysis.graph import attr
from .base import Opaque, OpRule, RuleResult, align_blocks, block_pairs, norm_axis, read_ints, register
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
            _relate_shape_entries(res, ctx, node.input[1], x, y, allowzero=int(attr(node, "allowzero", 0)))
        return res

    def rewrite(self, node, rctx):
        if node.op == "Reshape":
            _rewrite_shape_entries(node, rctx, 1)


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
    """`group` of a grouped (not depthwise) Conv that produces `t` through channel-wise ops."""
    k = view.producer.get(t)
    if k is None or depth > 6:
        return None
    n = view.nodes[k]
    if n.op_type == "Conv":
        g = int(attr(n, "group", 1))
        c = (view.shape(n.output[0]) or (0, 0))[1]
        return g if 1 < g < c else None
    if n.op_type in CHANNELWISE and all(i == n.input[0] or view.const(i) is not None for i in n.input[1:] if i):
        return _upstream_groups(view, n.input[0], depth + 1)
    return None


def _shape_entry(view, shape_t, index, depth=0):
    """Where entry `index` of a shape tensor (Reshape/Expand target) comes from:
    ('const', producer-chain, offset, value) for a constant, ('dynamic', tensor, axis) for a dim read
    with Shape at run time, or None when it is computed some other way."""
    c = view.const(shape_t)
    if c is not None:
        c = np.atleast_1d(c)
        return ("const", shape_t, index, int(c[index]))
    k = view.producer.get(shape_t)
    if k is None or depth > 8:
        return None
    n = view.nodes[k]
    op = n.op_type
    if op == "Concat":
        off = 0
        for piece in n.input:
            s = view.shape(piece)
            if s is None or len(s) > 1:
                return None
            size = s[0] if len(s) == 1 else 1
            if off <= index < off + size:
                return _shape_entry(view, piece, index - off, depth + 1)
            off += size
        return None
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity") or (
            op == "Reshape" and view.shape(n.input[0]) is not None and len(view.shape(n.input[0])) <= 1):
        return _shape_entry(view, n.input[0], index, depth + 1)
    if op == "ReduceProd" and index == 0 and len(view.shape(n.input[0]) or ()) == 1 \
            and not (len(n.input) > 1 and n.input[1]) and attr(n, "axes", [0]) in ([0], [-1]):
        # tf2onnx merges batch dims at run time: prod(Shape(x)[batch..., heads]) -> one entry
        size = view.shape(n.input[0])[0]
        factors = [_shape_entry(view, n.input[0], i, depth + 1) for i in range(size)]
        return None if any(f is None for f in factors) else ("prod", tuple(factors))
    if op == "Mul" and len(n.input) == 2 and all(len(view.shape(i) or ()) <= 1 for i in n.input):
        # TorchScript's nn.MultiheadAttention: bsz * num_heads, a run-time dim times a constant
        fs = [_shape_entry(view, i, 0 if len(view.shape(i) or ()) == 0 else index, depth + 1) for i in n.input]
        if any(f is None or f[0] == "dynamic_all" for f in fs):
            return None
        return ("prod", tuple(x for f in fs for x in (f[1] if f[0] == "prod" else (f,))))
    if op in ("Max", "Min", "Where"):
        # Max/Min: broadcast batch dims of two operands (tf2onnx's einsum lowering), equal or a 1;
        # Where: TorchScript lowers expand(-1) to Where(Equal(s, -1), 1, s)
        slots = (1, 2) if op == "Where" else (0, 1)
        if op != "Where" and not (len(n.input) == 2 and view.shape(n.input[0]) == view.shape(n.input[1])):
            return None
        a, b = (_shape_entry(view, n.input[s], index, depth + 1) for s in slots)
        if a is None or b is None:
            return None
        if a == b:
            return a
        if op == "Where":
            if a[0] == b[0] == "const" and {a[3], b[3]} == {1, -1}:
                return ("const", None, None, 1)  # a broadcast 1 either way: nothing to rewrite
            return None
        for one, other in ((a, b), (b, a)):
            if op == "Max" and one[0] == "const" and one[3] == 1 and other[0] != "const":
                return other
        if a[0] in ("dynamic", "dynamic_all") and b[0] in ("dynamic", "dynamic_all"):
            return ("dynamic_all", tuple(x for d in _entry_dims(a) + _entry_dims(b) for x in d))
        return None
    if op == "Shape":
        r = len(view.shape(n.input[0]) or ())
        start, end = _clamped(attr(n, "start", 0), r), _clamped(attr(n, "end", r), r)
        return ("dynamic", n.input[0], start + index) if start + index < end else None
    src = _through_casts(view, n.input[0]) if op in ("Gather", "Slice") else None
    if src is not None and view.producer.get(src) is not None and view.nodes[view.producer[src]].op_type == "Shape":
        sh = view.nodes[view.producer[src]]  # tf2onnx casts shapes to int32 and back
        r = len(view.shape(sh.input[0]) or ())
        start, end = _clamped(attr(sh, "start", 0), r), _clamped(attr(sh, "end", r), r)
        if op == "Gather":
            idx = view.const(n.input[1])
            if idx is None:
                return None
            i = int(np.atleast_1d(idx)[index])
            i = start + (i + (end - start) if i < 0 else i)
            return ("dynamic", sh.input[0], i) if start <= i < end else None
        st = view.const(n.input[1])
        en = view.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        ax = view.const(n.input[3]) if len(n.input) > 3 and n.input[3] else np.array([0])
        if st is None or en is None or ax is None or int(np.atleast_1d(ax)[0]) not in (0, -1) or \
                (len(n.input) > 4 and n.input[4] and int(np.atleast_1d(view.const(n.input[4]))[0]) != 1):
            return None
        # a Slice of the shape vector (length end - start); starts/ends clamp as ONNX says, e.g.
        # onnxscript's Slice(Shape(k), INT64_MIN, -2)
        m = end - start
        s0, e0 = _clamped(int(np.atleast_1d(st)[0]), m), _clamped(int(np.atleast_1d(en)[0]), m)
        return ("dynamic", sh.input[0], start + s0 + index) if s0 + index < e0 else None
    return None


def _clamped(i: int, n: int) -> int:
    """An ONNX start/end index on an axis of length n: negative counts from the end, then clamped to [0, n]."""
    i = int(i)
    return min(max(i + n if i < 0 else i, 0), n)


def _through_casts(view, t):
    while view.producer.get(t) is not None and view.nodes[view.producer[t]].op_type in ("Cast", "Identity"):
        t = view.nodes[view.producer[t]].input[0]
    return t


def _count_factor(e, view, size):
    """The one constant factor of a 'prod' entry that carries the whole size of its axis (every other
    factor is 1 here: run-time batch dims, unit constants), e.g. num_heads in bsz * num_heads; None
    when there is no such factor."""
    big = [f for f in e[1] if f[0] == "const" and f[3] != 1]
    rest = [view.shape(t)[k] for t, k in _entry_dims(e)]
    if len(big) == 1 and big[0][3] == size and big[0][1] is not None and all(d == 1 for d in rest):
        return big[0]
    return None


def _entry_dims(e):
    """(tensor, axis) dims a resolved shape entry reads at run time."""
    if e[0] == "dynamic":
        return [(e[1], e[2])]
    if e[0] == "dynamic_all":
        return [(e[1][i], e[1][i + 1]) for i in range(0, len(e[1]), 2)]
    if e[0] == "prod":
        return [d for f in e[1] for d in _entry_dims(f)]
    return []


def _relate_shape_entries(res, ctx, shape_t, x, y, allowzero=0):
    """Tie every shape entry to what it will be after pruning. A channel axis of the output needs an
    entry we can rewrite (a constant) or one that follows on its own (-1, 0 = copy, or a dim read
    from a tensor of the same group, which is then related)."""
    sy = ctx.shape(y)
    live = set(ctx.live_axes(y))
    for b in range(len(sy)):
        e = _shape_entry(ctx.view, shape_t, b)
        if e is None:
            if b in live:
                raise Opaque("target shape is computed at run time")
            continue
        if e[0] == "prod":
            # the product follows a pruned channel dim when that dim is its only factor above 1
            dims = [d for f in e[1] for d in _entry_dims(f)]
            consts = [f[3] for f in e[1] if f[0] == "const"]
            lv = [(t, k) for t, k in dims if ctx.live(t, k)]
            if not lv and b in live and _count_factor(e, ctx.view, sy[b]) is not None:
                continue  # a constant count (heads) times run-time dims of 1 (batch): the count is rewritten
            if lv or b in live:
                others = math.prod(consts) * math.prod(ctx.shape(t)[k] for t, k in dims if (t, k) not in lv)
                if len(lv) != 1 or others != 1 or ctx.shape(lv[0][0])[lv[0][1]] != sy[b]:
                    raise Opaque("target shape multiplies a channel dim with other dims at run time")
                res.relate(lv[0], (y, b))
            continue
        if e[0] in ("dynamic", "dynamic_all"):
            dims = [(e[1], e[2])] if e[0] == "dynamic" else [(e[1][i], e[1][i + 1]) for i in range(0, len(e[1]), 2)]
            for t, k in dims:  # dynamic_all: Max/Min of equal dims read from several tensors
                if ctx.live(t, k) or b in live:
                    if ctx.shape(t)[k] != sy[b]:
                        raise Opaque("target shape reads a channel dim of another size")
                    res.relate((t, k), (y, b))
        elif e[3] == 0 and not allowzero and x is not None:
            if ctx.live(x, b) or b in live:
                res.relate((x, b), (y, b))


def _rewrite_shape_entries(node, rctx, slot):
    """Write kept sizes into the constant entries of a Reshape/Expand target shape."""
    y = node.outputs[0].name
    shape_t = node.inputs[slot].name
    old = rctx.view.shape(y)
    edits: dict[str, dict[int, int]] = {}
    for b in rctx.changed(y):
        e = _shape_entry(rctx.view, shape_t, b)
        if e is not None and e[0] == "prod":
            e = _count_factor(e, rctx.view, old[b])
        if e is not None and e[0] == "const" and e[3] == old[b] and e[3] not in (-1, 0, 1):
            edits.setdefault(e[1], {})[e[2]] = rctx.size(y, b)
    for const_name, entries in edits.items():
        v = np.array(rctx.view.const(const_name)).copy()
        flat = v.reshape(-1)
        for i, n in entries.items():
            flat[i] = n
        # replace the constant where the chain consumes it (this node, or a Concat piece upstream)
        for owner, s in _const_users(node, const_name):
            rctx.set_input_const(s, v, node=owner)


def _const_users(node, const_name, depth=0):
    """(gs node, input slot) pairs on the shape chain of `node` that read constant `const_name`."""
    out = []
    for s, t in enumerate(node.inputs):
        if t.name == const_name:
            out.append((node, s))
        elif depth < 8 and t.inputs and s >= (1 if depth == 0 else 0) and t.inputs[0].op in (
                "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Mul", "Reshape"):
            out += _const_users(t.inputs[0], const_name, depth + 1)
    return out


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
        from .base import broadcast_relate

        res = broadcast_relate(RuleResult(), node, ctx, [x], y)
        _relate_shape_entries(res, ctx, s, None, y)
        return res

    def rewrite(self, node, rctx):
        _rewrite_shape_entries(node, rctx, 1)


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
        r = ctx.rank(x)
        start = norm_axis(int(attr(node, "start", 0)), r) if r else 0
        end = attr(node, "end", None)
        end = r if end is None else max(start, min(r, norm_axis(int(end), r) if int(end) < 0 else int(end)))
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
        nxt = _follow_entries(view, n, slot, entries)
        if nxt is None:
            return ("channel count read at run time" if op not in ("Gather", "Slice", "Concat")
                    else "shape of a channel tensor is used at run time")
        why = _channel_entries_escape(view, n.output[0], nxt, depth + 1)
        if why:
            return why
    return None


def _follow_entries(view, n, slot, entries: set[int]) -> set[int] | None:
    """Positions of `entries` (of input `slot`) in the output of plumbing node `n`, or None."""
    op = n.op_type
    if op in ("Cast", "Identity", "Unsqueeze", "Squeeze") and slot == 0:
        return set(entries)  # 1-D shape vectors and their scalars: positions are kept
    if op == "Reshape" and slot == 0 and len(view.shape(n.input[0]) or ()) <= 1:
        return set(entries)
    if op in ("Max", "Min") and len(n.input) == 2 and view.shape(n.input[0]) == view.shape(n.input[1]):
        return set(entries)  # elementwise over equal-length shape vectors: a shape target checks the dims
    if op == "ReduceProd" and slot == 0 and len(view.shape(n.input[0]) or ()) == 1:
        return {0}  # a product holding a channel count: only a shape target may take it (and checks it)
    if op == "Gather" and slot == 0 and int(attr(n, "axis", 0)) == 0:
        idx = view.const(n.input[1])
        if idx is None:
            return None
        size = (view.shape(n.input[0]) or [0])[0]
        flat = [int(i) + size if int(i) < 0 else int(i) for i in np.atleast_1d(idx).reshape(-1)]
        return {j for j, i in enumerate(flat) if i in entries}
    if op == "Slice" and slot == 0:
        size = (view.shape(n.input[0]) or [None])[0]
        params = [view.const(i) if i else None for i in (list(n.input[1:5]) + [""] * 4)[:4]]
        if size is None or params[0] is None or params[1] is None:
            return None
        axes = params[2]
        if axes is not None and int(np.atleast_1d(axes)[0]) not in (0, -1):
            return None
        if params[3] is not None and int(np.atleast_1d(params[3])[0]) != 1:
            return None  # as _shape_entry, which resolves unit steps only
        picked = list(range(size))[int(np.atleast_1d(params[0])[0]):int(np.atleast_1d(params[1])[0])]
        return {j for j, i in enumerate(picked) if i in entries}
    if op == "Concat" and int(attr(n, "axis", 0)) in (0, -1):
        off = 0
        for i, piece in enumerate(n.input):
            sh = view.shape(piece)
            if sh is None or len(sh) > 1:
                return None
            if i == slot:
                return {off + e for e in entries}
            off += sh[0] if sh else 1
    return None
