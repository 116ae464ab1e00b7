"""What a budget constrains. Every objective prices the knapsack items (``price``: each group's
change of the metric at every width it may keep, returning the unpruned model's value) and
evaluates a choice of kept channels exactly (``evaluate``: the written model's value), so one
closed loop (planning/budget.py) serves latency, MACs, params and peak memory alike.

Latency costs come from a replaceable source (``LatencyCosts``): the op-level latency model
(default: profiling/latency_model.py, whose costs couple the groups a node reads and writes, so it
also hands the solver a :class:`CoupledInstance`), the per-group position-aware table, or the MACs
share of the measured baseline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx

from onnxprune.analysis.graph import random_feeds
from onnxprune.analysis.groups import Analysis
from onnxprune.planning.choices import GroupChoices, snap_to_steps
from onnxprune.planning.coupled import CoupledInstance, op_model_instance
from onnxprune.profiling.cost import macs_terms, params_terms, peak_memory, peak_terms, scaled_total
from onnxprune.profiling.latency_model import OpLatencyModel, build_latency_model
from onnxprune.profiling.latency_table import build_latency_table, measure_medians
from onnxprune.profiling.median_ci import MedianCI
from onnxprune.profiling.node_profile import side_by_side
from onnxprune.report.stats import model_stats
from onnxprune.transform.rewrite import rewrite

AUTO_STEP_QUANTUM = 0.005  # --round-to auto: latency steps finer than 0.5% of the baseline are noise


class Objective(Protocol):
    metric: str
    band_low: float  # the loop accepts a measurement in [band_low, 1] x budget
    info: dict  # how the costs were priced, for the report

    def price(self, choices: list[GroupChoices]) -> float: ...

    def evaluate(self, kept: dict[int, np.ndarray]) -> float: ...


def analytic_costs(analysis: Analysis, metric: str, choices: list[GroupChoices],
                   fractions: dict[int, float] | None = None) -> float:
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
        c.costs = np.array([scaled_total(rel, {**fractions, gid: w / c.group.size}) - fixed for w in c.widths])
    return base


@dataclass
class CountObjective:
    """MACs or parameters: additive analytic costs, exact counts of the written model."""
    analysis: Analysis
    metric: str
    band_low: float = 0.97
    info: dict = field(default_factory=dict)

    def price(self, choices: list[GroupChoices]) -> float:
        return analytic_costs(self.analysis, self.metric, choices)

    def evaluate(self, kept: dict[int, np.ndarray]) -> float:
        stats = model_stats(rewrite(self.analysis, kept), self.analysis.view.input_shapes)
        return float(getattr(stats, self.metric))


def macs_objective(analysis: Analysis) -> CountObjective:
    return CountObjective(analysis, "macs")


def params_objective(analysis: Analysis) -> CountObjective:
    return CountObjective(analysis, "params")


@dataclass
class PeakMemoryObjective:
    """Peak activation memory of a topological execution: a max over time, not a sum, so its costs
    are a linearization around the current peak step (``relinearize``)."""
    analysis: Analysis
    metric: str = "peak_memory"
    band_low: float = 0.97
    info: dict = field(default_factory=dict)

    def price(self, choices: list[GroupChoices]) -> float:
        return analytic_costs(self.analysis, self.metric, choices)

    def relinearize(self, choices: list[GroupChoices], fractions: dict[int, float]) -> float:
        """Costs around `fractions` (the last solution), shifted so each group's current width costs
        nothing; returns the peak at `fractions`."""
        base = analytic_costs(self.analysis, self.metric, choices, fractions)
        for c in choices:
            cur = fractions.get(c.group.id, 1.0)
            c.costs = c.costs - np.interp(cur * c.group.size, c.widths, c.costs) if len(c.widths) > 1 else c.costs
        return base

    def evaluate(self, kept: dict[int, np.ndarray]) -> float:
        fractions = {g.id: (len(kept[g.id]) if g.id in kept else g.size) / g.size
                     for g in self.analysis.prunable_groups}
        return peak_memory(self.analysis, fractions)[0]


@dataclass
class LatencyMeter:
    """Times candidates against a reference model, side by side (or with ``--latency-cmd``)."""
    reference: onnx.ModelProto
    feeds: dict
    provider: str = "cpu"
    threads: int | None = None
    latency_cmd: str | None = None

    def medians(self, models: list[onnx.ModelProto], time_budget_s: float,
                rel_halfwidth: float | None = None) -> list[float]:
        return measure_medians(models, self.feeds, provider=self.provider, threads=self.threads,
                               time_budget_s=time_budget_s, latency_cmd=self.latency_cmd,
                               rel_halfwidth=rel_halfwidth)


class LatencyCosts(Protocol):
    """Where per-group latency costs come from (a measured table, an analytic model, ...)."""
    info: dict

    def price(self, choices: list[GroupChoices]) -> float: ...


@dataclass
class MeasuredLatencyCosts:
    """The position-aware latency table (profiling/latency_table.py): measured once per model and
    runtime, cached. ``auto_steps``: `--round-to auto` snaps costs to latency steps."""
    analysis: Analysis
    provider: str = "cpu"
    threads: int | None = None
    cache_dir: object = None
    use_cache: bool = True
    latency_cmd: str | None = None
    progress: object = None
    auto_steps: bool = False
    info: dict = field(default_factory=dict)

    def price(self, choices: list[GroupChoices]) -> float:
        groups = [c.group for c in choices]
        if self.progress is not None:
            self.progress.start("profile", f"({len(groups)} groups, {self.provider})")
        table = build_latency_table(self.analysis, groups, provider=self.provider, threads=self.threads,
                                    cache_dir=self.cache_dir, use_cache=self.use_cache,
                                    latency_cmd=self.latency_cmd, progress=self.progress)
        for c in choices:
            c.costs = table.contribution(c.group.id)[c.widths - 1]
        if self.auto_steps:
            snap_to_steps(choices, quantum=AUTO_STEP_QUANTUM * table.baseline_ms)
        self.info = dict(table_key=table.key, table_cached=table.from_cache, table_build_s=round(table.build_s, 2))
        if table.skipped:  # candidates ONNX Runtime crashed on: their widths are interpolated
            self.info["table_skipped"] = [f"group {d['group']} width {d['width']}: {d['reason']}" for d in table.skipped]
        return table.baseline_ms


@dataclass
class OpModelLatencyCosts:
    """Costs from the op-level latency model (profiling/latency_model.py): T(w) = fixed + a sum of
    terms, each over the widths of the groups one executed node reads and writes.

    The model is scaled so its prediction for the unpruned model equals the baseline measured now
    (``baseline_ci``: a median with its 95% confidence interval): what it must get right is the
    ratio pruned/unpruned, and a load change between its build and this run cancels out.
    ``price`` also fills separable per-group costs (each group alone, the others at full width)
    for what needs one number per item; the solver uses :meth:`instance`, the coupled costs."""
    analysis: Analysis
    meter: LatencyMeter
    cache_dir: object = None
    use_cache: bool = True
    progress: object = None
    info: dict = field(default_factory=dict)
    model: OpLatencyModel | None = None
    scale: float = 1.0
    baseline_ci: MedianCI | None = None

    def price(self, choices: list[GroupChoices]) -> float:
        groups = [c.group for c in choices]
        if self.progress is not None:
            self.progress.start("profile", f"(op-level model, {len(groups)} groups, {self.meter.provider})")
        self.model = build_latency_model(self.analysis, groups, provider=self.meter.provider,
                                         threads=self.meter.threads, cache_dir=self.cache_dir,
                                         use_cache=self.use_cache, progress=self.progress)
        self.baseline_ci = side_by_side([self.meter.reference], self.meter.feeds,
                                        provider=self.meter.provider, threads=self.meter.threads)[0]
        full = self.model.predict({})
        self.scale = self.baseline_ci.median_ms / full
        for c in choices:
            rows = [{c.group.id: int(w)} for w in c.widths]
            c.costs = self.scale * (self.model.predict_matrix(self.model.width_matrix(rows)) - full)
        fit = self.model.fit_error()
        self.info = dict(latency_model="op", latency_model_info=dict(
            key=self.model.key, cached=self.model.from_cache, build_s=round(self.model.build_s, 2),
            designs=self.model.n_designs, predicted_unpruned_ms=round(full, 4), scale=round(self.scale, 4),
            baseline_ci_ms=[round(self.baseline_ci.lo_ms, 4), round(self.baseline_ci.hi_ms, 4)],
            fit_median_abs_error=round(fit[0], 4) if fit else None, fit_designs=len(self.model.fit_rel_errors)))
        return self.baseline_ci.median_ms

    def instance(self, choices: list[GroupChoices]) -> CoupledInstance:
        """The coupled knapsack over ``choices``' items (absolute ms, scaled like :meth:`price`)."""
        return op_model_instance(self.model, choices, self.scale)


@dataclass
class MacsShareLatencyCosts:
    """Analytic first estimate: each group's MACs share of the measured baseline latency."""
    analysis: Analysis
    meter: LatencyMeter
    info: dict = field(default_factory=lambda: dict(latency_model="macs"))

    def price(self, choices: list[GroupChoices]) -> float:
        base_macs = analytic_costs(self.analysis, "macs", choices)
        baseline = self.meter.medians([self.meter.reference], time_budget_s=6.0)[0]
        for c in choices:
            c.costs = c.costs * (baseline / max(base_macs, 1.0))
        return baseline


@dataclass
class LatencyObjective:
    """Latency of the written model, measured against the reference. A relative budget compares
    the ratio measured side by side (scaled to the priced baseline); an absolute one the raw median."""
    analysis: Analysis
    costs: LatencyCosts
    meter: LatencyMeter
    relative: bool
    metric: str = "latency"
    band_low: float = 0.9
    baseline: float = 0.0

    @property
    def info(self) -> dict:
        return self.costs.info

    def price(self, choices: list[GroupChoices]) -> float:
        self.baseline = self.costs.price(choices)
        return self.baseline

    def evaluate(self, kept: dict[int, np.ndarray]) -> float:
        cand = rewrite(self.analysis, kept)
        # until both medians are known within 2% (issue #11), or 8 s
        base_ms, ms = self.meter.medians([self.meter.reference, cand], time_budget_s=8.0, rel_halfwidth=0.02)
        return ms * self.baseline / base_ms if self.relative else ms


def latency_meter(analysis: Analysis, reference: onnx.ModelProto | None, *, provider: str = "cpu",
                  threads: int | None = None, latency_cmd: str | None = None) -> LatencyMeter:
    return LatencyMeter(reference or analysis.view.model, random_feeds(analysis.view, seed=0), provider, threads,
                        latency_cmd)
