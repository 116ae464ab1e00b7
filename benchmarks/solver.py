"""Group-knapsack solve time on synthetic but realistic latency tables (no model, no ORT).

    python benchmarks/solver.py                       # 50/100/200 groups, default resolution
    python benchmarks/solver.py --groups 200 --resolution 4096 16384 --repeats 7

Each group has 256-512 channels; item i = keep the top i+1 channels. Values are cumulative SP-LAMP
scores of log-normal saliencies. Costs are staircase latency curves (kernels tile channels by
8/16/32, so latency moves in steps), concave-ish, with +-1% measurement noise that makes them
non-monotone, in milliseconds. The budget keeps `--keep` of the prunable latency. Prints a table
(median of --repeats solves) and writes benchmarks/results/solver.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def latency_curve(rng: np.random.Generator, n: int) -> np.ndarray:
    """T(p) in ms for p = 1..n kept channels: fixed overhead + stepped, concave-ish growth + noise."""
    t_max = rng.uniform(0.02, 1.0)
    overhead = rng.uniform(0.05, 0.3)
    step = int(rng.choice([8, 16, 32]))
    gamma = rng.uniform(0.7, 1.0)
    p = np.arange(1, n + 1)
    tiles = np.ceil(p / step) * step / n
    t = t_max * (overhead + (1 - overhead) * tiles ** gamma)
    return t * (1 + rng.normal(0, 0.01, n))


def instance(seed: int, groups: int, keep: float):
    from onnxprune.scoring.lamp import cumulative_keep_values, sp_lamp_scores
    rng = np.random.default_rng(seed)
    values, costs = [], []
    for _ in range(groups):
        n = int(rng.integers(256, 513))
        s = rng.lognormal(0, 1.0, n)
        values.append(cumulative_keep_values(sp_lamp_scores(s)))
        costs.append(latency_curve(rng, n))
    lo = sum(c.min() for c in costs)
    hi = sum(c.max() for c in costs)
    budget = lo + keep * (hi - lo)
    return values, costs, budget


def bench(groups: int, resolution: int, repeats: int, keep: float, seed: int) -> dict:
    from onnxprune.planning.knapsack import discretize, pareto_items, solve_group_knapsack
    values, costs, budget = instance(seed, groups, keep)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sol = solve_group_knapsack(values, costs, budget, resolution=resolution)
        times.append(time.perf_counter() - t0)
    disc = discretize(costs, budget, resolution)
    pareto = [pareto_items(w, v, disc.capacity).size for w, v in zip(disc.weights, values)]
    base = sum(c.min() for c in costs)
    return dict(groups=groups, items_mean=float(np.mean([len(v) for v in values])),
                pareto_items_mean=float(np.mean(pareto)), resolution=resolution,
                median_s=statistics.median(times), min_s=min(times), repeats=repeats,
                budget_ms=budget, cost_ms=sol.cost, feasible=sol.feasible,
                discretionary_used=(sol.cost - base) / (budget - base), value=sol.value)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--resolution", type=int, nargs="+", default=None,
                    help="knapsack resolutions (default: the solver's DEFAULT_RESOLUTION)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", type=float, default=0.5, help="fraction of the prunable latency the budget keeps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "solver.json"))
    args = ap.parse_args()
    from onnxprune.planning.knapsack import DEFAULT_RESOLUTION  # after parsing: --help stays fast
    args.resolution = args.resolution or [DEFAULT_RESOLUTION]

    rows = [bench(g, r, args.repeats, args.keep, args.seed) for r in args.resolution for g in args.groups]
    print(f"{'groups':>6} {'items/grp':>9} {'pareto/grp':>10} {'resolution':>10} {'median s':>9} "
          f"{'min s':>7} {'budget used':>11}")
    for r in rows:
        print(f"{r['groups']:>6} {r['items_mean']:>9.0f} {r['pareto_items_mean']:>10.1f} {r['resolution']:>10} "
              f"{r['median_s']:>9.3f} {r['min_s']:>7.3f} {100 * r['discretionary_used']:>10.2f}%")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        benchmark="group knapsack solve time", machine=platform.platform(), python=platform.python_version(),
        numpy=np.__version__, cpus=__import__("os").cpu_count(), keep=args.keep, seed=args.seed,
        note="budget used = share of the discretionary budget (budget minus cheapest choices) spent",
        rows=rows), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
