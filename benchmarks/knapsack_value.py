#!/usr/bin/env python
"""Which knapsack value keeps the most accuracy? A `--macs` budget (the group knapsack, one value
function per run) against uniform `--ratio` pruning at the same MACs, on the trained digits
models of models/trained/ (issue #11: the latency budget's knapsack lost to uniform pruning).
No timing: MACs are exact counts of the written model, so this runs on a loaded machine.

Per model and MACs budget m (kept share of the MACs):
1. scores once: `--scorer vbp` on the calibration split (statistics shared with compensation);
2. uniform: the ratio whose uniformly pruned model keeps the largest MACs <= m (bisection);
3. for every value in --values: `plan_for_budget(--macs m, knapsack_value=value)` (closed loop
   on the written model's MACs);
4. each kept set rewritten, checked against the mask oracle, compensated (`--compensate lstsq`),
   and its test accuracy measured in ONNX Runtime.
The ViT prunes heads and its residual stream (--heads --embed-dim), as in latency_accuracy.py.

    nice -n 10 python benchmarks/knapsack_value.py
    nice -n 10 python benchmarks/knapsack_value.py --models resnet --macs 0.5 --values lamp energy

Writes benchmarks/results/knapsack_value.json (with the load averages).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import ROOT, trained_models_parser  # noqa: E402  (puts ROOT, models/trained on sys.path)


def parse_args() -> argparse.Namespace:
    ap = trained_models_parser(__doc__)
    ap.add_argument("--macs", nargs="*", type=float, default=[0.5, 0.25])
    ap.add_argument("--values", nargs="*", default=["lamp", "members", "energy"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "knapsack_value.json")
    return ap.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from common import load_avg, read_results  # noqa: E402
from onnxprune.api import (Plan, baseline_stats, calibrate_and_score, compensate, config_from_keywords,  # noqa: E402
                           load_and_analyze, rewrite_and_check, verify)
from onnxprune.errors import OnnxPruneError  # noqa: E402
from onnxprune.planning.budget import parse_budget_spec, plan_for_budget  # noqa: E402
from onnxprune.planning.ratio import keep_every_member, select_by_ratio  # noqa: E402
from onnxprune.report.stats import model_stats  # noqa: E402
from onnxprune.report.summary import Progress  # noqa: E402
from onnxprune.transform.rewrite import rewrite  # noqa: E402


def accuracy(model, x, y) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])
    return float((pred == y).mean())


class Case:
    """One model loaded, analyzed and scored once; kept sets evaluated with lstsq compensation."""

    def __init__(self, name: str, calib: str):
        vit = name == "vit"
        self.config = config_from_keywords(ratio=0.0, scorer="vbp", compensate="lstsq", calib=calib, latency=False,
                                           heads=vit, embed_dim=vit)
        self.progress = Progress(False)
        self.loaded = load_and_analyze(str(ROOT / "models" / "trained" / f"{name}.ts.onnx"), self.config, self.progress)
        self.scored = calibrate_and_score(self.loaded, self.config, self.progress)
        self.base = baseline_stats(self.loaded).macs

    def macs(self, kept: dict) -> float:
        return model_stats(rewrite(self.loaded.analysis, kept), self.loaded.input_shapes).macs / self.base

    def uniform(self, m: float, steps: int = 10) -> dict:
        a, s = self.loaded.analysis, self.scored.scores
        lo, hi, best = 0.0, 0.99, None
        for _ in range(steps):
            r = (lo + hi) / 2
            kept = keep_every_member(a.groups, select_by_ratio(a.groups, s, r), s)
            if self.macs(kept) <= m:
                hi, best = r, (r, kept)
            else:
                lo = r
        return best[1] if best else keep_every_member(a.groups, select_by_ratio(a.groups, s, hi), s)

    def knapsack(self, m: float, value: str) -> dict:
        res = plan_for_budget(self.loaded.analysis, self.scored.scores, parse_budget_spec("macs", f"{m:.4f}x"),
                              original=self.loaded.original, knapsack_value=value)
        return res.kept

    def build(self, kept: dict):
        """The rewritten model of ``kept``, checked against the mask oracle, compensated."""
        plan_ = Plan(kept)
        rw = rewrite_and_check(self.loaded, plan_, self.progress)
        verify(self.loaded, plan_, rw.model, self.progress)  # raises on a mismatch with the mask oracle
        comp = compensate(self.loaded, self.scored, plan_, rw.model, self.config, self.progress)
        return comp.model if comp.applied else rw.model

    def evaluate(self, kept: dict, test) -> dict:
        model = self.build(kept)
        widths = {g.id: len(kept[g.id]) if g.id in kept else g.size for g in self.loaded.analysis.prunable_groups}
        return dict(accuracy=accuracy(model, *test), macs=model_stats(model, self.loaded.input_shapes).macs / self.base,
                    widths={g.name: [widths[g.id], g.size] for g in self.loaded.analysis.prunable_groups})


def run_model(name: str, args, tmp: str, cases: list) -> None:
    import vision  # models/trained (torch): the calibration file and the test split

    calib = str(Path(tmp) / f"{name}_calib.npz")
    vision.write_npz(name, Path(calib))
    test = vision.load_eval(vision.image_size(name))["test"]
    case = Case(name, calib)
    for m in args.macs:
        t0, load_before = time.time(), load_avg()
        row = dict(model=name, macs_budget=m, results={})
        row["results"]["uniform"] = case.evaluate(case.uniform(m), test)
        for v in args.values:
            try:
                row["results"][v] = case.evaluate(case.knapsack(m, v), test)
            except OnnxPruneError as e:
                row["results"][v] = dict(error=str(e))
        row.update(seconds=time.time() - t0, load_before=load_before, load_after=load_avg())
        cases.append(row)
        print(f"{name:12s} MACs {m:.2f}: " + "  ".join(
            f"{k} {r['accuracy']:.3f} ({r['macs']:.3f})" if "accuracy" in r else f"{k} refused"
            for k, r in row["results"].items()) + f"  load {row['load_after']}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(cases=cases), indent=1))


def main(args: argparse.Namespace) -> None:
    todo = {(m, b) for m in args.models for b in args.macs}
    cases = [c for c in read_results(args.out, "cases") if (c.get("model"), c.get("macs_budget")) not in todo]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            run_model(name, args, tmp, cases)
    for v in args.values:
        rows = [c for c in cases if "accuracy" in c["results"].get(v, {})]
        wins = sum(c["results"][v]["accuracy"] > c["results"]["uniform"]["accuracy"] for c in rows)
        print(f"{v}: beats uniform in {wins} of {len(rows)}; mean accuracy "
              f"{np.mean([c['results'][v]['accuracy'] for c in rows]):.3f} vs uniform "
              f"{np.mean([c['results']['uniform']['accuracy'] for c in rows]):.3f}")


if __name__ == "__main__":
    main(ARGS)
