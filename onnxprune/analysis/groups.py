"""Channel-group analysis: run every node's rule to a fixpoint, then take connected components.

Spaces (tensor, axis) are the nodes of a networkx graph; relations are its edges. A connected
component of spaces is a ChannelGroup. Inside it, element-level relations (index maps) are merged
with a vectorized union-find to find the group's canonical channels, and every member gets the map
"position in this space -> canonical channel". Any space that some node touching it does not claim
(unknown op, model input/output, excluded node) freezes the channels it carries, with the reason.

Model inputs and outputs freeze their channels, except *state* (a KV cache) that rules declare in
``RuleResult.state_io``: an input the model appends to and returns (``present = Concat(past, new)``,
the Concat rule), or a fused attention op's past/present. Those axes follow their group
(``Analysis.resized_io``): the rewrite changes the declared IO shape (rewrite.resize_io) and the
oracle feeds the pruned model the kept slices (oracle.io_positions).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from onnxprune.analysis.graph import GraphView
from onnxprune.errors import OnnxPruneError
from onnxprune.analysis.rules import (CHANNELWISE, LAYOUT_OPS, AttentionAxes, Opaque, RuleContext, RuleResult, Space,
                                      rule_for)


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
    kind: str = "channels"  # channels | heads | head_dim | embed (transformer residual stream)

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
    # graph input/output spaces that follow their channel group (state: KV caches) -> group id
    resized_io: dict[Space, int] = field(default_factory=dict)

    def group_of(self, tensor: str, axis: int) -> ChannelGroup | None:
        g = self.space_group.get((tensor, axis))
        return self.groups[g] if g is not None else None

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


def analyze(view: GraphView, exclude: list[str] | None = None, max_passes: int = 8, *,
            heads: bool = False, embed_dim: bool = False) -> Analysis:
    """Find channel groups. `heads`: split attention projections by head (whole heads become the
    channels of their group) instead of by head_dim; `embed_dim`: allow pruning transformer
    residual streams (off by default: every block, norm and embedding shrinks with it)."""
    live: dict[str, set[int]] = {}
    ctx = RuleContext(view, live, options=dict(heads=heads, embed_dim=embed_dim))
    order = list(range(len(view.nodes)))
    excluded = {k for k in order if exclude and excluded_by(view.nodes[k], exclude)}
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
    state = state_spaces(view, results)
    freeze = _unclaimed(view, spaces, results, opaque, excluded, state)
    groups, space_group = _build_groups(view, spaces, results, freeze)
    _classify(view, groups, space_group, embed_dim=embed_dim)
    resized = {sp: space_group[sp] for sp in sorted(state) if sp in space_group}
    return Analysis(view, groups, results, opaque, space_group, resized)


def state_spaces(view: GraphView, results: dict[int, RuleResult]) -> set[Space]:
    """Graph input/output spaces that carry recurrent state and may shrink with their group: those
    rules declare in ``RuleResult.state_io`` (the Concat rule: every axis but the appended one of
    ``present = Concat(past, new)`` with past a graph input and present a graph output, the torch
    exporters' KV cache; a fused attention op's past/present KV)."""
    io = set(view.inputs) | set(view.outputs)
    return {sp for res in results.values() for sp in res.state_io if sp[0] in io}


def check_something_to_prune(analysis: Analysis) -> None:
    """Refuse a run that cannot remove anything: no channel group, or every group frozen. Says the
    first reasons (the ops that froze them) so the user can act (--exclude less, see analyze)."""
    if analysis.prunable_groups:
        return
    if not analysis.groups:
        raise OnnxPruneError("nothing to prune: no channel group was found (every node is excluded or not "
                             "understood); `onnxprune analyze` lists the ops")
    reasons = list(dict.fromkeys(r for g in analysis.groups for r in g.reasons))
    shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    raise OnnxPruneError(f"nothing to prune: every channel group is frozen ({shown}); `onnxprune analyze` "
                         "lists them")


def excluded_by(node, patterns) -> bool:
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


def _unclaimed(view, spaces, results, opaque, excluded, state=frozenset()) -> dict[Space, str]:
    """Spaces some touching node does not handle, with a reason (``state``: IO spaces that may resize)."""
    freeze: dict[Space, str] = {}
    touched = {k: r.touched() for k, r in results.items()}
    inputs, outputs = set(view.inputs), set(view.outputs)
    for sp in spaces:
        t, _ = sp
        if t in inputs and sp not in state:
            freeze[sp] = f"model input '{t}'"
            continue
        if t in outputs and sp not in state:
            freeze[sp] = f"model output '{t}'"
            continue
        inner = [k for k, slot in view.consumers.get(t, []) if slot == -1]
        if inner:
            # no rule sees inside a subgraph: the channels it reads cannot be rewritten there
            freeze[sp] = f"{view.node_label(inner[0])}: reads '{t}' inside a subgraph"
            continue
        users = [view.producer[t]] if t in view.producer else []
        users += [k for k, _ in view.consumers.get(t, [])]
        for k in users:
            if sp not in touched[k]:
                why = opaque.get(k) or results[k].refused.get(sp) or f"does not map axis {sp[1]} of '{t}'"
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
                # a related space whose shape is unknown: what it is tied to cannot be pruned safely
                for known, other in ((rel.a, rel.b), (rel.b, rel.a)):
                    if known in index and other not in index:
                        freeze.setdefault(known, f"shape of '{other[0]}' unknown")
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

    dw_spaces = depthwise_spaces(view)

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
        if K == 1 and not reasons:
            widest = max(len(mm.index_map) for mm in members)
            reasons.append(f"its {widest} channels are tied into one by the ops they pass (e.g. a grouped "
                           "conv feeding a channel shuffle): nothing to choose" if widest > 1 else "a single channel")
        g = ChannelGroup(gid, K, members, frozen, reasons,
                         depthwise=any((m.tensor, m.axis) in dw_spaces for m in members))
        g.name = _group_name(view, g)
        groups.append(g)
    return groups, space_group


def depthwise_spaces(view) -> set[Space]:
    """Channel spaces tied by a depthwise node (DEPrune's depthwise ratio applies to their groups)."""
    out: set[Space] = set()
    for n in view.nodes:
        rule = rule_for(n)
        if rule is not None:
            out.update(rule.depthwise_spaces(n, view))
    return out


# what an attention operand passes on its way from the projection that made it
PASS_THROUGH = frozenset(LAYOUT_OPS) | frozenset(CHANNELWISE)


def attention_nodes(view) -> list[AttentionAxes]:
    """The attention spaces of every node whose rule reports some, in node order."""
    out = []
    for n in view.nodes:
        rule = rule_for(n)
        axes = rule.attention(n, view) if rule is not None else None
        if axes is not None:
            out.append(axes)
    return out


def _classify(view, groups, space_group, *, embed_dim: bool) -> None:
    """Label attention groups and apply the transformer defaults: head_dim is never pruned (whole
    heads are, with heads=True) and the residual stream only with embed_dim=True."""
    def grp(sp):
        g = space_group.get(sp)
        return groups[g] if g is not None else None

    def label(spaces, kind, only_channels=True):
        for sp in spaces:
            g = grp(sp)
            if g is not None and (g.kind == "channels" or not only_channels):
                g.kind = kind

    for axes in attention_nodes(view):
        label(axes.head_dim, "head_dim")
        label(axes.heads, "heads", only_channels=False)
        label(axes.embed, "embed")
        label([p for p in (_projection_input(view, t) for t in axes.projected) if p is not None], "embed")
    for g in groups:
        if g.kind == "head_dim" and not g.frozen.all():
            g.frozen[:] = True
            g.reasons.append("attention head_dim is kept (remove whole heads with heads=True / --heads)")
        if g.kind == "embed" and not embed_dim and not g.frozen.all():
            g.frozen[:] = True
            g.reasons.append("transformer residual stream: pruned only with embed_dim=True / --embed-dim")


def _projection_input(view, t, depth=0):
    """Follow an attention operand back through layout ops to the weight MatMul/Gemm that made it;
    return that projection's input space (its contracted axis)."""
    k = view.producer.get(t)
    if k is None or depth > 12:
        return None
    n = view.nodes[k]
    rule = rule_for(n)
    proj = rule.projection_input(n, view) if rule is not None else None
    if proj is not None or (rule is not None and rule.layer):
        return proj
    if n.op_type in PASS_THROUGH:
        for i in n.input:
            if i and i not in view.consts:
                r = _projection_input(view, i, depth + 1)
                if r is not None:
                    return r
    return None


def _group_name(view, g: ChannelGroup) -> str:
    """Name a group after the first weight's producer node output it feeds (readable in reports)."""
    for m in g.members:
        if not m.is_weight and m.tensor in view.producer:
            n = view.nodes[view.producer[m.tensor]]
            rule = rule_for(n)
            if rule is not None and rule.layer:
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
