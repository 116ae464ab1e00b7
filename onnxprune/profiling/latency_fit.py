"""Fitting per-node latency models to profiled designs: pure numpy, no runtime.

Input: for each design d (a pruned candidate), the width of every group (``W[d, g]``), and for
each executed node its dims and median time in the designs where it ran. Three steps per node:

* **association**: a dim that varies across designs and is a nondecreasing function of one group's
  width in every design (equal, a multiple, or padded to a block: all monotone) belongs to that
  group. This needs no knowledge of fusions, layouts or exporters: it reads what the runtime ran.
* **presence**: ORT picks layouts by channel alignment (NCHWc needs channels in blocks of 8/16), so
  some nodes run only when a group's width is (or is not) a multiple of a block. A rule over one
  or two groups' alignment (AND / OR, negated or not) that explains every design exactly is kept;
  otherwise the node counts with the fraction of designs it ran in.
* **time**: ``t = a + sum_g b_g p_g + sum_{g<h} c_gh p_g p_h [+ sum_g q_g p_g^2]`` with
  ``p_g = ceil(w_g / B_g) * B_g``, coefficients non-negative and fitted on (square-root) relative
  error. The blocks ``B_g`` (the kernels' step structure: MLAS / oneDNN channel blocks; depthwise
  and small-channel kernels step at other sizes than dense ones), whether the quadratic terms are
  in, and whether an alignment regime is (a shift and a work factor when a width is a multiple of
  8 or 16, where ORT switches layout: per group, or one regime when all the node's groups are
  aligned together) are chosen per node by K-fold cross-validation
  over the designs: each candidate is fitted without a fold's designs and scored on them, so a
  richer form is kept only where it predicts designs it was not fitted on better.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

BLOCKS = (1, 4, 8, 16, 32)
PRESENCE_BLOCKS = (32, 16, 8, 4)  # the largest block that explains the data wins
MIN_ASSOC_DESIGNS = 5
ALIGN_BLOCKS = (4, 8, 16)  # MLAS NCHWc block sizes (AVX2 / AVX-512); depthwise convs at multiples of 4 measured fast too
MIN_ALIGNED = 3
# a later candidate must predict held-out folds this much better than the best so far (noise guard)
BLOCK_GAIN = 0.995
CV_FOLDS = 5
MIN_CV_DESIGNS = 10  # fewer designs: choose by the in-sample fit


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
    """When a node runs. With ``groups``: compute per group the indicator "width is a multiple of
    ``block``" (``or_small``: "... or below ``block``", ORT's NCHWc accepts both), negated if
    ``negate_each``; the node runs iff all indicators hold, negated if ``negate_all``. Without
    groups, no rule explained the design and the node counts with the ``fraction`` of designs it
    ran in (its expected contribution)."""
    groups: tuple[int, ...] = ()
    block: int = 0
    or_small: bool = False
    negate_each: bool = False
    negate_all: bool = False
    fraction: float = 1.0

    def mask(self, widths: np.ndarray) -> np.ndarray:
        """Presence (0..1) per row of ``widths`` (columns indexed like the groups)."""
        w = np.asarray(widths)
        if not self.groups:
            return np.full(w.shape[0], self.fraction)
        ind = alignment(w[:, list(self.groups)], self.block, self.or_small)
        run = np.all(~ind if self.negate_each else ind, axis=1)
        return (~run if self.negate_all else run).astype(np.float64)


def alignment(widths: np.ndarray, block: int, or_small: bool) -> np.ndarray:
    """Bool per entry: width is a multiple of ``block`` (or, with ``or_small``, below it)."""
    al = np.asarray(widths) % block == 0
    return al | (np.asarray(widths) < block) if or_small else al


def and_rule(target: np.ndarray, ind: np.ndarray, prefer: tuple[int, ...]) -> tuple[int, ...] | None:
    """One group or a pair whose indicators, ANDed, equal ``target`` in every design (prefer the
    node's own groups); None if there is none."""
    pos = np.flatnonzero(ind[target].all(axis=0))
    if pos.size == 0:
        return None
    neg = ind[~target][:, pos].astype(np.int64)
    single = [int(g) for g in pos[~neg.any(axis=0)]]
    if single:
        return (next((g for g in single if g in prefer), single[0]),)
    both = neg.T @ neg
    i, j = np.nonzero(np.triu(both == 0, 1))
    pairs = [(int(pos[a]), int(pos[b])) for a, b in zip(i, j)]
    if not pairs:
        return None
    return next((p for p in pairs if set(p) <= set(prefer)), pairs[0])


def fit_presence(present: np.ndarray, widths: np.ndarray, candidates: tuple[int, ...],
                 typical: np.ndarray | None = None) -> Presence:
    """An alignment rule (see :class:`Presence`) that explains ``present`` in every design, else
    the presence fraction over the ``typical`` designs (the random, unaligned ones: what a plan
    mostly looks like), all designs without it. Rules need >= 2 designs on each side."""
    if present.all():
        return Presence()
    if min(present.sum(), (~present).sum()) >= 2:
        for block in PRESENCE_BLOCKS:
            for or_small in (False, True):
                ind = alignment(widths, block, or_small)
                for negate_each, negate_all in itertools.product((False, True), repeat=2):
                    target = ~present if negate_all else present
                    rule = and_rule(target, ~ind if negate_each else ind, candidates)
                    if rule is not None:
                        return Presence(rule, block, or_small, negate_each, negate_all)
    rows = present if typical is None or not typical.any() else present[typical]
    return Presence(fraction=float(rows.mean()))


def features(widths: np.ndarray, blocks: tuple[int, ...], pairs: bool, align_block: int = 0,
             quad: bool = False) -> np.ndarray:
    """Design matrix [1, p_g..., p_g p_h..., p_g^2...] for the node's groups (columns of
    ``widths``; the products with ``pairs``, the squares with ``quad``), then, with
    ``align_block``, per group a_g and a_g * prod(p) where a_g = "w_g is a multiple of
    align_block": the layout ORT switches to at aligned widths (NCHWc) has its own cost. A negative
    ``align_block`` (-b) is one joint regime instead, A and A * prod(p) with A = "every group's
    width is a multiple of b": ORT converts a conv to NCHWc only when its input and output channels
    are both aligned."""
    p = [padded(widths[:, k], b) for k, b in enumerate(blocks)]
    cols = [np.ones(widths.shape[0])] + p
    if pairs:
        cols += [p[i] * p[j] for i, j in itertools.combinations(range(len(p)), 2)]
    if quad:
        cols += [x * x for x in p]
    if align_block:
        work = np.prod(np.stack(p, axis=1), axis=1)
        aligned = widths % abs(align_block) == 0
        for a in [aligned.all(axis=1)] if align_block < 0 else aligned.T:
            cols += [a.astype(np.float64), a * work]
    return np.stack(cols, axis=1)


def n_base_features(k: int, pairs: bool, quad: bool = False) -> int:
    """Columns of :func:`features` before the alignment ones (the non-negative ones)."""
    return 1 + k + (k * (k - 1) // 2 if pairs else 0) + (k if quad else 0)


def nonneg_lstsq(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None,
                 n_nonneg: int | None = None) -> tuple[np.ndarray, float]:
    """Weighted least squares with the first ``n_nonneg`` coefficients (default all) >= 0 (active
    set: drop the most negative, refit): a kernel never gets faster with more channels, and a
    negative intercept would make small widths predict below zero. Returns coefficients and the
    weighted sum of squared errors."""
    wts = np.ones_like(y) if weights is None else weights
    n_nonneg = x.shape[1] if n_nonneg is None else n_nonneg
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale * wts[:, None]
    ys = y * wts
    active = list(range(x.shape[1]))
    c = np.zeros(0)
    while active:
        c, *_ = np.linalg.lstsq(xs[:, active], ys, rcond=None)
        constrained = [(v, i) for i, (v, col) in enumerate(zip(c, active)) if col < n_nonneg]
        worst = min(constrained, default=(0.0, -1))
        if worst[0] >= 0:
            break
        active.pop(worst[1])
    coef = np.zeros(x.shape[1])
    coef[active] = c if active else 0.0
    coef /= scale
    return coef, float(np.sum(((x @ coef - y) * wts) ** 2))


@dataclass(frozen=True)
class TimeFit:
    """Fitted time of a node while it runs: blocks per group, and the coefficients of
    :func:`features` (``pairs`` says whether the product terms are in)."""
    blocks: tuple[int, ...]
    coef: tuple[float, ...]
    pairs: bool
    align_block: int = 0
    quad: bool = False

    def predict(self, widths: np.ndarray) -> np.ndarray:
        """ms per row of ``widths`` (columns: the node's groups in order), never below 0."""
        if not self.blocks:
            return np.full(np.asarray(widths).shape[0], self.coef[0])
        x = features(np.asarray(widths, dtype=np.float64), self.blocks, self.pairs, self.align_block, self.quad)
        return np.maximum(x @ np.asarray(self.coef), 0.0)


def block_choices(k: int):
    """Block tuples tried for a node with ``k`` groups: all combinations up to two groups, one
    shared block beyond (the search would grow as 5^k)."""
    if k <= 2:
        return list(itertools.product(BLOCKS, repeat=k))
    return [(b,) * k for b in BLOCKS]


def fit_time(times: np.ndarray, widths: np.ndarray, like: TimeFit | None = None, cv: bool = True) -> TimeFit:
    """Fit a node's ms over the designs it ran in; ``widths`` holds only its own groups' columns.
    The form (blocks, quadratic terms, alignment regime) is chosen by cross-validation
    (:func:`select_form`), or taken from ``like`` (a refit of the same node), then fitted on every
    design. ``cv=False``: the form of MODEL_VERSION 2 (no quadratic terms, blocks by the in-sample
    fit), kept to compare the two on the same designs (benchmarks/latency_model.py)."""
    k = widths.shape[1]
    if k == 0 or times.size < 3:
        return TimeFit((), (float(np.median(times)) if times.size else 0.0,), False)
    pairs = 2 <= k <= 3 and times.size >= 2 * (1 + k + k * (k - 1) // 2)
    # sqrt-relative errors: small widths count without letting the slowest designs dominate
    rel = 1.0 / np.sqrt(np.maximum(times, 1e-3 * max(float(times.max()), 1e-9)))
    if like is not None and len(like.blocks) == k and like.pairs == pairs:
        blocks, align, quad = like.blocks, like.align_block, like.quad
    else:
        blocks, align, quad = select_form(times, widths, rel, pairs, cv)
    coef, _ = nonneg_lstsq(features(widths, blocks, pairs, align, quad), times, rel, n_base_features(k, pairs, quad))
    return TimeFit(tuple(blocks), tuple(float(c) for c in coef), pairs, align, quad)


def select_form(times: np.ndarray, widths: np.ndarray, rel: np.ndarray, pairs: bool,
                cv: bool = True) -> tuple[tuple[int, ...], int, bool]:
    """(blocks, align block, quadratic terms) that predict designs left out of the fit best
    (:func:`cv_error`). Per quadratic/alignment choice, the block candidates are one block shared by
    the node's groups (each of :data:`BLOCKS`) and the per-group blocks that fit all designs best.
    ``cv=False``: linear terms only, every block tuple, scored in-sample."""
    k = widths.shape[1]
    folds = cv_folds(times.size) if cv else []
    best: tuple[float, tuple] | None = None
    for quad in quad_choices(k, times.size, pairs) if cv else (False,):
        n_base = n_base_features(k, pairs, quad)
        for align in align_choices(widths, times.size, n_base, joint=cv):
            fits = {b: nonneg_lstsq(features(widths, b, pairs, align, quad), times, rel, n_base)[1]
                    for b in block_choices(k)}
            candidates = list(dict.fromkeys([min(fits, key=fits.get)] + [(b,) * k for b in BLOCKS])) if cv else fits
            for blocks in candidates:
                err = cv_error(features(widths, blocks, pairs, align, quad), times, rel, n_base, folds)
                if best is None or err < BLOCK_GAIN * best[0]:
                    best = (err, (tuple(blocks), align, quad))
    return best[1]


def quad_choices(k: int, n: int, pairs: bool) -> tuple[bool, ...]:
    """Whether to try the quadratic terms: for one or two groups, with data for them."""
    return (False, True) if k <= 2 and n >= 2 * n_base_features(k, pairs, True) else (False,)


def cv_folds(n: int) -> list[np.ndarray]:
    """Held-out index sets: :data:`CV_FOLDS` interleaved folds (designs alternate kinds, so each
    fold sees every kind), or none (score on the fit itself) below :data:`MIN_CV_DESIGNS`."""
    if n < MIN_CV_DESIGNS:
        return []
    return [np.arange(f, n, CV_FOLDS) for f in range(CV_FOLDS)]


def cv_error(x: np.ndarray, y: np.ndarray, weights: np.ndarray, n_nonneg: int, folds: list[np.ndarray]) -> float:
    """Weighted sum of squared errors on designs left out of the fit (every fold once), or the
    in-sample error without folds."""
    if not folds:
        return nonneg_lstsq(x, y, weights, n_nonneg)[1]
    total = 0.0
    for held in folds:
        train = np.ones(y.size, dtype=bool)
        train[held] = False
        coef, _ = nonneg_lstsq(x[train], y[train], weights[train], n_nonneg)
        total += float(np.sum(((np.maximum(x[held] @ coef, 0.0) - y[held]) * weights[held]) ** 2))
    return total


def align_choices(widths: np.ndarray, n: int, n_base: int, joint: bool = False) -> list[int]:
    """Alignment blocks worth trying: none, and each block at which every group is aligned in at
    least :data:`MIN_ALIGNED` designs and not in as many, with data for the extra coefficients.
    With ``joint`` (two or more groups), also -b: the joint regime of :func:`features`, where the
    designs with all groups aligned and those without number at least MIN_ALIGNED each."""
    out = [0]
    if n < 2 * (n_base + 2 * widths.shape[1]):
        return out
    for b in ALIGN_BLOCKS:
        aligned = (widths % b == 0).sum(axis=0)
        if np.all((aligned >= MIN_ALIGNED) & (n - aligned >= MIN_ALIGNED)):
            out.append(b)
        together = int(np.all(widths % b == 0, axis=1).sum())
        if joint and widths.shape[1] >= 2 and MIN_ALIGNED <= together <= n - MIN_ALIGNED:
            out.append(-b)
    return out


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
             widths: np.ndarray, typical: np.ndarray | None = None) -> NodeModel:
    """Fit one node. ``present``: bool per design; ``dims``/``times``: rows for the designs where it
    ran; ``widths``: all designs x all groups; ``typical``: see :func:`fit_presence`."""
    w_present = widths[present]
    groups = node_groups(dims, w_present)
    presence = fit_presence(present, widths, groups, typical)
    return NodeModel(key, op, groups, presence, fit_time(times, w_present[:, list(groups)]))


def fit_total(node_sums: np.ndarray, walls: np.ndarray) -> tuple[float, float]:
    """``wall ~= fixed + scale * sum of node times`` over the designs: the fixed part is the
    per-run overhead outside kernels, the scale absorbs what profiling itself adds per kernel.
    Falls back to scale 1 when the designs do not span enough range to separate the two. Also
    maps profiled whole-run times onto unprofiled ones."""
    x = np.stack([np.ones_like(node_sums), node_sums], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(x, walls, rcond=None)
    if not (0.5 <= c1 <= 1.5) or np.ptp(node_sums) < 0.1 * np.median(node_sums) or len(walls) < 3:
        c1 = 1.0
        c0 = float(np.median(walls - node_sums))
    return float(c0), float(c1)


def plain_map(profiled: np.ndarray, plain: np.ndarray) -> tuple[float, float]:
    """``plain ~= a + b * profiled`` over designs timed both ways, side by side. Profiling adds a
    cost per executed node (one event each), about the same at every width, so a plain/profiled
    *ratio* over-predicts narrow models: ViT with heads and stream pruned measured 0.70-0.77 at
    two thirds of its widths and 0.44-0.48 at a quarter. The slope is Theil-Sen's (the median of
    the pairwise slopes: a design timed while the machine was busy moves it little), the intercept
    the median residual. Too few designs, too little spread or an implausible slope: the median
    ratio (a = 0)."""
    profiled, plain = np.asarray(profiled, dtype=np.float64), np.asarray(plain, dtype=np.float64)
    ratio = float(np.median(plain / profiled)) if len(plain) else 1.0
    if len(plain) < 4 or np.ptp(profiled) < 0.15 * np.median(profiled):
        return 0.0, ratio
    i, j = np.triu_indices(len(plain), k=1)
    dx = profiled[j] - profiled[i]
    ok = np.abs(dx) > 0.05 * np.median(profiled)
    if ok.sum() < 3:
        return 0.0, ratio
    b = float(np.median((plain[j] - plain[i])[ok] / dx[ok]))
    if not 0.3 <= b <= 1.5:
        return 0.0, ratio
    a = float(np.median(plain - b * profiled))
    # the map must keep every design's time positive: a narrow model must not be predicted at <= 0
    if a + b * profiled.min() <= 0.2 * plain.min():
        return 0.0, ratio
    return a, b


def width_correction(plain: np.ndarray, mapped: np.ndarray, features: np.ndarray, full: float,
                     keep_if: float = 0.9) -> np.ndarray | None:
    """Coefficients ``c`` of ``plain - mapped ~= full * features @ c`` over the designs timed plain
    (``features``: a column of ones and the mean width fraction of each kind of group), or None.
    The affine profiled->plain map is one line through every design, but profiling's overhead is
    not the same share of every design: ViT plans with the stream whole, one head and narrow MLPs
    ran 4-10% faster plain than the line says, at profiled times equal to designs it fitted. Kept
    only when, left out one at a time, the designs are predicted better (median |error| below
    ``keep_if`` x the map's alone): 30 noisy points must not buy a few more parameters for nothing."""
    plain, mapped = np.asarray(plain, dtype=np.float64), np.asarray(mapped, dtype=np.float64)
    X = np.asarray(features, dtype=np.float64)
    n, k = X.shape
    if n < 3 * k + 4 or full <= 0:
        return None
    y = (plain - mapped) / full

    def fit(rows):
        A = X[rows]
        # a little ridge: kinds whose widths barely varied must not get large opposite coefficients
        return np.linalg.solve(A.T @ A + 1e-3 * len(rows) * np.eye(k), A.T @ y[rows])
    loo = np.array([y[i] - X[i] @ fit(np.arange(n) != i) for i in range(n)])
    before = np.median(np.abs(y * full / plain))
    after = np.median(np.abs(loo * full / plain))
    return fit(np.ones(n, dtype=bool)) if after < keep_if * before else None
