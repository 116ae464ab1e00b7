"""How exporters compute shape tensors: one resolver per op type (see ``shape_entries``).

- plumbing every exporter emits: Concat of pieces, Unsqueeze/Squeeze/Cast/Identity, Reshape of a
  vector;
- Shape itself, and Gather/Slice of a Shape (TorchScript's Shape -> Gather -> Unsqueeze -> Concat;
  tf2onnx casts the shape to int32 and back; paddle2onnx's Resize sizes Concat(Slice(Shape(x), 0, 2),
  [H, W]); onnxscript slices Shape(k) from INT64_MIN);
- tf2onnx: ReduceProd merging batch dims at run time; Max/Min broadcasting the batch dims of two
  einsum operands;
- TorchScript: Mul(bsz, num_heads) in nn.MultiheadAttention; Where(Equal(s, -1), 1, s) for expand(-1).

paddle2onnx's -1 / 0 (copy) entries are constants: the target rules handle them.
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxprune.analysis.graph import attr
from .shape_entries import (RUN_TIME_ENTRIES, ConstEntry, DimEntry, EqualDimsEntry, ProductEntry, resolves,
                            shape_op_range, shape_source, unit_slice_bounds)


# --- plumbing -----------------------------------------------------------------------------------

@resolves("Concat")
def concat_piece(view, node, index, trace):
    off = 0
    for piece in node.input:
        s = view.shape(piece)
        if s is None or len(s) > 1:
            return None
        size = s[0] if len(s) == 1 else 1
        if off <= index < off + size:
            return trace(piece, index - off)
        off += size
    return None


@resolves("Unsqueeze", "Squeeze", "Cast", "Identity")
def same_position(view, node, index, trace):
    return trace(node.input[0], index)


@resolves("Reshape")
def reshaped_vector(view, node, index, trace):
    s = view.shape(node.input[0])
    return trace(node.input[0], index) if s is not None and len(s) <= 1 else None


# --- dims read at run time ----------------------------------------------------------------------

@resolves("Shape")
def shape_dim(view, node, index, trace):
    start, end = shape_op_range(view, node)
    return DimEntry(node.input[0], start + index) if start + index < end else None


@resolves("Gather")
def gathered_dim(view, node, index, trace):
    sh = shape_source(view, node.input[0])
    idx = view.const(node.input[1]) if sh is not None else None
    if idx is None:
        return None
    start, end = shape_op_range(view, sh)
    i = int(np.atleast_1d(idx)[index])
    i = start + (i + (end - start) if i < 0 else i)
    return DimEntry(sh.input[0], i) if start <= i < end else None


@resolves("Slice")
def sliced_dim(view, node, index, trace):
    sh = shape_source(view, node.input[0])
    if sh is None:
        return None
    start, end = shape_op_range(view, sh)
    bounds = unit_slice_bounds(view, node, end - start)  # a slice of the shape vector (length end - start)
    if bounds is None:
        return None
    s0, e0 = bounds
    return DimEntry(sh.input[0], start + s0 + index) if s0 + index < e0 else None


# --- tf2onnx ------------------------------------------------------------------------------------

@resolves("ReduceProd")
def merged_dims(view, node, index, trace):
    """prod(Shape(x)[batch..., heads]) -> one entry: tf2onnx merges batch dims at run time."""
    s = view.shape(node.input[0]) or ()
    if index != 0 or len(s) != 1 or (len(node.input) > 1 and node.input[1]) \
            or attr(node, "axes", [0]) not in ([0], [-1]):
        return None
    factors = [trace(node.input[0], i) for i in range(s[0])]
    return None if any(f is None for f in factors) else ProductEntry(tuple(factors))


@resolves("Max", "Min")
def broadcast_dim(view, node, index, trace):
    """Broadcast batch dims of two operands (tf2onnx's einsum lowering): equal, or a 1 under Max."""
    if not (len(node.input) == 2 and view.shape(node.input[0]) == view.shape(node.input[1])):
        return None
    a, b = trace(node.input[0], index), trace(node.input[1], index)
    if a is None or b is None:
        return None
    if a == b:
        return a
    if node.op_type == "Max":
        for one, other in ((a, b), (b, a)):
            if isinstance(one, ConstEntry) and one.value == 1 and not isinstance(other, ConstEntry):
                return other
    if isinstance(a, RUN_TIME_ENTRIES) and isinstance(b, RUN_TIME_ENTRIES):
        return EqualDimsEntry(tuple(a.run_time_dims() + b.run_time_dims()))
    return None


# --- TorchScript --------------------------------------------------------------------------------

@resolves("Mul")
def heads_times_batch(view, node, index, trace):
    """nn.MultiheadAttention's bsz * num_heads: a run-time dim times a constant."""
    if len(node.input) != 2 or any(len(view.shape(i) or ()) > 1 for i in node.input):
        return None
    fs = [trace(i, 0 if len(view.shape(i) or ()) == 0 else index) for i in node.input]
    if any(f is None or isinstance(f, EqualDimsEntry) for f in fs):
        return None
    return ProductEntry(tuple(x for f in fs for x in (f.factors if isinstance(f, ProductEntry) else (f,))))


@resolves("Where")
def expand_keep_dim(view, node, index, trace):
    """expand(-1) lowered to Where(Equal(s, -1), 1, s): a broadcast 1 either way."""
    a, b = trace(node.input[1], index), trace(node.input[2], index)
    if a is None or b is None:
        return None
    if a == b:
        return a
    if isinstance(a, ConstEntry) and isinstance(b, ConstEntry) and {a.value, b.value} == {1, -1}:
        return ConstEntry(1)  # nothing to rewrite
    if _tests_minus_one(view, node.input[0], node.input[2]):
        # Where(Equal(s, -1), 1, s) with s a dim read at run time or a constant other than -1 (the
        # TorchScript export of repeat_kv's expand(b, kv, n_rep, s, d)): the entry is s
        if isinstance(b, RUN_TIME_ENTRIES + (ProductEntry,)) or (isinstance(b, ConstEntry) and b.value != -1):
            return b
    return None


def _tests_minus_one(view, cond: str, s: str) -> bool:
    """``cond`` is Equal(s, x) (either order), x a constant -1 or -1 times ConstantOfShape ones
    (TorchScript writes the -1 vector as Mul(ConstantOfShape(Shape(s)), -1))."""
    k = view.producer.get(cond)
    node = view.nodes[k] if k is not None else None
    if node is None or node.op_type != "Equal" or s not in node.input:
        return False
    other = node.input[1] if node.input[0] == s else node.input[0]
    c = view.const(other)
    if c is not None:
        return bool(np.all(np.asarray(c) == -1))
    k = view.producer.get(other)
    mul = view.nodes[k] if k is not None else None
    if mul is None or mul.op_type != "Mul":
        return False
    consts = [view.const(i) for i in mul.input]
    return any(c is not None and np.all(np.asarray(c) == -1) for c in consts) and \
        any(c is not None and np.all(np.asarray(c) == 1) or _ones(view, i) for c, i in zip(consts, mul.input))


def _ones(view, t: str) -> bool:
    k = view.producer.get(t)
    node = view.nodes[k] if k is not None else None
    if node is None or node.op_type != "ConstantOfShape":
        return False
    value = attr(node, "value")  # a TensorProto; absent: zeros
    return value is not None and bool(np.all(numpy_helper.to_array(value) == 1))
