"""The output energy each channel carries into its consumers: a knapsack value that is comparable
across groups (``--knapsack-value energy``; computed with ``vbp``'s statistics).

A consumer y = W x (a Conv of group 1, a Gemm or MatMul with a constant weight; each output row
scaled by the inference BatchNormalization that alone reads y, as the deployed model computes)
loses, when input channel k goes and its calibration mean is folded into the bias (VBP's
compensation), the output W[:, k] (x_k - mean_k), of energy var_k ||W[:, k]||^2 (kernel taps and
the positions of a block map summed). Per consumer c, the share of its output energy that channel
k carries (channels taken as uncorrelated) is

    e_c,k = var_k ||W_c[:, k]||^2 / sum_j var_j ||W_c[:, j]||^2

The knapsack value of keeping the set K of a group is the log of the share each consumer keeps,
summed over the group's consumers:

    V(K) = sum_c log( sum_{k in K} e_c,k )

Every consumer counts once, whatever its layer's scale, so a residual stream read by five convs
weighs five times a group read by one. The log is LAMP's own form: SP-LAMP's cumulative scores
sum_u s_u / sum_{v >= u} s_v are a first-order sum of -log of the share kept (for n flat channels,
keeping w costs H_n - H_w ~ log(n / w)), and as with LAMP, emptying a group costs without bound.
A linear value (sum of the shares, no log) was tried first and emptied a MobileNetV2 layer
(benchmarks/knapsack_value.py). ``--compensate lstsq`` then restores part of the removed energy
(what the kept channels predict of it).
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup
from onnxprune.scoring.recon import consumer_weights


def consumer_column_energies(analysis: Analysis, space, out_scales: dict) -> list[np.ndarray]:
    """Per group-1 consumer with a constant weight that reads ``space``: the squared norm of the
    weight column of every input position (rows scaled by the BN after the consumer)."""
    return [np.square(np.moveaxis(W, 1, 0).reshape(W.shape[1], -1)).sum(1)
            for W in consumer_weights(analysis, space, out_scales, const_only=True)]


def channel_energy_shares(analysis: Analysis, group: ChannelGroup, stats: dict, out_scales: dict) -> np.ndarray | None:
    """e_c,k for every consumer c (rows) and canonical channel k of ``group`` (module docstring);
    each row sums to 1. None where no consumer has a constant weight (attention's MatMuls)."""
    members = {(m.tensor, m.axis): m for m in group.members}
    rows = []
    for sp, st in stats.items():
        if sp not in members or analysis.space_group.get(sp) != group.id:
            continue
        var = st.m2 / max(float(st.n), 1.0)
        for col in consumer_column_energies(analysis, sp, out_scales):
            if col.shape != var.shape:
                continue
            e = np.bincount(members[sp].index_map, weights=var * col, minlength=group.size)
            if e.sum() > 0:
                rows.append(e / e.sum())
    return np.array(rows) if rows else None
