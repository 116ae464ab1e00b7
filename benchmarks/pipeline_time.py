"""Tool time for load + normalize + analyze + score + rewrite + verify on ResNet-50 at 224x224
(latency measurement excluded). Target: under 10 s on the 2-core machine.

    python benchmarks/pipeline_time.py                 # exports ResNet-50 (needs torch) if missing
    python benchmarks/pipeline_time.py --model path.onnx --input-shape x=1x3x224x224
    python benchmarks/pipeline_time.py --bert-base --heads     # BERT-base (110M params, 438 MB), sequence 128

Prints a table of stage times (median of --repeats runs) and writes benchmarks/results/pipeline_time.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
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
    ap.add_argument("--bert-base", action="store_true", help="BERT-base encoder (hidden 768, 12 layers, 12 heads)")
    ap.add_argument("--heads", action="store_true")
    args = ap.parse_args()

    from onnxprune.api import prune
    from onnxprune.report.summary import Progress

    shapes = args.input_shape
    if args.bert_base:
        model = export_bert_base(args.exporter)
        shapes = shapes or ["input_ids=1x128", "attention_mask=1x128"]
    else:
        model = Path(args.model) if args.model else ensure_full_model("resnet50", args.exporter)
    runs = []
    for _ in range(args.repeats):
        p = Progress(enabled=False)
        t0 = time.perf_counter()
        res = prune(str(model), ratio=args.ratio, input_shapes=shapes, latency=False, progress=p, heads=args.heads)
        total = time.perf_counter() - t0
        assert res.report.verification["passed"]
        runs.append(dict(p.timings, total=total))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"model {model.name}  ratio {args.ratio}  input {res.report.settings['input_shapes']}  "
          f"MACs {res.report.baseline.macs / 1e9:.2f}G -> {res.report.pruned.macs / 1e9:.2f}G")
    print(f"{'stage':<12} {'median s':>9}")
    for k, v in med.items():
        print(f"{k:<12} {v:>9.2f}")
    out = ROOT / "benchmarks" / "results" / f"pipeline_time.{model.stem}.json"
    out.write_text(json.dumps(dict(model=model.name, ratio=args.ratio, heads=args.heads, repeats=args.repeats,
                                   command="python benchmarks/pipeline_time.py " + " ".join(sys.argv[1:]),
                                   median_s=med, runs=runs), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


def export_bert_base(exporter: str) -> Path:
    """models/onnx/full/bert_base.<exporter>.onnx from models/arch/bert.py at BERT-base size (torch)."""
    from common import FULL

    path = FULL / f"bert_base.{exporter}.onnx"
    if path.exists():
        return path
    import torch

    from models.arch.bert import bert

    FULL.mkdir(parents=True, exist_ok=True)
    m = bert(hidden=768, layers=12, heads=12, ffn=3072).eval()
    args = (torch.randint(0, 30522, (1, 128)), torch.ones(1, 128, dtype=torch.int64))
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    if exporter == "ts":
        torch.onnx.export(m, args, str(path), dynamo=False, opset_version=17, input_names=list(dyn),
                          output_names=["logits"], dynamic_axes=dyn)
    else:
        b, t = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
        torch.onnx.export(m, args, str(path), dynamo=True, input_names=list(dyn), output_names=["logits"],
                          dynamic_shapes={"input_ids": {0: b, 1: t}, "attention_mask": {0: b, 1: t}})
    return path


if __name__ == "__main__":
    main()
