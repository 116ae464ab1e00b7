#!/usr/bin/env python
"""What realized / MACs speed-up is achievable at all (issue #11: >= 0.9 on ResNet-50 and ConvNeXt-T
at 0.6x), so that the latency budget's figure can be judged.

Per model: prune every prunable group uniformly (ratio r in --ratios, the nearest multiple of 8 in
groups of >= 32 channels: the aligned widths ORT's NCHWc kernels want, the widths a latency budget
uses), time each pruned model side by side with the unpruned one (medians to a 95% CI of +-2% or a
time cap) and record the realized speed-up (unpruned / pruned latency) over the MACs speed-up
(unpruned / pruned MACs). Uniform aligned widths are the simplest plan that shrinks every kernel in
proportion; where they too stay below 0.9, the kernels that do not shrink with MACs (depthwise convs,
LayerNorm, element-wise ops, reorders) set the bound, not the knapsack.

Also per model: ORT's per-node profile of the unpruned model and of the pruned model nearest 0.6x
latency, summed by kind of kernel (dense / 1x1 / depthwise conv, matmul, LayerNorm, element-wise,
layout reorders, ...), with each kind's share of the MACs: which kernels' time falls more slowly
than their MACs.

    python benchmarks/latency_macs_bound.py                              # resnet50 and convnext
    python benchmarks/latency_macs_bound.py --models convnext --ratios 0.3 0.4 0.5
    python benchmarks/latency_macs_bound.py --resume                     # only models not in the file

Writes benchmarks/results/latency_macs_bound.json (with the load averages: the dev machine has 2 cores
shared with other jobs).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import load_avg, read_results  # noqa: E402
from latency_model import MODELS, model_path  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["resnet50", "convnext"], help=f"any of {', '.join(MODELS)}")
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-cap", type=float, default=4.0, help="per side-by-side timing (s)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latency_macs_bound.json")
    return ap.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()  # --help and argument errors answer before the heavy imports below

import numpy as np  # noqa: E402

from onnxprune.analysis.graph import random_feeds  # noqa: E402
from onnxprune.api import analyze_model  # noqa: E402
from onnxprune.planning.choices import ALIGN_BLOCK, ALIGN_MIN_SIZE  # noqa: E402
from onnxprune.planning.ratio import keep_every_member, round_kept_counts, select_by_ratio  # noqa: E402
from onnxprune.profiling.cost import node_macs  # noqa: E402
from onnxprune.profiling.node_profile import profile_nodes, side_by_side  # noqa: E402
from onnxprune.profiling.segments import segment_map  # noqa: E402
from onnxprune.report.stats import model_stats  # noqa: E402
from onnxprune.scoring.registry import score_groups  # noqa: E402
from onnxprune.transform.rewrite import rewrite  # noqa: E402

CONV_OPS = {"Conv", "FusedConv", "NhwcFusedConv"}


def uniform_aligned(a, scores, r: float) -> dict:
    """Every prunable group at ratio r; groups of >= ALIGN_MIN_SIZE at the nearest multiple of ALIGN_BLOCK."""
    groups = list(a.prunable_groups)
    kept = select_by_ratio(groups, scores, r)
    big = [g for g in groups if g.size >= ALIGN_MIN_SIZE]
    out = {gid: k for gid, k in kept.items() if gid not in {g.id for g in big}}
    out.update(round_kept_counts(big, {g.id: kept[g.id] for g in big if g.id in kept}, scores, ALIGN_BLOCK))
    return keep_every_member(a.groups, out, scores)


def conv_kind(node, view) -> str:
    w = view.consts.get(node.input[1]) if len(node.input) > 1 else None
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if w is None:
        return "conv"
    if group > 1 and w.shape[1] == 1:
        return "depthwise conv"
    return "1x1 conv" if all(k == 1 for k in w.shape[2:]) else "dense kxk conv"


def kind_of(op: str, orig) -> str:
    """Kind of an executed kernel: convs by their original node (depthwise / 1x1 / kxk), others by op."""
    if op in CONV_OPS and orig is not None:
        return orig
    if op.startswith("Reorder"):
        return "layout reorder"
    if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits"):
        return "matmul/gemm"
    if "Norm" in op:
        return "normalization"
    if op in CONV_OPS:
        return "conv"
    return "element-wise/other" if op not in ("GlobalAveragePool", "MaxPool", "AveragePool") else "pooling"


def profile_by_kind(model, feeds, threads, view, smap) -> dict[str, float]:
    """ms per kernel kind in one profiled session (medians per node, summed)."""
    run = profile_nodes(model, feeds, threads=threads, runs=20, time_cap_s=4.0)
    out: dict[str, float] = defaultdict(float)
    nodes = list(view.model.graph.node)
    for key, n in run.nodes.items():
        seg = smap.resolve(key)
        orig = None
        if seg is not None and n.op in CONV_OPS:
            i = smap.node_index.get(seg)
            orig = conv_kind(nodes[i], view) if i is not None and nodes[i].op_type == "Conv" else None
        out[kind_of(n.op, orig)] += n.ms
    return dict(out)


def macs_by_kind(view) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for k, node in enumerate(view.model.graph.node):
        m = float(node_macs(view, k))
        if m:
            kind = conv_kind(node, view) if node.op_type == "Conv" else kind_of(node.op_type, None)
            out[kind] += m
    return dict(out)


def run_model(name: str, args) -> dict:
    path, source = model_path(name)
    load_before = load_avg()
    a = analyze_model(str(path), heads=name in ("vit", "bert"), embed_dim=name in ("vit", "bert"))
    scores = score_groups(a, "l2")
    feeds = random_feeds(a.view, seed=0)
    base = a.view.model
    base_macs = model_stats(base, a.view.input_shapes).macs
    rows, models = [], {}
    for r in args.ratios:
        m = rewrite(a, uniform_aligned(a, scores, r))
        b, p = side_by_side([base.SerializeToString(), m.SerializeToString()], feeds, threads=args.threads,
                            time_cap_s=args.time_cap)
        macs = model_stats(m, a.view.input_shapes).macs
        row = dict(ratio=r, latency_ratio=p.median_ms / b.median_ms, macs_ratio=macs / base_macs,
                   base_ms=b.median_ms, pruned_ms=p.median_ms, pruned_ci_ms=[p.lo_ms, p.hi_ms])
        row["realized_over_macs_speedup"] = (b.median_ms / p.median_ms) / (base_macs / macs)
        rows.append(row)
        models[r] = m
        print(f"{name:10s} r={r:.2f}  latency x{row['latency_ratio']:.3f}  MACs x{row['macs_ratio']:.3f}  "
              f"realized/MACs speed-up {row['realized_over_macs_speedup']:.2f}  load {load_avg()}", flush=True)
    near = min(rows, key=lambda x: abs(x["latency_ratio"] - 0.6))
    smap = segment_map(base, {k for k, v in a.view.consts.items() if np.ndim(v) >= 2})
    prof = dict(unpruned=profile_by_kind(base, feeds, args.threads, a.view, smap),
                pruned=profile_by_kind(models[near["ratio"]], feeds, args.threads, a.view, smap),
                pruned_ratio=near["ratio"])
    pv = analyze_model(models[near["ratio"]]).view
    mk = dict(unpruned=macs_by_kind(a.view), pruned=macs_by_kind(pv))
    for k in sorted(set(prof["unpruned"]) | set(prof["pruned"])):
        t0, t1 = prof["unpruned"].get(k, 0.0), prof["pruned"].get(k, 0.0)
        m0, m1 = mk["unpruned"].get(k, 0.0), mk["pruned"].get(k, 0.0)
        print(f"    {k:20s} {t0:7.2f} -> {t1:7.2f} ms (x{t1 / t0 if t0 else float('nan'):.2f})   MACs "
              f"x{m1 / m0 if m0 else float('nan'):.2f}")
    at = interpolate_at(rows, 0.6)
    print(f"{name}: uniform aligned widths at 0.6x latency: realized/MACs speed-up {at:.2f}")
    return dict(model=name, source=source, load_before=load_before, load_after=load_avg(), rows=rows,
                bound_at_0_6x=at, profile_ms_by_kind=prof, macs_by_kind=mk)


def interpolate_at(rows: list[dict], lat: float) -> float:
    """realized/MACs speed-up at latency ratio ``lat`` (linear between the two nearest ratios)."""
    pts = sorted((x["latency_ratio"], x["realized_over_macs_speedup"]) for x in rows)
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(np.interp(lat, xs, ys))


def main(args: argparse.Namespace) -> None:
    results = [r for r in read_results(args.out, "results") if r.get("model") not in args.models or args.resume]
    done = {r["model"] for r in results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        if name in done:
            continue
        results.append(run_model(name, args))
        args.out.write_text(json.dumps(dict(machine=platform.machine(), threads=args.threads, results=results),
                                       indent=1))


if __name__ == "__main__":
    main(ARGS)
