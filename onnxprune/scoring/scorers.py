"""The scorers (``--scorer``); each registers itself in ``registry.SCORERS``, and importing the
``onnxprune.scoring`` package imports this module. Weight-based scorers read the weights the
deployed model computes with (``deployed.py``: BatchNormalization folded into the layer before it;
running statistics are never scored as weights), except ``sp-lamp``, ``l2-filter`` and ``saliency``,
which keep their paper's form (stored weights); ``sp-lamp-folded`` is SP-LAMP on the folded weights.

- ``l1``/``l2`` every weight slice a group owns, deployed: folded producer filters and biases, consumer
  input slices, other per-channel vectors (a standalone BN as its effective scale and shift).
- ``l2-filter`` DEPrune's PW-conv criterion: ||W_u||_2 of the stored producer filter(s) alone.
- ``sp-lamp``  SP-LAMP Eq. 2: s_u = ||W_l,u||_F^2 x ||What_l+1,u||_F^2 (producer filters: layer weight
  axes holding output channels; consumer slices: layer weight axes holding input channels, both per the
  rules' ``weight_roles``), on the stored weights as the paper writes it (a BN after the conv is not in
  W_l, and its running statistics are never scored); Eq. 3 (producer alone) where no weight reads the
  channel; then ``lamp.sp_lamp_scores`` within the group (LAMP once: planning uses these as they are).
- ``sp-lamp-folded`` the same on the deployed weights (W_l with the BN folded in).
- ``saliency`` OCSPruner's group saliency (the authors' GroupNormV2Importance, p = 2): per layer weight
  slice sum w^2 / sqrt(slice size), each BatchNormalization adds gamma^2, the sum divided by the number
  of these members (stored weights, as the paper trains them).
- ``bn-scale`` |gamma| of the group's BatchNormalization/InstanceNormalization/LayerNormalization
  scale (summed when a group has several); without one (BN folded into the conv by the exporter)
  it falls back to l2 and says so in ``ctx.notes``.
- ``vbp``      variance-based pruning: per-channel activation variance at the group's mixing points
  (activations entering Conv/Gemm/MatMul), one streaming pass over the calibration data
  (``calibration.activation_stats``); the statistics stay in ``ctx.cache`` for mean compensation.
- ``recon``    reconstruction-aware selection (``recon.py``): greedy removal by least least-squares
  reconstruction error of the consumers' outputs (after the consumer's BatchNormalization where one
  follows it).
- ``random``   seeded uniform scores (a baseline).
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup, Member
from onnxprune.analysis.rules import rule_for
from onnxprune.scoring.calibration import activation_spaces, cached_stats
from onnxprune.scoring.energy import channel_energy_shares
from onnxprune.scoring.recon import consumer_output_scales, greedy_scores, group_terms
from onnxprune.scoring.deployed import WeightTable, deployed_weights, raw_weights
from onnxprune.scoring.lamp import sp_lamp_scores
from onnxprune.scoring.registry import GroupScores, ScoreContext, register_scorer


# weights larger than this are reduced block by block (a memory-mapped weight of a large model is
# never converted to float64 whole)
SLICE_NORM_BLOCK_BYTES = 64 * 2**20


def slice_norms(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    """Per-position sum of |w|^p over all other axes (p = 1: L1 mass, p = 2: squared L2)."""
    if arr.nbytes > SLICE_NORM_BLOCK_BYTES and arr.ndim > 1:
        return _blocked_slice_norms(arr, axis, p)
    return _plain_slice_norms(arr, axis, p)


def _plain_slice_norms(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    a = np.moveaxis(np.asarray(arr, dtype=np.float64), axis, 0).reshape(arr.shape[axis], -1)
    return np.abs(a).sum(1) if p == 1 else np.square(a).sum(1)


def _blocked_slice_norms(arr: np.ndarray, axis: int, p: int) -> np.ndarray:
    """slice_norms over blocks of another axis, summed (the same sums, in another order)."""
    along = 1 if axis == 0 else 0
    step = max(1, arr.shape[along] * SLICE_NORM_BLOCK_BYTES // (8 * max(arr.size, 1)))
    out = np.zeros(arr.shape[axis])
    for i in range(0, arr.shape[along], step):
        block = np.take(arr, np.arange(i, min(i + step, arr.shape[along])), axis=along)
        out += _plain_slice_norms(block, axis, p)
    return out


def member_norms(analysis: Analysis, m: Member, p: int, consts: dict | None = None) -> np.ndarray:
    """Per-canonical-channel mass of one weight member (positions of a block map add up);
    ``consts``: the arrays to read (a WeightTable's), default the stored weights."""
    g = analysis.group_of(m.tensor, m.axis)
    arr = (consts if consts is not None else analysis.view.consts)[m.tensor]
    out = np.zeros(g.size)
    np.add.at(out, m.index_map, slice_norms(arr, m.axis, p))
    return out


def deployed(ctx: ScoreContext) -> WeightTable:
    return ctx.cached("deployed_weights", lambda: deployed_weights(ctx.analysis))


def stored(ctx: ScoreContext) -> WeightTable:
    return ctx.cached("raw_weights", lambda: raw_weights(ctx.analysis))


def magnitude_scores(analysis: Analysis, group: ChannelGroup, p: int, table: WeightTable | None = None) -> np.ndarray:
    """L1 (p=1): total |w| of the channel's slices. L2 (p=2): sqrt of the total sum of squares.
    With ``table``: its arrays, leaving out the tensors it folded away."""
    s = np.zeros(group.size)
    for m in group.weights:
        if table is None or m.tensor not in table.skip:
            s += member_norms(analysis, m, p, table.consts if table is not None else None)
    return s if p == 1 else np.sqrt(s)


@register_scorer("l1")
def l1_scores(ctx: ScoreContext) -> dict[int, np.ndarray]:
    return {g.id: magnitude_scores(ctx.analysis, g, 1, deployed(ctx)) for g in ctx.groups}


@register_scorer("l2")
def l2_scores(ctx: ScoreContext) -> dict[int, np.ndarray]:
    return {g.id: magnitude_scores(ctx.analysis, g, 2, deployed(ctx)) for g in ctx.groups}


def filter_mass(analysis: Analysis, group: ChannelGroup, table: WeightTable, axes: set) -> tuple[np.ndarray, int]:
    """Sum of squared slice norms per canonical channel over the members on ``axes``, and their count."""
    s, n = np.zeros(group.size), 0
    for m in group.weights:
        if (m.tensor, m.axis) in axes:
            s += member_norms(analysis, m, 2, table.consts)
            n += 1
    return s, n


@register_scorer("l2-filter")
def l2_filter(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """DEPrune: the producer filter's L2 norm (stored weights); groups without a filter get l2."""
    out, fallback = {}, []
    for g in ctx.groups:
        s, n = filter_mass(ctx.analysis, g, stored(ctx), stored(ctx).filters)
        if not n:
            s = np.square(magnitude_scores(ctx.analysis, g, 2, deployed(ctx)))
            fallback.append(g.name)
        out[g.id] = np.sqrt(s)
    note_fallback(ctx, "l2-filter", fallback, "no layer filter (output channels of a Conv/Gemm/MatMul weight)")
    return out


def note_fallback(ctx: ScoreContext, scorer: str, names: list[str], why: str) -> None:
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        ctx.notes.append(f"{scorer}: {len(names)} of {len(ctx.groups)} prunable groups have {why}: "
                         f"scored with l2 instead ({shown})")


def sp_lamp_saliency(analysis: Analysis, group: ChannelGroup, table: WeightTable) -> np.ndarray | None:
    """Eq. 2's numerator ||W_l,u||^2 x ||What_l+1,u||^2 per canonical channel (Eq. 3: the producer term
    alone where no weight reads the channel, the consumer term alone where no layer writes it);
    None for a group with neither."""
    prod, n_prod = filter_mass(analysis, group, table, table.filters)
    cons, n_cons = filter_mass(analysis, group, table, table.inputs)
    if n_prod and n_cons:
        return prod * cons
    return prod if n_prod else (cons if n_cons else None)


def sp_lamp_with(ctx: ScoreContext, table: WeightTable, name: str) -> dict[int, np.ndarray]:
    out, fallback = {}, []
    for g in ctx.groups:
        s = sp_lamp_saliency(ctx.analysis, g, table)
        if s is None:
            s = np.square(magnitude_scores(ctx.analysis, g, 2, deployed(ctx)))
            fallback.append(g.name)
        out[g.id] = sp_lamp_scores(s)
    note_fallback(ctx, name, fallback, "no layer weight on their channels")
    return out


@register_scorer("sp-lamp", lamp_normalized=True)
def sp_lamp(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """SP-LAMP Eq. 2/3 as written: the stored layer weights (the paper's W_l)."""
    return sp_lamp_with(ctx, stored(ctx), "sp-lamp")


@register_scorer("sp-lamp-folded", lamp_normalized=True)
def sp_lamp_folded(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Eq. 2/3 on the deployed weights (BN folded into W_l)."""
    return sp_lamp_with(ctx, deployed(ctx), "sp-lamp-folded")


def elements_per_channel(analysis: Analysis, m: Member) -> np.ndarray:
    """Weight elements of member ``m`` per canonical channel (a block map's positions add up)."""
    arr = analysis.view.consts[m.tensor]
    per_pos = arr.size // max(arr.shape[m.axis], 1)
    return np.bincount(m.index_map, minlength=analysis.group_of(m.tensor, m.axis).size) * per_pos


def saliency_scores(analysis: Analysis, group: ChannelGroup, table: WeightTable) -> np.ndarray:
    """OCSPruner (GroupNormV2Importance, p = 2): layer slices add sum w^2 / sqrt(n), BN gammas add
    gamma^2; the total over the number of those members."""
    total, count = np.zeros(group.size), 0
    for m in group.weights:
        sp = (m.tensor, m.axis)
        if sp in table.filters or sp in table.inputs:
            n = elements_per_channel(analysis, m)
            total += member_norms(analysis, m, 2, table.consts) / np.sqrt(np.maximum(n, 1))
        elif m.tensor in table.learned_scales:
            total += member_norms(analysis, m, 2, table.consts)
        else:
            continue
        count += 1
    return total / max(count, 1)


@register_scorer("saliency")
def saliency(ctx: ScoreContext) -> dict[int, np.ndarray]:
    return {g.id: saliency_scores(ctx.analysis, g, stored(ctx)) for g in ctx.groups}


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
            out[g.id] = magnitude_scores(ctx.analysis, g, 2, deployed(ctx))
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
            out[g.id] = magnitude_scores(analysis, g, 2, deployed(ctx))
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
    stats = cached_stats(ctx, activation_spaces(ctx.analysis, ctx.groups))
    scales = consumer_output_scales(ctx.analysis)
    energy = {g.id: channel_energy_shares(ctx.analysis, g, stats, scales) for g in ctx.groups}
    return GroupScores(out, energy={k: v for k, v in energy.items() if v is not None})


def cumulative_share(v: np.ndarray) -> np.ndarray:
    """Per channel, the share of the group's total of ``v`` removed when it and every lower one go:
    the same order as ``v``, on recon's scale (a share of energy lost)."""
    v = np.asarray(v, dtype=np.float64)
    order = np.lexsort((np.arange(len(v)), v))
    out = np.empty(len(v))
    out[order] = np.cumsum(v[order]) / max(float(v.sum()), 1e-300)
    return out


@register_scorer("recon", needs_calib=True, comparable=True)
def recon(ctx: ScoreContext) -> dict[int, np.ndarray]:
    """Greedy removal by least lstsq reconstruction error of the consumers' outputs (recon.py). The
    scores are shares of the consumers' output energy, one scale for every group: ``--global`` ranks
    them as they are (the next channel goes from the group whose relative error grows least)."""
    stats = cached_stats(ctx, activation_spaces(ctx.analysis, ctx.groups), cov=True)
    scales = consumer_output_scales(ctx.analysis)
    out, fallback = {}, []
    for g in ctx.groups:
        terms = group_terms(ctx.analysis, g, stats, scales)
        if terms:
            out[g.id] = greedy_scores(terms, g.size, g.frozen)
        else:
            fallback.append(g)
    if fallback:
        var = vbp_scores(ctx)[0]
        out.update({g.id: cumulative_share(var[g.id]) for g in fallback})
        ctx.notes.append(f"recon: {len(fallback)} prunable group(s) have no group-1 Conv/Gemm/MatMul consumer with "
                         f"a covariance (grouped or depthwise consumers, or inputs wider than the covariance limit): "
                         f"scored with vbp instead, as cumulative shares of their variance ({', '.join(g.name for g in fallback[:5])})")
    return out


@register_scorer("random")
def random_scores(ctx: ScoreContext) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(ctx.seed)
    return {g.id: rng.random(g.size) for g in ctx.groups}
