"""Results that cross stages and what the user reads: JSON report and terminal summary."""
from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from onnxprune import __version__
from onnxprune.report.progress import Progress
from onnxprune.report.records import BudgetReport, GroupReport, ModelStats, RunInfo, RunSettings, VerificationResult

__all__ = ["GroupReport", "ModelStats", "Progress", "Report", "RunInfo", "byte_unit", "format_bytes",
           "format_count", "run_info"]

LIBRARIES = ("onnx", "onnxruntime", "numpy", "onnx_graphsurgeon", "networkx")


def library_version(name: str) -> str | None:
    """The version of an installed library (the module's own ``__version__``: onnxruntime-gpu and
    onnxruntime share one module name), None when it is not installed."""
    try:
        module = sys.modules.get(name) or importlib.import_module(name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", None) or "") or None


def run_info(command: list[str] | None = None) -> RunInfo:
    versions = {name: library_version(name) for name in LIBRARIES}
    versions["python"] = platform.python_version()
    return RunInfo(onnxprune=__version__, versions=versions,
                   timestamp_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   command=list(sys.argv if command is None else command))


@dataclass
class Report:
    input: str
    output: str | None
    settings: RunSettings
    baseline: ModelStats
    pruned: ModelStats | None = None
    groups: list[GroupReport] = field(default_factory=list)
    verification: VerificationResult | None = None
    budget: BudgetReport | None = None
    timings_s: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run: RunInfo = field(default_factory=run_info)

    def to_dict(self) -> dict:
        def rec(r):
            return r.to_dict() if r is not None else None
        return dict(input=self.input, output=self.output, settings=rec(self.settings), baseline=rec(self.baseline),
                    pruned=rec(self.pruned), groups=[g.to_dict() for g in self.groups],
                    verification=rec(self.verification), budget=rec(self.budget), timings_s=dict(self.timings_s),
                    notes=list(self.notes), run=rec(self.run))

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    def summary(self) -> str:
        lines = [self._groups_line()]
        lines += _stats_table(self.baseline, self.pruned)
        if self.budget:
            lines += _budget_lines(self.budget)
        if self.verification:
            lines.append(_verification_line(self.verification))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _groups_line(self) -> str:
        n_prunable = sum(1 for g in self.groups if not g.frozen)
        n_pruned = sum(1 for g in self.groups if g.kept < g.channels)
        return (f"channel groups: {len(self.groups)} ({n_prunable} prunable, {len(self.groups) - n_prunable} frozen), "
                f"{n_pruned} pruned")


def _stats_table(b: ModelStats, p: ModelStats | None) -> list[str]:
    """original / pruned / ratio rows of MACs, params, peak memory, file size and latency; both
    values of a row in one unit (the larger one's), so they compare at a glance."""
    rows = [("", "original", "pruned", "ratio")]

    def row(label, a, c, fmt):
        unit = max((v for v in (a, c) if v is not None), default=None)
        rows.append((label, fmt(a, unit) if a is not None else "-", fmt(c, unit) if c is not None else "-",
                     f"{c / a:.3f}" if a and c is not None else ""))

    def ms(v, _unit=None):
        return f"{v:.3f} ms"
    if p is not None:
        row("MACs", b.macs, p.macs, format_count)
        row("params", b.params, p.params, format_count)
        row("peak mem", b.peak_memory_bytes, p.peak_memory_bytes, format_bytes)
        row("file", b.file_bytes, p.file_bytes, format_bytes)
        row("latency", b.latency_ms, p.latency_ms, ms)
    else:
        rows += [("MACs", format_count(b.macs), "", ""), ("params", format_count(b.params), "", ""),
                 ("latency", ms(b.latency_ms) if b.latency_ms is not None else "-", "", "")]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  " + "  ".join(s.ljust(w[i]) if i == 0 else s.rjust(w[i]) for i, s in enumerate(r)).rstrip()
             for r in rows]
    if b.latency_note or (p and p.latency_note):
        lines.append(f"  latency: {(p.latency_note if p and p.latency_note else b.latency_note)}")
    return lines


def budget_value_formatter(metric: str, baseline: float):
    """How a budget line writes values of `metric`: one unit for the budget, the prediction and the
    measurement (the unpruned model's), as the stats table writes that quantity."""
    if metric == "latency":
        return lambda v: f"{v:.3f} ms"
    if metric == "peak_memory":
        return lambda v: format_bytes(v, baseline)
    return lambda v: format_count(v, baseline)


def _budget_lines(bd: BudgetReport) -> list[str]:
    fmt = budget_value_formatter(bd.metric, bd.baseline)

    def f(v):
        return fmt(v) if v is not None else "-"
    pred = f(bd.predicted) if bd.predicted is not None else "n/a (per-group costs not additive here)"
    lines = [f"budget: {METRIC_LABELS.get(bd.metric, bd.metric)} {bd.spec} = {f(bd.budget)}; predicted {pred}, "
             f"measured {f(bd.measured)} ({'met' if bd.met else 'NOT met'}, "
             f"{len(bd.iterations)} solve(s){', latency table from cache' if bd.table_cached else ''})"]
    if bd.method:
        lines.append(f"budget method: {bd.method}")
    fit = (bd.latency_model_info or {}).get("fit_median_abs_error")
    if fit is not None and fit > LOOSE_FIT:
        lines.append(f"latency model: fits this model's unprofiled timings to {100 * fit:.1f}% (median over "
                     f"{bd.latency_model_info.get('fit_designs')} designs), looser than {100 * LOOSE_FIT:.0f}%: "
                     f"trust the measured latency over the predicted one")
    return lines


# the op-level model's in-sample error above which the summary says the prediction is loose: the five
# benchmark nets fit within 0.5-2.5% (benchmarks/results/latency_model.json); sub-millisecond models, where ORT's per-node
# profiling overhead is several times the kernels' time, fit to 10-15%
LOOSE_FIT = 0.05


METRIC_LABELS = {"latency": "latency", "macs": "MACs", "params": "params", "peak_memory": "peak memory"}


def _verification_line(v: VerificationResult) -> str:
    if v.skipped:
        return f"verification: skipped ({v.skipped})"
    rel = v.rel_tol if v.rel_tol is not None else 1e-4
    basis = f"{_rel(rel)} x output scale"
    if v.output_scale and v.tolerance > rel * v.output_scale * (1 + 1e-9):
        # raised to a multiple of how far float rounding alone moves this model (verify/rounding.py)
        basis = f"{v.tolerance / v.rounding_floor:.3g} x float rounding floor {v.rounding_floor:.2e}, above {basis}"
    return (f"verification: {'passed' if v.passed else 'FAILED'} (max |diff| {v.max_abs_diff:.2e} "
            f"<= {v.tolerance:.2e} = {basis}, {v.inputs} random inputs)")


def _rel(v: float) -> str:
    return f"{v:.0e}".replace("e-0", "e-")  # 1e-4, 1e-2


COUNT_UNITS = (("G", 1e9), ("M", 1e6), ("K", 1e3))
BYTE_UNITS = (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3))  # decimal, as budgets are parsed


def count_unit(v) -> tuple[str, float]:
    """The unit a count of size `v` is written in: G, M, K or none."""
    return next(((u, d) for u, d in COUNT_UNITS if abs(v) >= d), ("", 1))


def byte_unit(v) -> tuple[str, float]:
    """The unit a byte size `v` is written in: GB, MB, KB or B."""
    return next(((u, d) for u, d in BYTE_UNITS if abs(v) >= d), ("B", 1))


def format_count(v, unit_of=None) -> str:
    """`v` as 6.67M; in the unit of `unit_of` when given (the other value of one quantity)."""
    if v is None:
        return "-"
    unit, d = count_unit(v if unit_of is None else unit_of)
    return f"{v / d:.2f}{unit}" if unit else str(v)


def format_bytes(v, unit_of=None) -> str:
    """`v` as 1.61 MB; in the unit of `unit_of` when given (the other value of one quantity)."""
    if v is None:
        return "-"
    unit, d = byte_unit(v if unit_of is None else unit_of)
    return f"{v / d:.2f} {unit}" if d > 1 else f"{v} B"
