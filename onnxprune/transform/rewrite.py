"""Emit the slim model with onnx-graphsurgeon: slice every weight member of every pruned group, then
let each node's rule fix its attributes and shape constants (Conv group, Reshape shape, Split sizes,
Slice bounds, Resize sizes, Expand shape)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx

from onnxprune.analysis.groups import Analysis
from onnxprune.model.external import INLINE_MAX_ELEMS, DataFile, has_external, is_external
from onnxprune.model.save import copy_model_fields
from onnxprune.analysis.rules import RewriteContext, Space, rule_for


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
    """The pruned model. With external data, untouched weights keep referring to the input's data
    file and sliced ones to a scratch file (see _slice_weights)."""
    import onnx_graphsurgeon as gs

    view = analysis.view
    pos = kept_positions(analysis, kept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = gs.import_onnx(view.model)
    tensors = graph.tensors()

    _slice_weights(view, tensors, pos)

    counter = [0]
    made: dict[tuple, gs.Constant] = {}
    private: dict[tuple[int, int], object] = {}  # (consumer, chain node) -> its private copy
    clone_of: dict[int, object] = {}  # id(clone) -> the original node it copies

    def set_input_const(consumer, node, slot, value):
        """Give `node` (the node being rewritten, `consumer`, or a node on its shape chain) a new
        constant at `slot`. A chain node shared with other consumers (one shape Concat feeding the
        Reshapes of several layers) is first cloned for this consumer: the others may keep other
        sizes. Equal edits share one constant, and _merge_clones folds identical clones back."""
        if node is not consumer:
            key = (id(consumer), id(node))
            if key not in private:  # a later edit of the same chain node goes to the same copy
                private[key] = _private_chain(graph, consumer, node, counter, clone_of)
            node = private[key]
        old = node.inputs[slot].name if slot < len(node.inputs) else f"{node.name}_in{slot}"
        value = np.asarray(value)
        key = (old, value.dtype.str, value.shape, value.tobytes())
        if key not in made:
            counter[0] += 1
            made[key] = gs.Constant(f"{old}__pruned{counter[0]}", value)
        c = made[key]
        if slot < len(node.inputs):
            node.inputs[slot] = c
        else:
            while len(node.inputs) < slot:
                node.inputs.append(gs.Variable.empty())
            node.inputs.append(c)

    assert len(graph.nodes) == len(view.nodes)
    for k, node in enumerate(list(graph.nodes)):  # clones get appended while we go
        if not any((t.name, a) in pos for t in list(node.inputs) + list(node.outputs)
                   for a in range(8)):
            continue
        rule = rule_for(view.nodes[k])
        if rule is not None:
            setter = (lambda target, slot, value, _n=node: set_input_const(_n, target, slot, value))
            rule.rewrite(node, RewriteContext(view, pos, node, setter))
    if len(graph.nodes) > len(view.nodes):
        graph.toposort()
        _merge_clones(graph, clone_of)

    for t in tensors.values():  # stale shapes of intermediate tensors would mislead runtimes
        if isinstance(t, gs.Variable) and t.name not in view.outputs and t.name not in view.inputs:
            t.shape = None
    graph.cleanup(remove_unused_graph_inputs=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = gs.export_onnx(graph, do_type_check=False)
    copy_model_fields(view.model, out)
    resize_io(out, analysis, pos)
    return out


def resize_io(model: onnx.ModelProto, analysis: Analysis, pos: dict[Space, np.ndarray]) -> list[str]:
    """Set the declared size of every graph input/output axis that follows a pruned group
    (``analysis.resized_io``: KV caches) to its kept count, in place; returns the names changed.
    Works on a model without its weights (only ``graph.input`` / ``graph.output`` are touched)."""
    changed = []
    for vi in list(model.graph.input) + list(model.graph.output):
        for (t, a), _gid in analysis.resized_io.items():
            if t == vi.name and (t, a) in pos:
                dim = vi.type.tensor_type.shape.dim[a]
                dim.Clear()
                dim.dim_value = len(pos[(t, a)])
                changed.append(t)
    return sorted(set(changed))


def _slice_weights(view, tensors: dict, pos: dict[Space, np.ndarray]) -> None:
    """Every weight member keeps its kept positions. With external data (model/external.py) sliced
    weights are written to a scratch data file one at a time and the model refers to them."""
    from onnx_graphsurgeon.importers.onnx_importer import LazyValues

    by_weight: dict[str, list[int]] = {}
    for (t, a) in pos:
        if t in view.consts:
            by_weight.setdefault(t, []).append(a)
    data = DataFile() if has_external(view.model) else None
    for t, axes in by_weight.items():
        arr = view.consts[t]  # a memmap for an external weight: only the kept slices are read
        for a in sorted(axes):
            arr = np.take(arr, pos[(t, a)], axis=a)
        if data is not None and arr.size > INLINE_MAX_ELEMS:
            tensors[t].values = LazyValues(data.add(arr, t))  # streamed to disk, tensor by tensor
        else:
            tensors[t].values = np.ascontiguousarray(arr)
            tensors[t].data_location = None  # in the proto now (gs would export it as EXTERNAL, no location)
    if data is not None:
        data.close()


def _private_chain(graph, consumer, owner, counter, clone_of: dict):
    """Make the path owner -> ... -> consumer private to `consumer`: every node on it whose output
    also reaches someone else is replaced, for this consumer only, by a clone with fresh output
    names (recorded in ``clone_of``: id(clone) -> original node). Returns the node to edit in place
    of `owner`."""
    import onnx_graphsurgeon as gs

    path = _path_up(consumer, owner)
    if path is None:
        return owner  # not on an input chain of the consumer: edit where asked
    below = consumer
    for node in path:  # nearest the consumer first
        outs = [t for t in node.outputs if t in below.inputs]
        shared = any(len(t.outputs) > 1 or t in graph.outputs for t in node.outputs)
        if shared:
            counter[0] += 1
            clone = gs.Node(node.op, f"{node.name}__u{counter[0]}", dict(node.attrs), list(node.inputs),
                            [gs.Variable(f"{t.name}__u{counter[0]}", dtype=t.dtype)
                             for t in node.outputs], domain=node.domain)
            clone_of[id(clone)] = clone_of.get(id(node), node)
            graph.nodes.append(clone)
            for t in outs:
                j = node.outputs.index(t)
                for s, inp in enumerate(list(below.inputs)):
                    if inp is t:
                        below.inputs[s] = clone.outputs[j]
            node = clone
        below = node
    return below


def _path_up(consumer, owner, depth=0, dead=None):
    """Producer nodes from `consumer` up to `owner` (nearest first), or None. Shape inputs (slot 1
    on) are searched before data; nodes already searched in vain are not searched again."""
    dead = set() if dead is None else dead
    if depth > 12 or id(consumer) in dead:
        return None
    ins = list(consumer.inputs)
    for t in ins[1:] + ins[:1]:
        for p in t.inputs:  # the tensor's producer
            if p is owner:
                return [p]
            r = _path_up(p, owner, depth + 1, dead)
            if r is not None:
                return [p] + r
    dead.add(id(consumer))
    return None


def _merge_clones(graph, clone_of: dict):
    """Fold clones made by _private_chain that ended up equal to another clone of the same node or
    to the node itself: consumers that need the same value keep sharing it."""
    import onnx_graphsurgeon as gs

    def sig(n):
        ins = tuple(("x", id(t)) if _external_constant(t) else
                    ("c", t.values.dtype.str, t.values.shape, np.asarray(t.values).tobytes())
                    if isinstance(t, gs.Constant) else ("v", id(t)) for t in n.inputs)
        return (id(clone_of.get(id(n), n)), n.op, repr(sorted(n.attrs.items())), ins)

    seen = {}
    for n in list(graph.nodes):  # topological: upstream merges make downstream clones equal
        key = sig(n)
        if key not in seen:
            seen[key] = n
            continue
        keep = seen[key]
        for t, kt in zip(list(n.outputs), keep.outputs):
            for c in list(t.outputs):
                for s, inp in enumerate(list(c.inputs)):
                    if inp is t:
                        c.inputs[s] = kt
        n.outputs.clear()
        n.inputs.clear()
        graph.nodes.remove(n)


def _external_constant(t) -> bool:
    """A graphsurgeon constant still backed by an external tensor (compared by identity, never read)."""
    lazy = getattr(t, "_values", None)
    return hasattr(lazy, "tensor") and isinstance(lazy.tensor, onnx.TensorProto) and is_external(lazy.tensor)
