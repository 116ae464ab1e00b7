"""Channel-group analysis: run every node's rule to a fixpoint, then take connected components.

Spaces (tensor, axis) are the nodes of a networkx graph; relations are its edges. A connected
component of spaces is a ChannelGroup. Inside it, element-level relations (index maps) are merged
with a vectorized union-find to find the group's canonical channels, and every member gets the map
"position in this space -> canonical channel". Any space that some node touching it does not claim
(unknown op, model input/output, excluded node) freezes the channels it carries, with the reason.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph import GraphView, attr
from .rules import Opaque, RuleContext, RuleResult, Space, rule_for


@dataclass
class Member:
    tensor: str
    axis: int
    is_weight: bool
    index_map: np.ndarray  # position in this space -> canonical channel of the group

    @property
    def size(self) -> int:
        return len(self.index_map)


@dataclass
class ChannelGroup:
    id: int
    size: int
    members: list[Member]
    frozen: np.ndarray  # bool per canonical channel
    reasons: list[str] = field(default_factory=list)
    depthwise: bool = False  # passes through a depthwise conv (DEPrune's DW ratio applies)
    name: str = ""

    @property
    def prunable(self) -> bool:
        return self.size > 1 and not self.frozen.all()

    @property
    def weights(self) -> list[Member]:
        return [m for m in self.members if m.is_weight]


@dataclass
class Analysis:
    view: GraphView
    groups: list[ChannelGroup]
    node_results: dict[int, RuleResult]
    opaque: dict[int, str]  # node index -> reason
    space_group: dict[Space, int]

    def group_of(self, tensor: str, axis: int) -> ChannelGroup | None:
        g = self.space_group.get((tensor, axis))
        return self.groups[g] if g is not None else None

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


def analyze(view: GraphView, exclude: list[str] | None = None, max_passes: int = 8) -> Analysis:
    live: dict[str, set[int]] = {}
    ctx = RuleContext(view, live)
    order = list(range(len(view.nodes)))
    excluded = {k for k in order if exclude and _excluded(view.nodes[k], exclude)}
    results: dict[int, RuleResult] = {}
    opaque: dict[int, str] = {}
    for p in range(max_passes):
        changed = False
        for k in (order if p % 2 == 0 else order[::-1]):
            res = _run_rule(view, k, ctx, excluded, opaque)
            results[k] = res
            for sp in res.touched():
                if sp[1] not in live.setdefault(sp[0], set()):
                    live[sp[0]].add(sp[1])
                    changed = True
        if not changed:
            break
    # one last clean pass so every result reflects the final live set
    opaque.clear()
    for k in order:
        results[k] = _run_rule(view, k, ctx, excluded, opaque)

    spaces = sorted({sp for t, axes in live.items() for sp in ((t, a) for a in axes)
                     if view.shape(t) is not None and sp[1] < len(view.shape(t))})
    freeze = _unclaimed(view, spaces, results, opaque, excluded)
    groups, space_group = _build_groups(view, spaces, results, freeze)
    return Analysis(view, groups, results, opaque, space_group)


def _excluded(node, patterns) -> bool:
    return any(fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(node.op_type, p) for p in patterns)


def _run_rule(view, k, ctx, excluded, opaque) -> RuleResult:
    node = view.nodes[k]
    if k in excluded:
        opaque[k] = "excluded by --exclude"
        return RuleResult()
    rule = rule_for(node)
    if rule is None:
        dom = f" (domain '{node.domain}')" if node.domain not in ("", "ai.onnx") else ""
        opaque[k] = f"no channel rule for op {node.op_type}{dom}"
        return RuleResult()
    try:
        return rule.relate(node, ctx)
    except Opaque as e:
        opaque[k] = str(e)
        return RuleResult()


def _unclaimed(view, spaces, results, opaque, excluded) -> dict[Space, str]:
    """Spaces some touching node does not handle, with a reason."""
    freeze: dict[Space, str] = {}
    touched = {k: r.touched() for k, r in results.items()}
    inputs, outputs = set(view.inputs), set(view.outputs)
    for sp in spaces:
        t, _ = sp
        if t in inputs:
            freeze[sp] = f"model input '{t}'"
            continue
        if t in outputs:
            freeze[sp] = f"model output '{t}'"
            continue
        users = [view.producer[t]] if t in view.producer else []
        users += [k for k, _ in view.consumers.get(t, [])]
        for k in users:
            if sp not in touched[k]:
                why = opaque.get(k) or f"does not map axis {sp[1]} of '{t}'"
                freeze[sp] = f"{view.node_label(k)}: {why}"
                break
    return freeze


def _build_groups(view, spaces, results, freeze):
    index = {sp: i for i, sp in enumerate(spaces)}
    sizes = np.array([view.shape(t)[a] for t, a in spaces], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    G = nx.Graph()
    G.add_nodes_from(range(len(spaces)))
    ea, eb = [], []
    for res in results.values():
        for rel in res.relations:
            if rel.a not in index or rel.b not in index:
                continue
            i, j = index[rel.a], index[rel.b]
            G.add_edge(i, j)
            if rel.pairs is None:
                n = min(sizes[i], sizes[j])
                pa = pb = np.arange(n)
            else:
                pa, pb = rel.pairs
            ea.append(offsets[i] + pa)
            eb.append(offsets[j] + pb)
    total = int(offsets[-1])
    root = _union_find(total, np.concatenate(ea) if ea else np.zeros(0, np.int64),
                       np.concatenate(eb) if eb else np.zeros(0, np.int64))

    dw_spaces = set()
    for k, n in enumerate(view.nodes):
        if n.op_type == "Conv" and view.shape(n.input[0]) and int(attr(n, "group", 1)) > 1 \
                and int(attr(n, "group", 1)) == view.shape(n.input[0])[1]:
            dw_spaces |= {(n.input[0], 1), (n.output[0], 1)}

    groups, space_group = [], {}
    comps = sorted(nx.connected_components(G), key=min)
    for comp in comps:
        comp = sorted(comp)
        # canonical channels: roots in order of first appearance, weights first (a producer filter
        # order reads naturally in reports)
        comp.sort(key=lambda i: (not spaces[i][0] in view.consts, i))
        ids = np.concatenate([root[offsets[i]:offsets[i + 1]] for i in comp])
        uniq, first = np.unique(ids, return_index=True)
        canon_order = uniq[np.argsort(first)]
        lookup = {int(r): c for c, r in enumerate(canon_order)}
        lut_keys = canon_order
        K = len(canon_order)
        frozen = np.zeros(K, dtype=bool)
        reasons = []
        members = []
        gid = len(groups)
        sorter = np.argsort(lut_keys)
        for i in comp:
            t, a = spaces[i]
            r = root[offsets[i]:offsets[i + 1]]
            m = sorter[np.searchsorted(lut_keys, r, sorter=sorter)]
            members.append(Member(t, a, t in view.consts, m.astype(np.int64)))
            space_group[(t, a)] = gid
            if (t, a) in freeze:
                frozen[m] = True
                if freeze[(t, a)] not in reasons:
                    reasons.append(freeze[(t, a)])
        del lookup
        if not any(m.is_weight for m in members):
            frozen[:] = True
            reasons.append("no weights in this group")
        g = ChannelGroup(gid, K, members, frozen, reasons,
                         depthwise=any((m.tensor, m.axis) in dw_spaces for m in members))
        g.name = _group_name(view, g)
        groups.append(g)
    return groups, space_group


def _group_name(view, g: ChannelGroup) -> str:
    """Name a group after the first weight's producer node output it feeds (readable in reports)."""
    for m in g.members:
        if not m.is_weight and m.tensor in view.producer:
            n = view.nodes[view.producer[m.tensor]]
            if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
                return n.name or m.tensor
    for m in g.members:
        if not m.is_weight:
            return m.tensor
    return g.members[0].tensor


def _union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n elements under edges (a[i], b[i]); returns the min element as root."""
    parent = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return parent
    while True:
        ra, rb = parent[a], parent[b]
        diff = ra != rb
        if not diff.any():
            return parent
        lo, hi = np.minimum(ra[diff], rb[diff]), np.maximum(ra[diff], rb[diff])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping until every element points at a root
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp
