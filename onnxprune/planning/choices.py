"""The group knapsack's items: per channel group, the widths it may keep, their LAMP-normalized
values and (filled by an objective) their costs; one solve over them (SP-LAMP Eq. 8-10)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.analysis.groups import ChannelGroup
from onnxprune.errors import OnnxPruneError
from onnxprune.planning.knapsack import KnapsackSolution, solve_group_knapsack
from onnxprune.profiling.latency_table import keep_order, top_width_kept
from onnxprune.scoring.lamp import cumulative_keep_values, sp_lamp_scores
from onnxprune.scoring.registry import is_lamp_normalized

KNAPSACK_VALUES = ("lamp", "members", "energy")
# a budget's default: members kept more test accuracy at equal measured latency in 6 of 8 cases, the
# paper's lamp in 2 (README, Budgets; benchmarks/latency_accuracy.py)
DEFAULT_KNAPSACK_VALUE = "members"
ALIGN_BLOCK, ALIGN_MIN_SIZE = 8, 32  # with the op-level model, widths are multiples of 8 in groups of >= 32 (align_widths)


@dataclass
class GroupChoices:
    """Knapsack class of one group: item i keeps widths[i] channels."""
    group: ChannelGroup
    order: np.ndarray
    widths: np.ndarray
    values: np.ndarray
    costs: np.ndarray = None


def allowed_widths(group: ChannelGroup, round_to: int | None) -> np.ndarray:
    """Widths from the frozen channels (at least one) up to full; with `round_to`, multiples of it
    and the full width (the narrowest allowed one if no multiple fits)."""
    lo = max(1, int(group.frozen.sum()))
    widths = np.arange(lo, group.size + 1)
    if round_to and round_to > 1:
        keep = (widths % round_to == 0) | (widths == group.size)
        if not keep.any() or widths[keep].min() > lo:
            keep |= widths == widths[keep].min() if keep.any() else widths == lo
        widths = widths[keep]
    return widths


def group_choices(groups: list[ChannelGroup], scores: dict[int, np.ndarray], round_to: int | None = None,
                  value: str = "lamp") -> list[GroupChoices]:
    """Items per group with LAMP-normalized values (comparable across groups: every group's top
    channel is worth 1). Scores a scorer already LAMP-normalized (``sp-lamp``: a GroupScores with
    ``lamp_normalized``) are used as they are: LAMP is applied once (SP-LAMP Eq. 5 sums Eq. 2's
    scores). Frozen channels are always kept; `round_to` restricts widths to multiples.

    ``value="members"``: each group's values times its number of weight members. A channel of a
    residual stream is read and written by many layers; LAMP alone prices it like a channel inside
    one block, so the knapsack, which looks for the cheapest score per saved cost, empties the
    stream first. Without fine-tuning that costs accuracy (benchmarks/retention.py, knapsack modes)."""
    if value not in KNAPSACK_VALUES:
        raise OnnxPruneError(f"knapsack value must be one of {', '.join(KNAPSACK_VALUES)}, got {value!r}")
    out = []
    normalized = is_lamp_normalized(scores)
    for g in groups:
        s = np.asarray(scores.get(g.id, np.ones(g.size)), dtype=np.float64)
        s = np.where(np.isfinite(s), np.maximum(s, 0), 0)
        lamp = s.copy() if normalized else sp_lamp_scores(s)
        lamp[g.frozen] = lamp.max() + 1.0  # frozen first in order; their value is a constant offset
        order = keep_order(g, lamp)
        if value == "energy":
            vals = energy_values(g, s, scores, order)
        else:
            vals = cumulative_keep_values(lamp)
        widths = allowed_widths(g, round_to)
        weight = max(1, len(g.weights)) if value == "members" else 1
        out.append(GroupChoices(g, order, widths, vals[widths - 1] * weight))
    return out


ENERGY_FLOOR = 1e-6  # a consumer left with less of its output energy than this counts as this (log 0)


def energy_values(g: ChannelGroup, s: np.ndarray, scores, order: np.ndarray) -> np.ndarray:
    """``energy``: for the top i+1 channels of ``order``, sum over the group's consumers of the log of
    the share of the consumer's output energy they keep (scoring/energy.py). A group whose consumers
    have no constant weight (attention's MatMuls) counts as one consumer of its score shares."""
    energy = getattr(scores, "energy", None)
    if energy is None:
        raise OnnxPruneError("knapsack value 'energy' needs activation statistics: use --scorer vbp")
    e = energy.get(g.id)
    if e is None:
        e = (s / max(float(s.sum()), 1e-300))[None, :]
    kept = np.cumsum(np.asarray(e, dtype=np.float64)[:, order], axis=1)
    return np.log(np.maximum(kept, ENERGY_FLOOR)).sum(0)


def align_widths(choices: list[GroupChoices], block: int, min_size: int) -> None:
    """Keep only widths that are multiples of ``block`` (plus the narrowest and the full width) in
    groups of at least ``min_size`` channels. ONNX Runtime's CPU kernels run channels in blocks of
    8 (NCHWc); an unaligned width falls off that path and can be slower than a wider aligned one
    (MobileNetV2 at random widths measured 6 ms against 4.5 ms unpruned), and the latency model's
    tables shrink by block^2 per coupled pair."""
    for c in choices:
        if c.group.size >= min_size and len(c.widths) > 1:
            keep = (c.widths % block == 0) | (c.widths == c.widths[0]) | (c.widths == c.group.size)
            c.widths, c.values = c.widths[keep], c.values[keep]
            if c.costs is not None:
                c.costs = c.costs[keep]


def aligned_width(size: int, fraction: float) -> int:
    """`fraction` of `size` channels, at the nearest multiple of ALIGN_BLOCK in a group that
    align_widths restricts (>= ALIGN_MIN_SIZE channels)."""
    w = max(1, int(round(size * fraction)))
    if size >= ALIGN_MIN_SIZE:
        w = max(ALIGN_BLOCK, ALIGN_BLOCK * round(w / ALIGN_BLOCK))
    return w


def kept_for(choices: list[GroupChoices], pick: list[int]) -> dict[int, np.ndarray]:
    kept = {}
    for c, i in zip(choices, pick):
        w = int(c.widths[i])
        if w < c.group.size:
            kept[c.group.id] = top_width_kept(c.group, c.order, w)
    return kept


def kept_fractions(choices: list[GroupChoices], kept: dict[int, np.ndarray]) -> dict[int, float]:
    """Kept share of every group's channels (1.0 for a group `kept` leaves whole)."""
    return {c.group.id: (len(kept[c.group.id]) if c.group.id in kept else c.group.size) / c.group.size
            for c in choices}


def snap_to_steps(choices: list[GroupChoices], quantum: float) -> None:
    """`--round-to auto`: latency falls in steps as channels go (SP-LAMP Fig. 2; kernels work on
    blocks of channels). Costs within one quantum are one step: round them to the quantum, and the
    knapsack's dominance rule then keeps the widest width of every step (more score, same cost)."""
    if quantum > 0:
        for c in choices:
            c.costs = np.round(c.costs / quantum) * quantum


def solve_budget(choices: list[GroupChoices], baseline: float, target: float) -> KnapsackSolution:
    """One knapsack: sum of per-group deltas <= target - baseline."""
    return solve_group_knapsack([c.values for c in choices], [c.costs for c in choices], target - baseline)


_UNITS = {"peak_memory": ((" GB", 1e9), (" MB", 1e6), (" KB", 1e3), (" B", 1.0)),
          "counts": (("G", 1e9), ("M", 1e6), ("K", 1e3), ("", 1.0))}


def format_metric(metric: str, v: float, unit_of: float | None = None) -> str:
    """`v` in the unit the report's table uses for `metric` (decimal KB/MB/GB, K/M/G), chosen by
    `unit_of` where given, so the values of one message share one unit."""
    if metric == "latency":
        return f"{v:.3f} ms"
    units = _UNITS["peak_memory" if metric == "peak_memory" else "counts"]
    ref = abs(v if unit_of is None else unit_of)
    unit, d = next(((u, d) for u, d in units if ref >= d), units[-1])
    return f"{v / d:.2f}{unit}"
