#!/usr/bin/env python
"""Accuracy and build time of the op-level latency model (issue #11).

Per model: build the model (no cache), then measure 20 held-out random width assignments (each
group uniform in 0.3..1.0 of its size) side by side with the unpruned model and print the median
and 90th percentile of |predicted / measured - 1|. Target: <= 5% median, <= 10% p90; ResNet-50
built in <= 120 s on the 2-core dev machine.

Models: the torch exports in models/onnx/full/<name>.ts.onnx when present (models/export.py
--full), else the same architectures built with onnx.helper (benchmarks/latency_model_nets.py).

    python benchmarks/latency_model.py                      # all five, results/latency_model.json
    python benchmarks/latency_model.py --models resnet50 mobilenetv2   # a subset (or positional names)
    python benchmarks/latency_model.py --resume             # only the models not in the results file yet

Also per model, the error on designs left out of the fit (5 folds; kernel times of the profiled
runs with each run's load factor divided out: the figure machine load disturbs least).
With each model, the same designs are also fitted as MODEL_VERSION 2 did (no cross-validation, no
quadratic terms) and scored on the same held-out points (``v2_fit``): old and new side by side.

Each model's entry is written as soon as it is measured (a later model replaces nothing else), with
the load averages before and after it (os.getloadavg(): figures taken at a load above the 2 cores are
not quiet-machine figures). ``median_abs_ratio_error`` is the error of the predicted speed-up over the
unpruned model measured beside each point: what a budget uses, since the budget path scales the
model to the baseline measured at solve time (planning/objectives.py), so load that changed since
the build cancels.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import FULL, ROOT, load_avg, read_results  # noqa: E402

MODELS = ("resnet50", "mobilenetv2", "convnext", "vit", "bert")


def model_path(name: str) -> tuple[Path, str]:
    """The full-size model file and where it came from."""
    exported = FULL / f"{name}.ts.onnx"
    if exported.exists():
        return exported, "torch export"
    built = FULL / f"{name}.helper.onnx"
    if not built.exists():
        import onnx
        from latency_model_nets import NETS
        built.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(NETS[name](), built)
    return built, "onnx.helper"


def build(analysis, args):
    """What build_latency_model does without the cache, keeping the design data: (model, data, build s)."""
    from onnxprune.profiling.latency_model import measure_model  # heavy import here: --help stays fast
    model, data = measure_model(analysis, analysis.prunable_groups, provider="cpu", threads=args.threads,
                                n_designs=args.designs, time_cap_s=args.time_cap, key="benchmark")
    return model, data, model.build_s


def heldout_designs(data, analysis, groups, cv: bool, folds: int = 5) -> dict:
    """Error on designs left out of the fit: the designs (but the unpruned one) in ``folds``
    interleaved folds; each fold's node sums predicted by the segments fitted without it, against
    the measured node sums divided by the designs' load factors (from the fit on all designs).
    Kernel times of profiled runs, with whole-run slowdowns divided out: the comparison between
    two fits that load disturbs least."""
    import numpy as np
    from onnxprune.profiling.latency_model import DesignData, fit_segments
    _, lam = fit_segments(data, analysis, groups, cv=cv)
    sums = np.array([r.node_sum_ms for r in data.runs]) / lam
    n, errs = len(data.runs), []
    for f in range(folds):
        held = np.arange(1 + f, n, folds)
        keep = np.setdiff1d(np.arange(n), held)
        sub = DesignData(data.widths[keep], [data.runs[i] for i in keep], data.typical[keep], {})
        nodes, _ = fit_segments(sub, analysis, groups, rounds=2, cv=cv)
        errs += list(sum(m.predict(data.widths[held]) for m in nodes) / sums[held] - 1)
    a = np.abs(np.array(errs))
    return dict(k=len(errs), median_abs_rel_error=float(np.median(a)), p90_abs_rel_error=float(np.percentile(a, 90)))


def pct(s: dict) -> str:
    return (f"median |err| {100 * s['median_abs_rel_error']:5.1f}%  p90 {100 * s['p90_abs_rel_error']:5.1f}%  "
            f"(speed-up vs unpruned: median {100 * s['median_abs_ratio_error']:5.1f}%"
            f" p90 {100 * s['p90_abs_ratio_error']:5.1f}%)")


def run_one(name: str, args) -> dict:
    import numpy as np  # the heavy imports here, not at the top: --help stays fast
    from onnxprune.api import analyze_model
    from onnxprune.profiling.latency_model import check_summary, fit_model
    path, source = model_path(name)
    load_before = load_avg()
    analysis = analyze_model(str(path))
    groups = analysis.prunable_groups
    model, data, build_s = build(analysis, args)
    points = model.check(analysis, k=args.check, seed=12345, time_cap_s=args.check_cap)
    s = check_summary(points)
    print(f"{name:12s} groups {len(groups):3d}  build {build_s:6.1f} s ({model.n_designs} designs)  "
          f"base {model.baseline_ms:7.2f} ms  {pct(s)}  load {load_avg()}", flush=True)
    out = dict(model=name, source=source, load_before=load_before, load_after=load_avg(),
               groups=len(groups), build_s=build_s, n_designs=model.n_designs,
               baseline_ms=model.baseline_ms, fixed_ms=model.fixed_ms, scale=model.scale, **s,
               in_sample_median_abs_rel_error=model.fit_error()[0],
               points=[dict(predicted_ms=p.predicted_ms, measured_ms=p.measured_ms, lo_ms=p.measured_lo_ms,
                            hi_ms=p.measured_hi_ms, baseline_ms=p.baseline_ms,
                            predicted_baseline_ms=p.predicted_baseline_ms) for p in points])
    if args.compare_v2:
        # the same designs and held-out points, fitted as MODEL_VERSION 2 did: a comparison that load
        # between two separate runs cannot bias
        v2 = fit_model(data, analysis, groups, cv=False, key="v2", provider="cpu", threads=args.threads,
                       input_shapes=analysis.view.input_shapes)
        full = v2.predict({})
        s2 = check_summary([replace(p, predicted_ms=v2.predict(p.widths), predicted_baseline_ms=full) for p in points])
        print(f"{'':12s} same designs, v2 fit (no cross-validation, no quadratic terms): {pct(s2)}", flush=True)
        out["v2_fit"] = s2
    if args.heldout_designs:
        for key, cv in (("heldout_designs", True), ("heldout_designs_v2_fit", False)) if args.compare_v2 else \
                (("heldout_designs", True),):
            h = out[key] = heldout_designs(data, analysis, groups, cv)
            print(f"{'':12s} designs left out of the fit ({'this' if cv else 'v2'} fit, {h['k']}): median "
                  f"{100 * h['median_abs_rel_error']:5.1f}%  p90 {100 * h['p90_abs_rel_error']:5.1f}%  "
                  f"load {load_avg()}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all five)")
    ap.add_argument("--models", dest="models_opt", nargs="*", default=[], help="the same, as an option")
    ap.add_argument("--resume", action="store_true", help="skip models already in --out; keep their entries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--designs", type=int, default=40)
    ap.add_argument("--time-cap", type=float, default=100.0, help="cap on the design's measurement (s)")
    ap.add_argument("--check", type=int, default=20, help="held-out assignments")
    ap.add_argument("--check-cap", type=float, default=3.0, help="time cap per held-out measurement (s)")
    ap.add_argument("--no-compare-v2", dest="compare_v2", action="store_false",
                    help="skip refitting the same designs the MODEL_VERSION 2 way")
    ap.add_argument("--no-heldout-designs", dest="heldout_designs", action="store_false",
                    help="skip the error on designs left out of the fit (5 refits per fit)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latency_model.json")
    args = ap.parse_args()
    names = list(dict.fromkeys(args.models + args.models_opt)) or list(MODELS)
    unknown = set(names) - set(MODELS)
    if unknown:
        ap.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    # entries of other models stay; a re-measured model replaces its own entry
    results = [r for r in read_results(args.out, "results") if r.get("model") not in names or args.resume]
    done = {r["model"] for r in results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for m in names:
        if m in done:
            print(f"{m}: in {args.out.name} already (--resume)")
            continue
        results.append(run_one(m, args))
        results.sort(key=lambda r: MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS))
        args.out.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), threads=args.threads,
                                            designs=args.designs, results=results), indent=1))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
