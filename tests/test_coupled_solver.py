"""Coupled group knapsack: never over budget, near-optimal against brute force, fast at model scale."""
from __future__ import annotations

import time

import numpy as np
import pytest

from onnxprune.planning.coupled import CostTerm, CoupledInstance, CoupledSolution, solve_coupled_knapsack
from onnxprune.planning.knapsack import solve_group_knapsack


def staircase(m: int, step: int) -> np.ndarray:
    """Kernel-tile latency steps: widths 1..m rounded up to multiples of ``step``."""
    return np.ceil(np.arange(1, m + 1) / step)


def random_table(rng, shape, kind):
    """'random': arbitrary non-monotone costs; 'stair': product of staircases (conv-like);
    'noisy': the staircase plus noise big enough that wider is sometimes cheaper."""
    if kind == "random":
        return rng.uniform(-1, 4, shape)
    step = int(rng.integers(1, 3))
    t = np.ones(shape)
    for axis, m in enumerate(shape):
        t = t * staircase(m, step).reshape([m if a == axis else 1 for a in range(len(shape))])
    t = t * rng.uniform(0.2, 1.0) + rng.uniform(0, 1)
    if kind == "noisy":
        t = t + rng.normal(0, 0.3 * t.std() + 0.1, shape)
    return t


def random_instance(rng) -> CoupledInstance:
    n = int(rng.integers(4, 6))
    sizes = [int(rng.integers(3, 7)) for _ in range(n)]
    # non-decreasing values, with ties (zero increments)
    values = [np.cumsum(rng.random(m) * (rng.random(m) < 0.85)) + rng.random() for m in sizes]
    kinds = ["stair", "noisy", "random"]
    terms = [CostTerm((g,), random_table(rng, (sizes[g],), rng.choice(kinds)))
             for g in range(n) if rng.random() < 0.6]
    for _ in range(int(rng.integers(2, 2 * n))):
        k = 3 if rng.random() < 0.1 else 2
        gs = tuple(int(x) for x in rng.choice(n, k, replace=False))
        terms.append(CostTerm(gs, random_table(rng, tuple(sizes[g] for g in gs),
                                               rng.choice(kinds, p=[0.4, 0.4, 0.2]))))
    return CoupledInstance(values, terms, fixed=float(rng.uniform(0, 3)))


def dense(inst: CoupledInstance) -> tuple[np.ndarray, np.ndarray]:
    """Value and cost of every combination, as n-D arrays (brute force)."""
    sizes = inst.sizes
    n = len(sizes)
    V = np.zeros(sizes)
    T = np.full(sizes, inst.fixed)
    for g, v in enumerate(inst.values):
        V = V + v.reshape([sizes[g] if a == g else 1 for a in range(n)])
    for t in inst.terms:
        tab = np.transpose(t.table, np.argsort(t.groups))
        T = T + tab.reshape([sizes[a] if a in t.groups else 1 for a in range(n)])
    return V, T


def check_solution(inst, sol, budget):
    assert isinstance(sol, CoupledSolution)
    assert sol.cost == inst.cost(sol.choice)
    assert sol.value == pytest.approx(inst.value(sol.choice))
    if sol.feasible:
        assert sol.cost <= budget


def test_brute_force_small_random_instances():
    rng = np.random.default_rng(2024)
    n_inst, n_feasible, equal, within_1pct, ratios = 200, 0, 0, 0, []
    for _ in range(n_inst):
        inst = random_instance(rng)
        V, T = dense(inst)
        span = T.max() - T.min()
        budget = float(rng.uniform(T.min() - 0.05 * span, T.max()))
        sol = solve_coupled_knapsack(inst, budget)
        check_solution(inst, sol, budget)
        ok = T <= budget
        if not ok.any():
            assert not sol.feasible
            continue
        n_feasible += 1
        assert sol.feasible, "brute force found a feasible choice, the solver did not"
        opt = float(V[ok].max())
        assert sol.value <= opt + 1e-9
        ratios.append(sol.value / opt)
        equal += sol.value >= opt - 1e-9
        within_1pct += sol.value >= 0.99 * opt
    # observed (seed 2024): 189 feasible, 187 optimal (98.9%), 188 within 1% (99.5%), worst 0.948;
    # without the restarts, block knapsack and pair exchanges: 177 optimal, 178 within 1%
    assert n_feasible >= 150
    assert within_1pct >= 0.95 * n_feasible
    assert equal >= 0.93 * n_feasible
    assert min(ratios) >= 0.85


def test_cost_matches_the_dense_tensor():
    rng = np.random.default_rng(5)
    for _ in range(20):
        inst = random_instance(rng)
        _, T = dense(inst)
        for _ in range(10):
            choice = [int(rng.integers(m)) for m in inst.sizes]
            assert inst.cost(choice) == pytest.approx(T[tuple(choice)], rel=1e-12, abs=1e-12)


def chain_instance(widths, seed=0):
    """A conv chain: group g is the channel count between conv g and conv g+1, so conv k's time
    t(c_in, c_out) ~ c_in * c_out couples groups k and k+1 (plus per-group elementwise terms)."""
    rng = np.random.default_rng(seed)
    n = len(widths)
    values = [np.cumsum(np.sort(rng.random(m))[::-1]) for m in widths]
    terms = [CostTerm((k, k + 1), 1e-3 * np.outer(staircase(widths[k], 4), staircase(widths[k + 1], 4)))
             for k in range(n - 1)]
    terms += [CostTerm((g,), 1e-3 * staircase(widths[g], 8)) for g in range(n)]
    return CoupledInstance(values, terms, fixed=0.5)


def test_chain_separable_deltas_overshoot_but_coupled_fits():
    inst = chain_instance([32, 48, 64, 48, 32, 64])
    full = [m - 1 for m in inst.sizes]
    t_full = inst.cost(full)
    # the separable model: each group's cost delta measured with its neighbours at full width
    deltas = []
    for g, m in enumerate(inst.sizes):
        deltas.append(np.array([inst.cost(full[:g] + [i] + full[g + 1:]) for i in range(m)]) - t_full)
    budget = inst.cost([0] * len(full)) + 0.35 * (t_full - inst.cost([0] * len(full)))
    sep = solve_group_knapsack(inst.values, deltas, budget - t_full)
    assert sep.feasible  # the separable model thinks it fits ...
    assert inst.cost(sep.choice) > budget * 1.01  # ... but shrinking both ends of a conv saves less
    sol = solve_coupled_knapsack(inst, budget)
    check_solution(inst, sol, budget)
    assert sol.feasible and sol.cost <= budget
    assert sol.cost >= budget - 0.01 * (t_full - budget)  # and it spends the budget


def test_infeasible_budget_returns_the_cheapest_choice():
    rng = np.random.default_rng(9)
    for _ in range(30):
        inst = random_instance(rng)
        _, T = dense(inst)
        budget = float(T.min()) - 0.5
        sol = solve_coupled_knapsack(inst, budget)
        check_solution(inst, sol, budget)
        assert not sol.feasible
        assert sol.cost > budget
        assert sol.cost <= T.min() + 0.25 * (T.max() - T.min())  # a (local) minimum of T
    # separable costs: the coordinate descent finds the exact minimum
    inst = CoupledInstance([np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0])],
                           [CostTerm((0,), np.array([4.0, 3.0, 3.0])), CostTerm((1,), np.array([2.0, 6.0]))])
    sol = solve_coupled_knapsack(inst, 4.0)
    assert not sol.feasible and sol.choice == [2, 0] and sol.cost == 5.0 and sol.value == 4.0


def test_non_monotone_costs_prefer_the_cheaper_wider_choice():
    # choice 2 of group 0 is cheaper than choice 1 (a kernel step): it is free value
    values = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0])]
    terms = [CostTerm((0, 1), np.array([[1.0, 2.0], [3.0, 6.0], [2.0, 4.0]]))]
    inst = CoupledInstance(values, terms)
    sol = solve_coupled_knapsack(inst, 3.0)
    assert sol.feasible and sol.choice == [2, 0] and sol.cost == 2.0 and sol.value == 4.0
    sol = solve_coupled_knapsack(inst, 4.0)
    assert sol.choice == [2, 1] and sol.value == 5.0


def test_unconstrained_and_untouched_groups():
    values = [np.array([1.0, 2.0, 2.0]), np.array([0.0, 7.0]), np.array([3.0, 1.0])]
    terms = [CostTerm((0,), np.array([1.0, 2.0, 1.5]))]  # groups 1 and 2 cost nothing
    inst = CoupledInstance(values, terms, fixed=1.0)
    sol = solve_coupled_knapsack(inst, np.inf)
    assert sol.feasible and sol.choice == [2, 1, 0]  # max value; among equal values the cheaper
    sol = solve_coupled_knapsack(inst, 2.0)
    assert sol.choice == [0, 1, 0] and sol.cost == 2.0 and sol.value == 11.0


def test_three_group_term_and_single_choice_groups():
    rng = np.random.default_rng(1)
    values = [np.cumsum(rng.random(4)), np.array([5.0]), np.cumsum(rng.random(3))]
    terms = [CostTerm((2, 0, 1), rng.random((3, 4, 1))), CostTerm((0, 2), rng.random((4, 3)))]
    inst = CoupledInstance(values, terms)
    V, T = dense(inst)
    for budget in np.linspace(T.min(), T.max(), 9):
        sol = solve_coupled_knapsack(inst, budget)
        check_solution(inst, sol, budget)
        assert sol.feasible and sol.value == pytest.approx(V[T <= budget].max())


def test_empty_instance():
    assert solve_coupled_knapsack(CoupledInstance([], [], fixed=2.0), 3.0).feasible
    sol = solve_coupled_knapsack(CoupledInstance([], [], fixed=2.0), 1.0)
    assert not sol.feasible and sol.cost == 2.0 and sol.choice == []


def test_deterministic():
    rng = np.random.default_rng(3)
    inst = random_instance(rng)
    _, T = dense(inst)
    budget = float(T.min() + 0.4 * (T.max() - T.min()))
    a, b = solve_coupled_knapsack(inst, budget), solve_coupled_knapsack(inst, budget)
    assert a.choice == b.choice and a.value == b.value


def test_validation_errors():
    v = [np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0])]
    with pytest.raises(ValueError, match="axis 1 has 2 entries but group 1 has 3"):
        CoupledInstance(v, [CostTerm((0, 1), np.zeros((2, 2)))])
    with pytest.raises(ValueError, match="2-D table"):
        CostTerm((0, 1), np.zeros(2))
    with pytest.raises(ValueError, match="repeats a group"):
        CostTerm((1, 1), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least one group"):
        CostTerm((), np.zeros(()))
    with pytest.raises(ValueError, match="finite"):
        CostTerm((0,), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="out of range"):
        CoupledInstance(v, [CostTerm((2,), np.zeros(2))])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        CoupledInstance([np.array([])], [])
    with pytest.raises(ValueError, match="finite"):
        CoupledInstance([np.array([np.inf])], [])
    with pytest.raises(ValueError, match="fixed"):
        CoupledInstance(v, [], fixed=np.nan)
    inst = CoupledInstance(v, [((0, 1), np.ones((2, 3)))])  # (groups, table) tuples are accepted
    assert inst.cost([1, 2]) == 1.0
    with pytest.raises(ValueError, match="entries for 2 groups"):
        inst.cost([0])
    with pytest.raises(ValueError, match="out of range"):
        inst.cost([0, 3])
    with pytest.raises(ValueError, match="NaN"):
        solve_coupled_knapsack(inst, float("nan"))


def large_instance(seed=0, n=60, n_terms=150):
    """Model-sized: 60 groups of 64..512 choices; conv chain + skip convs (2-group, staircase x
    staircase with 2% noise) and per-group elementwise terms, 150 terms in all."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.choice([64, 128, 256, 384, 512])) for _ in range(n)]
    values = [np.cumsum(np.sort(rng.random(m))[::-1]) for m in sizes]

    def conv(a, b):
        t = rng.uniform(1e-6, 1e-5) * np.outer(staircase(sizes[a], 8), staircase(sizes[b], 16))
        return CostTerm((a, b), t * (1 + rng.normal(0, 0.02, t.shape)))

    terms = [conv(g, g + 1) for g in range(n - 1)]
    terms += [CostTerm((g,), 1e-4 * staircase(sizes[g], 32) + rng.normal(0, 1e-5, sizes[g])) for g in range(n)]
    while len(terms) < n_terms:
        a = int(rng.integers(0, n - 3))
        terms.append(conv(a, a + int(rng.integers(2, 4))))
    return CoupledInstance(values, terms, fixed=1.0)


def marginal_costs(inst, choice, g):
    """T of every choice of group g with the others fixed (independent of the solver's own code)."""
    out = np.full(inst.sizes[g], inst.cost(choice))
    for t in inst.terms:
        if g in t.groups:
            j = t.groups.index(g)
            sl = t.table[tuple(slice(None) if a == j else choice[h] for a, h in enumerate(t.groups))]
            out += sl - sl[choice[g]]
    return out


def test_large_instance_is_fast_and_locally_optimal():
    inst = large_instance()
    assert len(inst.terms) == 150 and max(inst.sizes) == 512
    lo, hi = inst.cost([0] * 60), inst.cost([m - 1 for m in inst.sizes])
    budget = lo + 0.5 * (hi - lo)
    t0 = time.perf_counter()
    sol = solve_coupled_knapsack(inst, budget)
    elapsed = time.perf_counter() - t0
    # observed: ~0.25 s on a 2-core machine shared with other jobs
    assert elapsed < 10.0
    check_solution(inst, sol, budget)
    assert sol.feasible and sol.cost <= budget
    assert sol.cost >= budget - 1e-3 * (hi - lo)
    # no single group can take a more valuable choice and stay within budget
    for g in range(0, 60, 6):
        T = marginal_costs(inst, sol.choice, g)
        better = inst.values[g] > inst.values[g][sol.choice[g]]
        assert not np.any(better & (T <= budget - 1e-12 * abs(budget)))
