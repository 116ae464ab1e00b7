"""Group (multiple-choice) knapsack: pick one width per channel group under a latency budget.

Each class l is one channel group; its items are "keep the top i+1 channels" with a value (e.g. the
sum of the kept SP-LAMP scores, :func:`onnxprune.scoring.lamp.cumulative_keep_values`) and a cost (the
group's latency contribution at that width, from a lookup table). Exactly one item per class is
chosen, so a group can shrink but never vanish (the point of the group knapsack over HALP's 0-1
knapsack, Sec. 3.2 of the SP-LAMP paper). We maximize the total value with the total cost <= budget.

The solver is the paper's dynamic program (Eq. 10, Algorithm 1) over an integer cost axis, with
three changes that keep it exact where it can be and fast everywhere:

* **Shift per class.** Every class must pay at least its cheapest item, so subtract each class's
  minimum cost from its items and from the budget. The DP then only spans the *discretionary*
  budget, and negative or non-monotone costs (measurement noise: removing a channel can make a
  model slower) need no special case.
* **Discretize, rounding costs up.** Integer costs (after dividing by their gcd) are used as they
  are when they fit in ``resolution`` units: the result is the exact optimum. Otherwise the
  discretionary budget is split into ``resolution`` units of size ``unit`` and each shifted cost is
  rounded UP to whole units. A selection that fits in the rounded instance then fits in the true
  one (sum(cost) <= sum(ceil(cost/unit))*unit <= capacity*unit = budget), so the answer never
  exceeds the true budget. The price is conservatism: each class may waste up to one unit, at most
  ``n_classes/resolution`` of the discretionary budget. A greedy pass then spends the true leftover
  budget on the best single-class upgrades (``fill_slack``), which only ever raises the value.
  The paper scales milliseconds by 1e4 and rounds to nearest, which can overshoot the budget.
* **Drop dominated items.** An item that costs at least as much as another (after rounding) but is
  worth no more can never be in an optimum; latency curves are staircases, so most widths share a
  cost with a wider, more valuable one and a class of 512 items shrinks to its few distinct steps.
  Items that cost more than the whole discretionary budget are dropped too.

The DP itself is vectorized per class: ``f_new[c] = max_i f_old[c - w_i] + v_i`` as one gather +
argmax over a (items x capacity) matrix, and only up to the capacity the classes so far can reach
(beyond it the table is flat). The argmax tables are kept to backtrack the choices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DEFAULT_RESOLUTION = 4096
_CHUNK_ELEMENTS = 1 << 20  # max (items x capacity) matrix built at once: 8 MiB of float64, cache-friendly


@dataclass
class KnapsackSolution:
    """``choice[l]`` is the index of the item picked in class l (item i = keep the top i+1 channels).

    ``value`` and ``cost`` are the true (not discretized) totals of that choice. ``feasible`` is
    False only when even the cheapest item of every class together exceeds the budget; ``choice``
    is then that cheapest selection. ``exact`` says the choice is a proven optimum of the true
    instance (integer costs solved on their own grid, or the unconstrained best fits);
    otherwise it is optimal for the rounded-up instance and then greedily improved. ``unit`` is the
    cost of one DP unit (0 when no DP was needed).
    """
    choice: list[int]
    value: float
    cost: float
    feasible: bool
    exact: bool = True
    unit: float = 0.0


@dataclass
class Discretization:
    """The integer instance the DP solves: per-class shifted costs in units, and the capacity."""
    weights: list[np.ndarray]  # int64, >= 0, capped at capacity + 1 (anything above cannot fit)
    capacity: int
    unit: float
    base: np.ndarray  # per-class minimum cost that was subtracted
    exact: bool  # True when weights * unit == shifted costs exactly and capacity * unit covers the budget exactly


def _check_instance(values, costs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(values) != len(costs):
        raise ValueError(f"values has {len(values)} classes but costs has {len(costs)}")
    vs, cs = [], []
    for l, (v, c) in enumerate(zip(values, costs)):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if v.size == 0 or v.size != c.size:
            raise ValueError(f"class {l}: needs one or more items and as many costs as values "
                             f"(got {v.size} values, {c.size} costs)")
        if not (np.all(np.isfinite(v)) and np.all(np.isfinite(c))):
            raise ValueError(f"class {l}: values and costs must be finite")
        vs.append(v)
        cs.append(c)
    return vs, cs


def discretize(costs: list[np.ndarray], budget: float, resolution: int | None = None) -> Discretization:
    """Shift each class by its cheapest item and map the costs onto an integer grid.

    Integer-valued costs use the grid of their gcd when the discretionary budget spans at most
    ``resolution`` grid steps: exact. Anything else gets ``unit = discretionary budget /
    resolution`` with costs rounded up (see the module docstring for why up). Raises ValueError
    if the budget cannot pay for the cheapest item of every class.
    """
    res = DEFAULT_RESOLUTION if resolution is None else int(resolution)
    if res < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    costs = [np.asarray(c, dtype=np.float64).reshape(-1) for c in costs]
    base = np.array([c.min() for c in costs]) if costs else np.zeros(0)
    shifted = [c - b for c, b in zip(costs, base)]
    slack = float(budget) - float(base.sum())
    if -1e-9 * max(1.0, abs(float(base.sum()))) <= slack < 0:
        slack = 0.0  # a budget equal to the cheapest choice, summed in another order by the caller
    if not slack >= 0:
        raise ValueError(f"budget {budget} is below the cheapest choice ({base.sum()})")

    allw = np.concatenate(shifted) if shifted else np.zeros(0)
    integer = bool(np.all(allw == np.floor(allw)) and np.all(np.abs(allw) < 2.0 ** 53))
    if integer:
        ints = allw.astype(np.int64)
        pos = ints[ints > 0]
        g = int(np.gcd.reduce(pos)) if pos.size else 1
        cap = int(min(np.floor(slack / g), np.iinfo(np.int64).max // 4)) if np.isfinite(slack) else None
        if cap is not None and cap <= res:
            weights = [np.minimum(s.astype(np.int64) // g, cap + 1) for s in shifted]
            return Discretization(weights, cap, float(g), base, exact=True)

    if slack == 0 or not np.isfinite(slack):
        # Nothing discretionary to spend (every positive cost overflows), or an infinite budget
        # (callers take the "best fits" shortcut before this; kept total for direct use).
        unit, cap = 1.0, (0 if slack == 0 else res)
        if not np.isfinite(slack):
            unit = max(float(allw.max(initial=0.0)), 1.0)
    else:
        unit, cap = slack / res, res
    weights = [np.minimum(np.ceil(s / unit), cap + 1).astype(np.int64) for s in shifted]
    return Discretization(weights, cap, unit, base, exact=False)


def pareto_items(weights: np.ndarray, values: np.ndarray, capacity: int | None = None) -> np.ndarray:
    """Indices of the items worth considering, sorted by weight ascending (then value descending).

    An item is dropped when another is no heavier and at least as valuable (ties keep the lowest
    index), or when it weighs more than ``capacity``. Along the returned order the values rise
    strictly, so the DP's first-argmax picks the cheapest of equally good options.
    """
    w = np.asarray(weights)
    v = np.asarray(values, dtype=np.float64)
    idx = np.arange(w.size)
    if capacity is not None:
        idx = idx[w <= capacity]
    order = idx[np.lexsort((idx, -v[idx], w[idx]))]
    vs = v[order]
    keep = np.ones(order.size, dtype=bool)
    if order.size > 1:
        keep[1:] = vs[1:] > np.maximum.accumulate(vs)[:-1]
    return order[keep]


def _dp_class(f: np.ndarray, w: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """best[c] = max_i f[c - w_i] + v_i for c in 0..len(f)-1, and the first arg i reaching it."""
    width = f.size
    maxw = int(w.max())
    pad = np.empty(maxw + width)
    pad[:maxw] = -np.inf
    pad[maxw:] = f
    windows = sliding_window_view(pad, width)  # windows[s][c] = pad[s + c]; s = maxw - w_i gives f[c - w_i]
    cols = np.arange(width)
    step = max(1, _CHUNK_ELEMENTS // width)
    best_val = best_idx = None
    for start in range(0, w.size, step):
        m = windows[maxw - w[start:start + step]] + v[start:start + step, None]
        ci = m.argmax(axis=0)
        cv = m[ci, cols]
        if best_val is None:
            best_val, best_idx = cv, ci
        else:
            upd = cv > best_val
            best_val[upd] = cv[upd]
            best_idx[upd] = ci[upd] + start
    return best_val, best_idx


def solve_discrete(weights: list[np.ndarray], values: list[np.ndarray], capacity: int, *,
                   prune_dominated: bool = True) -> tuple[list[int], float]:
    """Exact group knapsack on integer weights >= 0, every class having a weight-0 item.

    Returns (choice per class, optimal total value). ``prune_dominated=False`` runs the DP over
    every item that fits (for tests: pruning must not change the optimum).
    """
    f = np.zeros(capacity + 1)
    reach = 0
    tables = []
    for w_all, v_all in zip(weights, values):
        w_all = np.asarray(w_all, dtype=np.int64)
        v_all = np.asarray(v_all, dtype=np.float64)
        if prune_dominated:
            items = pareto_items(w_all, v_all, capacity)
        else:
            items = np.flatnonzero(w_all <= capacity)
            items = items[np.lexsort((items, w_all[items]))]
        if items.size == 0 or w_all[items].min() != 0:
            raise ValueError("every class needs an item of weight 0 (shift costs by the class minimum)")
        w, v = w_all[items], v_all[items]
        reach = min(capacity, reach + int(w.max()))
        best_val, best_idx = _dp_class(f[:reach + 1], w, v)
        f = np.empty(capacity + 1)
        f[:reach + 1] = best_val
        f[reach + 1:] = best_val[-1]  # nothing heavier than `reach` exists: the table is flat beyond
        tables.append((items, w, best_idx.astype(np.int32), reach))

    choice = [0] * len(tables)
    c = capacity
    for l in range(len(tables) - 1, -1, -1):
        items, w, best_idx, reach = tables[l]
        c = min(c, reach)
        j = int(best_idx[c])
        choice[l] = int(items[j])
        c -= int(w[j])
    return choice, float(f[capacity]) if tables else 0.0


def _fill_slack(choice: list[int], values: list[np.ndarray], costs: list[np.ndarray], budget: float) -> list[int]:
    """Spend the true leftover budget: repeatedly switch the one class whose switch gains the most
    value while the total stays within budget. Each step raises the value, so it terminates."""
    sizes = np.array([c.size for c in costs])
    offs = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    cls = np.repeat(np.arange(len(costs)), sizes)
    allc, allv = np.concatenate(costs), np.concatenate(values)
    cur = np.array(choice, dtype=np.int64)
    for _ in range(int(sizes.sum()) + 1):
        cur_c, cur_v = allc[offs + cur], allv[offs + cur]
        slack = budget - cur_c.sum()
        dc, dv = allc - cur_c[cls], allv - cur_v[cls]
        gain = np.where((dc <= slack) & (dv > 0), dv, -np.inf)
        k = int(gain.argmax())
        if not gain[k] > 0:
            break
        l = int(cls[k])
        cur[l] = k - offs[l]
    return [int(i) for i in cur]


def _totals(choice, values, costs) -> tuple[float, float]:
    return (float(sum(v[i] for v, i in zip(values, choice))), float(sum(c[i] for c, i in zip(costs, choice))))


def solve_group_knapsack(values: list[np.ndarray], costs: list[np.ndarray], budget: float, *,
                         resolution: int | None = None, fill_slack: bool = True) -> KnapsackSolution:
    """Choose one item per class maximizing sum(values) subject to sum(costs) <= budget.

    ``values[l][i]`` / ``costs[l][i]``: value and cost of item i of class l (floats; costs may be
    negative or non-monotone). ``resolution``: number of DP units the discretionary budget
    (budget minus every class's cheapest cost) is divided into; default 4096. Integer costs whose
    discretionary budget fits in that many gcd steps are solved exactly; otherwise costs are
    rounded up to units (the solution never exceeds the true budget) and ``fill_slack`` greedily
    spends what rounding left over. Runtime grows with resolution x (distinct cost steps per class).
    """
    vs, cs = _check_instance(values, costs)
    budget = float(budget)
    if np.isnan(budget):
        raise ValueError("budget is NaN")
    if not vs:
        return KnapsackSolution([], 0.0, 0.0, feasible=budget >= 0)

    tol = 1e-9 * max(1.0, abs(budget))  # float round-off: sums of the same costs in another order
    cheapest = [int(np.lexsort((-v, c))[0]) for v, c in zip(vs, cs)]  # min cost, then max value
    value, cost = _totals(cheapest, vs, cs)
    if cost > budget + tol:
        return KnapsackSolution(cheapest, value, cost, feasible=False)

    best = [int(np.lexsort((c, -v))[0]) for v, c in zip(vs, cs)]  # max value, then min cost
    value, cost = _totals(best, vs, cs)
    if cost <= budget:
        return KnapsackSolution(best, value, cost, feasible=True)

    disc = discretize(cs, budget, resolution)
    choice, _ = solve_discrete(disc.weights, vs, disc.capacity)
    if fill_slack and not disc.exact:
        choice = _fill_slack(choice, vs, cs, budget)
    value, cost = _totals(choice, vs, cs)
    # Rounding up guarantees cost <= budget in exact arithmetic; allow float round-off in the sums.
    feasible = cost <= budget + tol
    return KnapsackSolution(choice, value, cost, feasible=feasible, exact=disc.exact, unit=disc.unit)
