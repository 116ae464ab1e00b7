"""Emit the slim model with onnx-graphsurgeon: slice every weight member of every pruned group, then
let each node's rule fix its attributes and shape constants (Conv group, Reshape shape, Split sizes,
Slice bounds, Resize sizes, Expand shape)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx

from .analyze import Analysis
from .io import _copy_model_fields
from .rules import RewriteContext, Space, rule_for


def kept_positions(analysis: Analysis, kept: dict[int, np.ndarray]) -> dict[Space, np.ndarray]:
    """For every member space of a pruned group: the positions it keeps (in increasing order)."""
    out = {}
    for gid, k in kept.items():
        g = analysis.groups[gid]
        keep = np.zeros(g.size, dtype=bool)
        keep[k] = True
        for m in g.members:
            out[(m.tensor, m.axis)] = np.flatnonzero(keep[m.index_map])
    return out


def rewrite(analysis: Analysis, kept: dict[int, np.ndarray]) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    view = analysis.view
    pos = kept_positions(analysis, kept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = gs.import_onnx(view.model)
    tensors = graph.tensors()

    by_weight: dict[str, list[int]] = {}
    for (t, a) in pos:
        if t in view.consts:
            by_weight.setdefault(t, []).append(a)
    for t, axes in by_weight.items():
        arr = np.asarray(tensors[t].values)
        for a in sorted(axes):
            arr = np.take(arr, pos[(t, a)], axis=a)
        tensors[t].values = np.ascontiguousarray(arr)

    counter = [0]

    def set_input_const(node, slot, value):
        old = node.inputs[slot].name if slot < len(node.inputs) else f"{node.name}_in{slot}"
        counter[0] += 1
        c = gs.Constant(f"{old}__pruned{counter[0]}", np.asarray(value))
        if slot < len(node.inputs):
            node.inputs[slot] = c
        else:
            while len(node.inputs) < slot:
                node.inputs.append(gs.Variable.empty())
            node.inputs.append(c)

    assert len(graph.nodes) == len(view.nodes)
    for k, node in enumerate(graph.nodes):
        if not any((t.name, a) in pos for t in list(node.inputs) + list(node.outputs)
                   for a in range(8)):
            continue
        rule = rule_for(view.nodes[k])
        if rule is not None:
            rule.rewrite(node, RewriteContext(view, pos, node, set_input_const))

    for t in tensors.values():  # stale shapes of intermediate tensors would mislead runtimes
        if isinstance(t, gs.Variable) and t.name not in view.outputs and t.name not in view.inputs:
            t.shape = None
    graph.cleanup(remove_unused_graph_inputs=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = gs.export_onnx(graph, do_type_check=False)
    _copy_model_fields(view.model, out)
    return out
