"""Which channels to keep, given scores: per-group ratios (with a DEPrune-style depthwise ratio) or
one global ranking. Frozen channels are always kept and no group is pruned to zero."""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.groups import ChannelGroup
from onnxprune.scoring.registry import is_comparable


def n_remove(size: int, n_free: int, ratio: float) -> int:
    """Channels to remove from a group of `size` at `ratio`, never all of them, never frozen ones.
    The ratio applies to the prunable channels: a group with some frozen channels (a Concat with a
    model input, say) loses `ratio` of its free ones, not of all."""
    return int(max(0, min(int(round(ratio * n_free)), n_free, size - 1)))


def lowest_free(scores: np.ndarray, frozen: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest-scoring unfrozen channels (ties broken by index, deterministic)."""
    free = np.flatnonzero(~frozen)
    order = free[np.lexsort((free, scores[free]))]
    return np.sort(order[:k])


def keep_from_removed(size: int, removed: np.ndarray) -> np.ndarray:
    mask = np.ones(size, dtype=bool)
    mask[removed] = False
    return np.flatnonzero(mask)


def select_by_ratio(groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float,
                    ratio_dw: float | None = None, global_rank: bool = False,
                    round_to: int | None = None) -> dict[int, np.ndarray]:
    """Kept canonical channels per group id (only groups that lose channels appear).

    With ``global_rank`` and ``ratio_dw``, depthwise groups are ranked among themselves at
    ``ratio_dw`` and the others at ``ratio``. ``round_to`` moves every kept count to the nearest
    multiple of N (see :func:`round_kept_counts`)."""
    for r in (ratio, ratio_dw):
        if r is not None and not 0.0 <= r < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {r}")
    groups = [g for g in groups if g.prunable and g.id in scores]
    if global_rank:
        if ratio_dw is None:
            kept = _select_global(groups, scores, ratio)
        else:
            kept = {**_select_global([g for g in groups if not g.depthwise], scores, ratio),
                    **_select_global([g for g in groups if g.depthwise], scores, ratio_dw)}
        return round_kept_counts(groups, kept, scores, round_to)
    kept = {}
    for g in groups:
        r = ratio_dw if (g.depthwise and ratio_dw is not None) else ratio
        k = n_remove(g.size, int((~g.frozen).sum()), r)
        if k:
            kept[g.id] = keep_from_removed(g.size, lowest_free(scores[g.id], g.frozen, k))
    return round_kept_counts(groups, kept, scores, round_to)


def rounded_count(keep: int, size: int, n_frozen: int, n: int) -> int:
    """`keep` moved to the nearest multiple of `n` (at least `n`), never above `size` and never below
    the frozen channels; a group of `size` <= n stays whole."""
    if not n or n <= 1 or keep >= size:
        return keep
    r = max(n, int(np.floor(keep / n + 0.5)) * n)
    return int(min(size, max(r, n_frozen, 1)))


def round_kept_counts(groups: list[ChannelGroup], kept: dict[int, np.ndarray], scores: dict[int, np.ndarray],
                      n: int | None) -> dict[int, np.ndarray]:
    """Hardware-friendly widths for ratio pruning: each group keeps its best `rounded_count` channels."""
    if not n or n <= 1:
        return kept
    out = {}
    for g in groups:
        k = kept.get(g.id)
        keep = len(k) if k is not None else g.size
        r = rounded_count(keep, g.size, int(g.frozen.sum()), n)
        if r == keep:
            if k is not None:
                out[g.id] = k
            continue
        if r < g.size:
            out[g.id] = keep_from_removed(g.size, lowest_free(scores[g.id], g.frozen, g.size - r))
    return out


def global_rank_values(scores: dict[int, np.ndarray], gid: int) -> np.ndarray:
    """What --global ranks across groups: LAMP scores as they are (SP-LAMP Sec. 3.1: one ranking of
    the layers' LAMP scores; the top channel of every group scores 1), and so are scores on one scale
    across groups (``recon``'s relative reconstruction errors); other scorers' values are divided by
    their group mean so layers of different magnitude compete (raw magnitudes would empty whole
    low-magnitude layers)."""
    s = np.asarray(scores[gid], dtype=np.float64)
    if is_comparable(scores):
        return s
    return s / (s.mean() if s.mean() > 0 else 1.0)


def _select_global(groups, scores, ratio):
    """One ranking across groups of ``global_rank_values``; no group is emptied."""
    entries = []
    for g in groups:
        norm = global_rank_values(scores, g.id)
        for c in np.flatnonzero(~g.frozen):
            entries.append((norm[c], g.id, c))
    total = sum(g.size for g in groups)
    budget = int(round(ratio * total))
    entries.sort()
    left = {g.id: g.size for g in groups}
    removed = {g.id: [] for g in groups}
    for _, gid, c in entries:
        if budget <= 0:
            break
        if left[gid] > 1:
            removed[gid].append(c)
            left[gid] -= 1
            budget -= 1
    sizes = {g.id: g.size for g in groups}
    return {gid: keep_from_removed(sizes[gid], np.array(r, dtype=np.int64)) for gid, r in removed.items() if r}


def keep_every_member(groups: list[ChannelGroup], kept: dict[int, np.ndarray],
                      scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """No tensor may end with a zero-sized axis (many runtimes reject empty tensors): where a
    member (one branch of a Concat, one half of a Split) would lose all its channels, keep its
    best-scoring one."""
    by_id = {g.id: g for g in groups}
    out = dict(kept)
    for gid, k in kept.items():
        g = by_id[gid]
        s = scores.get(gid, np.zeros(g.size))
        keep = np.zeros(g.size, dtype=bool)
        keep[k] = True
        for m in g.members:
            image = np.unique(m.index_map)
            if len(image) and not keep[image].any():
                keep[image[np.argmax(s[image])]] = True
        out[gid] = np.flatnonzero(keep)
    return out
