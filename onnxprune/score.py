"""Channel importance per canonical channel of each group, from raw initializers.

Every weight slice a group owns (producer filters, BN/affine vectors, consumer input slices, bias
entries) contributes to the channel it maps to.
"""
from __future__ import annotations

import numpy as np

from .analyze import Analysis, ChannelGroup, Member

SCORERS = ("l1", "l2")


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


def score_groups(analysis: Analysis, scorer: str = "l2") -> dict[int, np.ndarray]:
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer '{scorer}' (choose from {', '.join(SCORERS)})")
    p = 1 if scorer == "l1" else 2
    return {g.id: magnitude_scores(analysis, g, p) for g in analysis.prunable_groups}
