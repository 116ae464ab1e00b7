"""Channel importance per canonical channel of each prunable group.

Scorers live in one registry: ``@register_scorer("name")`` on a function ``(ScoreContext) ->
{group id: scores}``. Weight-based scorers read the raw initializers: every weight slice a group
owns (producer filters, BN/affine vectors, consumer input slices, bias entries) contributes to the
channel it maps to. Data-driven scorers get calibration feeds in the context.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup, Member
from onnxprune.errors import OnnxPruneError


@dataclass
class ScoreContext:
    analysis: Analysis
    calib: list[dict[str, np.ndarray]] | None = None  # batches of model inputs, for data-driven scorers
    seed: int = 0
    cache: dict = field(default_factory=dict)  # scorers may share work (e.g. activation statistics)
    notes: list[str] = field(default_factory=list)  # what the user should know (api.prune copies them to the report)

    @property
    def groups(self) -> list[ChannelGroup]:
        return self.analysis.prunable_groups


Scorer = Callable[[ScoreContext], dict[int, np.ndarray]]
SCORERS: dict[str, Scorer] = {}
NEEDS_CALIB: set[str] = set()


def register_scorer(name: str, needs_calib: bool = False):
    def deco(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        if needs_calib:
            NEEDS_CALIB.add(name)
        return fn
    return deco


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


def score_groups(analysis: Analysis, scorer: str = "l2", *, calib=None, seed: int = 0,
                 context: ScoreContext | None = None) -> dict[int, np.ndarray]:
    """Scores per prunable group id. Pass ``context`` to keep its notes and cache (statistics)."""
    ctx = context or ScoreContext(analysis, calib=calib, seed=seed)
    if scorer not in SCORERS:
        raise OnnxPruneError(f"unknown scorer '{scorer}' (choose from {', '.join(sorted(SCORERS))})")
    if scorer in NEEDS_CALIB and not ctx.calib:
        raise OnnxPruneError(f"scorer '{scorer}' needs calibration data: pass --calib FILE")
    return SCORERS[scorer](ctx)


from . import scorers as _scorers  # noqa: E402,F401  registers sp-lamp, saliency, bn-scale, vbp, random
