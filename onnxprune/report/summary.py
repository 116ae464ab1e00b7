"""Results that cross stages and what the user reads: JSON report and terminal summary."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from onnxprune.report.records import BudgetReport, GroupReport, ModelStats, RunSettings, VerificationResult

__all__ = ["GroupReport", "ModelStats", "Progress", "Report", "format_bytes", "format_count"]


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

    def to_dict(self) -> dict:
        def rec(r):
            return r.to_dict() if r is not None else None
        return dict(input=self.input, output=self.output, settings=rec(self.settings), baseline=rec(self.baseline),
                    pruned=rec(self.pruned), groups=[g.to_dict() for g in self.groups],
                    verification=rec(self.verification), budget=rec(self.budget), timings_s=dict(self.timings_s),
                    notes=list(self.notes))

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
    """original / pruned / ratio rows of MACs, params, peak memory, file size and latency."""
    rows = [("", "original", "pruned", "ratio")]

    def row(label, a, c, fmt):
        if a is None or c is None:
            rows.append((label, fmt(a) if a is not None else "-", fmt(c) if c is not None else "-", ""))
        else:
            rows.append((label, fmt(a), fmt(c), f"{c / a:.3f}" if a else ""))
    if p is not None:
        row("MACs", b.macs, p.macs, format_count)
        row("params", b.params, p.params, format_count)
        row("peak mem", b.peak_memory_bytes, p.peak_memory_bytes, format_bytes)
        row("file", b.file_bytes, p.file_bytes, format_bytes)
        row("latency", b.latency_ms, p.latency_ms, lambda v: f"{v:.3f} ms")
    else:
        rows += [("MACs", format_count(b.macs), "", ""), ("params", format_count(b.params), "", ""),
                 ("latency", f"{b.latency_ms:.3f} ms" if b.latency_ms is not None else "-", "", "")]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  " + "  ".join(s.ljust(w[i]) if i == 0 else s.rjust(w[i]) for i, s in enumerate(r)).rstrip()
             for r in rows]
    if b.latency_note or (p and p.latency_note):
        lines.append(f"  latency: {(p.latency_note if p and p.latency_note else b.latency_note)}")
    return lines


def _budget_lines(bd: BudgetReport) -> list[str]:
    unit = {"latency": (1.0, " ms"), "peak_memory": (1e-6, " MB")}.get(bd.metric, (1e-6, "M"))

    def f(v):
        return f"{v * unit[0]:.3f}{unit[1]}" if v is not None else "-"
    pred = f(bd.predicted) if bd.predicted is not None else "n/a (per-group costs not additive here)"
    lines = [f"budget: {bd.metric} {bd.spec} = {f(bd.budget)}; predicted {pred}, "
             f"measured {f(bd.measured)} ({'met' if bd.met else 'NOT met'}, "
             f"{len(bd.iterations)} solve(s){', latency table from cache' if bd.table_cached else ''})"]
    if bd.method:
        lines.append(f"budget method: {bd.method}")
    return lines


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


def format_count(v) -> str:
    if v is None:
        return "-"
    for unit, d in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= d:
            return f"{v / d:.2f}{unit}"
    return str(v)


def format_bytes(v) -> str:
    if v is None:
        return "-"
    for unit, d in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3)):  # decimal, as budgets are parsed
        if v >= d:
            return f"{v / d:.2f} {unit}"
    return f"{v} B"


class Progress:
    """Stage lines on stderr with elapsed time; quiet when asked. Keeps stdout for results."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.timings: dict[str, float] = {}
        self._t0 = None
        self._name = None

    def start(self, name: str, detail: str = ""):
        self._end()
        self._name, self._t0 = name, time.perf_counter()
        self._detail = detail
        if self.enabled:
            self.stream.write(f"  {name}{' ' + detail if detail else ''} ...")
            self.stream.flush()

    def _end(self):
        if self._name is not None:
            dt = time.perf_counter() - self._t0
            self.timings[self._name] = round(self.timings.get(self._name, 0.0) + dt, 4)
            if self.enabled:
                self.stream.write(f" {dt:.2f}s\n")
                self.stream.flush()
            self._name = None

    def update(self, i: int, n: int):
        """Step i of n inside a long stage (latency profiling): redrawn in place on a terminal."""
        if self.enabled and self._name is not None and getattr(self.stream, "isatty", lambda: False)():
            el = time.perf_counter() - self._t0
            eta = f", ~{el / i * (n - i):.0f}s left" if i else ""
            self.stream.write(f"\r  {self._name} ... {i}/{n} ({el:.0f}s{eta})   ")
            self.stream.flush()

    def done(self):
        self._end()

    def abort(self):
        """End a half-written stage line so an error message starts on its own line."""
        if self._name is not None and self.enabled:
            self.stream.write(" failed\n")
            self.stream.flush()
        self._name = None
