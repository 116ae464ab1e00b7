#!/usr/bin/env python
"""How far the knapsack's objective moves realized / MACs speed-up at a latency budget (issue #11:
>= 0.9 on ResNet-50 and ConvNeXt-T at 0.6x), measured.

At one budget per model, the latency budget is solved with three objectives and each result is timed
beside the unpruned model (the budget's own verification):

- ``members``: the default knapsack value (LAMP values times each group's number of weight members);
- ``macs-share``: LAMP values times each group's MACs at full width. With flat scores this values
  every group's relative cut alike, so it sits near uniform pruning;
- ``macs-kept``: no scores at all, the value of a width is the MACs it keeps, linear in the width with
  the neighbours' widths taken from the previous solve (4 solves). This is the objective the target
  itself rewards; its plans are not meant to be used (groups fall to a few channels);
- ``macs-kept-floor``: the same with every group kept at >= --floor of its channels (default 0.25),
  so no layer is emptied.

The two extra objectives exist only here: the script swaps ``onnxprune.planning.budget.group_choices``
for a wrapper that rescales the values. Run on a quiet machine (the dev box has 2 cores):

    python benchmarks/realized_macs_objective.py
    python benchmarks/realized_macs_objective.py --models convnext --budget 0.6

Writes benchmarks/results/realized_macs_objective.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_avg  # noqa: E402
from latency_model import model_path  # noqa: E402

OBJECTIVES = ("members", "macs-share", "macs-kept", "macs-kept-floor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["resnet50", "convnext"])
    ap.add_argument("--budget", type=float, default=0.6)
    ap.add_argument("--iterations", type=int, default=4, help="solves of macs-kept and macs-kept-floor")
    ap.add_argument("--floor", type=float, default=0.25, help="macs-kept-floor: least kept share of every group")
    ap.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=OBJECTIVES)
    ap.add_argument("--cache-dir", type=Path, default=None, help="latency-model cache (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "realized_macs_objective.json")
    args = ap.parse_args()

    import onnxprune
    from onnxprune.api import analyze_model
    from onnxprune.planning import budget as budget_mod
    from onnxprune.profiling.cost import macs_terms

    original = budget_mod.group_choices
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(args.cache_dir or tmp)
        for name in args.models:
            path, source = model_path(name)
            analysis = analyze_model(str(path))
            terms = macs_terms(analysis)

            def per_channel_macs(g, fractions):
                """MACs one channel of g carries with the other groups at `fractions` of their width."""
                return sum(base * np.prod([fractions.get(h, 1.0) for h in gids if h != g.id])
                           for base, gids in terms if g.id in gids) / g.size

            def run(objective, fractions):
                def choices(groups, scores, round_to=None, value="lamp"):
                    if objective == "members":
                        return original(groups, scores, round_to, value=value)
                    out = original(groups, scores, round_to, value="lamp")
                    for c in out:
                        m = per_channel_macs(c.group, fractions)
                        c.values = c.values * m * c.group.size if objective == "macs-share" else c.widths * m
                        if objective == "macs-kept-floor":
                            ok = (c.widths >= args.floor * c.group.size) | (c.widths == c.widths.max())
                            c.widths, c.values = c.widths[ok], c.values[ok]
                    return out
                budget_mod.group_choices = choices
                try:
                    res = onnxprune.prune(str(path), budget=f"{args.budget}x", scorer="sp-lamp", latency=True,
                                          cache_dir=cache, min_macs=0.05)
                finally:
                    budget_mod.group_choices = original
                rep = res.report
                lat = rep.pruned.latency_ms / rep.baseline.latency_ms
                macs = rep.pruned.macs / rep.baseline.macs
                kept = {g.id: g.kept / g.channels for g in rep.groups if not g.frozen}
                row = dict(model=name, source=source, objective=objective, budget=args.budget,
                           latency_ratio=lat, macs_ratio=macs, realized_over_macs_speedup=macs / lat,
                           min_group_fraction=min(kept.values()), baseline_ms=rep.baseline.latency_ms,
                           pruned_ms=rep.pruned.latency_ms, load=load_avg())
                print(f"{name:10s} {objective:10s} latency x{lat:.3f}  MACs x{macs:.3f}  realized/MACs {macs / lat:.2f}"
                      f"  narrowest group {min(kept.values()):.2f}  load {row['load']}", flush=True)
                rows.append(row)
                return kept

            for objective in args.objectives:
                if objective in ("members", "macs-share"):
                    run(objective, {})
                    continue
                fractions = {}
                for _ in range(args.iterations):
                    fractions = run(objective, fractions)
    args.out.write_text(json.dumps(dict(budget=args.budget, results=rows), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
