"""Reconstruction-aware selection (``--scorer recon``, needs ``--calib``; pairs with ``--compensate lstsq``).

``vbp`` + ``lstsq`` chooses channels by their variance and then refits the consumers' kept columns.
``recon`` chooses them by what that refit can rebuild. Each consumer of a group's channels (a Conv
of group 1, Gemm, MatMul reading the activation) computes y = W x; with H the covariance of its
input x (streamed by ``calibration.activation_stats``, the co-moment matrices lstsq uses), removing
the channel set R and refitting the kept columns by least squares leaves the output error

    E(R) = tr(W_R [(H^-1)_RR]^-1 W_R^T)     (the Schur complement of H_KK: what x_K cannot predict of x_R)

Channels are removed greedily, each time the one whose removal adds least to E summed over the
group's consumers, and W and H^-1 are updated as in optimal-brain-surgeon structured pruning
(ZipLM, SlimGPT, OSSCAR; ThiNet and He et al. 2017 choose channels by reconstruction error the same
way): W <- W - W_:,R [(H^-1)_RR]^-1 (H^-1)_R,: and H^-1 <- H^-1 - (H^-1)_:,R [(H^-1)_RR]^-1 (H^-1)_R,:.
Intercepts (lstsq's c, FLAP's bias compensation) are why H is the centered covariance.

Where an inference BatchNormalization alone reads a consumer's output (Conv -> BN), the error is
measured after it, as the deployed model sees it: row o of W is scaled by the BN's
s_o = gamma_o / sqrt(var_o + eps) (``consumer_output_scales``). The lstsq refit of each row does not
change with that scale, so only which channels are chosen does.

The score of a channel is E after it (and every channel removed before it) is gone, over the
consumers' output energy tr(W H W^T): it rises along the greedy order, so removing the k lowest
scores removes the first k greedy choices. A kxk conv counts each kernel tap as rows of W (lstsq
assumes one channel relation at every tap, and so does this). Memory: one [P, P] matrix per input
space, P <= calibration.COV_MAX_POSITIONS, as for lstsq; wider spaces, grouped/depthwise consumers
and groups with no such consumer are scored by their variance (vbp) instead, with a note.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup
from onnxprune.analysis.rules import CompensationTarget, rule_for
from onnxprune.scoring.deployed import foldable_producer, layer_weight_axes

RIDGE = 1e-3  # x mean input variance: as lstsq's affine_fit, keeps H invertible for dead or duplicate channels
MAX_STEPS = 64  # greedy updates per group: wider groups remove ceil(size / MAX_STEPS) channels per step


def consumer_weight(view, node, target: CompensationTarget) -> np.ndarray:
    """The consumer's weight as [out, in, taps...] in float64 (shared with transform/compensate)."""
    W = view.consts[node.input[target.weight_input]].astype(np.float64)
    return np.moveaxis(W, (target.out_axis, target.in_axis), (0, 1))


@dataclass
class ReconTerm:
    """One consumer input space: its positions' canonical channels, H^-1 and the consumers' rows."""
    index_map: np.ndarray  # input position -> canonical channel
    hinv: np.ndarray       # (P, P)
    w: np.ndarray          # (rows, P): every consumer's outputs x kernel taps
    energy: float          # tr(W H W^T) before any removal


def consumer_output_scales(analysis: Analysis) -> dict[str, np.ndarray]:
    """Layer weight tensor -> the per-output-channel scale of the inference BatchNormalization that
    alone reads that layer's output (the BN a deployed model folds into it)."""
    view = analysis.view
    filters = layer_weight_axes(analysis)[0]
    out = {}
    for n in view.nodes:
        rule = rule_for(n)
        aff = rule.channel_affine(n, view) if rule is not None else None
        prod = foldable_producer(analysis, n.input[0], filters) if aff is not None else None
        if prod is not None:
            out[prod[1]] = aff.scale
    return out


def consumer_weights(analysis: Analysis, space, out_scales: dict | None = None, const_only: bool = False):
    """The weight (out, in, taps...) of every group-1 consumer reading ``space``, each output row
    scaled by the BN after the consumer where ``out_scales`` has one (``const_only``: only consumers
    whose weight is an initializer)."""
    view = analysis.view
    t, a = space
    for k, res in analysis.node_results.items():
        if space not in res.mixes:
            continue
        node = view.nodes[k]
        rule = rule_for(node)
        target = rule.compensation_target(node, view, t, a) if rule is not None else None
        if target is None or target.groups != 1:
            continue
        if const_only and node.input[target.weight_input] not in view.consts:
            continue
        W = consumer_weight(view, node, target)
        scale = (out_scales or {}).get(node.input[target.weight_input])
        if scale is not None and len(scale) == W.shape[0]:
            W = W * scale.reshape((-1,) + (1,) * (W.ndim - 1))
        yield W


def consumer_rows(analysis: Analysis, space, out_scales: dict | None = None) -> np.ndarray | None:
    """Rows (out x taps, P) of every group-1 consumer reading ``space``, each output row scaled by
    the BN after the consumer where ``out_scales`` has one; None if there is none."""
    rows = [np.moveaxis(W, 1, -1).reshape(-1, W.shape[1]) for W in consumer_weights(analysis, space, out_scales)]
    return np.concatenate(rows) if rows else None


def make_term(index_map: np.ndarray, cov: np.ndarray, w: np.ndarray) -> ReconTerm:
    lam = RIDGE * max(float(np.trace(cov)) / max(len(cov), 1), 1e-12)
    h = cov + lam * np.eye(len(cov))
    return ReconTerm(np.asarray(index_map), np.linalg.inv(h), w.copy(), float(np.einsum("ij,jk,ik->", w, h, w)))


def removal_costs(term: ReconTerm, alive_pos: np.ndarray, size: int) -> np.ndarray:
    """E added by removing each canonical channel alone (its positions as one block)."""
    costs = np.zeros(size)
    pos = np.flatnonzero(alive_pos)
    ch = term.index_map[pos]
    if len(np.unique(ch)) == len(ch):  # one position per channel: ||w_p||^2 / (H^-1)_pp
        costs[ch] = np.square(term.w[:, pos]).sum(0) / np.maximum(np.diag(term.hinv)[pos], 1e-300)
        return costs
    for c in np.unique(ch):
        costs[c] = block_cost(term, pos[ch == c])
    return costs


def block_cost(term: ReconTerm, P: np.ndarray) -> float:
    wp = term.w[:, P]
    return float(np.trace(wp @ np.linalg.solve(term.hinv[np.ix_(P, P)], wp.T)))


def remove_block(term: ReconTerm, P: np.ndarray) -> float:
    """OBS update for removing positions P together; returns the error it adds."""
    if not len(P):
        return 0.0
    hpp_inv = np.linalg.inv(term.hinv[np.ix_(P, P)])
    wp = term.w[:, P]
    added = float(np.trace(wp @ hpp_inv @ wp.T))
    hrow = term.hinv[P, :]
    term.w -= wp @ hpp_inv @ hrow
    term.hinv -= term.hinv[:, P] @ hpp_inv @ hrow
    term.w[:, P] = 0.0
    return added


def greedy_scores(terms: list[ReconTerm], size: int, frozen: np.ndarray) -> np.ndarray:
    """Relative reconstruction error after each greedy removal, per canonical channel (frozen ones and
    the last survivor score above every removed one)."""
    alive = ~frozen.copy()
    alive_pos = [alive[t.index_map].copy() for t in terms]
    energy = max(sum(t.energy for t in terms), 1e-300)
    scores = np.full(size, np.inf)
    step = max(1, -(-int(alive.sum()) // MAX_STEPS))
    err, rank = 0.0, 0
    while alive.sum() > 1:
        costs = sum(removal_costs(t, ap, size) for t, ap in zip(terms, alive_pos))
        cand = np.flatnonzero(alive)
        picked = cand[np.lexsort((cand, costs[cand]))][:min(step, len(cand) - 1)]
        for t, ap in zip(terms, alive_pos):
            P = np.flatnonzero(ap & np.isin(t.index_map, picked))
            err += remove_block(t, P)
            ap[P] = False
        for c in picked:  # within one step, in the order of their own costs
            rank += 1
            scores[c] = err / energy + rank * 1e-12
        alive[picked] = False
    top = scores[np.isfinite(scores)].max(initial=0.0)
    scores[~np.isfinite(scores)] = top + 1.0
    return scores


def group_terms(analysis: Analysis, group: ChannelGroup, stats: dict, out_scales: dict | None = None) -> list[ReconTerm]:
    members = {(m.tensor, m.axis): m for m in group.members}
    terms = []
    for sp, st in stats.items():
        if sp not in members or st.c2 is None or analysis.space_group.get(sp) != group.id:
            continue
        w = consumer_rows(analysis, sp, out_scales)
        if w is not None:
            terms.append(make_term(members[sp].index_map, st.cov, w))
    return terms
