"""Coupled group knapsack: one width per channel group when a cost term touches several groups.

:func:`onnxprune.planning.knapsack.solve_group_knapsack` assumes each group's cost is separable. Latency is not:
a conv's time t(c_in, c_out) depends on its input AND its output channel group, so the predicted
latency of a choice ``i`` (one choice index per group) is

    T(i) = fixed + sum_k table_k[i_{g_k1}, i_{g_k2}, ...]

with one dense table per term (usually 1 or 2 groups, sometimes 3). We maximize
``sum_g values[g][i_g]`` subject to ``T(i) <= budget``. With pairwise terms this contains
quadratic knapsack / MAP problems, so it is NP-hard; the solver is a heuristic whose guarantees are:

* **Never over budget.** Every candidate's cost is the exact T (``CoupledInstance.cost``, a
  correctly rounded ``math.fsum`` of the table entries) checked against the budget; a choice that
  exceeds it is never returned as feasible.
* **Feasible whenever the cheapest choice found fits.** The minimum-cost choice is searched by
  coordinate descent on T from the narrowest and the widest start, then (only when that is over
  budget) by joint moves of coupled pairs. It is exact for separable costs and a local minimum in
  general. If it exceeds the budget the result is ``feasible=False`` with that choice.
* **Exact moves.** With all other groups fixed, T restricted to group g is a 1-D array ``C_g``
  (g's term tables sliced along g's axis at the others' indices: numpy slicing, no Python loop
  over table elements), and restricted to a coupled pair it is a 2-D array. Every local step below
  uses these, so each predicted change of T is exact, not a linearization.
* **Deterministic.** Same inputs and ``seed``, same answer; work caps count table entries, not time.

No optimality guarantee (none is cheap: the problem is NP-hard). Against brute force on small
random instances with arbitrary non-monotone tables it finds the optimum ~99% of the time
(tests/test_coupled_solver.py); on a 60-group, 150-term, 512-choice instance it takes ~0.25 s.

Algorithm (every phase offers its choices to a keeper of the best feasible one):

1. Minimum cost (feasibility test, fallback) and maximum value (returned at once if it fits).
2. **Lagrangian relaxation**: maximize ``V(i) - lam * T(i)`` by block-coordinate ascent (each
   group takes its best choice given the others; it terminates because each move raises the
   objective), warm-started from the previous multiplier; bracket lam by factors of 4, then bisect
   it geometrically to the smallest lam whose choice fits.
3. **Repair and fill** the bracketing choices: downgrade by the move with the best cost saved per
   value lost until feasible (or by the one move that alone closes the gap if it loses less), then
   spend the leftover on the best single-group upgrades that keep T <= budget (by value gained and,
   in a second try, by value per cost). This closes most of the Lagrangian duality gap.
4. **Block MCKP** (the multiple-choice knapsack iterated with the neighbours fixed): colour the
   interaction graph (groups sharing a term are adjacent); with the other colours fixed, T is
   *exactly* separable over one colour class, so ``solve_group_knapsack`` (costs rounded up: never
   over budget) re-optimizes the whole class at once. Cycled while the value rises.
5. A few random restarts of the ascent at the final multiplier, each repaired and filled.
6. **Two-group exchanges** on the best few distinct choices: the best feasible move of any two
   groups at once (shrink one to pay for another, or move both ends of a conv together), then a
   fill, while the value rises. Non-adjacent pairs are separable (binary search over each group's
   Pareto moves); adjacent pairs are scanned over their exact 2-D tables, within a work cap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxprune.planning.knapsack import solve_group_knapsack

_REL_EPS = 1e-12  # value scale fraction standing in for "no value lost" in saving/loss ratios


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: terms compare by identity
class CostTerm:
    """One additive latency term: ``table[i_0, i_1, ...]`` with axis j indexing the choices of
    ``groups[j]``. Groups held constant (frozen) are already folded into the table."""
    groups: tuple[int, ...]
    table: np.ndarray

    def __post_init__(self):
        groups = tuple(int(g) for g in self.groups)
        table = np.asarray(self.table, dtype=np.float64)
        if not groups:
            raise ValueError("a cost term needs at least one group")
        if len(set(groups)) != len(groups):
            raise ValueError(f"cost term repeats a group: {groups}")
        if table.ndim != len(groups):
            raise ValueError(f"cost term over groups {groups} needs a {len(groups)}-D table, got {table.ndim}-D")
        if not np.all(np.isfinite(table)):
            raise ValueError(f"cost term over groups {groups}: table entries must be finite")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "table", table)


@dataclass
class CoupledInstance:
    """``values[g][i]``: value of choice i of group g; ``terms``: the latency terms; ``fixed``: the
    latency no group affects. Groups no term touches cost nothing."""
    values: list[np.ndarray]
    terms: list[CostTerm] = field(default_factory=list)
    fixed: float = 0.0

    def __post_init__(self):
        vals = []
        for g, v in enumerate(self.values):
            v = np.asarray(v, dtype=np.float64)
            if v.ndim != 1 or v.size == 0:
                raise ValueError(f"group {g}: values must be a non-empty 1-D array, got shape {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"group {g}: values must be finite")
            vals.append(v)
        self.values = vals
        terms = [t if isinstance(t, CostTerm) else CostTerm(*t) for t in self.terms]
        for k, t in enumerate(terms):
            for j, g in enumerate(t.groups):
                if not 0 <= g < len(vals):
                    raise ValueError(f"term {k}: group {g} out of range (there are {len(vals)} groups)")
                if t.table.shape[j] != vals[g].size:
                    raise ValueError(f"term {k}: axis {j} has {t.table.shape[j]} entries but group {g} "
                                     f"has {vals[g].size} choices")
        self.terms = terms
        self.fixed = float(self.fixed)
        if not math.isfinite(self.fixed):
            raise ValueError("fixed cost must be finite")

    @property
    def sizes(self) -> list[int]:
        return [v.size for v in self.values]

    def _check_choice(self, choice) -> list[int]:
        choice = [int(i) for i in choice]
        if len(choice) != len(self.values):
            raise ValueError(f"choice has {len(choice)} entries for {len(self.values)} groups")
        for g, (i, v) in enumerate(zip(choice, self.values)):
            if not 0 <= i < v.size:
                raise ValueError(f"group {g}: choice {i} out of range 0..{v.size - 1}")
        return choice

    def cost(self, choice) -> float:
        """Exact total latency T(choice) (correctly rounded sum, so independent of term order)."""
        return self._cost(self._check_choice(choice))

    def value(self, choice) -> float:
        choice = self._check_choice(choice)
        return math.fsum(v[i] for v, i in zip(self.values, choice))

    def _cost(self, choice) -> float:
        return math.fsum([self.fixed] + [float(t.table[tuple(choice[g] for g in t.groups)]) for t in self.terms])


@dataclass
class CoupledSolution:
    """``choice[g]``: the picked choice index of group g. ``value`` and ``cost`` are exact totals.
    ``feasible`` is False only when the cheapest choice found exceeds the budget (``choice`` is then
    that choice). ``iterations``: Lagrange multipliers evaluated. ``method``: the phase that produced
    ``choice`` (e.g. "lagrangian+fill", "block-mckp+pairs"); ``lam``: the smallest multiplier whose
    ascent fitted (0 when none was needed); ``notes``: why the answer is what it is, when unusual."""
    choice: list[int]
    value: float
    cost: float
    feasible: bool
    iterations: int = 0
    method: str = ""
    lam: float = 0.0
    notes: list[str] = field(default_factory=list)


class _State:
    """The current choice and, for every group g, ``C_g``: the exact T-contribution of each of g's
    choices with every other group held at its current choice (terms not touching g left out).

    Changing one group only changes ``C_h`` of the groups sharing a term with it, so a move
    refreshes those by slicing their tables. All ``C_g`` live in one flat array so that scans over
    every (group, choice) move are single vectorized operations.
    """

    def __init__(self, inst: CoupledInstance):
        self.inst = inst
        self.n = n = len(inst.values)
        sizes = np.array(inst.sizes, dtype=np.int64)
        self.offs = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.starts = self.offs[:-1]
        self.gid = np.repeat(np.arange(n), sizes)
        self.V = np.concatenate(inst.values)
        self.C = np.zeros(int(self.offs[-1]))
        self.Vg = [self.V[self.offs[g]:self.offs[g + 1]] for g in range(n)]
        self.Cg = [self.C[self.offs[g]:self.offs[g + 1]] for g in range(n)]
        # single-group terms never change: sum them once
        self.own = [np.zeros(int(m)) for m in sizes]
        self.inc: list[list[tuple[CostTerm, int]]] = [[] for _ in range(n)]
        nb: list[set[int]] = [set() for _ in range(n)]
        for t in inst.terms:
            if len(t.groups) == 1:
                self.own[t.groups[0]] += t.table
                continue
            for j, g in enumerate(t.groups):
                self.inc[g].append((t, j))
                nb[g].update(h for h in t.groups if h != g)
        self.nbrs = [sorted(s) for s in nb]
        self.nbr_mask = np.zeros((n, n), dtype=bool)  # g == h or g, h share a term
        for g in range(n):
            self.nbr_mask[g, g] = True
            self.nbr_mask[g, self.nbrs[g]] = True
        # adjacent pairs: the sum of the 2-group tables they share (constant, oriented [i_g, i_h])
        # and the wider terms they share (sliced at the current choice when needed)
        self.edges: dict[tuple[int, int], tuple[np.ndarray | None, list[CostTerm]]] = {}
        for t in inst.terms:
            for g in t.groups:
                for h in t.groups:
                    if g < h:
                        static, wide = self.edges.get((g, h), (None, []))
                        if len(t.groups) == 2:
                            tab = t.table if t.groups == (g, h) else t.table.T
                            static = tab if static is None else static + tab
                        else:
                            wide = wide + [t]
                        self.edges[(g, h)] = (static, wide)
        self.edge_size = sum(int(sizes[g] * sizes[h]) for g, h in self.edges)
        self.cur = [0] * n
        self.set_all([0] * n)

    def _refresh(self, g: int) -> None:
        out = self.Cg[g]
        out[:] = self.own[g]
        for t, j in self.inc[g]:
            out += t.table[tuple(slice(None) if a == j else self.cur[h] for a, h in enumerate(t.groups))]

    def set_all(self, choice) -> None:
        self.cur = [int(i) for i in choice]
        for g in range(self.n):
            self._refresh(g)

    def move(self, g: int, i: int) -> None:
        self.cur[g] = int(i)
        for h in self.nbrs[g]:
            self._refresh(h)

    def flat_move(self, k: int) -> None:
        g = int(self.gid[k])
        self.move(g, k - int(self.offs[g]))

    def total(self) -> float:
        return self.inst._cost(self.cur)

    def value(self) -> float:
        return math.fsum(self.V[self.starts + np.array(self.cur)])

    def pair_table(self, g: int, h: int) -> np.ndarray:
        """P[i, j]: the terms g and h share, at (i_g, i_h) = (i, j), every other group at its current
        choice. T(i, j) - T(cur) = rest_g[i] + rest_h[j] + P[i, j] - (same at cur), with
        rest_g = C_g - P[:, cur_h] and rest_h = C_h - P[cur_g, :]."""
        static, wide = self.edges[(g, h)]
        if not wide:
            return static
        P = np.zeros((self.Vg[g].size, self.Vg[h].size)) if static is None else static.copy()
        for t in wide:
            idx = tuple(slice(None) if x in (g, h) else self.cur[x] for x in t.groups)
            sl = t.table[idx]
            P += sl if t.groups.index(g) < t.groups.index(h) else sl.T
        return P

    def pair_delta(self, g: int, h: int) -> np.ndarray:
        """Exact T change of setting (i_g, i_h) = (i, j) for every (i, j), the others fixed."""
        P = self.pair_table(g, h)
        cg, ch = self.cur[g], self.cur[h]
        rest_g = self.Cg[g] - P[:, ch]
        rest_h = self.Cg[h] - P[cg, :]
        d = rest_g[:, None] + rest_h[None, :] + P
        return d - d[cg, ch]

    def deltas(self) -> tuple[np.ndarray, np.ndarray]:
        """(dT, dV) of every single-group move from the current choice, flat."""
        at = self.starts + np.array(self.cur)
        return self.C - self.C[at][self.gid], self.V - self.V[at][self.gid]


def _ascend(st: _State, lam: float, max_sweeps: int) -> None:
    """Block-coordinate ascent on V - lam*T: each group in turn takes its best choice given the
    others. Each move strictly raises the objective, so it stops (a sweep without a move) or hits
    ``max_sweeps``."""
    for _ in range(max_sweeps):
        moved = False
        for g in range(st.n):
            s = st.Vg[g] - lam * st.Cg[g]
            i = int(s.argmax())
            if s[i] > s[st.cur[g]]:
                st.move(g, i)
                moved = True
        if not moved:
            return


def _descend_cost(st: _State, allowed: list[np.ndarray] | None = None, max_sweeps: int = 100) -> None:
    """Coordinate descent on T alone (ties: more value), optionally within ``allowed[g]`` choices."""
    for _ in range(max_sweeps):
        moved = False
        for g in range(st.n):
            c, v = st.Cg[g], st.Vg[g]
            idx = np.arange(c.size) if allowed is None else allowed[g]
            cc = c[idx]
            best = idx[cc == cc.min()]
            i = int(best[v[best].argmax()])
            j = st.cur[g]
            if c[i] < c[j] or (c[i] == c[j] and v[i] > v[j]):
                st.move(g, i)
                moved = True
        if not moved:
            return


def _descend_cost_pairs(st: _State, work: "_Work") -> None:
    """Coordinate descent on T over coupled pairs (each pair jointly to its exact 2-D minimum, the
    others fixed), alternating with single-group descent, while T falls and the work cap allows."""
    _descend_cost(st)
    while st.edges and work.take(st.edge_size):
        moved = False
        for g, h in st.edges:
            d = st.pair_delta(g, h)
            k = int(d.argmin())
            if d.flat[k] < 0:
                i, j = divmod(k, d.shape[1])
                st.move(g, i)
                st.move(h, j)
                moved = True
        _descend_cost(st)
        if not moved:
            return


def _repair(st: _State, budget: float, eps: float) -> float:
    """Downgrade until T <= budget. Each step takes the move with the most cost saved per value lost,
    unless one move alone closes the gap with no more value lost. Returns the exact T (still over
    budget only if no single-group move lowers T any more)."""
    T = st.total()
    for _ in range(st.C.size + 1):
        if T <= budget:
            break
        dc, dv = st.deltas()
        save, loss = -dc, np.maximum(-dv, 0.0)
        ok = save > 0
        if not ok.any():
            break
        ratio = np.where(ok, save / (loss + eps), -np.inf)
        k = int(ratio.argmax())
        closing = np.flatnonzero(ok & (save >= T - budget))
        if closing.size:
            kc = int(closing[np.lexsort((-save[closing], loss[closing]))[0]])  # least loss, then most saved
            if loss[kc] <= loss[k]:
                k = kc
        st.flat_move(k)
        new = st.total()
        if not new < T:  # the predicted saving was round-off
            break
        T = new
    return T


def _fill(st: _State, budget: float, by_ratio: bool, eps: float) -> float:
    """Spend leftover budget on single-group moves that keep T <= budget: gain value (the largest
    gain, or with ``by_ratio`` the largest gain per added cost, free gains first), or keep the value
    and lower T. (value, -T) rises strictly at each step, so it terminates. Returns the exact T."""
    T = st.total()
    for _ in range(st.C.size + 1):
        dc, dv = st.deltas()
        good = (T + dc <= budget) & ((dv > 0) | ((dv == 0) & (dc < 0)))
        cand = np.flatnonzero(good)
        if not cand.size:
            break
        if by_ratio:
            key = np.where(dc[cand] <= 0, np.inf, dv[cand] / np.maximum(dc[cand], eps))
            # free upgrades (key inf) by value, then by ratio; ties: cheaper
            k = int(cand[np.lexsort((dc[cand], -dv[cand], -key))[0]])
        else:
            k = int(cand[np.lexsort((dc[cand], -dv[cand]))[0]])
        g = int(st.gid[k])
        old = st.cur[g]
        st.flat_move(k)
        new = st.total()
        if new > budget or (dv[k] == 0 and not new < T):  # round-off: undo and stop
            st.move(g, old)
            break
        T = new
    return T


def _pareto_moves(dc: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Indices of the moves no other move beats on both counts (lower-or-equal cost change, higher
    value gain), sorted by cost change; their value gains rise strictly along the order."""
    order = np.lexsort((-dv, dc))
    v = dv[order]
    keep = np.ones(order.size, dtype=bool)
    keep[1:] = v[1:] > np.maximum.accumulate(v)[:-1]
    return order[keep]


def _best_pair(st: _State, slack: float) -> tuple[float, list[tuple[int, int]]]:
    """The two-group move with the largest value gain whose exact T change is <= ``slack``.

    Groups sharing no term change T additively, so only each group's Pareto moves (cost change vs
    value gain) matter, and the best partner in group h of a move is a binary search in h's Pareto
    moves. Groups sharing a term are searched over their exact 2-D table of T changes. Returns
    (gain, [(group, choice), (group, choice)]); gain 0 and no moves when nothing gains.
    """
    dc, dv = st.deltas()
    pareto = [st.offs[g] + _pareto_moves(dc[st.offs[g]:st.offs[g + 1]], dv[st.offs[g]:st.offs[g + 1]])
              for g in range(st.n)]
    q = np.concatenate(pareto)
    qdc, qdv, qg = dc[q], dv[q], st.gid[q]
    best_gain, best_moves = 0.0, []
    for h in range(st.n):
        ph = pareto[h]
        pos = np.searchsorted(dc[ph], slack - qdc, side="right") - 1
        tot = np.where((pos >= 0) & ~st.nbr_mask[h][qg], qdv + dv[ph][np.maximum(pos, 0)], -np.inf)
        k = int(tot.argmax())
        if tot[k] > best_gain:
            a, b = int(q[k]), int(ph[pos[k]])
            best_gain = float(tot[k])
            best_moves = [(int(qg[k]), a - int(st.offs[qg[k]])), (h, b - int(st.offs[h]))]
    for g, h in st.edges:
        d = st.pair_delta(g, h)
        gain = (st.Vg[g] - st.Vg[g][st.cur[g]])[:, None] + (st.Vg[h] - st.Vg[h][st.cur[h]])[None, :]
        gain[d > slack] = -np.inf
        k = int(gain.argmax())
        if gain.flat[k] > best_gain:
            i, j = divmod(k, gain.shape[1])
            best_gain, best_moves = float(gain.flat[k]), [(g, i), (h, j)]
    return best_gain, best_moves


class _Work:
    """A deterministic cap on the pair search: units are table entries scanned."""

    def __init__(self, units: float):
        self.left = float(units)

    def take(self, units: float) -> bool:
        if units > self.left:
            return False
        self.left -= units
        return True


def _pair_polish(st: _State, budget: float, work: _Work, eps: float) -> float:
    """Alternate single-move fills with the best two-group exchange (e.g. shrink one group to pay
    for growing another, or move two coupled groups together) while the value rises and the work
    cap allows. Returns the exact T."""
    T = _fill(st, budget, False, eps)
    per_call = st.edge_size + st.n * st.C.size
    while work.take(per_call):
        gain, moves = _best_pair(st, budget - T)
        if not gain > eps:
            break
        old = list(st.cur)
        for g, i in moves:
            st.move(g, i)
        if st.total() > budget:  # round-off
            st.set_all(old)
            break
        T = _fill(st, budget, False, eps)
    return st.total()


def _colour_classes(st: _State) -> list[list[int]]:
    """Greedy colouring of the interaction graph (largest degree first): no term touches two groups
    of one class, so with the other classes fixed T is exactly separable over a class."""
    colour = [-1] * st.n
    for g in sorted(range(st.n), key=lambda g: -len(st.nbrs[g])):
        used = {colour[h] for h in st.nbrs[g]}
        c = 0
        while c in used:
            c += 1
        colour[g] = c
    classes: dict[int, list[int]] = {}
    for g, c in enumerate(colour):
        classes.setdefault(c, []).append(g)
    return [classes[c] for c in sorted(classes)]


class _Best:
    """The best feasible choice so far (most value, then least cost), and a pool of distinct good
    feasible choices to polish further."""

    def __init__(self, budget: float):
        self.budget = budget
        self.choice: list[int] | None = None
        self.value = -math.inf
        self.cost = math.inf
        self.method = ""
        self.pool: dict[tuple[int, ...], tuple[float, str]] = {}

    def offer(self, st: _State, method: str) -> bool:
        T = st.total()
        if not T <= self.budget:
            return False
        v = st.value()
        self.pool.setdefault(tuple(st.cur), (v, method))
        if v > self.value or (v == self.value and T < self.cost):
            self.choice, self.value, self.cost, self.method = list(st.cur), v, T, method
            return True
        return False


def _polish(st: _State, best: _Best, start: list[int], method: str, eps: float) -> None:
    """Repair then fill from ``start`` (both fill orders), offering the results."""
    for by_ratio in (False, True):
        st.set_all(start)
        if _repair(st, best.budget, eps) <= best.budget:
            _fill(st, best.budget, by_ratio, eps)
            best.offer(st, method)


def _block_mckp(st: _State, best: _Best, classes: list[list[int]], rounds: int, resolution: int,
                eps: float) -> None:
    """Re-optimize one colour class at a time by a group knapsack with the other classes fixed,
    from the best choice; repeat while a full cycle improves the value."""
    if best.choice is None:
        return
    for _ in range(rounds):
        before = best.value
        for cls in classes:
            st.set_all(best.choice)
            T = st.total()
            own = math.fsum(st.Cg[g][st.cur[g]] for g in cls)
            # T = (T - own) + sum over the class of C_g(i_g), exactly: no term touches two of them
            sol = solve_group_knapsack([st.Vg[g] for g in cls], [st.Cg[g].copy() for g in cls],
                                       best.budget - (T - own), resolution=resolution)
            if not sol.feasible:
                continue
            for g, i in zip(cls, sol.choice):
                st.move(g, i)
            _fill(st, best.budget, False, eps)
            best.offer(st, "block-mckp")
        if not best.value > before:
            return


def solve_coupled_knapsack(instance: CoupledInstance, budget: float, *, restarts: int = 3,
                           mckp_rounds: int = 3, mckp_resolution: int = 1024, bisection_steps: int = 40,
                           max_sweeps: int = 50, pair_candidates: int = 6, pair_work: float = 3e7,
                           seed: int = 0) -> CoupledSolution:
    """Choose one index per group maximizing the total value subject to ``instance.cost(choice) <=
    budget``. See the module docstring for the algorithm and its guarantees.

    ``restarts``: random restarts of the Lagrangian ascent; ``mckp_rounds``: cycles of the
    colour-class knapsack (``mckp_resolution`` DP units each); ``pair_candidates``: how many of the
    best distinct choices get the two-group exchange search, within ``pair_work`` table entries
    scanned in all (a deterministic cap: the search costs ~(sum over coupled pairs of m_g * m_h)
    per exchange); ``seed`` makes the restarts reproducible. Same inputs, same answer.
    """
    if not isinstance(instance, CoupledInstance):
        raise TypeError("instance must be a CoupledInstance")
    budget = float(budget)
    if math.isnan(budget):
        raise ValueError("budget is NaN")
    if not instance.values:
        T = instance.fixed
        return CoupledSolution([], 0.0, T, feasible=T <= budget, method="empty")
    st = _State(instance)
    eps = _REL_EPS * max(1.0, float(np.abs(st.V).max()))

    # 1. cheapest (feasibility) from the narrowest and the widest start
    cheapest, cheap_T, cheap_v = _cheapest_choice(st, budget, pair_work)
    if not cheap_T <= budget:
        return CoupledSolution(cheapest, cheap_v, cheap_T, feasible=False, method="min-cost",
                               notes=["even the cheapest choice found exceeds the budget"])
    best = _Best(budget)
    st.set_all(cheapest)
    best.offer(st, "min-cost")

    # ... most valuable (ties: cheapest among equally valuable): optimal if it fits
    top = [np.flatnonzero(v == v.max()) for v in instance.values]
    st.set_all([int(t[0]) for t in top])
    _descend_cost(st, allowed=top)
    if best.offer(st, "unconstrained"):
        return _result(best, 0, 0.0)
    richest, rich_T, rich_v = list(st.cur), st.total(), st.value()

    # 2. Lagrangian: bracket lam (factor 4), then bisect geometrically, warm-starting each ascent
    lam0 = max(rich_v - cheap_v, eps) / max(rich_T - cheap_T, 1e-300)
    lo_choice, hi_choice, hi, evals = _lagrangian_search(st, best, budget, lam0, richest, bisection_steps, max_sweeps)

    # 3. repair / fill the bracketing choices and the best so far
    starts = [lo_choice] + ([hi_choice] if hi_choice is not None else []) + [best.choice]
    for s in dict.fromkeys(tuple(s) for s in starts):
        _polish(st, best, list(s), "lagrangian+fill", eps)

    # 4. exact block knapsacks over independent groups
    _block_mckp(st, best, _colour_classes(st), mckp_rounds, mckp_resolution, eps)

    # 5. random restarts of the ascent at the final multiplier
    rng = np.random.default_rng(seed)
    lam_r = hi if hi is not None else lam0
    for _ in range(restarts):
        st.set_all([int(rng.integers(m)) for m in instance.sizes])
        _ascend(st, lam_r, max_sweeps)
        _polish(st, best, list(st.cur), "restart", eps)

    # 6. two-group exchanges from the best few distinct choices, best first
    work = _Work(pair_work)
    ranked = sorted(best.pool.items(), key=lambda kv: -kv[1][0])[:pair_candidates]
    for choice, (_, method) in ranked:
        st.set_all(choice)
        _pair_polish(st, budget, work, eps)
        best.offer(st, method + "+pairs")
    return _result(best, evals, hi if hi is not None else 0.0)


def _result(best: _Best, evals: int, lam: float) -> CoupledSolution:
    return CoupledSolution(list(best.choice), best.value, best.cost, feasible=True, iterations=evals,
                           method=best.method, lam=lam)


def _cheapest_choice(st: "_State", budget: float, pair_work: float) -> tuple[list[int], float, float]:
    """(choice, cost, value) of the cheapest choice found by cost descent from the narrowest and the
    widest start; when that is over budget, joint moves of coupled pairs get a try (a local minimum
    of T along single groups can hide a cheaper pair move)."""
    cheapest, cheap_T, cheap_v = None, math.inf, -math.inf
    for start in ([0] * st.n, [m - 1 for m in st.inst.sizes]):
        st.set_all(start)
        _descend_cost(st)
        T, v = st.total(), st.value()
        if T < cheap_T or (T == cheap_T and v > cheap_v):
            cheapest, cheap_T, cheap_v = list(st.cur), T, v
    if not cheap_T <= budget:
        st.set_all(cheapest)
        _descend_cost_pairs(st, _Work(pair_work))
        if st.total() < cheap_T:
            cheapest, cheap_T, cheap_v = list(st.cur), st.total(), st.value()
    return cheapest, cheap_T, cheap_v


def _lagrangian_search(st: "_State", best: "_Best", budget: float, lam0: float, richest: list[int],
                       bisection_steps: int, max_sweeps: int):
    """Bracket the multiplier by factors of 4 from ``lam0``, then bisect it geometrically; every
    ascent is offered to ``best``. Returns (choice just over budget, choice within budget or None,
    its multiplier or None, number of ascents)."""
    evals = 0
    lo, hi = 0.0, None
    lo_choice, hi_choice = richest, None

    def evaluate(lam):
        nonlocal evals
        evals += 1
        _ascend(st, lam, max_sweeps)
        best.offer(st, "lagrangian")
        return st.total() <= budget

    lam = lam0
    for _ in range(60):
        if evaluate(lam):
            hi, hi_choice = lam, list(st.cur)
            break
        lo, lo_choice = lam, list(st.cur)
        lam *= 4.0
    if hi is not None and lo == 0.0:  # lam0 already fits: look below it
        lam = hi
        for _ in range(60):
            lam /= 4.0
            if not evaluate(lam):
                lo, lo_choice = lam, list(st.cur)
                break
            hi, hi_choice = lam, list(st.cur)
    if hi is not None and lo > 0.0:
        for _ in range(bisection_steps):
            if hi <= lo * (1 + 1e-6):
                break
            mid = math.sqrt(lo * hi)
            if evaluate(mid):
                hi, hi_choice = mid, list(st.cur)
            else:
                lo, lo_choice = mid, list(st.cur)
    return lo_choice, hi_choice, hi, evals


def op_model_instance(model, choices, scale: float = 1.0) -> CoupledInstance:
    """The coupled knapsack over ``choices``' items (planning/choices.py GroupChoices) priced by an
    op-level latency model (profiling/latency_model.py: ``fixed_ms`` and ``terms()``): one dense table
    per model term, indexed by the item index of each group it touches (ms times ``scale``)."""
    index = {c.group.id: k for k, c in enumerate(choices)}
    fixed, terms = scale * model.fixed_ms, []
    for t in model.terms():
        if not t.groups:
            fixed += scale * float(np.sum(t.fn()))
            continue
        grids = np.meshgrid(*[choices[index[g]].widths.astype(np.float64) for g in t.groups], indexing="ij")
        terms.append(CostTerm(tuple(index[g] for g in t.groups), scale * np.asarray(t.fn(*grids))))
    return CoupledInstance([c.values for c in choices], terms, fixed)
