"""Meet a budget: an objective (planning/objectives.py: latency, MACs, params, peak memory) prices
the knapsack items, LAMP-normalized scores are their values, one group knapsack (Eq. 8-10) picks
widths, then one closed loop evaluates the written model and tightens or loosens the target until
the budget is met and used."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.groups import Analysis
from onnxprune.errors import OnnxPruneError
from onnxprune.planning.choices import (ALIGN_BLOCK, ALIGN_MIN_SIZE, GroupChoices, align_widths, format_metric,
                                        group_choices, kept_for, kept_fractions, solve_budget)
from onnxprune.planning.coupled import CoupledInstance, solve_coupled_knapsack
from onnxprune.planning.objectives import (LatencyObjective, MacsShareLatencyCosts, MeasuredLatencyCosts, Objective,
                                           OpModelLatencyCosts, PeakMemoryObjective, latency_meter, macs_objective,
                                           params_objective)
from onnxprune.profiling.cost import macs_terms, scaled_total
from onnxprune.planning.knapsack import KnapsackSolution, solve_group_knapsack
from onnxprune.planning.ratio import keep_every_member
from onnxprune.profiling.timing import parse_budget
from onnxprune.report.records import BudgetIteration
from onnxprune.transform.rewrite import kept_positions, rewrite

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTE_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


BUDGET_FLAGS = {"latency": "latency", "macs": "--macs", "params": "--params", "peak_memory": "--peak-memory"}


@dataclass
class BudgetSpec:
    metric: str
    text: str
    absolute: float | None = None  # ms, MACs, parameters or bytes
    fraction: float | None = None  # of the unpruned model

    def target(self, baseline: float) -> float:
        return self.absolute if self.absolute is not None else self.fraction * baseline


def parse_budget_spec(metric: str, text: str) -> BudgetSpec:
    """`--budget 11ms|0.6x|60%`, `--macs 50%|1.2G`, `--params 3M|0.5x`, `--peak-memory 3.6MB|50%`."""
    t = str(text).strip()
    flag = BUDGET_FLAGS.get(metric, metric)
    m = re.fullmatch(rf"({_NUM})\s*(x|%)", t, re.IGNORECASE)
    if m:
        f = float(m.group(1)) / (100.0 if m.group(2) == "%" else 1.0)
        if not 0 < f <= 1:
            raise OnnxPruneError(f"bad {flag} budget '{text}': a relative budget must be in (0, 1]x or (0, 100]%")
        return BudgetSpec(metric, t, fraction=f)
    if metric == "latency":
        b = parse_budget(t)
        return BudgetSpec(metric, t, absolute=b.value)
    units = _BYTE_UNITS if metric == "peak_memory" else _COUNT_UNITS
    m = re.fullmatch(rf"({_NUM})\s*([a-zA-Z]*)", t)
    if not m or m.group(2).lower() not in units:
        forms = "3.6MB, 512KiB, 81920 (bytes) or 50%" if metric == "peak_memory" else "1.2G, 3M, 500K or 50%"
        raise OnnxPruneError(f"bad {flag} budget '{text}': expected e.g. {forms}")
    v = float(m.group(1)) * units[m.group(2).lower()]
    if not (math.isfinite(v) and v > 0):
        raise OnnxPruneError(f"bad {flag} budget '{text}': must be positive")
    return BudgetSpec(metric, t, absolute=v)



@dataclass
class BudgetResult:
    kept: dict[int, np.ndarray]
    metric: str
    budget: float
    baseline: float
    predicted: float
    measured: float | None
    iterations: list[BudgetIteration] = field(default_factory=list)
    met: bool = True
    info: dict = field(default_factory=dict)


@dataclass
class _Best:
    """The most valuable solution measured within budget so far."""
    kept: dict | None = None
    measured: float | None = None
    predicted: float | None = None
    value: float = -math.inf

    def offer(self, kept, measured, predicted, value, budget) -> None:
        if measured <= budget and (self.kept is None or value > self.value):
            self.kept, self.measured, self.predicted, self.value = kept, measured, predicted, value


def next_target(pts: list[tuple[float, float]], baseline: float, aim: float) -> float:
    """The predicted cost whose measurement should land on `aim`: fit measured ~ a + b * predicted
    through the last two (predicted, measured) points (secant). From one point, of two guesses
    the smaller step: the predicted saving scaled by the measured/predicted saving ratio (right
    where the costs are off by a factor), or the prediction moved by the miss (right where they are
    off by a constant: a 0.6 ms YOLO-style net measured 0.73 ms for a predicted 0.60, the ratio's
    step went to 0.26 and measured half the budget). Without a measured saving, step by twice the miss."""
    predicted, measured = pts[-1]
    if len(pts) >= 2 and abs(pts[-1][0] - pts[-2][0]) > 1e-12 and \
            (pts[-1][1] - pts[-2][1]) * (pts[-1][0] - pts[-2][0]) > 0:
        (p0, m0), (p1, m1) = pts[-2], pts[-1]
        slope = (m1 - m0) / (p1 - p0)
        return p1 + (aim - m1) / slope
    if baseline - measured > 1e-12 * max(1.0, abs(baseline)):
        by_ratio = baseline - (baseline - aim) * (baseline - predicted) / (baseline - measured)
        by_miss = predicted - (measured - aim)
        return min(by_ratio, by_miss, key=lambda t: abs(t - predicted))
    return predicted - 2 * (measured - aim)


def separable_solver(choices: list[GroupChoices], baseline: float):
    """solve(target) with additive per-group costs: the group knapsack (planning/knapsack.py)."""
    return lambda target: solve_budget(choices, baseline, target)


def coupled_solver(instance: CoupledInstance, baseline: float):
    """solve(target) where a cost term couples groups (a conv reads one group and writes another):
    planning/coupled.py. Costs come back as the change from the baseline, as the separable solve's."""
    def solve(target: float) -> KnapsackSolution:
        sol = solve_coupled_knapsack(instance, target)
        return KnapsackSolution(sol.choice, sol.value, sol.cost - baseline, sol.feasible, exact=False)
    return solve


def meet_budget(choices: list[GroupChoices], baseline: float, budget: float, evaluate, *, metric: str,
                max_iter: int = 7, low: float = 0.9, high: float = 1.0, solve=None,
                aim_first: bool = False) -> BudgetResult:
    """The closed loop every additive objective runs: solve for a target, evaluate the real metric of
    the written model, and move the target so the next measurement lands just under the budget.
    Per-group costs are measured one group at a time, so their sum misjudges joint pruning (fixed
    per-op overheads do not shrink): :func:`next_target` corrects for that. Keeps the most valuable
    solution that meets the budget; `evaluate(kept) -> measured value`; `solve(target)` picks the
    items (default: the separable group knapsack over the items' costs). `aim_first`: the first
    solve targets the middle of the band instead of the budget itself, so that a measurement noisier
    than the prediction's error does not push a well-predicted first solve over (latency)."""
    if solve is None:
        solve, floor = separable_solver(choices, baseline), sum(float(np.min(c.costs)) for c in choices)
    else:
        floor = solve(-math.inf).cost  # the cheapest choice the solver finds
    aim = budget * (high + max(low, 0.5)) / 2 if low < high else budget
    sol = solve(budget)
    if not sol.feasible:
        raise OnnxPruneError(
            f"{BUDGET_FLAGS[metric]} budget {format_metric(metric, budget, baseline)} cannot be met: keeping one "
            f"channel in every prunable group still gives about {format_metric(metric, baseline + sol.cost, baseline)} (unpruned "
            f"{format_metric(metric, baseline)})")
    target, best, iters, pts = budget, _Best(), [], []
    if aim_first and aim < budget:
        first = solve(aim)
        if first.feasible:
            target, sol = aim, first
    min_target = baseline + floor
    for _ in range(max_iter):
        kept = kept_for(choices, sol.choice)
        it = BudgetIteration(target=target, predicted=baseline + sol.cost, measured=float(evaluate(kept)),
                             value=sol.value)
        iters.append(it)
        best.offer(kept, it.measured, it.predicted, sol.value, budget)
        if low * budget <= it.measured <= high * budget:
            break
        if it.measured > budget and _predicted_at_floor(it, min_target):
            _remeasure_at_floor(it, budget, lambda: float(evaluate(kept)))
            best.offer(kept, it.measured, it.predicted, sol.value, budget)
            break  # the budget is below what pruning can reach (or just met at the floor)
        pts.append((it.predicted, it.measured))
        # damp: never jump past the reachable range, move at least a little
        target = float(np.clip(next_target(pts, baseline, aim), min_target, baseline))
        if target == it.target:
            target = max(min_target, target - abs(it.measured - aim))
        sol = solve(target)
        if not sol.feasible:
            target = min_target
            sol = solve(target)
    if best.kept is None:
        return _unmet(choices, sol, iters, metric, budget, baseline, target, min_target)
    return BudgetResult(best.kept, metric, budget, baseline, best.predicted, best.measured, iters, met=True)


def _remeasure_at_floor(it: BudgetIteration, budget: float, measure_again) -> None:
    """Already at one channel per group: a single noisy median a hair over the budget must not
    declare a feasible budget impossible, so measure twice more and judge the median of three."""
    if it.measured <= 1.05 * budget:
        it.measured = float(np.median([it.measured] + [measure_again() for _ in range(2)]))
        it.remeasured = 3


def _unmet(choices, sol, iters, metric, budget, baseline, target, min_target) -> BudgetResult:
    """No try met the budget: impossible (at the floor) is an error, else the last try, not met."""
    last = iters[-1]
    if _at_floor(last, min_target) or target <= min_target + 1e-12:
        raise OnnxPruneError(
            f"{BUDGET_FLAGS[metric]} budget {format_metric(metric, budget, baseline)} cannot be met: with one channel "
            f"in every prunable group the model still measures "
            f"{format_metric(metric, _floor_measure(iters, min_target), baseline)} "
            f"(unpruned {format_metric(metric, baseline)})")
    return BudgetResult(kept_for(choices, sol.choice), metric, budget, baseline, last.predicted, last.measured,
                        iters, met=False)


def _floor_measure(iters: list[BudgetIteration], min_target: float) -> float:
    """What the one-channel-per-group model measured (the last such try), for the error message."""
    at_floor = [i.measured for i in iters if _at_floor(i, min_target)]
    return at_floor[-1] if at_floor else min(i.measured for i in iters)


def _predicted_at_floor(it: BudgetIteration, min_target: float) -> bool:
    """The solve kept one channel per group (the cheapest item everywhere)."""
    return it.predicted <= min_target + 1e-9 * max(1.0, abs(min_target))


def _at_floor(it: BudgetIteration, min_target: float) -> bool:
    return it.target <= min_target + 1e-12 or _predicted_at_floor(it, min_target)


def meet_relinearized(choices: list[GroupChoices], objective: PeakMemoryObjective, baseline: float,
                      budget: float) -> BudgetResult:
    """The closed loop for a cost that is not a sum (peak memory, a max over time): relinearize
    around the last solution before every solve, and move the target by the miss."""
    fractions: dict[int, float] = {}
    best, iters, target = _Best(), [], budget
    for _ in range(8):
        base = objective.relinearize(choices, fractions)
        sol = solve_group_knapsack([c.values for c in choices], [c.costs for c in choices], target - base)
        if not sol.feasible and best.kept is None and not fractions:
            raise OnnxPruneError(f"--peak-memory budget {format_metric('peak_memory', budget)} cannot be met even "
                                 f"with one channel per prunable group")
        kept = kept_for(choices, sol.choice)
        it = BudgetIteration(target=target, predicted=base + sol.cost, measured=objective.evaluate(kept),
                             value=sol.value)
        iters.append(it)
        best.offer(kept, it.measured, it.predicted, sol.value, budget)
        if objective.band_low * budget <= it.measured <= budget:
            break
        fractions = {c.group.id: c.widths[i] / c.group.size for c, i in zip(choices, sol.choice)}
        target = target + (budget - it.measured) * 0.8
    if best.kept is None:
        return _uniform_fallback(choices, objective, baseline, budget, iters)
    return BudgetResult(best.kept, objective.metric, budget, baseline, best.predicted, best.measured, iters, met=True)


def _uniform_fallback(choices, objective, baseline, budget, iters) -> BudgetResult:
    """The peak moved between tensors at every try (a max over time is not one linear cost). Peak
    memory only falls as widths fall, so the same fraction kept in every group (each group's
    best-scored channels) is monotone: bisect it, and say so."""
    found = _uniform_fraction(choices, budget, objective.evaluate, iters)
    if found is None:
        raise OnnxPruneError(f"--peak-memory budget {format_metric('peak_memory', budget)} cannot be met even with "
                             f"one channel per prunable group")
    kept, measured, f = found
    return BudgetResult(kept, objective.metric, budget, baseline, measured, measured, iters, met=True,
                        info=dict(method=f"uniform keep fraction {f:.3f} per group (best-scored channels): "
                                         "the knapsack's linearized peak moved between tensors at every try"))


def _uniform_fraction(choices, budget, evaluate, iters, steps: int = 12):
    """Largest keep fraction f (the same in every group, >= 1 channel) whose peak memory is within
    budget, by bisection; (kept, measured, f) or None if even one channel per group is over."""
    def kept_at(f):
        pick = [int(np.searchsorted(c.widths, max(1.0, f * c.group.size), side="right") - 1) for c in choices]
        return kept_for(choices, [max(i, 0) for i in pick])

    def tried(f):
        kept = kept_at(f)
        measured = evaluate(kept)
        iters.append(BudgetIteration(target=budget, predicted=None, measured=measured, value=None,
                                     uniform_fraction=f))
        return kept, measured

    kept, measured = tried(0.0)
    if measured > budget:
        return None
    best, lo, hi = (kept, measured, 0.0), 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        kept, measured = tried(mid)
        if measured <= budget:
            best, lo = (kept, measured, mid), mid
        else:
            hi = mid
    return best


def meet_objective(choices: list[GroupChoices], objective: Objective, baseline: float,
                   budget: float) -> BudgetResult:
    """Run the closed loop for `objective` (relinearizing where its cost is not a sum; with the
    coupled knapsack where the latency model's terms couple groups)."""
    if isinstance(objective, PeakMemoryObjective):
        return meet_relinearized(choices, objective, baseline, budget)
    solve = None
    if isinstance(objective, LatencyObjective) and isinstance(objective.costs, OpModelLatencyCosts):
        solve = coupled_solver(objective.costs.instance(choices), baseline)
    return meet_budget(choices, baseline, budget, objective.evaluate, metric=objective.metric,
                       low=objective.band_low, solve=solve, aim_first=isinstance(objective, LatencyObjective))


LATENCY_MODELS = ("op", "table", "macs")
NOISE_FLOOR = 0.02  # medians are measured to a 95% CI of +-2% at best (profiling/median_ci.py)


def resolve_latency_model(latency_model: str | None, latency_cmd: str | None) -> str:
    """`None` (the default): the op-level model, which profiles nodes in ONNX Runtime, or the
    per-group table when a --latency-cmd times candidates elsewhere (nothing to profile there)."""
    if latency_model is None:
        return "table" if latency_cmd else "op"
    if latency_model == "op" and latency_cmd:
        raise OnnxPruneError("--latency-model op profiles nodes in ONNX Runtime: with --latency-cmd use "
                             "--latency-model table or macs")
    return latency_model


def check_distinguishable(budget: float, baseline: float, objective) -> None:
    """A latency budget within the measurement noise of the unpruned model cannot be told apart
    from not pruning: say so rather than prune for noise."""
    ci = getattr(getattr(objective, "costs", None), "baseline_ci", None)
    noise = max(NOISE_FLOOR, ci.rel_halfwidth if ci is not None else 0.0)
    if budget >= baseline * (1.0 - noise):
        raise OnnxPruneError(
            f"latency budget {format_metric('latency', budget)} is within the measurement noise of the unpruned "
            f"model ({format_metric('latency', baseline)}, +-{100 * noise:.1f}%): it cannot be told apart from not "
            f"pruning; give a budget below {format_metric('latency', baseline * (1.0 - noise))}")


def check_min_macs(analysis: Analysis, choices: list[GroupChoices], res: BudgetResult, min_macs: float) -> None:
    """A latency budget never returns a model with less than `min_macs` of the MACs unless asked:
    a latency model that misjudges can otherwise empty the model (every detection lost)."""
    terms = macs_terms(analysis)
    full = scaled_total(terms, {})
    frac = scaled_total(terms, kept_fractions(choices, res.kept)) / full if full else 1.0
    res.info["macs_fraction"] = round(frac, 4)
    if frac < min_macs:
        raise OnnxPruneError(
            f"latency budget {format_metric('latency', res.budget)} needs MACs x{frac:.3f} (measured "
            f"{format_metric('latency', res.measured)}), below x{min_macs:g}: refused as a likely destroyed model; "
            f"give --min-macs {max(0.01, round(frac * 0.9, 2)):g} to allow that little")


def make_objective(analysis: Analysis, spec: BudgetSpec, *, original=None, provider: str = "cpu",
                   threads: int | None = None, auto_steps: bool = False, latency_model: str | None = None,
                   cache_dir=None, use_cache: bool = True, latency_cmd: str | None = None,
                   progress=None) -> Objective:
    """The objective a budget spec constrains, with the latency-cost source `latency_model` names."""
    if spec.metric == "macs":
        return macs_objective(analysis)
    if spec.metric == "params":
        return params_objective(analysis)
    if spec.metric == "peak_memory":
        return PeakMemoryObjective(analysis)
    meter = latency_meter(analysis, original, provider=provider, threads=threads, latency_cmd=latency_cmd)
    latency_model = resolve_latency_model(latency_model, latency_cmd)
    if latency_model == "op":
        costs = OpModelLatencyCosts(analysis, meter, cache_dir, use_cache, progress)
    elif latency_model == "table":
        costs = MeasuredLatencyCosts(analysis, provider, threads, cache_dir, use_cache, latency_cmd, progress,
                                     auto_steps)
    else:
        costs = MacsShareLatencyCosts(analysis, meter)
    return LatencyObjective(analysis, costs, meter, relative=spec.fraction is not None)


def plan_for_budget(analysis: Analysis, scores: dict[int, np.ndarray], spec: BudgetSpec, *,
                    original=None, provider: str = "cpu", threads: int | None = None,
                    round_to: int | None = None, latency_model: str | None = None, cache_dir=None,
                    use_cache: bool = True, latency_cmd: str | None = None, progress=None,
                    target_fn=None, knapsack_value: str = "lamp", min_macs: float = 0.2) -> BudgetResult:
    """Choose kept channels for every prunable group so the written model meets `spec`
    (`target_fn(baseline) -> target` overrides the spec's target: used by stages). A latency budget
    refuses a result under `min_macs` of the MACs, and a budget within the noise of the unpruned model."""
    auto_steps = round_to == "auto"
    choices = group_choices(analysis.prunable_groups, scores, None if auto_steps else round_to,
                            value=knapsack_value)
    objective = make_objective(analysis, spec, original=original, provider=provider, threads=threads,
                               auto_steps=auto_steps, latency_model=latency_model, cache_dir=cache_dir,
                               use_cache=use_cache, latency_cmd=latency_cmd, progress=progress)
    op_model = isinstance(getattr(objective, "costs", None), OpModelLatencyCosts)
    if op_model and round_to is None:
        align_widths(choices, ALIGN_BLOCK, ALIGN_MIN_SIZE)
    baseline = objective.price(choices)
    budget = target_fn(baseline) if target_fn is not None else spec.target(baseline)
    if spec.metric == "latency":
        check_distinguishable(budget, baseline, objective)
    if progress is not None:
        progress.start("solve", f"{BUDGET_FLAGS[spec.metric]} <= {format_metric(spec.metric, budget, baseline)}")
    res = meet_objective(choices, objective, baseline, budget)
    if res.iterations:
        res.iterations[0].info = dict(objective.info)
    res.info = {**objective.info, **res.info}
    if op_model and round_to is None:
        res.info["widths"] = f"multiples of {ALIGN_BLOCK} in groups of >= {ALIGN_MIN_SIZE} channels (ORT CPU channel blocks)"
    if spec.metric == "latency" and res.met:
        check_min_macs(analysis, choices, res, min_macs)
    return res


def plan_in_stages(analysis: Analysis, score_fn, spec: BudgetSpec, stages: int, *, reanalyze, **kw) -> BudgetResult:
    """SP-LAMP Sec. 3.3: reach the budget in k stages C_1..C_k. Each stage re-scores and re-measures
    group contributions on the model pruned so far (a conv's cost depends on both its input and
    output widths, so one-group-at-a-time costs drift as neighbours shrink). Kept channels are
    composed back into the original model's groups; the caller rewrites the original once.

    `score_fn(analysis) -> scores`, `reanalyze(model) -> Analysis` (same options as the original)."""
    cur, scores = analysis, score_fn(analysis)
    pos: dict = {}  # space -> kept positions in ORIGINAL coordinates
    base0, iters, res = None, [], None
    for i in range(1, stages + 1):
        def target_fn(baseline, i=i):
            b0 = baseline if base0 is None else base0
            final = spec.target(b0)
            return b0 - i * (b0 - final) / stages
        res = plan_for_budget(cur, scores, spec, target_fn=target_fn, **kw)
        if base0 is None:
            base0 = res.baseline
        for it in res.iterations:
            it.stage = i
        iters += res.iterations
        kept = keep_every_member(cur.groups, res.kept, scores)
        for sp, p in kept_positions(cur, kept).items():
            pos[sp] = pos[sp][p] if sp in pos else p
        if i < stages:
            cur = reanalyze(rewrite(cur, kept))
            scores = score_fn(cur)
            kw["original"] = None  # later stages time against the previous stage's model
    res.kept, res.iterations, res.baseline = compose_kept(analysis, pos), iters, base0
    res.budget = spec.target(base0)
    return res


def compose_kept(analysis: Analysis, pos: dict) -> dict[int, np.ndarray]:
    """Kept canonical channels of the original groups from kept positions per space."""
    final = {}
    for g in analysis.groups:
        m = next((m for m in g.members if (m.tensor, m.axis) in pos), None)
        if m is not None:
            k = np.unique(m.index_map[pos[(m.tensor, m.axis)]])
            if len(k) < g.size:
                final[g.id] = k
    return final
