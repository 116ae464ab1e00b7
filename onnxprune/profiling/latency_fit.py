"""Fitting per-node latency models to profiled designs: pure numpy, no runtime.

Input: for each design d (a pruned candidate), the width of every group (``W[d, g]``), and for
each executed node its dims and median time in the designs where it ran. Three steps per node:

* **association**: a dim that varies across designs and is a nondecreasing function of one group's
  width in every design (equal, a multiple, or padded to a block: all monotone) belongs to that
  group. This needs no knowledge of fusions, layouts or exporters: it reads what the runtime ran.
* **presence**: ORT picks layouts by channel alignment (NCHWc needs channels in blocks of 8/16), so
  some nodes run only when a group's width is (or is not) a multiple of a block. A rule
  "present iff the widths of S are all multiples of B" (or its negation) that explains every design
  exactly is kept; otherwise the node counts with the fraction of designs it ran in.
* **time**: ``t = a + sum_g b_g p_g + sum_{g<h} c_gh p_g p_h`` with ``p_g = ceil(w_g / B_g) * B_g``,
  coefficients non-negative, the block ``B_g`` per group chosen from :data:`BLOCKS` by least
  squares: this is the kernels' step structure (MLAS / oneDNN channel blocks), found from data.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

BLOCKS = (1, 4, 8, 16, 32)
PRESENCE_BLOCKS = (4, 8, 16, 32)
MIN_ASSOC_DESIGNS = 5
# a larger block must fit this much better than the previous choice to be picked (noise guard)
BLOCK_GAIN = 0.995


def padded(w: np.ndarray, block: int) -> np.ndarray:
    """Width rounded up to a multiple of ``block``."""
    w = np.asarray(w, dtype=np.float64)
    return np.ceil(w / block) * block if block > 1 else w


def monotone_groups(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Bool per group: ``values`` (per design) is a nondecreasing function of that group's width."""
    order = np.argsort(widths, axis=0, kind="stable")
    v = values[order]
    w = np.take_along_axis(widths, order, axis=0)
    dv, dw = np.diff(v, axis=0), np.diff(w, axis=0)
    return np.all(dv >= 0, axis=0) & np.all((dw != 0) | (dv == 0), axis=0)


def associate_dims(dims: np.ndarray, widths: np.ndarray) -> list[int]:
    """Group index for each dim column: the monotone group most correlated with it; -1 for a
    constant dim, -2 for a varying dim no single group explains."""
    out = []
    for col in dims.T.astype(np.float64):
        if np.all(col == col[0]):
            out.append(-1)
            continue
        ok = monotone_groups(col, widths)
        if not ok.any():
            out.append(-2)
            continue
        wc = widths - widths.mean(axis=0)
        corr = (wc.T @ (col - col.mean())) / (np.linalg.norm(wc, axis=0) * np.linalg.norm(col - col.mean()) + 1e-12)
        out.append(int(np.argmax(np.where(ok, corr, -np.inf))))
    return out


def node_groups(dims: np.ndarray, widths: np.ndarray) -> tuple[int, ...]:
    """The distinct groups a node's dims depend on, in order of first appearance."""
    if dims.shape[0] < MIN_ASSOC_DESIGNS:
        return ()
    seen: list[int] = []
    for g in associate_dims(dims, widths):
        if g >= 0 and g not in seen:
            seen.append(g)
    return tuple(seen)


@dataclass(frozen=True)
class Presence:
    """When a node runs: always; iff all ``groups`` are multiples of ``block`` (``aligned``) or
    iff not; or, with no rule found, in a ``fraction`` of cases (its expected contribution)."""
    groups: tuple[int, ...] = ()
    block: int = 0
    aligned: bool = True
    fraction: float = 1.0

    def mask(self, widths: np.ndarray) -> np.ndarray:
        """Presence (0..1) per row of ``widths`` (columns indexed like the groups)."""
        if not self.groups:
            return np.full(widths.shape[0], self.fraction)
        al = np.all(np.asarray(widths)[:, list(self.groups)] % self.block == 0, axis=1)
        return (al if self.aligned else ~al).astype(np.float64)


def fit_presence(present: np.ndarray, widths: np.ndarray, candidates: tuple[int, ...]) -> Presence:
    """An alignment rule that explains ``present`` in every design, else the presence fraction.
    Single groups are tried over all groups, pairs over the node's own ``candidates``."""
    if present.all():
        return Presence()
    for block in PRESENCE_BLOCKS:
        aligned = widths % block == 0
        for flag in (True, False):
            hit = np.all((aligned if flag else ~aligned) == present[:, None], axis=0)
            if hit.any():
                single = [g for g in candidates if hit[g]] or list(np.flatnonzero(hit))
                return Presence((int(single[0]),), block, flag)
        for g, h in itertools.combinations(candidates, 2):
            both = aligned[:, g] & aligned[:, h]
            for flag in (True, False):
                if np.array_equal(both if flag else ~both, present):
                    return Presence((g, h), block, flag)
    return Presence(fraction=float(present.mean()))


def features(widths: np.ndarray, blocks: tuple[int, ...], pairs: bool) -> np.ndarray:
    """Design matrix [1, p_g..., p_g p_h...] for the node's groups (columns of ``widths``)."""
    p = [padded(widths[:, k], b) for k, b in enumerate(blocks)]
    cols = [np.ones(widths.shape[0])] + p
    if pairs:
        cols += [p[i] * p[j] for i, j in itertools.combinations(range(len(p)), 2)]
    return np.stack(cols, axis=1)


def nonneg_lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares with every coefficient but the intercept >= 0 (active set: drop the most
    negative, refit); returns coefficients and the sum of squared errors."""
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale
    active = list(range(x.shape[1]))
    while True:
        c, *_ = np.linalg.lstsq(xs[:, active], y, rcond=None)
        neg = [(v, k) for v, k in zip(c[1:], active[1:])]
        worst = min(neg, default=(0.0, -1))
        if worst[0] >= 0:
            break
        active.remove(worst[1])
    coef = np.zeros(x.shape[1])
    coef[active] = c
    coef /= scale
    return coef, float(np.sum((x @ coef - y) ** 2))


@dataclass(frozen=True)
class TimeFit:
    """Fitted time of a node while it runs: blocks per group, and the coefficients of
    :func:`features` (``pairs`` says whether the product terms are in)."""
    blocks: tuple[int, ...]
    coef: tuple[float, ...]
    pairs: bool

    def predict(self, widths: np.ndarray) -> np.ndarray:
        """ms per row of ``widths`` (columns: the node's groups in order)."""
        if not self.blocks:
            return np.full(np.asarray(widths).shape[0], self.coef[0])
        return features(np.asarray(widths, dtype=np.float64), self.blocks, self.pairs) @ np.asarray(self.coef)


def block_choices(k: int):
    """Block tuples tried for a node with ``k`` groups: all combinations up to two groups, one
    shared block beyond (the search would grow as 5^k)."""
    if k <= 2:
        return list(itertools.product(BLOCKS, repeat=k))
    return [(b,) * k for b in BLOCKS]


def fit_time(times: np.ndarray, widths: np.ndarray) -> TimeFit:
    """Fit a node's ms over the designs it ran in; ``widths`` holds only its own groups' columns."""
    k = widths.shape[1]
    if k == 0 or times.size < 3:
        return TimeFit((), (float(np.median(times)) if times.size else 0.0,), False)
    pairs = 2 <= k <= 3 and times.size >= 2 * (1 + k + k * (k - 1) // 2)
    best: tuple[float, TimeFit] | None = None
    for blocks in block_choices(k):
        coef, sse = nonneg_lstsq(features(widths, blocks, pairs), times)
        if best is None or sse < BLOCK_GAIN * best[0]:
            best = (sse, TimeFit(tuple(blocks), tuple(float(c) for c in coef), pairs))
    return best[1]


@dataclass(frozen=True)
class NodeModel:
    """One executed node: its key and op, the group indices it depends on, when it runs, and how
    long it takes when it does."""
    key: str
    op: str
    groups: tuple[int, ...]
    presence: Presence
    time: TimeFit

    def predict(self, widths: np.ndarray) -> np.ndarray:
        """Expected ms per row of ``widths`` (all groups as columns)."""
        w = np.asarray(widths, dtype=np.float64)
        return self.presence.mask(w) * self.time.predict(w[:, list(self.groups)])


def fit_node(key: str, op: str, present: np.ndarray, dims: np.ndarray, times: np.ndarray,
             widths: np.ndarray) -> NodeModel:
    """Fit one node. ``present``: bool per design; ``dims``/``times``: rows for the designs where it
    ran; ``widths``: all designs x all groups."""
    w_present = widths[present]
    groups = node_groups(dims, w_present)
    presence = fit_presence(present, widths, groups)
    return NodeModel(key, op, groups, presence, fit_time(times, w_present[:, list(groups)]))


def fit_total(node_sums: np.ndarray, walls: np.ndarray) -> tuple[float, float]:
    """``wall ~= fixed + scale * sum of node times`` over the designs: the fixed part is the
    per-run overhead outside kernels, the scale absorbs what profiling itself adds per kernel.
    Falls back to scale 1 when the designs do not span enough range to separate the two."""
    x = np.stack([np.ones_like(node_sums), node_sums], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(x, walls, rcond=None)
    if not (0.5 <= c1 <= 1.5) or np.ptp(node_sums) < 0.1 * np.median(node_sums):
        c1 = 1.0
        c0 = float(np.median(walls - node_sums))
    return float(c0), float(c1)
