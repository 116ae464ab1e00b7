"""Latency budgets on full-size CNNs: does the written model meet the budget, and does the knapsack
keep more SP-LAMP score than uniform pruning at the same measured latency? (issue #3)

    python benchmarks/budget.py                                   # 4 models x 0.8/0.6/0.4
    python benchmarks/budget.py --models resnet56 mobilenetv2 --budgets 0.8 0.6
    python benchmarks/budget.py --convnext-res 160                # ConvNeXt-T at a smaller input
    python benchmarks/budget.py --force                           # redo cases already in the JSON

Models are the full-size exports in models/onnx/full (exported with torch if missing; never
committed): ResNet-50, MobileNetV2, ConvNeXt-T at 224x224, CIFAR ResNet-56 at 32x32.

Per model and budget b (relative, "b x"):
1. `onnxprune.prune(model, budget="bx", scorer="sp-lamp", latency=False)`: latency table (cached in
   --cache-dir, built once per model), knapsack, closed loop; the pruned model is written to
   models/onnx/full/pruned/ and read back.
2. Uniform L2 pruning at the same measured latency: the same ratio r in every group (channels ranked
   by L2 norm, `select_by_ratio`), r found by a bracketing search (regula falsi on the latency
   ratio) where every step times the uniform model side by side with the knapsack model.
3. Final re-measurement in one process, side by side (onnxprune.profiling.timing.measure_latencies, medians,
   spinning off): original, written knapsack model, matched uniform model.
Score kept = sum over prunable groups of the LAMP-normalized SP-LAMP scores of the kept channels
(exactly the per-channel values whose prefix sums are `group_choices(...).values`, the knapsack's
objective), also as a share of the unpruned total; `spl_kept` is the plain SP-LAMP score sum.

Prints a table and writes benchmarks/results/budget.json after every case (a rerun skips the cases
already there unless --force, so an interrupted run resumes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import FULL, ROOT, ensure_full_model  # noqa: E402

MODELS = {  # name -> (input resolution, description)
    "resnet50": (224, "ResNet-50"),
    "mobilenetv2": (224, "MobileNetV2"),
    "convnext": (224, "ConvNeXt-T"),
    "resnet56": (32, "CIFAR ResNet-56"),
}


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def lamp_values(scores: dict[int, np.ndarray], groups) -> dict[int, np.ndarray]:
    """Per-channel LAMP-normalized values, computed as `budget.group_choices` does (without its
    frozen-channel offset, which is a constant both selections share)."""
    from onnxprune.scoring.lamp import sp_lamp_scores

    out = {}
    for g in groups:
        s = np.asarray(scores.get(g.id, np.ones(g.size)), dtype=np.float64)
        s = np.where(np.isfinite(s), np.maximum(s, 0), 0)
        out[g.id] = sp_lamp_scores(s)
    return out


def score_kept(values: dict[int, np.ndarray], kept: dict[int, np.ndarray]) -> float:
    return float(sum(v[kept[gid]].sum() if gid in kept else v.sum() for gid, v in values.items()))


def widths_summary(groups, kept) -> dict:
    fr = [len(kept[g.id]) / g.size if g.id in kept else 1.0 for g in groups]
    return dict(min=round(min(fr), 3), median=round(float(np.median(fr)), 3), max=round(max(fr), 3))


class Timer:
    """Side-by-side medians of serialized models, with spinning off (onnxprune.latency)."""

    def __init__(self, feeds, threads, time_budget_s):
        self.feeds, self.threads, self.time_budget_s = feeds, threads, time_budget_s

    def __call__(self, blobs, time_budget_s=None):
        from onnxprune.profiling.timing import measure_latencies

        st = measure_latencies(blobs, self.feeds, threads=self.threads, warmup=3,
                               time_budget_s=time_budget_s or self.time_budget_s)
        return st


def match_uniform(analysis, l2, knap_blob, timer, r0: float, tol: float, max_steps: int, log):
    """Uniform ratio whose model's measured latency matches the knapsack model's (side by side).

    q(r) = uniform / knapsack median latency, decreasing in r. Regula falsi (Illinois) on q - 1
    over a bracket [lo, hi] (q(lo) > 1 > q(hi)), starting at r0; stops when |q - 1| <= tol.
    Returns every step; the caller picks the step to compare against."""
    from onnxprune.transform.rewrite import rewrite
    from onnxprune.planning.ratio import keep_every_member, select_by_ratio

    groups = analysis.prunable_groups
    cache = {}

    def build(r):
        r = round(float(r), 4)
        if r not in cache:
            kept = keep_every_member(analysis.groups, select_by_ratio(groups, l2, r), l2)
            cache[r] = (kept, rewrite(analysis, kept).SerializeToString())
        return r, cache[r]

    steps = []
    lo, q_lo, hi, q_hi = 0.0, None, 0.95, None
    side = 0
    r = r0
    for _ in range(max_steps):
        r, (kept, blob) = build(r)
        st = timer([knap_blob, blob])
        q = st[1].median_ms / st[0].median_ms
        steps.append(dict(ratio=r, q=q, knap_ms=st[0].median_ms, uniform_ms=st[1].median_ms))
        log(f"    uniform r={r:.4f}: {st[1].median_ms:.3f} ms vs knapsack {st[0].median_ms:.3f} ms (q={q:.3f})")
        if abs(q - 1) <= tol:
            break
        if q > 1:
            lo, q_lo = r, q
            if side == -1 and q_hi is not None:
                q_hi = 1 + (q_hi - 1) / 2  # Illinois: halve the stale end
            side = -1
        else:
            hi, q_hi = r, q
            if side == 1 and q_lo is not None:
                q_lo = 1 + (q_lo - 1) / 2
            side = 1
        if q_lo is not None and q_hi is not None:
            nxt = lo + (q_lo - 1) * (hi - lo) / (q_lo - q_hi)
        elif q_lo is None:  # only too-fast points so far: step toward 0
            nxt = r - max(0.05, (1 - q) * (1 - r))
        else:  # only too-slow points so far
            nxt = r + max(0.05, (q - 1) * (1 - r))
        nxt = float(np.clip(nxt, lo + 0.002, hi - 0.002)) if hi - lo > 0.004 else (lo + hi) / 2
        if abs(nxt - r) < 0.001:
            break
        r = nxt
    return steps, cache


def run_case(name, path, shapes, b, args, state, log) -> dict:
    import onnx

    from onnxprune.api import model_stats, prune
    from onnxprune.report.summary import Progress
    from onnxprune.scoring.registry import score_groups

    la0 = load_avg()
    t0 = time.perf_counter()
    # the knapsack's objective is what this benchmark scores: the paper's LAMP sum, not the default
    res = prune(str(path), budget=f"{b}x", scorer="sp-lamp", knapsack_value="lamp", input_shapes=shapes,
                latency=False, threads=args.threads, cache_dir=args.cache_dir, progress=Progress(args.progress))
    prune_s = time.perf_counter() - t0
    rb = res.report.budget
    out_dir = FULL / "pruned"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{name}.{b}x.onnx"
    from onnxprune.api import save

    save(res.model, out_path)
    written = onnx.load(str(out_path))
    knap_blob = written.SerializeToString()
    analysis = res.analysis
    groups = analysis.prunable_groups
    log(f"  prune {b}x: {prune_s:.1f}s, closed loop {len(rb['iterations'])} tries, "
        f"table {'cached' if rb.get('table_cached') else 'built in %.0fs' % rb.get('table_build_s', 0)}, "
        f"loop measured {rb['measured'] / rb['baseline']:.3f} x baseline")

    sp = score_groups(analysis, "sp-lamp")
    l2 = score_groups(analysis, "l2")
    vals = lamp_values(sp, groups)
    total = score_kept(vals, {})
    knap_score = score_kept(vals, res.kept)
    # sanity: the knapsack's kept sets are prefixes, so this equals the group_choices values
    from onnxprune.planning.budget import group_choices

    gc = {c.group.id: c for c in group_choices(groups, sp)}
    check = 0.0
    for gid, c in gc.items():
        w = len(res.kept[gid]) if gid in res.kept else c.group.size
        check += float(np.sort(vals[gid])[::-1][:w].sum())

    timer = Timer(state["feeds"], args.threads, args.step_time_s)
    t1 = time.perf_counter()
    meas_ratio = rb["measured"] / rb["baseline"]
    r0 = float(np.clip(1 - np.sqrt(meas_ratio), 0.02, 0.9))
    steps, cache = match_uniform(analysis, l2, knap_blob, timer, r0, args.match_tol, args.match_steps, log)
    # compare against the least-pruned uniform model that is at most match_tol slower than the
    # knapsack model (ties in latency go to uniform); else the closest one
    ok = [s for s in steps if s["q"] <= 1 + args.match_tol]
    pick = min(ok, key=lambda s: s["ratio"]) if ok else min(steps, key=lambda s: abs(s["q"] - 1))
    uni_kept, uni_blob = cache[pick["ratio"]]
    uni_score = score_kept(vals, uni_kept)
    match_s = time.perf_counter() - t1

    # final: original vs written vs uniform, side by side in one process
    t2 = time.perf_counter()
    st = timer([state["orig_blob"], knap_blob, uni_blob], time_budget_s=args.final_time_s)
    final_s = time.perf_counter() - t2
    base_ms, knap_ms, uni_ms = (s.median_ms for s in st)
    stats_k = model_stats(written, analysis.view.input_shapes)
    from onnxprune.transform.rewrite import rewrite

    stats_u = model_stats(rewrite(analysis, uni_kept), analysis.view.input_shapes)
    base_macs = state["base_macs"]
    speedup = base_ms / knap_ms
    macs_ratio = stats_k.macs / base_macs
    row = dict(
        model=name, input=shapes, budget=b, budget_ms=b * base_ms,
        baseline_ms=base_ms, pruned_ms=knap_ms, measured_over_budget=knap_ms / (b * base_ms),
        speedup=speedup, macs_ratio=macs_ratio, speedup_over_macs_speedup=speedup * macs_ratio,
        params_ratio=stats_k.params / state["base_params"],
        final_rounds=st[0].n, final_p10_p90_ms=[[s.p10_ms, s.p90_ms] for s in st],
        loop=dict(tries=len(rb["iterations"]), measured_over_budget=rb["measured"] / rb["budget"],
                  predicted_over_budget=rb["predicted"] / rb["budget"], table_baseline_ms=rb["baseline"],
                  iterations=[{k: v for k, v in it.items() if k in ("target", "predicted", "measured", "value")}
                              for it in rb["iterations"]]),
        verified=res.report.verification.get("passed"),
        score_total=total, knap_score=knap_score, knap_score_share=knap_score / total,
        knap_spl_kept=score_kept(sp, res.kept), knap_score_is_prefix_sum=bool(abs(check - knap_score) < 1e-6 * total), knap_widths=widths_summary(groups, res.kept),
        uniform=dict(ratio=pick["ratio"], ms=uni_ms, over_knap=uni_ms / knap_ms, macs_ratio=stats_u.macs / base_macs,
                     score=uni_score, score_share=uni_score / total, spl_kept=score_kept(sp, uni_kept),
                     steps=steps),
        knap_over_uniform_score=knap_score / uni_score,
        knap_keeps_more=bool(knap_score > uni_score),
        times_s=dict(prune=prune_s, match=match_s, final=final_s),
        table_cached=rb.get("table_cached"), table_build_s=rb.get("table_build_s"),
        loadavg_start=la0, loadavg_end=load_avg(),
    )
    log(f"  final: base {base_ms:.3f} ms, knapsack {knap_ms:.3f} ms ({knap_ms / base_ms:.3f}x, "
        f"{row['measured_over_budget']:.3f} x budget), uniform r={pick['ratio']:.3f} {uni_ms:.3f} ms; "
        f"score kept {knap_score:.2f} vs {uni_score:.2f} of {total:.2f}")
    return row


def table(rows) -> str:
    hdr = (f"{'model':<12} {'budget':>6} {'base ms':>8} {'pruned ms':>9} {'meas/bud':>8} {'speedup':>7} "
           f"{'MACs':>6} {'spd/MACs spd':>12} {'tries':>5} {'knap score':>10} {'unif r':>6} {'unif/knap ms':>12} "
           f"{'unif score':>10} {'knap/unif':>9}")
    lines = [hdr]
    for r in rows:
        u = r["uniform"]
        lines.append(
            f"{r['model']:<12} {r['budget']:>5.2f}x {r['baseline_ms']:>8.2f} {r['pruned_ms']:>9.2f} "
            f"{r['measured_over_budget']:>8.3f} {r['speedup']:>6.2f}x {r['macs_ratio']:>6.3f} "
            f"{r['speedup_over_macs_speedup']:>12.3f} {r['loop']['tries']:>5} {r['knap_score_share']:>9.1%} "
            f"{u['ratio']:>6.3f} {u['over_knap']:>12.3f} {u['score_share']:>9.1%} {r['knap_over_uniform_score']:>9.3f}")
    return "\n".join(lines)


def summary(rows) -> dict:
    if not rows:
        return {}
    m = [r["measured_over_budget"] for r in rows]
    within = [0.85 <= x <= 1.03 for x in m]
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r["knap_keeps_more"])
    return dict(cases=len(rows), share_le_1_03=sum(x <= 1.03 for x in m) / len(m),
                share_in_0_85_1_03=sum(within) / len(m), min_measured_over_budget=min(m),
                max_measured_over_budget=max(m), median_measured_over_budget=statistics.median(m),
                target_latency_met=bool(sum(x <= 1.03 for x in m) / len(m) >= 0.95 and min(m) >= 0.85),
                knap_keeps_more_every_case={k: all(v) for k, v in by_model.items()},
                target_score_met=all(all(v) for v in by_model.values()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.8, 0.6, 0.4])
    ap.add_argument("--exporter", default="ts", choices=["ts", "dynamo"])
    ap.add_argument("--convnext-res", type=int, default=224, help="ConvNeXt input resolution (default 224)")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    ap.add_argument("--cache-dir", default=None, help="latency table cache (default ~/.cache/onnxprune)")
    ap.add_argument("--step-time-s", type=float, default=8.0, help="time per side-by-side step of the uniform match")
    ap.add_argument("--final-time-s", type=float, default=20.0, help="time for the final 3-model measurement")
    ap.add_argument("--match-tol", type=float, default=0.02, help="|uniform/knapsack latency - 1| to stop at")
    ap.add_argument("--match-steps", type=int, default=6)
    ap.add_argument("--force", action="store_true", help="redo cases already in the output JSON")
    ap.add_argument("--progress", action="store_true", help="show onnxprune's progress lines")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "budget.json"))
    args = ap.parse_args()

    import onnx

    from onnxprune.api import model_stats
    from onnxprune.analysis.graph import build_view, random_feeds
    from onnxprune.model.normalize import normalize

    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    rows = [] if args.force else list(old.get("rows", []))

    def key(r):
        return (r["model"], round(r["budget"], 4), json.dumps(r["input"], sort_keys=True))

    def log(msg):
        print(msg, flush=True)

    def write():
        rows.sort(key=lambda r: (list(MODELS).index(r["model"]), -r["budget"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(
            benchmark="latency budgets: closed loop vs budget, knapsack vs uniform L2 at equal latency",
            command="python benchmarks/budget.py " + " ".join(sys.argv[1:]),
            machine=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
            onnxruntime=__import__("onnxruntime").__version__, threads=args.threads,
            notes=["latencies are medians, side by side in one process (spinning off), CPU EP",
                   "measured_over_budget = (pruned / baseline, final re-measurement) / budget fraction",
                   "speedup_over_macs_speedup = (baseline_ms / pruned_ms) / (baseline MACs / pruned MACs)",
                   "score = sum of LAMP-normalized SP-LAMP scores of kept channels (knapsack objective)",
                   "uniform: same ratio in every prunable group, channels by L2 norm; the least-pruned one "
                   "measured at most match_tol slower than the knapsack model"],
            summary=summary(rows), rows=rows), indent=1) + "\n")

    t_all = time.perf_counter()
    for name in args.models:
        res_px, desc = MODELS[name]
        if name == "convnext":
            res_px = args.convnext_res
        path = ensure_full_model(name, args.exporter)
        m = onnx.load(str(path))
        inp = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}][0]
        shapes = {inp: [1, 3, res_px, res_px]}
        todo = [b for b in args.budgets
                if not any(key(r) == (name, round(b, 4), json.dumps(shapes, sort_keys=True)) for r in rows)]
        if not todo:
            log(f"{desc}: all budgets already in {out.name} (use --force to redo)")
            continue
        view = build_view(normalize(m), shapes)
        st0 = model_stats(view.model, shapes)
        state = dict(feeds=random_feeds(view, seed=0), orig_blob=m.SerializeToString(), base_macs=st0.macs,
                     base_params=st0.params)
        log(f"{desc} ({path.name}, input {shapes}, {st0.macs / 1e9:.2f} GMACs); load {load_avg()}")
        for b in todo:
            row = run_case(name, path, shapes, b, args, state, log)
            rows[:] = [r for r in rows if key(r) != key(row)] + [row]
            write()
    write()
    print(table(rows))
    s = summary(rows)
    print(f"measured <= 1.03 x budget in {s['share_le_1_03']:.0%} of {s['cases']} cases, min {s['min_measured_over_budget']:.3f} "
          f"x budget (target: >= 95% and >= 0.85): {'met' if s['target_latency_met'] else 'NOT met'}; "
          f"knapsack keeps more score than uniform on every model: {'yes' if s['target_score_met'] else 'NO'}")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({time.perf_counter() - t_all:.0f}s)")


if __name__ == "__main__":
    main()
