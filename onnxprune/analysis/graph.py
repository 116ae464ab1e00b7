"""A read-only view of a normalized model for the analyzer: producers, consumers, constants, shapes.

Shapes come from ONNX shape inference on a copy with concrete input shapes; tensors that inference
leaves unknown are measured by one ONNX Runtime run with them exposed as outputs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.model.external import is_external, read_tensor
from onnxprune.model.feeds import random_inputs
from onnxprune.model.input_sizes import fitted_input_shapes
from onnxprune.model.load import opset_version, subgraphs
from onnxprune.model.shapes import graph_input_shapes, infer_shapes_light, run_light, with_fixed_input_shapes


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class TensorValues(Mapping):
    """Initializer name -> values. In-memory tensors are decoded once, on first use; an external
    tensor (model/external.py) is a fresh read-only memmap on every access, so its pages are mapped
    only while a caller holds the array, and the weights of a large model are never all resident."""

    def __init__(self, tensors):
        self._tensors = {t.name: t for t in tensors}
        self._decoded: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        if is_external(t):
            return read_tensor(t)
        if name not in self._decoded:
            self._decoded[name] = numpy_helper.to_array(t)
        return self._decoded[name]

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].dims)


@dataclass
class GraphView:
    model: onnx.ModelProto
    input_shapes: dict[str, list[int]]
    notes: list[str] = field(default_factory=list)  # how the input shapes were chosen, where not as given
    nodes: list[onnx.NodeProto] = field(init=False)
    producer: dict[str, int] = field(init=False)
    consumers: dict[str, list[tuple[int, int]]] = field(init=False)
    consts: TensorValues = field(init=False)
    shapes: dict[str, tuple[int, ...]] = field(init=False)
    dtypes: dict[str, int] = field(init=False)
    inputs: list[str] = field(init=False)
    outputs: list[str] = field(init=False)
    opset: int = field(init=False)
    # node index -> outer-scope tensors its subgraphs (If/Loop/Scan bodies) read without listing
    # them as inputs; they are also in `consumers` with slot -1
    implicit: dict[int, list[str]] = field(init=False)

    def __post_init__(self):
        g = self.model.graph
        self.nodes = list(g.node)
        self.opset = opset_version(self.model)
        self.consts = TensorValues(g.initializer)
        self.inputs = [i.name for i in g.input if i.name not in self.consts]
        self.outputs = [o.name for o in g.output]
        self.producer, self.consumers, self.implicit = {}, {}, {}
        for k, n in enumerate(self.nodes):
            for t in n.output:
                if t:
                    self.producer[t] = k
            for s, t in enumerate(n.input):
                if t:
                    self.consumers.setdefault(t, []).append((k, s))
            # a tensor read inside a subgraph is an input of the node like any other: whatever
            # touches its channels must see this node as a consumer (slot -1: no input slot)
            refs = [t for t in subgraph_outer_refs(n, set(self.consts)) if t not in set(n.input)]
            if refs:
                self.implicit[k] = refs
                for t in refs:
                    self.consumers.setdefault(t, []).append((k, -1))
        self._infer_shapes()

    # --- shapes -------------------------------------------------------------------------------
    def _infer_shapes(self):
        fixed = with_fixed_input_shapes(self.model, self.input_shapes)
        self.shapes, self.dtypes = {}, {}
        try:
            inferred = infer_shapes_light(fixed, data_prop=True)
        except Exception:
            inferred = fixed
        g = inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                self.shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
            if tt.elem_type:
                self.dtypes[vi.name] = tt.elem_type
        for name in self.consts:
            self.shapes[name] = self.consts.shape(name)
        _add_subgraph_shapes(g, self.shapes)
        missing = [t for n in self.nodes for t in n.output if t and t not in self.shapes]
        if missing:
            self._measure_shapes(fixed, missing)

    def _measure_shapes(self, fixed: onnx.ModelProto, missing: list[str]):
        try:
            outs = run_light(fixed, missing, [random_feeds(self, seed=0)])[0]
        except Exception:
            return  # rules that need a missing shape treat the node as opaque
        for t, v in outs.items():
            self.shapes[t] = tuple(np.asarray(v).shape)

    # --- helpers for rules --------------------------------------------------------------------
    def shape(self, t: str) -> tuple[int, ...] | None:
        return self.shapes.get(t)

    def const(self, t: str) -> np.ndarray | None:
        return self.consts.get(t)

    def np_dtype(self, t: str) -> np.dtype:
        """The numpy dtype of tensor `t` (float32 where its type is unknown or has no numpy dtype)."""
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtypes.get(t, onnx.TensorProto.FLOAT)))
        except Exception:  # UNDEFINED and types numpy lacks
            return np.dtype(np.float32)

    def node_label(self, k: int) -> str:
        n = self.nodes[k]
        return f"{n.op_type} '{n.name}'" if n.name else f"{n.op_type} #{k}"

    def nx_graph(self) -> nx.DiGraph:
        """Op graph (node indices) for ordering and reporting."""
        g = nx.DiGraph()
        g.add_nodes_from(range(len(self.nodes)))
        for t, k in self.producer.items():
            for c, _ in self.consumers.get(t, []):
                g.add_edge(k, c, tensor=t)
        return g


def _add_subgraph_shapes(g: onnx.GraphProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Static shapes of the tensors inside `g`'s subgraphs (If branches, Loop/Scan bodies, any
    depth), as shape inference left them in the inferred model: the cost of compute in branches is
    counted from them (profiling/cost.py). Names of the enclosing graph keep their shapes."""
    for sg in subgraphs(g):
        for vi in list(sg.input) + list(sg.value_info) + list(sg.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                shapes.setdefault(vi.name, tuple(d.dim_value for d in tt.shape.dim))
        for t in sg.initializer:
            shapes.setdefault(t.name, tuple(t.dims))
        _add_subgraph_shapes(sg, shapes)


def subgraph_outer_refs(node: onnx.NodeProto, outer_consts: set[str] = frozenset()) -> list[str]:
    """Names the node's subgraphs (If branches, Loop/Scan bodies, nested at any depth) read from an
    enclosing scope: used inside but not defined there (no input, initializer or node output).
    A subgraph initializer named like one of `outer_consts` counts as a read of the outer one:
    graphsurgeon's cleanup (normalize) copies outer initializers into the subgraphs that use them,
    and rewriting the outer one rewrites that copy too (same name, one tensor)."""
    refs: set[str] = set()
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            refs |= _free_names(a.g, outer_consts)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for g in a.graphs:
                refs |= _free_names(g, outer_consts)
    return sorted(refs)


def _free_names(g: onnx.GraphProto, outer_consts) -> set[str]:
    defined = {i.name for i in g.input} | {t.name for t in g.initializer if t.name not in outer_consts}
    defined |= {t.values.name for t in g.sparse_initializer}
    used = {o.name for o in g.output} | {t.name for t in g.initializer if t.name in outer_consts}
    for n in g.node:
        defined.update(o for o in n.output if o)
        used.update(i for i in n.input if i)
        used.update(subgraph_outer_refs(n, outer_consts))
    return used - defined


def random_feeds(view_or_model, seed: int = 0, input_shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for a view's model at its input shapes, or for a model at ``input_shapes``
    (overrides; defaults elsewhere): see model/feeds.py."""
    if isinstance(view_or_model, GraphView):
        view = view_or_model
        # constant shapes only (embedding rows): never convert a large model's weights for this
        return random_inputs(view.model, view.input_shapes, seed,
                             const_shapes={k: tuple(v.shape) for k, v in view.consts.items()})
    return random_inputs(view_or_model, graph_input_shapes(view_or_model, input_shapes), seed)


def build_view(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> GraphView:
    if not model.graph.node:
        raise OnnxPruneError("model has no nodes")
    fitted = fitted_input_shapes(model, input_shapes)  # defaulted dims at a size the model runs at
    return GraphView(model, fitted.shapes, notes=[fitted.note] if fitted.note else [])
