"""Target shapes (Reshape/Expand targets, Resize sizes): relate their entries to the channel dims they
follow, and write kept sizes into their constant entries. Used by the Reshape, Expand and Resize rules."""
from __future__ import annotations

import math

import numpy as np

import onnxprune.analysis.rules.shape_resolvers  # noqa: F401  (registers the exporter idioms shape_entry follows)
from .base import Opaque, RuleContext, RuleResult, Space
from .shape_entries import RUN_TIME_ENTRIES, ConstEntry, ProductEntry, ShapeEntry, shape_entry

# ops on the way from a constant piece to the target whose constant input a rewrite replaces
SHAPE_CHAIN_OPS = ("Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Mul", "Reshape", "Where")


def count_factor(e: ProductEntry, view, size: int) -> ConstEntry | None:
    """The one constant factor of a product that carries the whole size of its axis (every other
    factor is 1 here: run-time batch dims, unit constants), e.g. num_heads in bsz * num_heads; None
    when there is no such factor."""
    big = [f for f in e.factors if isinstance(f, ConstEntry) and f.value != 1]
    rest = [view.shape(t)[k] for t, k in e.run_time_dims()]
    if len(big) == 1 and big[0].value == size and big[0].source is not None and all(d == 1 for d in rest):
        return big[0]
    return None


def relate_shape_entries(res: RuleResult, ctx: RuleContext, shape_t: str, x: str | None, y: str,
                         allowzero: int = 0) -> None:
    """Tie every shape entry to what it will be after pruning. A channel axis of the output needs an
    entry we can rewrite (a constant) or one that follows on its own (-1, 0 = copy, or a dim read
    from a tensor of the same group, which is then related)."""
    sy = ctx.shape(y)
    live = set(ctx.live_axes(y))
    for b in range(len(sy)):
        e = shape_entry(ctx.view, shape_t, b)
        if e is None:
            if b in live:
                raise Opaque("target shape is computed at run time")
        elif isinstance(e, ProductEntry):
            _relate_product(res, ctx, e, (y, b), b in live)
        elif isinstance(e, RUN_TIME_ENTRIES):
            _relate_run_time_dims(res, ctx, e, (y, b), b in live)
        elif e.value == 0 and not allowzero and x is not None:
            if ctx.live(x, b) or b in live:
                res.relate((x, b), (y, b))  # 0 copies the input dim


def _relate_product(res: RuleResult, ctx: RuleContext, e: ProductEntry, out: Space, out_live: bool) -> None:
    """The product follows a pruned channel dim when that dim is its only factor above 1."""
    dims = e.run_time_dims()
    lv = [(t, k) for t, k in dims if ctx.live(t, k)]
    if not lv and out_live and count_factor(e, ctx.view, ctx.shape(out[0])[out[1]]) is not None:
        return  # a constant count (heads) times run-time dims of 1 (batch): the count is rewritten
    if lv or out_live:
        others = math.prod(e.const_values()) * math.prod(ctx.shape(t)[k] for t, k in dims if (t, k) not in lv)
        if len(lv) != 1 or others != 1 or ctx.shape(lv[0][0])[lv[0][1]] != ctx.shape(out[0])[out[1]]:
            raise Opaque("target shape multiplies a channel dim with other dims at run time")
        res.relate(lv[0], out)


def _relate_run_time_dims(res: RuleResult, ctx: RuleContext, e: ShapeEntry, out: Space, out_live: bool) -> None:
    for t, k in e.run_time_dims():  # several: Max/Min of equal dims read from several tensors
        if ctx.live(t, k) or out_live:
            if ctx.shape(t)[k] != ctx.shape(out[0])[out[1]]:
                raise Opaque("target shape reads a channel dim of another size")
            res.relate((t, k), out)


def rewrite_shape_entries(node, rctx, slot: int) -> None:
    """Write kept sizes into the constant entries of a Reshape/Expand target shape (input ``slot`` of
    graphsurgeon node ``node``)."""
    y = node.outputs[0].name
    shape_t = node.inputs[slot].name
    old = rctx.view.shape(y)
    edits: dict[str, dict[int, int]] = {}
    where: dict[str, set[int]] = {}  # constant -> target positions it is edited for
    for b in rctx.changed(y):
        e = shape_entry(rctx.view, shape_t, b)
        if isinstance(e, ProductEntry):
            e = count_factor(e, rctx.view, old[b])
        if isinstance(e, ConstEntry) and e.value == old[b] and e.value not in (-1, 0, 1):
            edits.setdefault(e.source, {})[e.offset] = rctx.size(y, b)
            where.setdefault(e.source, set()).add(b)
    for const_name, entries in edits.items():
        v = np.array(rctx.view.const(const_name)).copy()
        flat = v.reshape(-1)
        for i, n in entries.items():
            flat[i] = n
        # replace the constant where the chain consumes it (this node, or a Concat piece upstream)
        for owner, s in _edited_slots(node.inputs[slot], const_users(node, const_name), where[const_name], rctx.view):
            rctx.set_input_const(s, v, node=owner)


def _edited_slots(target, users: list, positions: set[int], view) -> list:
    """The (node, slot) users of a constant to replace: where the Concat that builds the target reads
    the same constant for several pieces (dynamo shares one [2] between kv_heads and n_rep in
    repeat_kv's Expand target), only the pieces at the edited positions."""
    concat = target.inputs[0] if target.inputs else None
    if concat is None or concat.op != "Concat":
        return users
    starts, off = [], 0
    for t in concat.inputs:
        shp = view.shape(t.name)
        if shp is None or len(shp) != 1:
            return users
        starts.append((off, off + shp[0]))
        off += shp[0]
    return [(owner, s) for owner, s in users
            if owner is not concat or any(lo <= b < hi for b in positions for lo, hi in starts[s:s + 1])]


def const_users(node, const_name: str, depth: int = 0) -> list:
    """(gs node, input slot) pairs on the shape chain of ``node`` that read constant ``const_name``."""
    out = []
    for s, t in enumerate(node.inputs):
        if t.name == const_name:
            out.append((node, s))
        elif depth < 8 and t.inputs and s >= (1 if depth == 0 else 0) and t.inputs[0].op in SHAPE_CHAIN_OPS:
            out += const_users(t.inputs[0], const_name, depth + 1)
    return out
