"""Group knapsack: exact against brute force on small instances; safe (never over budget) on floats."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxprune.planning.knapsack import (KnapsackSolution, discretize, pareto_items, solve_discrete,
                             solve_group_knapsack)


def brute_force(values, costs, budget):
    """(best value, choice) over every combination with total cost <= budget, or None."""
    best = None
    for choice in itertools.product(*[range(len(v)) for v in values]):
        cost = sum(c[i] for c, i in zip(costs, choice))
        if cost > budget:
            continue
        value = sum(v[i] for v, i in zip(values, choice))
        if best is None or value > best[0]:
            best = (value, choice)
    return best


def random_instance(rng, integer: bool, max_classes=4, max_items=6):
    n_classes = int(rng.integers(1, max_classes + 1))
    values, costs = [], []
    for _ in range(n_classes):
        n = int(rng.integers(1, max_items + 1))
        values.append(np.cumsum(rng.random(n)) if rng.random() < 0.7 else rng.random(n) * 5)
        # non-monotone, sometimes negative costs (measurement noise)
        c = rng.integers(-5, 25, n).astype(float) if integer else rng.uniform(-2.0, 10.0, n)
        costs.append(c)
    lo = sum(c.min() for c in costs)
    hi = sum(c.max() for c in costs)
    budget = float(rng.integers(int(lo) - 3, int(hi) + 3)) if integer else float(rng.uniform(lo - 1, hi + 1))
    return values, costs, budget


def total(choice, arrays):
    return sum(a[i] for a, i in zip(arrays, choice))


@pytest.mark.parametrize("seed", range(4))
def test_integer_costs_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        values, costs, budget = random_instance(rng, integer=True)
        sol = solve_group_knapsack(values, costs, budget)
        ref = brute_force(values, costs, budget)
        if ref is None:
            assert not sol.feasible
            continue
        assert sol.feasible and sol.exact
        assert sol.cost <= budget
        assert sol.value == pytest.approx(ref[0], abs=1e-9)
        assert sol.value == pytest.approx(total(sol.choice, values))
        assert sol.cost == pytest.approx(total(sol.choice, costs))


def test_integer_costs_on_a_coarse_grid_are_exact_via_gcd():
    # costs in multiples of 1000 with a budget of ~10^6: the gcd grid makes it small and exact
    rng = np.random.default_rng(7)
    for _ in range(50):
        values, costs, budget = random_instance(rng, integer=True)
        costs = [c * 1000 for c in costs]
        budget = budget * 1000 + 500
        sol = solve_group_knapsack(values, costs, budget, resolution=64)
        ref = brute_force(values, costs, budget)
        if ref is None:
            assert not sol.feasible
            continue
        assert sol.exact
        assert sol.value == pytest.approx(ref[0], abs=1e-9)


@pytest.mark.parametrize("resolution", [3, 16, 200])
def test_float_costs_feasible_and_optimal_on_the_discretized_instance(resolution):
    rng = np.random.default_rng(resolution)
    for _ in range(120):
        values, costs, budget = random_instance(rng, integer=False)
        ref = brute_force(values, costs, budget)
        sol = solve_group_knapsack(values, costs, budget, resolution=resolution, fill_slack=False)
        if ref is None:
            assert not sol.feasible
            continue
        assert sol.feasible
        assert sol.cost <= budget + 1e-9
        # never better than the true optimum ...
        assert sol.value <= ref[0] + 1e-9
        if sol.exact:  # the unconstrained best fit: it is the true optimum
            assert sol.value == pytest.approx(ref[0])
            continue
        # ... and exactly optimal for the rounded-up integer instance the DP solved
        disc = discretize(costs, budget, resolution)
        disc_ref = brute_force(values, [w.astype(float) for w in disc.weights], disc.capacity)
        assert sol.value == pytest.approx(disc_ref[0], abs=1e-9)
        # the fill pass keeps feasibility and can only add value
        filled = solve_group_knapsack(values, costs, budget, resolution=resolution)
        assert filled.cost <= budget + 1e-9
        assert sol.value - 1e-9 <= filled.value <= ref[0] + 1e-9


def test_rounding_up_never_exceeds_the_budget():
    # costs just above multiples of the unit: rounding to nearest would overshoot, rounding up can't
    values = [np.array([1.0, 2.0]) for _ in range(10)]
    costs = [np.array([0.0, 1.0004]) for _ in range(10)]
    sol = solve_group_knapsack(values, costs, 5.0, resolution=5, fill_slack=False)
    assert sol.cost <= 5.0
    assert sol.choice.count(1) == 2  # 1.0004 rounds up to 2 units of 1.0: only two fit in 5 units
    full = solve_group_knapsack(values, costs, 5.0, resolution=5)
    assert full.cost <= 5.0 and full.choice.count(1) == 4  # the fill pass spends the leftover
    assert solve_group_knapsack(values, costs, 5.0, resolution=10_000).choice.count(1) == 4


def test_infeasible_returns_the_cheapest_choice():
    values = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0])]
    costs = [np.array([4.0, 3.0, 3.0]), np.array([2.0, 6.0])]
    sol = solve_group_knapsack(values, costs, 4.0)
    assert isinstance(sol, KnapsackSolution)
    assert not sol.feasible
    assert sol.choice == [2, 0]  # cheapest per class; among equal costs the more valuable
    assert sol.cost == 5.0 and sol.value == 4.0


def test_negative_and_non_monotone_costs():
    # keeping more channels is sometimes *faster* (noise, kernel choice): the solver must see it
    values = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.5, 1.8])]
    costs = [np.array([5.0, 3.0, 6.0, 4.0]), np.array([-1.0, -2.0, 1.0])]
    sol = solve_group_knapsack(values, costs, 2.0)
    assert sol.choice == [3, 1] and sol.cost == 2.0 and sol.value == 5.5
    ref = brute_force(values, costs, 2.0)
    assert sol.value == ref[0]


def test_unconstrained_budget_takes_the_best_items():
    values = [np.array([1.0, 3.0, 2.0]), np.array([0.5, 0.5])]
    costs = [np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0])]
    sol = solve_group_knapsack(values, costs, np.inf)
    assert sol.choice == [1, 1] and sol.feasible and sol.exact


def test_pareto_items_drop_dominated():
    w = np.array([0, 2, 2, 1, 5, 3, 4])
    v = np.array([1.0, 3.0, 4.0, 4.0, 9.0, 2.0, 9.0])
    # item 1, 2 (w 2 <= v 4 of w 1), 5 (w 3, v 2) are dominated; 4 is dominated by 6 (cheaper, equal)
    assert pareto_items(w, v).tolist() == [0, 3, 6]
    assert pareto_items(w, v, capacity=3).tolist() == [0, 3]
    # exact ties keep the lowest index
    assert pareto_items(np.array([0, 1, 1]), np.array([1.0, 2.0, 2.0])).tolist() == [0, 1]


def test_dominance_pruning_does_not_change_the_optimum():
    rng = np.random.default_rng(11)
    for _ in range(200):
        n_classes = int(rng.integers(1, 8))
        weights = []
        values = []
        for _ in range(n_classes):
            n = int(rng.integers(1, 40))
            w = rng.integers(0, 30, n)
            w[rng.integers(n)] = 0
            weights.append(w)
            values.append(rng.random(n) * 10)
        cap = int(rng.integers(0, 80))
        c1, v1 = solve_discrete(weights, values, cap, prune_dominated=True)
        c2, v2 = solve_discrete(weights, values, cap, prune_dominated=False)
        assert v1 == pytest.approx(v2)
        for c in (c1, c2):
            assert sum(w[i] for w, i in zip(weights, c)) <= cap
            assert total(c, values) == pytest.approx(v1)


def test_large_instance_backtracks_consistently():
    rng = np.random.default_rng(3)
    values, costs = [], []
    for _ in range(60):
        n = int(rng.integers(64, 257))
        values.append(np.cumsum(np.sort(rng.random(n))[::-1]))
        costs.append(np.ceil(np.arange(1, n + 1) / 16) * rng.uniform(0.01, 0.2) + rng.normal(0, 0.002, n))
    lo, hi = sum(c.min() for c in costs), sum(c.max() for c in costs)
    budget = lo + 0.4 * (hi - lo)
    sol = solve_group_knapsack(values, costs, budget)
    assert sol.feasible and sol.cost <= budget
    assert sol.value == pytest.approx(total(sol.choice, values))
    assert sol.cost == pytest.approx(total(sol.choice, costs))
    # a finer grid can only do (about) as well or better, never break the budget
    fine = solve_group_knapsack(values, costs, budget, resolution=16384)
    assert fine.cost <= budget and fine.value >= sol.value - 1e-3 * sol.value


def test_bad_input():
    with pytest.raises(ValueError):
        solve_group_knapsack([np.array([1.0])], [np.array([1.0, 2.0])], 3.0)
    with pytest.raises(ValueError):
        solve_group_knapsack([np.array([1.0])], [], 3.0)
    with pytest.raises(ValueError):
        solve_group_knapsack([np.array([])], [np.array([])], 3.0)
    with pytest.raises(ValueError):
        solve_group_knapsack([np.array([1.0])], [np.array([np.nan])], 3.0)
    with pytest.raises(ValueError):
        solve_group_knapsack([np.array([1.0])], [np.array([1.0])], float("nan"))
    assert solve_group_knapsack([], [], 0.0).feasible


def test_budget_equal_to_the_cheapest_choice_summed_in_another_order():
    """A budget computed as the sum of the cheapest costs in a different order (off by round-off)
    is feasible and gives the cheapest choice; it used to raise from the discretization."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        costs = [np.sort(rng.standard_normal(int(rng.integers(1, 5)))) for _ in range(int(rng.integers(3, 30)))]
        values = [np.arange(len(c), dtype=float) for c in costs]
        budget = float(sum(reversed([c.min() for c in costs])))
        sol = solve_group_knapsack(values, costs, budget)
        assert sol.feasible
        assert sol.choice == [int(np.argmin(c)) for c in costs]
