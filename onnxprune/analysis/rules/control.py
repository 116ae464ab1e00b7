"""Control flow (If, Loop, Scan): the analysis does not look inside subgraphs, so these ops are
opaque (every channel space they read or write is frozen, with the reason below). Their compute is
not invisible, though: ``macs`` counts the nodes of their subgraphs, each by its own rule."""
from __future__ import annotations

import onnx

from .base import Opaque, OpRule, register, rule_for

# weighted: their subgraphs hold weights (counted in MACs and params), never sliced (opaque)
SUBGRAPH_WEIGHTS = {"compensation_target": "opaque: nothing is pruned through it",
                    "is_depthwise": "not a convolution",
                    "weight_roles": "its weights live in subgraphs, which are not analyzed"}
FROZEN_WHY = ("control flow: the nodes in its subgraphs are not analyzed (their weights are never pruned), so "
              "channels it reads or returns are frozen")


def graph_macs(g: onnx.GraphProto, view) -> int:
    """MACs of one run of a (sub)graph's nodes, from the shapes `view` holds for them (0 where unknown)."""
    total = 0
    for n in g.node:
        rule = rule_for(n)
        try:
            total += int((rule.macs(n, view) if rule is not None else None) or 0)
        except (TypeError, IndexError):
            pass  # a shape inference left unknown inside the branch
    return total


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


@register
class If(OpRule):
    """One branch runs per call: its MACs are those of the costlier branch."""
    op_types = ("If",)
    weighted = True
    opts_out = SUBGRAPH_WEIGHTS

    def relate(self, node, ctx):
        raise Opaque(FROZEN_WHY)

    def macs(self, node, view):
        return max((graph_macs(g, view) for g in _bodies(node)), default=0)


@register
class LoopOrScan(OpRule):
    """The body runs a data-dependent number of times: counted once (a lower bound)."""
    op_types = ("Loop", "Scan")
    weighted = True
    opts_out = SUBGRAPH_WEIGHTS

    def relate(self, node, ctx):
        raise Opaque(FROZEN_WHY)

    def macs(self, node, view):
        return sum(graph_macs(g, view) for g in _bodies(node))
