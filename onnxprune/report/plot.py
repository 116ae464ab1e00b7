"""A one-page picture of a prune report (``--plot FILE.png``): kept width of every channel group, the
cost ratios, and for budgets the closed loop's solves. matplotlib is an optional extra
(``pip install onnxprune[plot]``); nothing else in onnxprune needs it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from onnxprune.errors import OnnxPruneError

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
RATIO_BETTER = "#2ca02c"  # green: the pruned model is cheaper (or equal)
RATIO_WORSE = "#d62728"  # red: the pruned model costs more than the original (a ratio above 1)


def ratio_colors(ratios: list[float]) -> list[str]:
    """Bar colours of pruned/original ratios: a ratio above 1 (e.g. a slower pruned model) must not
    look like a saving."""
    return [RATIO_WORSE if r > 1.0 else RATIO_BETTER for r in ratios]


def check_plot_path(path: str | os.PathLike) -> None:
    """Refuse a plot path before the (possibly long) run: a format matplotlib writes, matplotlib present."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise OnnxPruneError(f"--plot {path}: give a .png, .svg or .pdf file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OnnxPruneError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from None


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "..." + name[-(n - 3):]


def plot_report(report, path: str | os.PathLike) -> None:
    """Write the picture of `report` (a Report, its dict, or a report JSON path) to `path`."""
    check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    if isinstance(report, (str, os.PathLike)):
        report = json.loads(Path(report).read_text())
    r = report if isinstance(report, dict) else report.to_dict()
    groups = r.get("groups") or []
    budget = r.get("budget")
    panels = 2 + (1 if budget and budget.get("iterations") else 0)
    fig = plt.figure(figsize=(max(8.0, 0.22 * len(groups) + 3), 3.6 * panels))
    axes = [fig.add_subplot(panels, 1, i + 1) for i in range(panels)]
    _groups_panel(axes[0], groups, r.get("input"))
    ratios_panel(axes[1], r.get("baseline") or {}, r.get("pruned") or {})
    if panels == 3:
        _budget_panel(axes[2], budget)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _groups_panel(ax, groups: list[dict], source) -> None:
    """Original and kept width of every channel group (frozen ones grey)."""
    xs = range(len(groups))
    ax.bar(xs, [g["channels"] for g in groups], color="#dddddd", edgecolor="#999999", label="original")
    ax.bar(xs, [g["kept"] for g in groups], color=["#bbbbbb" if g["frozen"] else "#1f77b4" for g in groups],
           label="kept (grey: frozen)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_short(g["name"]) for g in groups], rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title(f"channel groups: {sum(1 for g in groups if g['kept'] < g['channels'])} of {len(groups)} pruned "
                 f"({os.path.basename(str(source or ''))})", fontsize=10)
    ax.legend(fontsize=8)


def ratios_panel(ax, b: dict, p: dict) -> None:
    """pruned / original of MACs, params, peak memory, file size and latency (those measured); a
    ratio above 1 in the warning colour."""
    keys = [("macs", "MACs"), ("params", "params"), ("peak_memory_bytes", "peak memory"),
            ("file_bytes", "file"), ("latency_ms", "latency")]
    labels, ratios = [], []
    for k, label in keys:
        if b.get(k) and p.get(k) is not None:
            labels.append(label)
            ratios.append(p[k] / b[k])
    ax.barh(labels, ratios, color=ratio_colors(ratios))
    for i, v in enumerate(ratios):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.axvline(1.0, color="#999999", lw=0.8)
    ax.set_xlim(0, max([1.05] + [v * 1.15 for v in ratios]))
    ax.set_xlabel("pruned / original")
    ax.invert_yaxis()


def _budget_panel(ax, budget: dict) -> None:
    """Each solve's predicted and measured cost against the budget."""
    its = budget["iterations"]
    n = range(1, len(its) + 1)
    scale, unit = {"latency": (1.0, "ms"), "peak_memory": (1e-6, "MB")}.get(budget["metric"], (1e-6, "M"))
    meas = [it.get("measured") for it in its]
    pred = [it.get("predicted") for it in its]
    ax.plot(n, [None if v is None else v * scale for v in meas], "-o", label="measured")
    ax.plot(n, [None if v is None or v <= 0 else v * scale for v in pred], "--x", label="predicted")
    ax.axhline(budget["budget"] * scale, color="#d62728", lw=1, label=f"budget {budget['spec']}")
    ax.set_xticks(list(n))
    ax.set_xlabel("solve")
    ax.set_ylabel(f"{budget['metric']} ({unit})")
    ax.set_title(f"closed loop: {'met' if budget.get('met') else 'NOT met'}", fontsize=10)
    ax.legend(fontsize=8)
