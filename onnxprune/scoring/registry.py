"""The scorer registry: channel importance per canonical channel of each prunable group.

Scorers register themselves with ``@register_scorer("name")`` on a function ``(ScoreContext) ->
{group id: scores}`` (``scorers.py``; importing the ``onnxprune.scoring`` package registers them all).
Data-driven scorers get calibration feeds in the context; scorers share work through its cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup
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

    def cached(self, key: str, compute: Callable[[], object]):
        """``compute()`` once per context (per analysis): later calls return the cached value."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


class GroupScores(dict):
    """Scores per prunable group id. ``lamp_normalized``: the values already are LAMP scores
    (``sp-lamp``), so planning ranks them and sums them as they are instead of normalizing again.
    ``comparable``: values of different groups are on one scale (``recon``: the share of the
    consumers' output energy lost), so ``--global`` ranks them as they are. ``energy``: per group,
    the share of its consumers' output energy each channel carries, summed over the consumers
    (``energy.py``; ``vbp`` fills it), for ``--knapsack-value energy``."""

    def __init__(self, scores=(), lamp_normalized: bool = False, comparable: bool = False,
                 energy: dict | None = None):
        super().__init__(scores)
        self.lamp_normalized = lamp_normalized
        self.comparable = comparable or lamp_normalized
        self.energy = energy


def is_lamp_normalized(scores) -> bool:
    return bool(getattr(scores, "lamp_normalized", False))


def is_comparable(scores) -> bool:
    """Whether one ranking across groups may use the values as they are."""
    return bool(getattr(scores, "comparable", False)) or is_lamp_normalized(scores)


Scorer = Callable[[ScoreContext], dict[int, np.ndarray]]
SCORERS: dict[str, Scorer] = {}
NEEDS_CALIB: set[str] = set()
LAMP_NORMALIZED: set[str] = set()
COMPARABLE: set[str] = set()


def register_scorer(name: str, needs_calib: bool = False, lamp_normalized: bool = False, comparable: bool = False):
    def deco(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        if needs_calib:
            NEEDS_CALIB.add(name)
        if lamp_normalized:
            LAMP_NORMALIZED.add(name)
        if comparable:
            COMPARABLE.add(name)
        return fn
    return deco


def score_groups(analysis: Analysis, scorer: str = "l2", *, calib=None, seed: int = 0,
                 context: ScoreContext | None = None) -> GroupScores:
    """Scores per prunable group id. Pass ``context`` to keep its notes and cache (statistics)."""
    ctx = context or ScoreContext(analysis, calib=calib, seed=seed)
    if scorer not in SCORERS:
        raise OnnxPruneError(f"unknown scorer '{scorer}' (choose from {', '.join(sorted(SCORERS))})")
    if scorer in NEEDS_CALIB and not ctx.calib:
        raise OnnxPruneError(f"scorer '{scorer}' needs calibration data: pass --calib FILE")
    raw = SCORERS[scorer](ctx)
    return GroupScores(raw, lamp_normalized=scorer in LAMP_NORMALIZED, comparable=scorer in COMPARABLE,
                       energy=getattr(raw, "energy", None))

