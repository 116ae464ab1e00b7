"""Meet a budget: per-group costs (measured latency table or analytic MACs/params/peak memory),
LAMP-normalized scores as values, one group knapsack (Eq. 8-10), then a closed loop that measures
the written model and tightens or loosens the target until the budget is met and used."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup
from onnxprune.profiling.cost import macs_terms, params_terms, peak_memory, peak_terms, scaled_total
from onnxprune.errors import OnnxPruneError
from onnxprune.profiling.latency_table import keep_order, top_width_kept
from onnxprune.planning.knapsack import solve_group_knapsack
from onnxprune.scoring.lamp import cumulative_keep_values, sp_lamp_scores

METRICS = ("latency", "macs", "params", "peak_memory")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BYTE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


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
    m = re.fullmatch(rf"({_NUM})\s*(x|%)", t, re.IGNORECASE)
    if m:
        f = float(m.group(1)) / (100.0 if m.group(2) == "%" else 1.0)
        if not 0 < f <= 1:
            raise OnnxPruneError(f"bad {metric} budget '{text}': a relative budget must be in (0, 1]x or (0, 100]%")
        return BudgetSpec(metric, t, fraction=f)
    if metric == "latency":
        from onnxprune.profiling.timing import parse_budget

        b = parse_budget(t)
        return BudgetSpec(metric, t, absolute=b.value)
    units = _BYTE_UNITS if metric == "peak_memory" else _COUNT_UNITS
    m = re.fullmatch(rf"({_NUM})\s*([a-zA-Z]*)", t)
    if not m or m.group(2).lower() not in units:
        forms = "3.6MB, 512KiB or 50%" if metric == "peak_memory" else "1.2G, 3M, 500K or 50%"
        raise OnnxPruneError(f"bad {metric} budget '{text}': expected e.g. {forms}")
    v = float(m.group(1)) * units[m.group(2).lower()]
    if not (math.isfinite(v) and v > 0):
        raise OnnxPruneError(f"bad {metric} budget '{text}': must be positive")
    return BudgetSpec(metric, t, absolute=v)


@dataclass
class GroupChoices:
    """Knapsack class of one group: item i keeps widths[i] channels."""
    group: ChannelGroup
    order: np.ndarray
    widths: np.ndarray
    values: np.ndarray
    costs: np.ndarray = None


KNAPSACK_VALUES = ("lamp", "members")


def group_choices(groups: list[ChannelGroup], scores: dict[int, np.ndarray], round_to: int | None = None,
                  value: str = "lamp") -> list[GroupChoices]:
    """Items per group with LAMP-normalized values (comparable across groups: every group's top
    channel is worth 1). Frozen channels are always kept; `round_to` restricts widths to multiples.

    ``value="members"``: each group's values times its number of weight members. A channel of a
    residual stream is read and written by many layers; LAMP alone prices it like a channel inside
    one block, so the knapsack, which looks for the cheapest score per saved cost, empties the
    stream first. Without fine-tuning that costs accuracy (benchmarks/retention.py, knapsack modes)."""
    if value not in KNAPSACK_VALUES:
        raise OnnxPruneError(f"knapsack value must be one of {', '.join(KNAPSACK_VALUES)}, got {value!r}")
    out = []
    for g in groups:
        s = np.asarray(scores.get(g.id, np.ones(g.size)), dtype=np.float64)
        s = np.where(np.isfinite(s), np.maximum(s, 0), 0)
        lamp = sp_lamp_scores(s)
        lamp[g.frozen] = lamp.max() + 1.0  # frozen first in order; their value is a constant offset
        order = keep_order(g, lamp)
        vals = cumulative_keep_values(lamp)
        lo = max(1, int(g.frozen.sum()))
        widths = np.arange(lo, g.size + 1)
        if round_to and round_to > 1:
            keep = (widths % round_to == 0) | (widths == g.size)
            if not keep.any() or widths[keep].min() > lo:
                keep |= widths == widths[keep].min() if keep.any() else widths == lo
            widths = widths[keep]
        weight = max(1, len(g.weights)) if value == "members" else 1
        out.append(GroupChoices(g, order, widths, vals[widths - 1] * weight))
    return out


def kept_for(choices: list[GroupChoices], pick: list[int]) -> dict[int, np.ndarray]:
    kept = {}
    for c, i in zip(choices, pick):
        w = int(c.widths[i])
        if w < c.group.size:
            kept[c.group.id] = top_width_kept(c.group, c.order, w)
    return kept


def analytic_costs(analysis: Analysis, metric: str, choices: list[GroupChoices],
                   fractions: dict[int, float] | None = None) -> tuple[float, None]:
    """Fill item costs for MACs / params / peak memory: the change of the metric when only that
    group shrinks (others at `fractions`, default full width). Returns the baseline value."""
    fractions = dict(fractions or {})
    if metric == "macs":
        terms = macs_terms(analysis)
    elif metric == "params":
        terms = params_terms(analysis)
    else:
        _, step = peak_memory(analysis, fractions)
        terms = peak_terms(analysis, step)
    base = scaled_total(terms, fractions)
    by_group: dict[int, list] = {}
    for t in terms:
        for gid in set(t[1]):
            by_group.setdefault(gid, []).append(t)
    for c in choices:
        gid = c.group.id
        rel = by_group.get(gid, [])
        fixed = scaled_total(rel, fractions)
        costs = []
        for w in c.widths:
            f = dict(fractions)
            f[gid] = w / c.group.size
            costs.append(scaled_total(rel, f) - fixed)
        c.costs = np.array(costs)
    return base


def snap_to_steps(choices: list[GroupChoices], quantum: float) -> None:
    """`--round-to auto`: latency falls in steps as channels go (SP-LAMP Fig. 2; kernels work on
    blocks of channels). Costs within one quantum are one step: round them to the quantum, and the
    knapsack's dominance rule then keeps the widest width of every step (more score, same cost)."""
    if quantum > 0:
        for c in choices:
            c.costs = np.round(c.costs / quantum) * quantum


def latency_costs(table, choices: list[GroupChoices]) -> float:
    for c in choices:
        full = table.contribution(c.group.id)
        c.costs = full[c.widths - 1]
    return table.baseline_ms


@dataclass
class BudgetResult:
    kept: dict[int, np.ndarray]
    metric: str
    budget: float
    baseline: float
    predicted: float
    measured: float | None
    iterations: list[dict] = field(default_factory=list)
    met: bool = True
    info: dict = field(default_factory=dict)


def solve_budget(choices: list[GroupChoices], baseline: float, target: float):
    """One knapsack: sum of per-group deltas <= target - baseline."""
    sol = solve_group_knapsack([c.values for c in choices], [c.costs for c in choices], target - baseline)
    return sol


def meet_budget(choices: list[GroupChoices], baseline: float, budget: float, evaluate, *, metric: str,
                max_iter: int = 7, low: float = 0.9, high: float = 1.0) -> BudgetResult:
    """Closed loop: solve for a target, evaluate the real metric of the written model, and move the
    target so the next measurement lands just under the budget. Per-group costs are measured one
    group at a time, so their sum misjudges joint pruning (fixed per-op overheads do not shrink):
    the update fits measured ~ a + b * predicted through the last two points (secant), or scales
    the predicted saving by the measured/predicted saving ratio after the first. Keeps the most
    valuable solution that meets the budget; `evaluate(kept) -> measured value`."""
    aim = budget * (high + max(low, 0.5)) / 2 if low < high else budget
    first = solve_budget(choices, baseline, budget)
    if not first.feasible:
        floor = baseline + first.cost
        raise OnnxPruneError(
            f"{metric} budget {_fmt(metric, budget)} cannot be met: keeping one channel in every prunable group "
            f"still gives about {_fmt(metric, floor)} (unpruned {_fmt(metric, baseline)})")
    target, sol = budget, first
    best, iters, pts = None, [], []
    min_target = baseline + sum(float(np.min(c.costs)) for c in choices)
    for _ in range(max_iter):
        kept = kept_for(choices, sol.choice)
        predicted = baseline + sol.cost
        measured = float(evaluate(kept))
        iters.append(dict(target=target, predicted=predicted, measured=measured, value=sol.value))
        if measured <= budget and (best is None or sol.value > best[3]):
            best = (kept, measured, predicted, sol.value)
        if low * budget <= measured <= high * budget:
            break
        at_floor = predicted <= min_target + 1e-9 * max(1.0, abs(min_target))  # one channel per group
        if measured > budget and at_floor:
            # already at one channel per group. A single noisy median a hair over the budget must not
            # declare a feasible budget impossible: measure twice more and judge the median of three
            if measured <= 1.05 * budget:
                measured = float(np.median([measured] + [float(evaluate(kept)) for _ in range(2)]))
                iters[-1]["measured"] = measured
                iters[-1]["remeasured"] = 3
                if measured <= budget and (best is None or sol.value > best[3]):
                    best = (kept, measured, predicted, sol.value)
            break  # the budget is below what pruning can reach (or just met at the floor)
        pts.append((predicted, measured))
        if len(pts) >= 2 and abs(pts[-1][0] - pts[-2][0]) > 1e-12 and (pts[-1][1] - pts[-2][1]) * (pts[-1][0] - pts[-2][0]) > 0:
            (p0, m0), (p1, m1) = pts[-2], pts[-1]
            slope = (m1 - m0) / (p1 - p0)
            nxt = p1 + (aim - m1) / slope
        elif baseline - measured > 1e-12 * max(1.0, abs(baseline)):
            nxt = baseline - (baseline - aim) * (baseline - predicted) / (baseline - measured)
        else:
            nxt = predicted - 2 * (measured - aim)
        # damp: never jump past the reachable range, move at least a little
        target = float(np.clip(nxt, min_target, baseline))
        if target == iters[-1]["target"]:
            target = max(min_target, target - abs(measured - aim))
        sol = solve_budget(choices, baseline, target)
        if not sol.feasible:
            target = min_target
            sol = solve_budget(choices, baseline, target)
    if best is None:
        last = iters[-1]
        if _at_floor(last, min_target) or target <= min_target + 1e-12:
            raise OnnxPruneError(
                f"{metric} budget {_fmt(metric, budget)} cannot be met: with one channel in every prunable group "
                f"the model still measures {_fmt(metric, _floor_measure(iters, min_target))} "
                f"(unpruned {_fmt(metric, baseline)})")
        kept = kept_for(choices, sol.choice)
        return BudgetResult(kept, metric, budget, baseline, last["predicted"], last["measured"], iters, met=False)
    return BudgetResult(best[0], metric, budget, baseline, best[2], best[1], iters, met=True)


def _floor_measure(iters: list[dict], min_target: float) -> float:
    """What the one-channel-per-group model measured (the last such try), for the error message."""
    at_floor = [i["measured"] for i in iters if _at_floor(i, min_target)]
    return at_floor[-1] if at_floor else min(i["measured"] for i in iters)


def _at_floor(it: dict, min_target: float) -> bool:
    return it["target"] <= min_target + 1e-12 or it["predicted"] <= min_target + 1e-9 * max(1.0, abs(min_target))


def _fmt(metric: str, v: float) -> str:
    if metric == "latency":
        return f"{v:.3f} ms"
    if metric == "peak_memory":
        return f"{v / 1e6:.3f} MB"
    return f"{v / 1e6:.3f}M"


def plan_for_budget(analysis: Analysis, scores: dict[int, np.ndarray], spec: BudgetSpec, *,
                    original=None, provider: str = "cpu", threads: int | None = None,
                    round_to: int | None = None, latency_model: str = "measured", cache_dir=None,
                    use_cache: bool = True, latency_cmd: str | None = None, progress=None,
                    target_fn=None, knapsack_value: str = "lamp") -> BudgetResult:
    """Choose kept channels for every prunable group so the written model meets `spec`
    (`target_fn(baseline) -> target` overrides the spec's target: used by stages)."""
    from onnxprune.api import model_stats
    from onnxprune.analysis.graph import random_feeds
    from onnxprune.profiling.timing import measure_latencies
    from onnxprune.transform.rewrite import rewrite

    groups = [g for g in analysis.prunable_groups]
    auto_steps = round_to == "auto"
    choices = group_choices(groups, scores, None if auto_steps else round_to, value=knapsack_value)
    info: dict = {}
    view = analysis.view
    if spec.metric == "latency" and latency_model == "measured":
        from onnxprune.profiling.latency_table import build_latency_table

        if progress is not None:
            progress.start("profile", f"({len(groups)} groups, {provider})")
        table = build_latency_table(analysis, groups, provider=provider, threads=threads, cache_dir=cache_dir,
                                    use_cache=use_cache, latency_cmd=latency_cmd, progress=progress)
        baseline = latency_costs(table, choices)
        if auto_steps:
            snap_to_steps(choices, quantum=0.005 * baseline)
        info = dict(table_key=table.key, table_cached=table.from_cache, table_build_s=round(table.build_s, 2))
    elif spec.metric == "latency":  # analytic first estimate: MACs share of the measured baseline
        base_macs = analytic_costs(analysis, "macs", choices)
        baseline = _measure_pair(original or view.model, None, view, provider, threads, latency_cmd)[0]
        for c in choices:
            c.costs = c.costs * (baseline / max(base_macs, 1.0))
        info = dict(latency_model="macs")
    else:
        baseline = analytic_costs(analysis, spec.metric, choices)
    budget = target_fn(baseline) if target_fn is not None else spec.target(baseline)
    if progress is not None:
        progress.start("solve", f"{spec.metric} <= {_fmt(spec.metric, budget)}")

    if spec.metric == "latency":
        feeds = random_feeds(view, seed=0)
        ref = original or view.model

        def evaluate(kept):
            cand = rewrite(analysis, kept)
            if latency_cmd:
                from onnxprune.profiling.latency_cmd import measure_with_command

                base_ms, ms = measure_with_command(latency_cmd, ref), measure_with_command(latency_cmd, cand)
            else:
                st = measure_latencies([ref.SerializeToString(), cand.SerializeToString()], feeds,
                                       provider=provider, threads=threads, warmup=3, time_budget_s=8.0)
                base_ms, ms = st[0].median_ms, st[1].median_ms
            # relative budgets compare ratios measured side by side; absolute ones the raw median
            return ms * baseline / base_ms if spec.fraction is not None else ms
        res = meet_budget(choices, baseline, budget, evaluate, metric="latency", low=0.9)
    elif spec.metric in ("macs", "params"):
        key = "macs" if spec.metric == "macs" else "params"

        def evaluate(kept):
            return float(getattr(model_stats(rewrite(analysis, kept), view.input_shapes), key))
        res = meet_budget(choices, baseline, budget, evaluate, metric=spec.metric, low=0.97)
    else:
        def evaluate(kept):
            fr = {}
            for c in choices:
                k = kept.get(c.group.id)
                fr[c.group.id] = (len(k) if k is not None else c.group.size) / c.group.size
            return peak_memory(analysis, fr)[0]

        res = _meet_peak(analysis, choices, baseline, budget, evaluate)
    res.iterations = [dict(it, **info) if i == 0 else it for i, it in enumerate(res.iterations)]
    res.info = {**info, **res.info}
    return res


def _meet_peak(analysis, choices, baseline, budget, evaluate) -> BudgetResult:
    """Peak memory is a max over time, not a sum: linearize around the current peak step, solve,
    re-evaluate, and repeat from the new solution's fractions."""
    fractions: dict[int, float] = {}
    best, iters = None, []
    target = budget
    for _ in range(8):
        base = analytic_costs(analysis, "peak_memory", choices, fractions)
        # costs are relative to the current fractions; shift so a full-width item costs the change
        for c in choices:
            cur = fractions.get(c.group.id, 1.0)
            c.costs = c.costs - np.interp(cur * c.group.size, c.widths, c.costs) if len(c.widths) > 1 else c.costs
        sol = solve_group_knapsack([c.values for c in choices], [c.costs for c in choices], target - base)
        if not sol.feasible and best is None and not fractions:
            raise OnnxPruneError(f"peak_memory budget {_fmt('peak_memory', budget)} cannot be met even with one "
                                 f"channel per prunable group")
        kept = kept_for(choices, sol.choice)
        measured = evaluate(kept)
        iters.append(dict(target=target, predicted=base + sol.cost, measured=measured, value=sol.value))
        if measured <= budget and (best is None or sol.value > best[3]):
            best = (kept, measured, base + sol.cost, sol.value)
        if 0.97 * budget <= measured <= budget:
            break
        fractions = {c.group.id: c.widths[i] / c.group.size for c, i in zip(choices, sol.choice)}
        target = target + (budget - measured) * 0.8
    if best is None:
        # The peak moved between tensors at every try (a max over time is not one linear cost).
        # Peak memory only falls as widths fall, so the same fraction kept in every group
        # (each group's best-scored channels) is monotone: bisect it, and say so.
        best = _uniform_peak(choices, budget, evaluate, iters)
        if best is None:
            raise OnnxPruneError(f"peak_memory budget {_fmt('peak_memory', budget)} cannot be met even with one "
                                 f"channel per prunable group")
        return BudgetResult(best[0], "peak_memory", budget, baseline, best[1], best[1], iters, met=True,
                            info=dict(method=f"uniform keep fraction {best[2]:.3f} per group (best-scored channels): "
                                             "the knapsack's linearized peak moved between tensors at every try"))
    return BudgetResult(best[0], "peak_memory", budget, baseline, best[2], best[1], iters, met=True)


def _uniform_peak(choices, budget, evaluate, iters, steps: int = 12):
    """Largest keep fraction f (the same in every group, >= 1 channel) whose peak memory is within
    budget, by bisection; (kept, measured, f) or None if even one channel per group is over."""
    def kept_at(f):
        pick = [int(np.searchsorted(c.widths, max(1.0, f * c.group.size), side="right") - 1) for c in choices]
        return kept_for(choices, [max(i, 0) for i in pick])

    kept = kept_at(0.0)
    measured = evaluate(kept)
    iters.append(dict(target=budget, predicted=None, measured=measured, value=None, uniform_fraction=0.0))
    if measured > budget:
        return None
    best, lo, hi = (kept, measured, 0.0), 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        kept = kept_at(mid)
        measured = evaluate(kept)
        iters.append(dict(target=budget, predicted=None, measured=measured, value=None, uniform_fraction=mid))
        if measured <= budget:
            best, lo = (kept, measured, mid), mid
        else:
            hi = mid
    return best


def _measure_pair(a, b, view, provider, threads, latency_cmd):
    from onnxprune.analysis.graph import random_feeds
    from onnxprune.profiling.timing import measure_latencies

    models = [m for m in (a, b) if m is not None]
    if latency_cmd:
        from onnxprune.profiling.latency_cmd import measure_with_command

        return [measure_with_command(latency_cmd, m) for m in models]
    st = measure_latencies([m.SerializeToString() for m in models], random_feeds(view, seed=0), provider=provider,
                           threads=threads, warmup=3, time_budget_s=6.0)
    return [s.median_ms for s in st]


def plan_in_stages(analysis: Analysis, score_fn, spec: BudgetSpec, stages: int, *, reanalyze, **kw) -> BudgetResult:
    """SP-LAMP Sec. 3.3: reach the budget in k stages C_1..C_k. Each stage re-scores and re-measures
    group contributions on the model pruned so far (a conv's cost depends on both its input and
    output widths, so one-group-at-a-time costs drift as neighbours shrink). Kept channels are
    composed back into the original model's groups; the caller rewrites the original once.

    `score_fn(analysis) -> scores`, `reanalyze(model) -> Analysis` (same options as the original)."""
    from onnxprune.transform.rewrite import kept_positions, rewrite
    from onnxprune.planning.ratio import keep_every_member

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
        iters += [dict(it, stage=i) for it in res.iterations]
        kept = keep_every_member(cur.groups, res.kept, scores)
        for sp, p in kept_positions(cur, kept).items():
            pos[sp] = pos[sp][p] if sp in pos else p
        if i < stages:
            cur = reanalyze(rewrite(cur, kept))
            scores = score_fn(cur)
            kw["original"] = None  # later stages time against the previous stage's model
    final = {}
    for g in analysis.groups:
        m = next((m for m in g.members if (m.tensor, m.axis) in pos), None)
        if m is not None:
            k = np.unique(m.index_map[pos[(m.tensor, m.axis)]])
            if len(k) < g.size:
                final[g.id] = k
    res.kept, res.iterations, res.baseline = final, iters, base0
    res.budget = spec.target(base0)
    return res
