"""Analytic costs from static shapes: MACs (each op's rule counts its own, see OpRule.macs), parameter count.

Compute inside control flow (If branches, Loop/Scan bodies) counts too: the control-flow rules
count their subgraphs' MACs (analysis/rules/control.py), and parameters include subgraph
initializers. The channel analysis does not look inside subgraphs, so this cost never shrinks when
the model is pruned (the groups control flow touches are frozen, with the reason).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxprune.analysis.graph import GraphView
from onnxprune.analysis.rules import counts_macs, rule_for
from onnxprune.model.load import subgraphs


def node_macs(view: GraphView, k: int) -> int:
    """MACs of node k as its rule counts them; 0 for non-compute ops and where shapes are unknown."""
    n = view.nodes[k]
    rule = rule_for(n)
    try:
        macs = rule.macs(n, view) if rule is not None else None
    except (TypeError, IndexError):
        return 0
    return int(macs or 0)


def total_macs(view: GraphView) -> int:
    """MACs of one run; a control-flow node counts the nodes of its subgraphs (rules/control.py)."""
    return int(sum(node_macs(view, k) for k in range(len(view.nodes))))


@dataclass(frozen=True)
class SubgraphCost:
    """MACs and parameters held in the subgraphs of one control-flow node of the main graph."""
    node: str  # its label, e.g. "If 'outer_if'"
    macs: int
    params: int


def subgraph_costs(view: GraphView) -> list[SubgraphCost]:
    """Cost of every main-graph node with subgraphs (none for a model without control flow)."""
    out = []
    for k, n in enumerate(view.nodes):
        if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            continue
        seen = set(view.consts)  # graphsurgeon copies outer initializers into subgraphs: count them once
        out.append(SubgraphCost(view.node_label(k), node_macs(view, k), _subgraph_params(n, seen)))
    return out


def _subgraph_params(node: onnx.NodeProto, seen: set[str]) -> int:
    total = 0
    for g in _graphs_of(node):
        for t in g.initializer:
            if t.name not in seen and _is_float(t.data_type):
                seen.add(t.name)
                total += int(np.prod(t.dims, dtype=np.int64))
        total += sum(_subgraph_params(n, seen) for n in g.node)
    return total


def _graphs_of(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return list(subgraphs(onnx.GraphProto(node=[node])))


def _is_float(data_type: int) -> bool:
    try:
        return np.issubdtype(helper.tensor_dtype_to_np_dtype(data_type), np.floating)
    except Exception:  # bfloat16 / float8 have no numpy dtype here
        return data_type in (onnx.TensorProto.BFLOAT16,)


def uncounted_mac_nodes(view: GraphView) -> list[str]:
    """Compute nodes (Conv/Gemm/MatMul, ...) whose shapes are unknown (e.g. behind a custom op without
    declared output shapes): their MACs are missing from total_macs."""
    return [view.node_label(k) for k, n in enumerate(view.nodes)
            if counts_macs(rule_for(n)) and any(view.shape(t) is None for t in (*n.input[:2], n.output[0]) if t)]


def packed_params(view: GraphView) -> dict[str, int]:
    """Integer-packed weights the rules count as parameters (MatMulNBits' int4 blocks: K x N each)."""
    out: dict[str, int] = {}
    for n in view.nodes:
        rule = rule_for(n)
        if rule is not None:
            out.update(rule.packed_params(n, view))
    return out


def total_params(view: GraphView) -> int:
    """Elements of floating-point initializers (shape constants and indices are not parameters),
    those inside subgraphs included, and the parameters packed into integer weights."""
    main = int(sum(a.size for a in view.consts.values() if np.issubdtype(a.dtype, np.floating)))
    return main + sum(packed_params(view).values()) + sum(c.params for c in subgraph_costs(view))


# --- how costs scale when channel groups shrink ---------------------------------------------------
# A node's MACs scale with the kept fraction of each weight axis it owns (Conv W[0] and W[1], Gemm
# in/out); nodes without weights (attention MatMuls) scale with the groups of their channel axes.
# Parameters scale per weight axis, activations per channel axis. Exact for uniform maps, a first
# order estimate for Concat groups (the fraction of the whole group stands in for each part).

def _space_groups(analysis, tensor: str) -> list[int]:
    shape = analysis.view.shape(tensor) or ()
    return [analysis.space_group[(tensor, a)] for a in range(len(shape)) if (tensor, a) in analysis.space_group]


def macs_terms(analysis) -> list[tuple[int, list[int]]]:
    """(base MACs, group ids whose kept fraction multiplies it) for every MAC-carrying node."""
    view = analysis.view
    terms = []
    for k, n in enumerate(view.nodes):
        base = node_macs(view, k)
        if not base:
            continue
        rule = rule_for(n)
        weights = [n.input[r.input] for r in (rule.weight_roles(n, view) if rule is not None else [])]
        if weights:
            gids = _space_groups(analysis, weights[0])
        else:
            gids = sorted({g for t in list(n.input) + list(n.output) if t for g in _space_groups(analysis, t)})
        terms.append((base, gids))
    return terms


def params_terms(analysis) -> list[tuple[int, list[int]]]:
    view = analysis.view
    return ([(int(a.size), _space_groups(analysis, t)) for t, a in view.consts.items()
             if np.issubdtype(a.dtype, np.floating)] + [(c.params, []) for c in subgraph_costs(view) if c.params]
            + [(p, _space_groups(analysis, t)) for t, p in packed_params(view).items()])


def activation_terms(analysis) -> dict[str, tuple[int, list[int]]]:
    """Bytes of every activation at full width and the groups that scale it (`analysis` may also be
    a plain GraphView: then nothing scales)."""
    view = getattr(analysis, "view", analysis)
    out = {}
    for t in list(view.inputs) + [o for n in view.nodes for o in n.output if o]:
        s = view.shape(t)
        if s is None:
            continue
        itemsize = view.np_dtype(t).itemsize
        out[t] = (int(np.prod(s, dtype=np.int64)) * itemsize,
                  _space_groups(analysis, t) if hasattr(analysis, "space_group") else [])
    return out


def scaled_total(terms, fractions: dict[int, float]) -> float:
    total = 0.0
    for base, gids in terms:
        f = 1.0
        for g in gids:
            f *= fractions.get(g, 1.0)
        total += base * f
    return total


def live_intervals(view) -> dict[str, tuple[int, int]]:
    """Step at which each activation is produced and the last step that reads it (graph outputs
    live to the end). Inputs are produced at step -1."""
    last = len(view.nodes)
    spans = {t: (-1, -1) for t in view.inputs}
    for k, n in enumerate(view.nodes):
        for o in n.output:
            if o:
                spans[o] = (k, k)
        for i in n.input:
            if i in spans:
                spans[i] = (spans[i][0], k)
    for o in view.outputs:
        if o in spans:
            spans[o] = (spans[o][0], last)
    return spans


def peak_memory(analysis, fractions: dict[int, float] | None = None) -> tuple[float, int]:
    """Peak activation bytes of a topological execution (inputs, outputs and intermediate tensors
    alive at once; weights excluded), as DEPrune reports it. Returns (bytes, step of the peak)."""
    fractions = fractions or {}
    acts = activation_terms(analysis)
    view = getattr(analysis, "view", analysis)
    spans = live_intervals(view)
    n = len(view.nodes)
    delta = np.zeros(n + 3)
    for t, (start, end) in spans.items():
        if t not in acts:
            continue
        size = scaled_total([acts[t]], fractions)
        delta[start + 1] += size
        delta[end + 2] -= size
    usage = np.cumsum(delta)[: n + 2]
    step = int(np.argmax(usage))
    return float(usage[step]), step - 1


def peak_terms(analysis, step: int) -> list[tuple[int, list[int]]]:
    """Terms of the activations alive at `step`: a separable model of the peak around that step."""
    acts = activation_terms(analysis)
    return [acts[t] for t, (s, e) in live_intervals(analysis.view).items() if t in acts and s <= step <= e]
