"""SP-LAMP channel scores (Pan et al., "Layer-adaptive Structured Pruning Guided by Latency", Eq. 2-3).

The caller computes one saliency per channel of a group,

    s_u = ||W_l,u||_F^2 * ||What_l+1,u||_F^2      (producer filter mass x consumer input-slice mass)

(for the last layer only the producer term, Eq. 3). SP-LAMP rescales those saliencies *within the
group*: with channels sorted ascending by s,

    score(u) = s_u / sum_{v >= u} s_v

i.e. the share of the channel among the channels that would still survive if every weaker channel
were already pruned. Scores are comparable across groups (they are all in [0, 1]) and the strongest
channel of every group scores exactly 1, so a global "keep the highest scores" never empties a
group. The scores are monotone in s, so "keep the top i by score" is the same set as "keep the
top i by saliency"; what changes is how groups trade off against each other.

These are pure numpy functions on one group's vector: they never touch the graph.
"""
from __future__ import annotations

import numpy as np


def _as_saliency(s) -> np.ndarray:
    a = np.asarray(s, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"saliencies must be a 1-D vector (one per channel), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("saliencies must be finite (found NaN or inf)")
    if np.any(a < 0):
        raise ValueError("saliencies must be >= 0 (they are products of squared norms)")
    return a


def sp_lamp_scores(s: np.ndarray) -> np.ndarray:
    """Per-channel SP-LAMP scores, returned in the ORIGINAL channel order.

    ``s`` holds non-negative per-channel saliencies. Channels are ranked with a *stable* ascending
    sort, so among equal saliencies the channel with the higher index ranks higher (ties get
    different scores, as in LAMP, but always the same ones). ``score = s_u / suffix_sum_u``; a 0/0
    (a zero channel with only zero channels above it) scores 0, except the top-ranked channel,
    which scores exactly 1 in every case so that each group keeps at least one channel.
    """
    a = _as_saliency(s)
    n = a.size
    if n == 0:
        return np.zeros(0)
    order = np.argsort(a, kind="stable")
    sorted_s = a[order]
    suffix = np.cumsum(sorted_s[::-1])[::-1]  # suffix[k] = sum of sorted_s[k:]
    with np.errstate(divide="ignore", invalid="ignore"):
        sorted_scores = np.where(suffix > 0, sorted_s / np.where(suffix > 0, suffix, 1.0), 0.0)
    # The top channel is s/s = 1 analytically; pin it so rounding or an all-zero group can't move it.
    sorted_scores[-1] = 1.0
    scores = np.empty(n)
    scores[order] = sorted_scores
    return scores


def cumulative_keep_values(scores: np.ndarray) -> np.ndarray:
    """Knapsack item values for one group: entry i (0-based) is the sum of the i+1 largest scores,
    the value of the choice "keep the top i+1 channels" (Eq. 5/9 of the paper).

    Keeping zero channels is not an item: every group keeps at least its top channel (score 1),
    which is why the paper leaves that channel out of the knapsack; here it is simply in every
    item, a constant offset per group that doesn't change the optimum.
    """
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"scores must be a 1-D vector, got shape {a.shape}")
    return np.cumsum(np.sort(a)[::-1])
