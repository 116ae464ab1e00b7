"""Tool time for load + normalize + analyze + score + rewrite + verify on ResNet-50 at 224x224
(latency measurement excluded). Target: under 10 s on the 2-core machine.

    python benchmarks/pipeline_time.py                 # exports ResNet-50 (needs torch) if missing
    python benchmarks/pipeline_time.py --model path.onnx --input-shape x=1x3x224x224

Prints a table of stage times (median of --repeats runs) and writes benchmarks/results/pipeline_time.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import ROOT, ensure_full_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--exporter", default="ts", choices=["ts", "dynamo"])
    ap.add_argument("--input-shape", action="append", default=None)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from onnxprune.api import prune
    from onnxprune.report import Progress

    model = Path(args.model) if args.model else ensure_full_model("resnet50", args.exporter)
    shapes = args.input_shape
    runs = []
    for _ in range(args.repeats):
        p = Progress(enabled=False)
        t0 = time.perf_counter()
        res = prune(str(model), ratio=args.ratio, input_shapes=shapes, latency=False, progress=p)
        total = time.perf_counter() - t0
        assert res.report.verification["passed"]
        runs.append(dict(p.timings, total=total))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"model {model.name}  ratio {args.ratio}  input {res.report.settings['input_shapes']}  "
          f"MACs {res.report.baseline.macs / 1e9:.2f}G -> {res.report.pruned.macs / 1e9:.2f}G")
    print(f"{'stage':<12} {'median s':>9}")
    for k, v in med.items():
        print(f"{k:<12} {v:>9.2f}")
    out = ROOT / "benchmarks" / "results" / f"pipeline_time.{model.stem.split('.')[-1]}.json"
    out.write_text(json.dumps(dict(model=model.name, ratio=args.ratio, repeats=args.repeats, median_s=med,
                                   runs=runs), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
