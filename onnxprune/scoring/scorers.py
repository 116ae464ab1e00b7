"""The scorers (``--scorer``); each registers itself in ``registry.SCORERS``, and importing the
``onnxprune.scoring`` package imports this module.

- ``l1``/``l2`` weight magnitudes: every weight slice a group owns (producer filters, BN/affine
  vectors, consumer input slices, bias entries) adds to the channel it maps to.
- ``sp-lamp``  SP-LAMP (Eq. 2-3): s_u = (producer mass) x (consumer mass), squared Frobenius norms of
  the channel's weight slices; then ``lamp.sp_lamp_scores`` per group. Producer slices are weight
  members on an output-channel axis (Conv W axis 0, Gemm/MatMul weight output axis, BN/bias/affine
  vectors); consumer slices are weight members on an axis some node contracts (Conv W axis 1,
  Gemm/MatMul weight input axis: the weight spaces in the same group as a node's ``mixes``).
  A group with no consumer weight uses the producer term alone (Eq. 3), and vice versa.
- ``saliency`` OCSPruner group saliency with local normalization: every weight member's per-channel
  L2 norms are divided by that member's mean per-channel norm (so each member contributes on the
  same scale whatever its size or magnitude), then averaged over the members.
- ``bn-scale`` |gamma| of the group's BatchNormalization/InstanceNormalization/LayerNormalization
  scale (summed when a group has several); without one (BN folded into the conv by the exporter)
  it falls back to l2 and says so in ``ctx.notes``.
- ``vbp``      variance-based pruning: per-channel activation variance at the group's mixing points
  (activations entering Conv/Gemm/MatMul), one streaming pass over the calibration data
  (``calibration.activation_stats``); the statistics stay in ``ctx.cache`` for mean compensation.
- ``random``   seeded uniform scores (a baseline).
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup, Member
from onnxprune.analysis.rules import rule_for
from onnxprune.scoring.calibration import activation_spaces, cached_stats
from onnxprune.scoring.lamp import sp_lamp_scores
from onnxprune.scoring.registry import ScoreContext, register_scorer


def slice_norms(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    """Per-position sum of |w|^p over all other axes (p = 1: L1 mass, p = 2: squared L2)."""
    a = np.moveaxis(np.asarray(arr, dtype=np.float64), axis, 0).reshape(arr.shape[axis], -1)
    return np.abs(a).sum(1) if p == 1 else np.square(a).sum(1)


def member_norms(analysis: Analysis, m: Member, p: int) -> np.ndarray:
    """Per-canonical-channel mass of one weight member (positions of a block map add up)."""
    g = analysis.group_of(m.tensor, m.axis)
    out = np.zeros(g.size)
    np.add.at(out, m.index_map, slice_norms(analysis.view.consts[m.tensor], m.axis, p))
    return out


def magnitude_scores(analysis: Analysis, group: ChannelGroup, p: int) -> np.ndarray:
    """L1 (p=1): total |w| of the channel's slices. L2 (p=2): sqrt of the total sum of squares."""
    s = np.zeros(group.size)
    for m in group.weights:
        s += member_norms(analysis, m, p)
    return s if p == 1 else np.sqrt(s)


@register_scorer("l1")
def l1_scores(ctx: ScoreContext) -> dict[int, np.ndarray]:
    return {g.id: magnitude_scores(ctx.analysis, g, 1) for g in ctx.groups}


@register_scorer("l2")
def l2_scores(ctx: ScoreContext) -> dict[int, np.ndarray]:
    return {g.id: magnitude_scores(ctx.analysis, g, 2) for g in ctx.groups}


def consumer_weight_spaces(analysis: Analysis) -> set[tuple[str, int]]:
    """Weight spaces on an axis that their node contracts (sums over): those in the same group as
    one of the node's mixing spaces. Conv W axis 1 (mixes names only the activation X axis 1, W axis 1
    joins its group), Gemm B's K axis, MatMul B's K axis, ConvTranspose W axis 0."""
    view = analysis.view
    out = set()
    for k, res in analysis.node_results.items():
        if not res.mixes:
            continue
        mixed_groups = {analysis.space_group.get(sp) for sp in res.mixes} - {None}
        node = view.nodes[k]
        for t in node.input:
            if not t or t not in view.consts:
                continue
            for a in range(view.consts[t].ndim):
                if analysis.space_group.get((t, a)) in mixed_groups:
                    out.add((t, a))
    return out


def producer_consumer_mass(analysis: Analysis, group: ChannelGroup, consumer_spaces: set | None = None
                           ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Sum of squared slice norms per canonical channel over producer and over consumer members
    (``consumer_spaces``: consumer_weight_spaces(analysis), computed here when not given)."""
    cons = consumer_weight_spaces(analysis) if consumer_spaces is None else consumer_spaces
    prod_s, cons_s = np.zeros(group.size), np.zeros(group.size)
    n_prod = n_cons = 0
    for m in group.weights:
        if (m.tensor, m.axis) in cons:
            cons_s += member_norms(analysis, m, 2)
            n_cons += 1
        else:
            prod_s += member_norms(analysis, m, 2)
            n_prod += 1
    return prod_s, cons_s, n_prod, n_cons


def sp_lamp_saliency(analysis: Analysis, group: ChannelGroup, consumer_spaces: set | None = None) -> np.ndarray:
    prod_s, cons_s, n_prod, n_cons = producer_consumer_mass(analysis, group, consumer_spaces)
    if n_prod and n_cons:
        return prod_s * cons_s
    return prod_s if n_prod else cons_s


@register_scorer("sp-lamp")
def sp_lamp(ctx: ScoreContext) -> dict[int, np.ndarray]:
    cons = ctx.cached("consumer_weight_spaces", lambda: consumer_weight_spaces(ctx.analysis))
    return {g.id: sp_lamp_scores(sp_lamp_saliency(ctx.analysis, g, cons)) for g in ctx.groups}


def saliency_scores(analysis: Analysis, group: ChannelGroup) -> np.ndarray:
    """Local normalization: each member's per-channel L2 norms / their mean, averaged over members."""
    total = np.zeros(group.size)
    n = 0
    for m in group.weights:
        v = np.sqrt(member_norms(analysis, m, 2))
        mu = v.mean()
        if mu > 0:
            total += v / mu
            n += 1
    return total / max(n, 1)


@register_scorer("saliency")
def saliency(ctx: ScoreContext) -> dict[int, np.ndarray]:
    return {g.id: saliency_scores(ctx.analysis, g) for g in ctx.groups}


def norm_scale_members(analysis: Analysis, group: ChannelGroup):
    """Weight members that are the scale (gamma) input of a normalization node."""
    view = analysis.view
    scales = set()
    for n in view.nodes:
        rule = rule_for(n)
        if rule is not None and rule.is_norm and len(n.input) > 1 and n.input[1] in view.consts:
            scales.add(n.input[1])
    return [m for m in group.weights if m.tensor in scales]


@register_scorer("bn-scale")
def bn_scale(ctx: ScoreContext) -> dict[int, np.ndarray]:
    out, fallback = {}, []
    for g in ctx.groups:
        members = norm_scale_members(ctx.analysis, g)
        if not members:
            out[g.id] = magnitude_scores(ctx.analysis, g, 2)
            fallback.append(g.name)
            continue
        s = np.zeros(g.size)
        for m in members:
            s += member_norms(ctx.analysis, m, 1)  # |gamma| (a vector: L1 of each 1-element slice)
        out[g.id] = s
    if fallback:
        shown = ", ".join(fallback[:5]) + (f" and {len(fallback) - 5} more" if len(fallback) > 5 else "")
        ctx.notes.append(f"bn-scale: {len(fallback)} of {len(ctx.groups)} prunable groups have no "
                         f"BatchNormalization/affine scale (folded into the conv by the exporter?): "
                         f"scored with l2 instead ({shown})")
    return out


def vbp_scores(ctx: ScoreContext) -> tuple[dict[int, np.ndarray], list[str]]:
    analysis = ctx.analysis
    spaces = activation_spaces(analysis, ctx.groups)
    stats = cached_stats(ctx, spaces)
    out, missing = {}, []
    by_group: dict[int, list] = {}
    for sp in spaces:
        by_group.setdefault(analysis.space_group[sp], []).append(sp)
    for g in ctx.groups:
        sps = by_group.get(g.id)
        if not sps:
            out[g.id] = magnitude_scores(analysis, g, 2)
            missing.append(g.name)
            continue
        members = {(m.tensor, m.axis): m for m in g.members}
        s = np.zeros(g.size)
        for sp in sps:
            s += stats[sp].pooled(members[sp].index_map, g.size).var
        out[g.id] = s
    return out, missing


@register_scorer("vbp", needs_calib=True)
def vbp(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Activation variance per canonical channel over batch and spatial/token positions, summed over
    the group's mixing points (positions of a block map, e.g. Flatten into Gemm, are pooled)."""
    out, missing = vbp_scores(ctx)
    if missing:
        ctx.notes.append(f"vbp: {len(missing)} prunable group(s) have no activation entering a "
                         f"Conv/Gemm/MatMul: scored with l2 instead ({', '.join(missing[:5])})")
    return out


@register_scorer("random")
def random_scores(ctx: ScoreContext) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(ctx.seed)
    return {g.id: rng.random(g.size) for g in ctx.groups}
