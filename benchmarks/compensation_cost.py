"""What compensation costs at run time: the same pruned channels with no compensation, per-channel
mean (a bias update: free) and --per-position mean (a constant map and an Add after each consumer,
or a wider constant in an existing Add), timed side by side in one ONNX Runtime process.

    python benchmarks/compensation_cost.py                      # ResNet-50 and DeiT-Tiny-shaped ViT at 224
    python benchmarks/compensation_cost.py --models resnet50 --ratio 0.5

Calibration here is random normal data: it sets the constants, not the cost, and this measures cost
only (accuracy: benchmarks/retention.py). Writes benchmarks/results/compensation_cost.json.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from common import ROOT, ensure_full_model

VARIANTS = {"none": dict(compensate="none"), "mean": dict(compensate="mean"),
            "mean/pos": dict(compensate="mean", per_position=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet50", "vit"])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--calib", type=int, default=32, help="random calibration samples")
    ap.add_argument("--time", type=float, default=20.0, help="seconds of side-by-side timing per model")
    args = ap.parse_args()

    from onnxprune.api import prune
    from onnxprune.analysis.graph import random_feeds
    from onnxprune.profiling.timing import measure_latencies

    rows = []
    for name in args.models:
        path = ensure_full_model(name, "ts")
        calib = np.random.default_rng(0).standard_normal((args.calib, 3, 224, 224)).astype(np.float32)
        results = {v: prune(str(path), ratio=args.ratio, scorer="vbp", calib=calib, calib_batch=8, latency=False, **kw)
                   for v, kw in VARIANTS.items()}
        view = results["none"].analysis.view
        models = [view.model] + [r.model for r in results.values()]
        st = measure_latencies([m.SerializeToString() for m in models], random_feeds(view, seed=0),
                               time_budget_s=args.time, min_time_s=args.time)
        base = st[0].median_ms
        for (v, r), s in zip(results.items(), st[1:]):
            rep = r.report
            rows.append(dict(model=name, ratio=args.ratio, compensation=v, base_ms=round(base, 3),
                             pruned_ms=round(s.median_ms, 3), speedup=round(base / s.median_ms, 3),
                             params=rep.pruned.params, params_ratio=round(rep.pruned.params / rep.baseline.params, 4),
                             nodes=len(r.model.graph.node), runs=s.n,
                             notes=[n for n in rep.notes if "compensation" in n]))
    print(f"{'model':<9} {'comp':<9} {'orig ms':>8} {'pruned ms':>9} {'speedup':>7} {'params':>7} {'nodes':>5}")
    for r in rows:
        print(f"{r['model']:<9} {r['compensation']:<9} {r['base_ms']:>8.3f} {r['pruned_ms']:>9.3f} {r['speedup']:>7.3f} "
              f"{r['params_ratio']:>7.3f} {r['nodes']:>5}")
    out = ROOT / "benchmarks" / "results" / "compensation_cost.json"
    out.write_text(json.dumps(dict(command="python benchmarks/compensation_cost.py", rows=rows), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)} (medians of side-by-side runs)")


if __name__ == "__main__":
    main()
