"""Transformer pruning speed: the DeiT-Tiny-shaped ViT (224x224, dim 192, 12 blocks, 3 heads,
MLP 768) and BERT-mini, pruned at 30% of MLP neurons (default), with whole heads (--heads), and with
the hidden dim too (--embed-dim); original and pruned timed side by side in one ONNX Runtime process.

    python benchmarks/transformer_speed.py                 # exports the full-size models (torch) if missing
    python benchmarks/transformer_speed.py --models vit --exporter dynamo

Writes benchmarks/results/transformer_speed.json.
"""
from __future__ import annotations

import argparse
import json

from common import ROOT, ensure_full_model

MODES = {"mlp30": dict(), "mlp30+heads": dict(heads=True), "mlp30+heads+embed": dict(heads=True, embed_dim=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["vit", "bert"])
    ap.add_argument("--exporter", default="ts", choices=["ts", "dynamo"])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--time", type=float, default=20.0, help="seconds of side-by-side timing per model")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from onnxprune.api import prune
    from onnxprune.analysis.graph import random_feeds
    from onnxprune.profiling.timing import measure_latencies

    rows = []
    for name in args.models:
        path = ensure_full_model(name, args.exporter)
        shapes = {"input_ids": [1, 128], "attention_mask": [1, 128]} if name == "bert" else None
        results = {m: prune(str(path), ratio=args.ratio, input_shapes=shapes, latency=False, **kw)
                   for m, kw in MODES.items()}
        view = next(iter(results.values())).analysis.view
        models = [view.model] + [r.model for r in results.values()]
        st = measure_latencies([m.SerializeToString() for m in models], random_feeds(view, seed=0),
                               threads=args.threads, time_budget_s=args.time, min_time_s=args.time)
        base = st[0].median_ms
        for (mode, r), s in zip(results.items(), st[1:]):
            rep = r.report
            rows.append(dict(model=f"{name}.{args.exporter}", mode=mode, inputs=view.input_shapes,
                             base_ms=round(base, 3), pruned_ms=round(s.median_ms, 3),
                             speedup=round(base / s.median_ms, 3), macs_ratio=round(rep.pruned.macs / rep.baseline.macs, 3),
                             params_ratio=round(rep.pruned.params / rep.baseline.params, 3),
                             verified=rep.verification["passed"], runs=s.n))
    print(f"{'model':<12} {'mode':<18} {'orig ms':>8} {'pruned ms':>9} {'speedup':>7} {'MACs':>6} {'params':>6} verified")
    for r in rows:
        print(f"{r['model']:<12} {r['mode']:<18} {r['base_ms']:>8.3f} {r['pruned_ms']:>9.3f} {r['speedup']:>7.3f} "
              f"{r['macs_ratio']:>6.3f} {r['params_ratio']:>6.3f} {r['verified']}")
    out = ROOT / "benchmarks" / "results" / "transformer_speed.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)} (medians of side-by-side runs, spinning off, order rotated)")


if __name__ == "__main__":
    main()
