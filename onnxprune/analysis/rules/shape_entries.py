"""Entries of shape tensors (Reshape/Expand targets, Resize sizes), traced to where they come from.

Backward (:func:`shape_entry`): entry ``index`` of a shape tensor is a constant, a dim read at run
time with Shape, several equal dims (broadcast), or a product of those. Each exporter idiom that
computes shapes is a small *resolver* registered per op type (``@resolves("Concat")``, like the
rule registry); ``shape_resolvers`` holds them.

Forward (:func:`follow_entries`): where given entries of a shape vector land in the output of one
plumbing node (Cast, Gather, Slice, Concat, ...), for the Shape rule.

ONNX start/end indices (Shape start/end, Slice starts/ends) clamp in one place: :func:`clamp_index`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import onnx

from onnxprune.analysis.graph import GraphView, attr
from .base import Space

MAX_TRACE_DEPTH = 8  # producers followed upstream from a shape tensor


@dataclass(frozen=True)
class ConstEntry:
    """A constant entry: ``value`` at flat position ``offset`` of constant tensor ``source`` (where a
    rewrite writes the kept size); ``source`` is None where no constant holds it (nothing to rewrite)."""
    value: int
    source: str | None = None
    offset: int | None = None

    def run_time_dims(self) -> list[Space]:
        return []


@dataclass(frozen=True)
class DimEntry:
    """Dim ``axis`` of ``tensor``, read with Shape at run time."""
    tensor: str
    axis: int

    def run_time_dims(self) -> list[Space]:
        return [(self.tensor, self.axis)]


@dataclass(frozen=True)
class EqualDimsEntry:
    """Dims of several tensors that are equal (Max/Min of broadcast batch dims): any one of them."""
    dims: tuple[Space, ...]

    def run_time_dims(self) -> list[Space]:
        return list(self.dims)


@dataclass(frozen=True)
class ProductEntry:
    """The product of ``factors`` (merged batch dims, bsz * num_heads)."""
    factors: tuple["ShapeEntry", ...]

    def run_time_dims(self) -> list[Space]:
        return [d for f in self.factors for d in f.run_time_dims()]

    def const_values(self) -> list[int]:
        return [f.value for f in self.factors if isinstance(f, ConstEntry)]


ShapeEntry = Union[ConstEntry, DimEntry, EqualDimsEntry, ProductEntry]
RUN_TIME_ENTRIES = (DimEntry, EqualDimsEntry)

Tracer = Callable[[str, int], "ShapeEntry | None"]  # entry of an input tensor, one level further up
ShapeResolver = Callable[[GraphView, onnx.NodeProto, int, Tracer], "ShapeEntry | None"]
SHAPE_RESOLVERS: dict[str, ShapeResolver] = {}


def resolves(*op_types: str):
    """Register a resolver ``(view, node, index, trace) -> ShapeEntry | None`` for entry ``index`` of
    the output of a node of these op types; ``trace(t, i)`` resolves entry ``i`` of an input."""
    def deco(fn: ShapeResolver) -> ShapeResolver:
        for op in op_types:
            SHAPE_RESOLVERS[op] = fn
        return fn
    return deco


def shape_entry(view: GraphView, shape_t: str, index: int, depth: int = 0) -> ShapeEntry | None:
    """Where entry ``index`` of shape tensor ``shape_t`` comes from, or None when it is computed in a
    way no resolver knows."""
    c = view.const(shape_t)
    if c is not None:
        return ConstEntry(int(np.atleast_1d(c)[index]), shape_t, index)
    k = view.producer.get(shape_t)
    if k is None or depth > MAX_TRACE_DEPTH:
        return None
    node = view.nodes[k]
    resolver = SHAPE_RESOLVERS.get(node.op_type)
    if resolver is None:
        return None
    return resolver(view, node, index, lambda t, i: shape_entry(view, t, i, depth + 1))


# --- ONNX index arithmetic shared by the resolvers and the rules ------------------------------------

def clamp_index(i: int, n: int) -> int:
    """An ONNX start/end index on an axis of length n: negative counts from the end, then clamped to [0, n]."""
    i = int(i)
    return min(max(i + n if i < 0 else i, 0), n)


def shape_op_range(view: GraphView, shape_node: onnx.NodeProto) -> tuple[int, int]:
    """[start, end) of the dims a Shape node reads (opset 15 start/end attributes), clamped."""
    r = len(view.shape(shape_node.input[0]) or ())
    return clamp_index(attr(shape_node, "start", 0), r), clamp_index(attr(shape_node, "end", r), r)


def unit_slice_bounds(view: GraphView, node: onnx.NodeProto, length: int) -> tuple[int, int] | None:
    """[start, end) that a Slice takes from a vector of ``length``: constant starts/ends along axis 0
    with unit step, clamped as ONNX says (onnxscript slices Shape(k) from INT64_MIN); None otherwise."""
    starts, ends, axes, steps = (list(node.input[1:5]) + [""] * 4)[:4]
    st, en = view.const(starts) if starts else None, view.const(ends) if ends else None
    if st is None or en is None:
        return None
    if axes and (view.const(axes) is None or int(np.atleast_1d(view.const(axes))[0]) not in (0, -1)):
        return None
    if steps and (view.const(steps) is None or int(np.atleast_1d(view.const(steps))[0]) != 1):
        return None
    return clamp_index(int(np.atleast_1d(st)[0]), length), clamp_index(int(np.atleast_1d(en)[0]), length)


def shape_source(view: GraphView, t: str) -> onnx.NodeProto | None:
    """The Shape node that produces ``t`` through Casts/Identities (tf2onnx casts shapes to int32
    and back), or None."""
    while view.producer.get(t) is not None and view.nodes[view.producer[t]].op_type in ("Cast", "Identity"):
        t = view.nodes[view.producer[t]].input[0]
    k = view.producer.get(t)
    return view.nodes[k] if k is not None and view.nodes[k].op_type == "Shape" else None


# --- forward: where entries of a shape vector go ----------------------------------------------------

EntryFollower = Callable[[GraphView, onnx.NodeProto, int, "set[int]"], "set[int] | None"]


def _kept_positions(view, n, slot, entries):
    return set(entries) if slot == 0 else None  # 1-D shape vectors and their scalars


def _reshaped_vector(view, n, slot, entries):
    return set(entries) if slot == 0 and len(view.shape(n.input[0]) or ()) <= 1 else None


def _elementwise_equal_lengths(view, n, slot, entries):
    # elementwise over equal-length shape vectors: a shape target checks the dims
    return set(entries) if len(n.input) == 2 and view.shape(n.input[0]) == view.shape(n.input[1]) else None


def _reduced_product(view, n, slot, entries):
    # a product holding a channel count: only a shape target may take it (and checks it)
    return {0} if slot == 0 and len(view.shape(n.input[0]) or ()) == 1 else None


def _gathered(view, n, slot, entries):
    if slot != 0 or int(attr(n, "axis", 0)) != 0:
        return None
    idx = view.const(n.input[1])
    if idx is None:
        return None
    size = (view.shape(n.input[0]) or [0])[0]
    flat = [int(i) + size if int(i) < 0 else int(i) for i in np.atleast_1d(idx).reshape(-1)]
    return {j for j, i in enumerate(flat) if i in entries}


def _sliced(view, n, slot, entries):
    size = (view.shape(n.input[0]) or [None])[0]
    bounds = unit_slice_bounds(view, n, size) if slot == 0 and size is not None else None
    if bounds is None:
        return None  # as shape_entry, which resolves unit steps only
    return {j for j, i in enumerate(range(*bounds)) if i in entries}


def _concatenated(view, n, slot, entries):
    if int(attr(n, "axis", 0)) not in (0, -1):
        return None
    off = 0
    for i, piece in enumerate(n.input):
        sh = view.shape(piece)
        if sh is None or len(sh) > 1:
            return None
        if i == slot:
            return {off + e for e in entries}
        off += sh[0] if sh else 1
    return None


ENTRY_FOLLOWERS: dict[str, EntryFollower] = {
    "Cast": _kept_positions, "Identity": _kept_positions, "Unsqueeze": _kept_positions, "Squeeze": _kept_positions,
    "Reshape": _reshaped_vector, "Max": _elementwise_equal_lengths, "Min": _elementwise_equal_lengths,
    "ReduceProd": _reduced_product, "Gather": _gathered, "Slice": _sliced, "Concat": _concatenated,
}


def follow_entries(view: GraphView, n: onnx.NodeProto, slot: int, entries: set[int]) -> set[int] | None:
    """Positions of ``entries`` (of input ``slot``) in the output of plumbing node ``n``, or None."""
    follow = ENTRY_FOLLOWERS.get(n.op_type)
    return follow(view, n, slot, entries) if follow else None
