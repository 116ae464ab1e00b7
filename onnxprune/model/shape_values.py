"""Fold shape arithmetic that does not depend on symbolic dims.

Exporters compute e.g. ``x.size(1) // 2`` at run time even where dim 1 is static; such values are
constants for every input the model accepts. Small integer tensors downstream of Shape are
evaluated with two different values of every symbolic input dim; those that come out equal are
replaced by constants (so channel counts become rewritable), the rest stay computed.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.model.feeds import random_inputs
from onnxprune.model.shapes import graph_input_shapes, is_static_dim, prune_dead, run_light

SHAPE_MATH = {"Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Div", "Mul", "Add", "Sub",
              "Floor", "Ceil", "Equal", "Where", "Reshape", "Identity", "Max", "Min", "Abs", "Neg", "Mod",
              "Range", "ReduceProd", "ReduceSum"}
MAX_SHAPE_VALUE_ELEMS = 64  # a shape value is a handful of integers


def fold_static_shape_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy where shape values that are the same for every input are constants (see module doc)."""
    g = model.graph
    if not any(n.op_type == "Shape" for n in g.node):
        return model
    consts = {t.name for t in g.initializer}
    cand = shape_derived_tensors(g, consts)
    if not cand:
        return model
    shape_sets = _probe_shapes(model, consts)
    # inputs the shape math does not read get no random values (a large model's weights, which
    # normalize holds as typed inputs while it folds, would be gigabytes of them)
    unread = unread_inputs(g, cand)
    skip = {t.name: tuple(t.dims) for t in g.initializer}
    skip.update({i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in unread})
    try:
        # one session for both sets; the overrides check keeps symbolic dims shared by inputs consistent
        feeds = [random_inputs(model, graph_input_shapes(model, shapes), seed=0, const_shapes=skip)
                 for shapes in shape_sets]
        values = run_light(model, cand, feeds)
    except Exception:
        return model
    static = _equal_values(cand, values[0], values[-1])
    roots = _static_roots(g, static)
    if not roots:
        return model
    return _with_constants(model, {t: values[0][t] for t in roots})


def unread_inputs(g: onnx.GraphProto, wanted: list[str]) -> list[onnx.ValueInfoProto]:
    """Graph inputs with fully static shapes that no producer of `wanted` reads, directly or not
    (none where a node has subgraphs: they read outer tensors without listing them)."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return []
    producer = {o: n for n in g.node for o in n.output}
    seen, stack = set(), list(wanted)
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in producer:
            stack.extend(i for i in producer[t].input if i)
    return [i for i in g.input if i.name not in seen
            and all(is_static_dim(d) for d in i.type.tensor_type.shape.dim)]


def shape_derived_tensors(g: onnx.GraphProto, consts: set[str]) -> list[str]:
    """Tensors reachable from Shape outputs through integer shape math (and constants) only."""
    derived: set[str] = set()
    cand: list[str] = []
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type == "Shape" or (n.op_type in SHAPE_MATH and any(i in derived for i in ins)
                                    and all(i in derived or i in consts for i in ins)):
            derived.update(n.output)
            cand.extend(n.output)
    return cand


def _probe_shapes(model: onnx.ModelProto, consts: set[str]) -> list[dict[str, list[int]]]:
    """The default input shapes, and (where any input dim is symbolic) a second set with every
    symbolic dim changed: a value equal under both does not depend on them."""
    inputs = [i for i in model.graph.input if i.name not in consts]
    base = graph_input_shapes(model)
    if all(is_static_dim(d) for i in inputs for d in i.type.tensor_type.shape.dim):
        return [base]
    other = {}
    for i in inputs:
        dims = i.type.tensor_type.shape.dim
        other[i.name] = [v if is_static_dim(d) else (v + 1 if k == 0 else v + 8)
                         for k, (d, v) in enumerate(zip(dims, base[i.name]))]
    return [base, other]


def _equal_values(cand: list[str], va: dict, vb: dict) -> set[str]:
    """The candidates with the same small integer value in both evaluations."""
    return {t for t in cand if t in va and t in vb and va[t].shape == vb[t].shape and np.array_equal(va[t], vb[t])
            and va[t].size <= MAX_SHAPE_VALUE_ELEMS and np.issubdtype(va[t].dtype, np.integer)}


def _static_roots(g: onnx.GraphProto, static: set[str]) -> list[str]:
    """Static tensors a node outside the static set reads: only those are replaced (the rest goes dead)."""
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    produced_static = {o for n in g.node for o in n.output if o in static}
    return [t for t in produced_static if any(not set(u.output) <= static for u in users.get(t, []))]


def _with_constants(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy whose nodes read each of `values` from a new initializer; what only fed them is dropped."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rename = {}
    for t, v in values.items():
        name = f"{t}__static"
        m.graph.initializer.append(numpy_helper.from_array(v, name))
        rename[t] = name
    for n in m.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    prune_dead(m)
    return m
