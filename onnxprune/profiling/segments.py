"""Executed nodes mapped back to segments of the original graph.

ORT runs a conv as NCHWc ``<output>_nchwc`` when its channels are aligned and as ``FusedConv``
named after the conv otherwise, with reorder nodes around the former; which nodes run changes with
the widths. So times are summed per *segment*: a weight-bearing node of the original graph (conv,
matmul, gemm, ...) and the weightless nodes after it up to the next one. Every variant of a
segment's kernels lands in that segment, whatever layout ORT picked, and the segment exists in
every design. An executed node is resolved by its name (a node name, or a tensor name, which fused
and NCHWc nodes are named after, with ``_nchwc`` stripped, or an original name with ORT's
``/<Fusion>`` suffixes), else by the stably named node before it, else it joins the segment of the
node executed before it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from onnxprune.analysis.groups import Analysis

NCHWC_SUFFIX = re.compile(r"_nchwc$")
MAX_AXES = 6


@dataclass(frozen=True)
class SegmentMap:
    """Original node index of every node name and output tensor, and the segment start indices."""
    node_index: dict[str, int]
    segment_of_index: list[int]  # original node index -> index of its segment's first node
    names: list[str]  # original node names (segment keys)

    def resolve(self, executed: str) -> str | None:
        """Segment key for an executed node's name (or a generated node's anchor), None if unknown.
        Fused nodes are named after an original node plus ``/<FusionName>`` suffixes (ORT's
        ``/x/MatMul/MatMulAddFusion``): path components are stripped until a name is known."""
        base = NCHWC_SUFFIX.sub("", executed.split("@", 1)[1].rsplit("#", 1)[0] if "@" in executed else executed)
        while base:
            i = self.node_index.get(base)
            if i is not None:
                return self.names[self.segment_of_index[i]]
            base = base[:-1] if base.endswith("/") else (base.rsplit("/", 1)[0] if "/" in base[1:] else "")
        return None


def weight_bearing(node: onnx.NodeProto, consts: set[str]) -> bool:
    return any(t in consts for t in node.input[1:2])


def segment_map(model: onnx.ModelProto, consts: set[str]) -> SegmentMap:
    """Segments of the graph in its (topological) node order."""
    nodes = list(model.graph.node)
    names = [n.name or f"#{i}" for i, n in enumerate(nodes)]
    index: dict[str, int] = {}
    for i, n in enumerate(nodes):
        index.setdefault(names[i], i)
        for t in n.output:
            index.setdefault(t, i)
    seg, start = [], 0
    for i, n in enumerate(nodes):
        if weight_bearing(n, consts):
            start = i
        seg.append(start)
    return SegmentMap(index, seg, names)


def segment_groups(analysis: Analysis, smap: SegmentMap, columns: dict[int, int]) -> dict[str, tuple[int, ...]]:
    """Per segment key, the columns (``columns``: group id -> column) of the groups its original
    nodes' tensors belong to."""
    out: dict[str, list[int]] = {}
    for i, n in enumerate(analysis.view.model.graph.node):
        cols = out.setdefault(smap.names[smap.segment_of_index[i]], [])
        for t in list(n.input) + list(n.output):
            for axis in range(MAX_AXES):
                g = analysis.space_group.get((t, axis))
                c = columns.get(analysis.groups[g].id) if g is not None else None
                if c is not None and c not in cols:
                    cols.append(c)
    return {k: tuple(v) for k, v in out.items()}
