#!/usr/bin/env python
"""Accuracy at equal measured latency (issue #11): does a latency budget keep more test accuracy
than uniform `--ratio` pruning and than a `--macs` budget tuned to the same measured latency?

Models: the trained digits classifiers of models/trained/ that take 9-12 ms on this machine
(resnet 224 px, mobilenetv2 / convnext / vit 160 px; torch is needed only to rebuild the test
split: models/trained/vision.load_eval). Same scorer and compensation everywhere:
`--scorer vbp --compensate lstsq` with the calibration split.

Per model and latency budget b in 0.7x / 0.5x:
1. latency budget: `prune(budget="bx")` (op-level latency model, coupled knapsack, closed loop);
2. uniform ratio: the ratio r whose uniformly pruned model (rewrite only) measures the same latency
   as (1), side by side, found by bisection; then that model with the same scorer/compensation,
   verified against the mask oracle;
3. MACs budget: likewise the MACs budget m whose knapsack model measures the same latency;
4. one final side-by-side timing of the three pruned models, and test accuracy of each in ONNX Runtime.

Fairness: (2) and (3) keep widths aligned as the latency budget does (multiples of 8 in groups of
>= 32 channels, the nearest multiple: planning/budget.py ALIGN_BLOCK / ALIGN_MIN_SIZE), so their
latency falls monotonically with r and m (an unaligned width falls off ORT's NCHWc path and can be
slower than a wider aligned one) and the bisection matches latencies within a few %. The ViT prunes
heads and its residual stream (--heads --embed-dim) in all three. The load averages are recorded.

    python benchmarks/latency_accuracy.py
    python benchmarks/latency_accuracy.py --models resnet --budgets 0.7

Writes benchmarks/results/latency_accuracy.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "models" / "trained")]
MODELS = ("resnet", "mobilenetv2", "convnext", "vit")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--budgets", nargs="*", type=float, default=[0.7, 0.5])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latency_accuracy.json")
    ap.add_argument("--resume", action="store_true", help="skip cases already in --out; keep their entries")
    return ap.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()  # --help and argument errors answer before the heavy imports below

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnxprune  # noqa: E402
from common import load_avg, read_results  # noqa: E402
from onnxprune.errors import OnnxPruneError  # noqa: E402
from onnxprune.api import (Plan, analyze_model, baseline_stats, calibrate_and_score, compensate,  # noqa: E402
                           config_from_keywords, load_and_analyze, rewrite_and_check, verify)
from onnxprune.planning.budget import ALIGN_BLOCK, ALIGN_MIN_SIZE, parse_budget_spec, plan_for_budget  # noqa: E402
from onnxprune.planning.ratio import keep_every_member, round_kept_counts, select_by_ratio  # noqa: E402
from onnxprune.report.stats import model_stats  # noqa: E402
from onnxprune.report.summary import Progress  # noqa: E402
from onnxprune.profiling.timing import measure_latencies  # noqa: E402
from onnxprune.scoring.registry import ScoreContext, score_groups  # noqa: E402
from onnxprune.transform.rewrite import rewrite  # noqa: E402


def accuracy(model, x, y) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])
    return float((pred == y).mean())


def latency_ratio(a, b, feed) -> float:
    """Median latency of b over a, measured side by side."""
    st = measure_latencies([a.SerializeToString(), b.SerializeToString()], feed, warmup=3, time_budget_s=3.0)
    return st[1].median_ms / st[0].median_ms


def matched(make, lo: float, hi: float, target, feed, steps: int = 7) -> float:
    """The parameter p in [lo, hi] whose model `make(p)` measures as fast as `target`; latency falls
    as p falls (bisection on the side-by-side ratio)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        if latency_ratio(target, make(mid), feed) > 1.0:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def aligned(a, kept: dict, scores: dict) -> dict:
    """``kept`` with every group of >= ALIGN_MIN_SIZE channels at the nearest multiple of ALIGN_BLOCK
    (its best channels), as the latency budget's widths are; smaller groups as they are."""
    big = [g for g in a.groups if g.size >= ALIGN_MIN_SIZE]
    out = {gid: k for gid, k in kept.items() if gid not in {g.id for g in big}}
    out.update(round_kept_counts(big, {g.id: kept[g.id] for g in big if g.id in kept}, scores, ALIGN_BLOCK))
    return keep_every_member(a.groups, out, scores)


def prune_kept(path: str, kw: dict, kept_of) -> tuple:
    """The prune pipeline (same scorer, calibration and compensation as ``onnxprune.prune``) with the
    kept channels chosen by ``kept_of(analysis, scores)``: the aligned uniform / MACs models. The
    rewrite is checked against the mask oracle. Returns (model, MACs kept)."""
    config = config_from_keywords(ratio=0.0, **kw)
    progress = Progress(False)
    loaded = load_and_analyze(path, config, progress)
    scored = calibrate_and_score(loaded, config, progress)
    plan_ = Plan(kept_of(loaded.analysis, scored.scores))
    rewritten = rewrite_and_check(loaded, plan_, progress)
    verify(loaded, plan_, rewritten.model, progress)  # raises VerificationError on a mismatch
    comp = compensate(loaded, scored, plan_, rewritten.model, config, progress)
    model = comp.model if comp.applied else rewritten.model
    return model, model_stats(model, loaded.input_shapes).macs / baseline_stats(loaded).macs


def run_case(name: str, b: float, calib: str, test, cache: str) -> dict:
    path = str(ROOT / "models" / "trained" / f"{name}.ts.onnx")
    vit = name == "vit"  # MLP neurons alone cannot reach 0.7x: heads and the stream prune too, in all three
    kw = dict(scorer="vbp", compensate="lstsq", calib=calib, latency=False, cache_dir=cache, heads=vit,
              embed_dim=vit)
    lat = onnxprune.prune(path, budget=f"{b}x", **kw)
    a = analyze_model(path, heads=vit, embed_dim=vit)
    scores = score_groups(a, "vbp", context=ScoreContext(a, calib=_calib_feeds(calib), seed=0))
    feed = {a.view.model.graph.input[0].name: test[0][:1]}

    def uniform_kept(an, sc, r):
        return aligned(an, select_by_ratio(an.groups, sc, min(r, 0.99)), sc)

    def macs_kept(an, sc, m):
        return aligned(an, plan_for_budget(an, sc, parse_budget_spec("macs", f"{m:.4f}x")).kept, sc)

    r = 1.0 - matched(lambda keep: rewrite(a, uniform_kept(a, scores, 1.0 - keep)), 0.05, 1.0, lat.model, feed)
    m = matched(lambda mm: rewrite(a, macs_kept(a, scores, mm)), 0.05, 1.0, lat.model, feed)
    uni, uni_macs = prune_kept(path, kw, lambda an, sc: uniform_kept(an, sc, r))
    mac, mac_macs = prune_kept(path, kw, lambda an, sc: macs_kept(an, sc, m))
    orig = onnxprune.prune(path, ratio=0.0, verify=False, latency=False, heads=vit, embed_dim=vit).model
    st = measure_latencies([x.SerializeToString() for x in (orig, lat.model, uni, mac)], feed,
                           warmup=5, time_budget_s=8.0)
    ms = [s.median_ms for s in st]
    acc = [accuracy(x, *test) for x in (orig, lat.model, uni, mac)]
    return dict(model=name, budget=b, ratio=r, macs_budget=m, widths="multiples of 8 in groups of >= 32 in all three",
                latency_ms=dict(zip(("original", "budget", "ratio", "macs"), ms)),
                accuracy=dict(zip(("original", "budget", "ratio", "macs"), acc)),
                macs_ratio=dict(budget=lat.report.pruned.macs / lat.report.baseline.macs, ratio=uni_macs, macs=mac_macs))


def _calib_feeds(path: str):
    d = np.load(path)
    return [{"input": d["input"][i:i + 32]} for i in range(0, len(d["input"]), 32)]


def main(args: argparse.Namespace) -> None:
    import vision  # models/trained (torch): the calibration file and the test split

    todo = [(m, b) for m in args.models for b in args.budgets]
    cases = [c for c in read_results(args.out, "cases") if (c.get("model"), c.get("budget")) not in todo or args.resume]
    done = {(c["model"], c["budget"]) for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if all((name, b) in done for b in args.budgets):
                continue
            calib = str(Path(tmp) / f"{name}_calib.npz")
            vision.write_npz(name, Path(calib))
            test = vision.load_eval(vision.image_size(name))["test"]
            for b in args.budgets:
                if (name, b) in done:
                    continue
                load_before = load_avg()
                try:
                    c = run_case(name, b, calib, test, tmp)
                except OnnxPruneError as e:  # e.g. refused under the MACs floor: recorded, not retried
                    cases.append(dict(model=name, budget=b, error=str(e), load_before=load_before, load_after=load_avg()))
                    print(f"{name:12s} {b:.1f}x  refused: {e}")
                    continue
                c.update(load_before=load_before, load_after=load_avg())
                cases.append(c)
                acc, ms = c["accuracy"], c["latency_ms"]
                print(f"{name:12s} {b:.1f}x  acc budget {acc['budget']:.4f}  ratio {acc['ratio']:.4f}  "
                      f"macs {acc['macs']:.4f}  (orig {acc['original']:.4f})  ms budget {ms['budget']:.2f}  "
                      f"ratio {ms['ratio']:.2f}  macs {ms['macs']:.2f}  (orig {ms['original']:.2f})  load {c['load_after']}", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(dict(cases=cases), indent=1))
    done = [c for c in cases if "error" not in c]
    wins = sum(c["accuracy"]["budget"] >= max(c["accuracy"]["ratio"], c["accuracy"]["macs"]) for c in done)
    print(f"latency budget keeps the most accuracy in {wins} of {len(cases)} cases")


if __name__ == "__main__":
    main(ARGS)
