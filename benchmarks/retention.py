"""Accuracy retention after pruning, no fine-tuning, on the trained digits models (issue #4) and the
trained stdlib-docstring classifier models/trained/textcls (issue #12; ``--models textcls``).

    python benchmarks/retention.py                      # all trained models in models/digits
    python benchmarks/retention.py --models resnet --no-tp
    python benchmarks/retention.py --rss                # peak RSS of calibrating ResNet-50 at 224x224

For each model (models/digits/<name>.<exporter>.onnx, data from models/digits/data.npz): test
accuracy in ONNX Runtime after pruning to MACs reductions of 10..50%, for every scorer, with and
without compensation (mean, and least-squares refit; calibration split = calib_x), and, on the same trained torch weights
(models/digits/<name>.pt + nets.py), Torch-Pruning's global GroupMagnitudeImportance and
LAMPImportance pruners at the same MACs, exported to ONNX and evaluated in the same loop.

How a MACs target is met: bisection on the pruning ratio, for the smallest ratio whose MACs
reduction (onnxprune.cost, measured on the ONNX graph for every method alike) reaches the target.
Two onnxprune modes: ``uniform`` (the same ratio in every prunable group, so the scorer only decides
which channels go) and ``global`` (one ranking across groups, scores divided by their group mean;
onnxprune's --global). Torch-Pruning: global_pruning=True on its pruning_ratio.

Writes benchmarks/results/retention.json, a markdown table on stdout, and retention.png when
matplotlib is installed. Retention = pruned accuracy / original accuracy.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIGITS = ROOT / "models" / "digits"
TRAINED = ROOT / "models" / "trained"
# trained models that are not digits nets: name -> (ONNX file, data file, calib / test / label arrays)
OTHER = {"textcls": (TRAINED / "textcls.ts.onnx", TRAINED / "textcls_data.npz",
                     ("calib_input_ids", "test_input_ids", "test_y"))}
RESULTS = ROOT / "benchmarks" / "results"

SCORERS = ["l1", "l2", "l2-filter", "sp-lamp", "sp-lamp-folded", "saliency", "bn-scale", "vbp", "recon", "random"]
MAGNITUDE = ["l1", "l2", "l2-filter", "sp-lamp", "sp-lamp-folded", "saliency"]  # weight-norm scorers vbp is held against
TARGETS = [0.10, 0.20, 0.30, 0.40, 0.50]


# --------------------------------------------------------------------------------- evaluation
def ort_session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def accuracy(model, x, y, batch=512) -> float:
    s = ort_session(model)
    name = s.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        out = s.run(None, {name: x[i:i + batch]})[0]
        correct += int((out.argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


# ----------------------------------------------------------------------------------- onnxprune
class OnnxBench:
    """One analysis per model; scores once per scorer; ratio found by bisection on MACs."""

    def __init__(self, path: Path, calib_x: np.ndarray, heads: bool = False):
        from onnxprune.analysis.groups import analyze
        from onnxprune.scoring.calibration import CalibSet
        from onnxprune.profiling.cost import total_macs
        from onnxprune.analysis.graph import build_view
        from onnxprune.model.load import load_model
        from onnxprune.model.normalize import normalize

        self.model = load_model(path)
        norm = normalize(self.model)
        self.view = build_view(norm, None)
        self.analysis = analyze(self.view, heads=heads)
        self.base_macs = total_macs(self.view)
        self.calib = CalibSet({self.view.inputs[0]: calib_x}, batch_size=64)
        self.cache: dict = {}  # activation statistics shared by vbp and compensation
        self.notes: dict[str, list[str]] = {}
        self._macs: dict = {}

    def ctx(self, seed=0):
        from onnxprune.scoring.registry import ScoreContext

        return ScoreContext(self.analysis, calib=self.calib, seed=seed, cache=self.cache)

    def scores(self, scorer: str):
        from onnxprune.scoring.registry import score_groups

        ctx = self.ctx()
        s = score_groups(self.analysis, scorer, context=ctx)
        self.notes[scorer] = ctx.notes
        return s

    def prune(self, scores, ratio, global_rank):
        from onnxprune.profiling.cost import total_macs
        from onnxprune.analysis.graph import build_view
        from onnxprune.transform.rewrite import rewrite
        from onnxprune.planning.ratio import select_by_ratio

        kept = select_by_ratio(self.analysis.groups, scores, ratio, global_rank=global_rank)
        pruned = rewrite(self.analysis, kept)
        macs = total_macs(build_view(pruned, self.view.input_shapes))
        return kept, pruned, macs

    def knapsack(self, scores, target, value="lamp"):
        """onnxprune's own --macs budget: the group knapsack over LAMP-normalized scores with
        analytic MACs costs and its closed loop on the written model."""
        from onnxprune.config import budget_spec
        from onnxprune.planning.budget import plan_for_budget
        from onnxprune.profiling.cost import total_macs
        from onnxprune.analysis.graph import build_view
        from onnxprune.transform.rewrite import rewrite

        from onnxprune.errors import OnnxPruneError

        try:
            res = plan_for_budget(self.analysis, scores, budget_spec(None, f"{(1 - target) * 100:.6f}%", None, None),
                                  original=self.model, knapsack_value=value)
        except OnnxPruneError:  # not reachable with one channel per group
            return None
        if not res.met:
            return None
        pruned = rewrite(self.analysis, res.kept)
        return res.kept, pruned, total_macs(build_view(pruned, self.view.input_shapes))

    def reduction(self, scores, ratio, global_rank, key):
        k = (key, round(ratio, 6), global_rank)
        if k not in self._macs:
            self._macs[k] = 1.0 - self.prune(scores, ratio, global_rank)[2] / self.base_macs
        return self._macs[k]

    def find_ratio(self, scores, target, global_rank, key, iters=14):
        """Smallest ratio (to 0.95/2^iters) whose MACs reduction reaches `target`, or None."""
        lo, hi = 0.0, 0.95
        if self.reduction(scores, hi, global_rank, key) < target:
            return None
        for _ in range(iters):
            mid = (lo + hi) / 2
            if self.reduction(scores, mid, global_rank, key) >= target:
                hi = mid
            else:
                lo = mid
        return hi

    def compensate(self, kept, pruned, method="mean", positions=False):
        from onnxprune.scoring.calibration import cached_stats
        from onnxprune.transform.compensate import compensate, compensation_spaces

        stats = cached_stats(self.ctx(), compensation_spaces(self.analysis, kept), cov=method == "lstsq",
                             positions=positions)
        return compensate(self.analysis, kept, pruned, stats, method, positions=positions).model


def run_onnxprune(name, path, data, targets, scorers, modes, heads, log, lstsq=True, per_position=True):
    cx, tx, ty = data
    t0 = time.perf_counter()
    b = OnnxBench(path, cx, heads=heads)
    base_acc = accuracy(b.model, tx, ty)
    log(f"[{name}] onnxprune: {len(b.analysis.prunable_groups)} prunable groups, base acc {base_acc:.4f}, "
        f"MACs {b.base_macs / 1e6:.2f}M")
    rows = []
    all_scores = {s: b.scores(s) for s in scorers}
    for mode in modes:
        glob = mode == "global"
        for t in targets:
            # uniform: MACs depend only on per-group counts, the same for every scorer
            knap = mode.startswith("knapsack")
            shared_ratio = None if glob or knap else b.find_ratio(all_scores[scorers[0]], t, False, "uniform")
            for s in scorers:
                row = dict(model=name, method="onnxprune", mode=mode, scorer=s, target=t)
                if knap:
                    ratio = None
                    got = b.knapsack(all_scores[s], t, "members" if mode == "knapsack-members" else "lamp")
                    if got is None:
                        rows.append(dict(row, reachable=False))
                        continue
                    kept, pruned, macs = got
                else:
                    ratio = b.find_ratio(all_scores[s], t, True, s) if glob else shared_ratio
                    if ratio is None:
                        rows.append(dict(row, reachable=False))
                        continue
                    kept, pruned, macs = b.prune(all_scores[s], ratio, glob)
                acc = accuracy(pruned, tx, ty)
                acc_c = accuracy(b.compensate(kept, pruned), tx, ty)
                row = dict(row, reachable=True, ratio=ratio, macs_reduction=1 - macs / b.base_macs,
                           acc=acc, acc_comp=acc_c, retention=acc / base_acc, retention_comp=acc_c / base_acc)
                if lstsq:
                    acc_l = accuracy(b.compensate(kept, pruned, "lstsq"), tx, ty)
                    row.update(acc_lstsq=acc_l, retention_lstsq=acc_l / base_acc)
                if per_position:  # --per-position: constants per token / pixel
                    acc_p = accuracy(b.compensate(kept, pruned, "mean", positions=True), tx, ty)
                    row.update(acc_pmean=acc_p, retention_pmean=acc_p / base_acc)
                    if lstsq:
                        acc_pl = accuracy(b.compensate(kept, pruned, "lstsq", positions=True), tx, ty)
                        row.update(acc_plstsq=acc_pl, retention_plstsq=acc_pl / base_acc)
                rows.append(row)
            log(f"[{name}] {mode} {int(t * 100)}%: " + "  ".join(
                f"{r['scorer']} {r['retention']:.3f}/{r['retention_comp']:.3f}"
                + "".join(f"/{r[k]:.3f}" for k in ("retention_lstsq", "retention_pmean", "retention_plstsq") if k in r)
                for r in rows[-len(scorers):]
                if r.get("reachable")) + f"  ({time.perf_counter() - t0:.0f}s)")
    notes = {s: n for s, n in b.notes.items() if n}
    return dict(base_acc=base_acc, base_macs=b.base_macs, rows=rows, notes=notes,
                prunable_groups=len(b.analysis.prunable_groups))


# ------------------------------------------------------------------------------- Torch-Pruning
def run_torch_pruning(name, data, targets, base_acc_onnx, log):
    import torch
    import torch_pruning as tp

    sys.path.insert(0, str(DIGITS))
    import nets

    from onnxprune.profiling.cost import total_macs
    from onnxprune.analysis.graph import build_view
    from onnxprune.model.normalize import normalize

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cx, tx, ty = data
    base = nets.build(name)
    base.load_state_dict(torch.load(DIGITS / f"{name}.pt", map_location="cpu"))
    base.eval()
    example = torch.from_numpy(cx[:1])

    def export(model) -> bytes:
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), f, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return f.getvalue()

    def macs_of(b: bytes) -> int:
        import onnx

        return total_macs(build_view(normalize(onnx.load_from_string(b)), None))

    base_bytes = export(base)
    base_macs = macs_of(base_bytes)
    base_acc = accuracy(base_bytes, tx, ty)

    def pruned_model(imp_name, ratio):
        m = copy.deepcopy(base)
        imp = (tp.importance.GroupMagnitudeImportance(p=2) if imp_name == "magnitude"
               else tp.importance.LAMPImportance(p=2))
        kw = dict(importance=imp, pruning_ratio=ratio, global_pruning=True, ignored_layers=_tp_ignored(name, m))
        unwrapped = _tp_unwrapped(name, m)
        if unwrapped:
            kw["unwrapped_parameters"] = unwrapped
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(m, example, **kw)
            pruner.step()
        m.eval()
        return m

    cache = {}

    def reduction(imp_name, ratio):
        k = (imp_name, round(ratio, 6))
        if k not in cache:
            b = export(pruned_model(imp_name, ratio))
            cache[k] = (1 - macs_of(b) / base_macs, b)
        return cache[k]

    rows = []
    for imp_name in ("magnitude", "lamp"):
        for t in targets:
            row = dict(model=name, method="torch-pruning", mode="global", scorer=imp_name, target=t)
            try:
                lo, hi = 0.0, 0.95
                if reduction(imp_name, hi)[0] < t:
                    rows.append(dict(row, reachable=False))
                    continue
                for _ in range(12):
                    mid = (lo + hi) / 2
                    if reduction(imp_name, mid)[0] >= t:
                        hi = mid
                    else:
                        lo = mid
                red, b = reduction(imp_name, hi)
                acc = accuracy(b, tx, ty)
                rows.append(dict(row, reachable=True, ratio=hi, macs_reduction=red, acc=acc,
                                 retention=acc / base_acc))
            except Exception as e:  # report, don't die: Torch-Pruning may not handle every net
                rows.append(dict(row, reachable=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
        log(f"[{name}] torch-pruning {imp_name}: " + "  ".join(
            f"{int(r['target'] * 100)}% {r['retention']:.3f}" if r.get("reachable") else
            f"{int(r['target'] * 100)}% {r.get('error', 'unreachable')}" for r in rows if r["scorer"] == imp_name))
    return dict(base_acc=base_acc, base_macs=base_macs, rows=rows)


def _tp_ignored(name, m):
    """Layers whose OUTPUT channels Torch-Pruning must keep: the classifier, and for the ViT what
    onnxprune keeps by default (residual stream, attention head_dim): every Linear/Conv but the
    MLP's first layer."""
    import torch.nn as nn

    if name == "vit":
        return [mod for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d)) and not n.endswith("mlp.fc1")]
    last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
    return [last]


def _tp_unwrapped(name, m):
    if name == "convnext":
        return [(blk.gamma, 0) for blk in m.modules() if hasattr(blk, "gamma") and hasattr(blk, "dwconv")]
    if name == "vit":
        return [(m.cls_token, 2), (m.pos_embed, 2)]
    return None


# ------------------------------------------------------------------------------------ reporting
def summarize(results, targets):
    lines = []
    verdicts = {}
    for name, r in results.items():
        op = r["onnxprune"]
        lines.append(f"\n### {name}  (original acc {op['base_acc']:.4f}, {op['base_macs'] / 1e6:.2f}M MACs, "
                     f"{op['prunable_groups']} prunable groups)\n")
        head = "| method | mode | " + " | ".join(f"-{int(t * 100)}% MACs" for t in targets) + " |"
        lines += [head, "|" + "---|" * (2 + len(targets))]
        rows = op["rows"]
        modes = sorted({x["mode"] for x in rows}, key=["uniform", "global", "knapsack", "knapsack-members"].index)
        for mode in modes:
            for s in dict.fromkeys(x["scorer"] for x in rows):
                for key, tag in (("retention", ""), ("retention_comp", " +mean"), ("retention_lstsq", " +lstsq"),
                                 ("retention_pmean", " +mean/pos"), ("retention_plstsq", " +lstsq/pos")):
                    cells = []
                    for t in targets:
                        x = next((x for x in rows if x["mode"] == mode and x["scorer"] == s and x["target"] == t), None)
                        cells.append("n/a" if not x or not x.get("reachable") or key not in x else f"{x[key]:.3f}")
                    if set(cells) != {"n/a"}:
                        lines.append(f"| {s}{tag} | {mode} | " + " | ".join(cells) + " |")
        tpr = r.get("torch_pruning")
        if tpr:
            for s in ("magnitude", "lamp"):
                cells = []
                for t in targets:
                    x = next((x for x in tpr["rows"] if x["scorer"] == s and x["target"] == t), None)
                    cells.append("n/a" if not x or not x.get("reachable") else f"{x['retention']:.3f}")
                lines.append(f"| TP {s} | global | " + " | ".join(cells) + " |")
        verdicts[name] = verdict(r, targets)
        v = verdicts[name]
        lines.append("")
        lines.append(f"- vbp+mean >= best magnitude scorer ({'/'.join(MAGNITUDE)}) without compensation: "
                     f"{v['vbp_wins_vs_plain_magnitude_uniform']}/{v['reachable']} reductions (uniform), "
                     f"{v['vbp_wins_vs_plain_magnitude_best_mode']}/{v['reachable']} (best mode of each)")
        lines.append(f"- vbp+mean >= best magnitude scorer with or without compensation: "
                     f"{v['vbp_wins_vs_compensated_magnitude_uniform']}/{v['reachable']} (uniform), "
                     f"{v['vbp_wins_vs_compensated_magnitude_best_mode']}/{v['reachable']} (best mode of each)")
        lines.append(f"- compensation effect on vbp, mean over reductions: {v['comp_gain_vbp_uniform']:+.4f} retention "
                     f"(uniform), {v['comp_gain_vbp']:+.4f} (both modes)")
        if "vbp_lstsq_wins_vs_plain_magnitude_uniform" in v:
            lines.append(f"- vbp+lstsq >= best magnitude scorer without compensation: "
                         f"{v['vbp_lstsq_wins_vs_plain_magnitude_uniform']}/{v['reachable']} (uniform), "
                         f"{v['vbp_lstsq_wins_vs_plain_magnitude_best_mode']}/{v['reachable']} (best mode); "
                         f"lstsq effect on vbp: {v['lstsq_gain_vbp_uniform']:+.4f} (uniform), "
                         f"{v['lstsq_gain_vbp']:+.4f} (both modes)")
        if "pmean_gain_vbp_uniform" in v:
            lines.append(f"- per-position effect on vbp, mean over reductions (uniform): mean "
                         f"{v['comp_gain_vbp_uniform']:+.4f} -> mean/pos {v['pmean_gain_vbp_uniform']:+.4f}"
                         + (f", lstsq {v['lstsq_gain_vbp_uniform']:+.4f} -> lstsq/pos {v['plstsq_gain_vbp_uniform']:+.4f}"
                            if "plstsq_gain_vbp_uniform" in v else ""))
        if v.get("tp_best") is not None:
            lines.append("- best onnxprune vs best Torch-Pruning, per reduction: " + ", ".join(
                f"-{int(t * 100)}%: {a:.3f} vs {b:.3f}" if a is not None and b is not None else f"-{int(t * 100)}%: n/a"
                for t, a, b in v["tp_best"]))
    return "\n".join(lines), verdicts


def verdict(r, targets):
    """vbp+mean against the best magnitude scorer, two readings: magnitude scorers as they are used
    without data (no compensation), and magnitude scorers also given mean compensation; in the
    uniform mode, and with each method in its better mode (uniform or global)."""
    rows = [x for x in r["onnxprune"]["rows"] if x.get("reachable")]

    def get(mode, s, t, key):
        x = next((x for x in rows if x["mode"] == mode and x["scorer"] == s and x["target"] == t), None)
        return None if x is None else x[key]

    out = dict(reachable=0)
    has_lstsq = any("retention_lstsq" in x for x in rows)
    for vkey, prefix in (("retention_comp", "vbp"), ("retention_lstsq", "vbp_lstsq")):
        if vkey == "retention_lstsq" and not has_lstsq:
            continue
        for label, keys in (("plain", ("retention",)), ("compensated", ("retention", "retention_comp"))):
            for modes, tag in ((("uniform",), "uniform"), (("uniform", "global"), "best_mode")):
                wins = 0
                for t in targets:
                    v = [get(mo, "vbp", t, vkey) for mo in modes]
                    v = [x for x in v if x is not None]
                    if not v:
                        continue
                    mag = [get(mo, s, t, k) for mo in modes for s in MAGNITUDE for k in keys]
                    mag = [m for m in mag if m is not None]
                    wins += int(not mag or max(v) >= max(mag) - 1e-12)
                out[f"{prefix}_wins_vs_{label}_magnitude_{tag}"] = wins
    out["reachable"] = sum(1 for t in targets if get("uniform", "vbp", t, "retention_comp") is not None)
    gains = [x["retention_comp"] - x["retention"] for x in rows if x["scorer"] == "vbp"]
    out["comp_gain_vbp"] = float(np.mean(gains)) if gains else 0.0
    out["comp_gain_vbp_uniform"] = float(np.mean([x["retention_comp"] - x["retention"] for x in rows
                                                  if x["scorer"] == "vbp" and x["mode"] == "uniform"] or [0.0]))
    if has_lstsq:
        lg = [x["retention_lstsq"] - x["retention"] for x in rows if x["scorer"] == "vbp"]
        out["lstsq_gain_vbp"] = float(np.mean(lg)) if lg else 0.0
        out["lstsq_gain_vbp_uniform"] = float(np.mean([x["retention_lstsq"] - x["retention"] for x in rows
                                                       if x["scorer"] == "vbp" and x["mode"] == "uniform"] or [0.0]))
    for key, name in (("retention_pmean", "pmean"), ("retention_plstsq", "plstsq")):
        if any(key in x for x in rows):
            out[f"{name}_gain_vbp_uniform"] = float(np.mean([x[key] - x["retention"] for x in rows
                                                             if x["scorer"] == "vbp" and x["mode"] == "uniform"]
                                                            or [0.0]))
    tpr = r.get("torch_pruning")
    if tpr:
        best = []
        for t in targets:
            ours = [x[k] for x in rows if x["target"] == t for k in ("retention", "retention_comp", "retention_lstsq",
                                                                          "retention_pmean", "retention_plstsq")
                    if k in x]
            theirs = [x["retention"] for x in tpr["rows"] if x["target"] == t and x.get("reachable")]
            best.append((t, max(ours) if ours else None, max(theirs) if theirs else None))
        out["tp_best"] = best
        out["onnxprune_ge_tp"] = sum(1 for _, a, b in best if a is not None and (b is None or a >= b - 1e-12))
    return out


def plot(results, targets, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.2), squeeze=False)
    colors = dict(zip(SCORERS + ["magnitude", "lamp"], plt.cm.tab10.colors))
    for ax, name in zip(axes[0], names):
        r = results[name]
        rows = [x for x in r["onnxprune"]["rows"] if x.get("reachable") and x["mode"] == "uniform"]
        for s in dict.fromkeys(x["scorer"] for x in rows):
            xs = [x for x in rows if x["scorer"] == s]
            ax.plot([x["target"] * 100 for x in xs], [x["retention"] for x in xs], "--", color=colors[s], alpha=0.6)
            ax.plot([x["target"] * 100 for x in xs], [x["retention_comp"] for x in xs], "-o", color=colors[s],
                    label=f"{s} (+mean: solid)", ms=3)
        xs = [x for x in rows if x["scorer"] == "vbp" and "retention_lstsq" in x]
        if xs:
            ax.plot([x["target"] * 100 for x in xs], [x["retention_lstsq"] for x in xs], "-^", color="black",
                    label="vbp +lstsq", ms=3)
        xs = [x for x in rows if x["scorer"] == "vbp" and "retention_pmean" in x]
        if xs:
            ax.plot([x["target"] * 100 for x in xs], [x["retention_pmean"] for x in xs], "-v", color="gray",
                    label="vbp +mean/pos", ms=3)
        tpr = (r.get("torch_pruning") or {}).get("rows", [])
        for s in ("magnitude", "lamp"):
            xs = [x for x in tpr if x["scorer"] == s and x.get("reachable")]
            if xs:
                ax.plot([x["target"] * 100 for x in xs], [x["retention"] for x in xs], ":s", color=colors[s],
                        label=f"Torch-Pruning {s}", ms=3)
        ax.set_title(f"{name} (uniform ratio; dashed = no compensation)", fontsize=9)
        ax.set_xlabel("MACs reduction (%)")
        ax.set_ylabel("accuracy retention")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---------------------------------------------------------------------------------------- RSS
def rss_child(args):
    """Calibrate (vbp statistics at every mixing point) on random data; print peak RSS as JSON."""

    from onnxprune.analysis.groups import analyze
    from onnxprune.scoring.calibration import GeneratedSet, activation_spaces, activation_stats
    from onnxprune.analysis.graph import build_view
    from onnxprune.model.load import load_model
    from onnxprune.model.normalize import normalize

    t0 = time.perf_counter()
    view = build_view(normalize(load_model(args.rss_model)), None)
    a = analyze(view)
    name = view.inputs[0]
    shape = list(view.input_shapes[name])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spaces = activation_spaces(a)
    per_sample = sum(int(np.prod(view.shape(t))) * 4 for t in {t for t, _ in spaces}) / shape[0]
    bs = args.rss_batch
    n_batches = -(-args.rss_images // bs)

    def make(i):
        rng = np.random.default_rng(i)
        n = min(bs, args.rss_images - i * bs)
        return {name: rng.standard_normal([n] + shape[1:]).astype(np.float32)}

    t1 = time.perf_counter()
    stats = activation_stats(view, GeneratedSet(make, n_batches), spaces)
    t2 = time.perf_counter()
    print(json.dumps(dict(model=str(args.rss_model), images=args.rss_images, batch=bs, spaces=len(spaces),
                          tensors=len({t for t, _ in spaces}), peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          rss_after_analysis_mb=rss_before, stats_seconds=round(t2 - t1, 1),
                          total_seconds=round(t2 - t0, 1), exposed_mb_per_image=per_sample / 2 ** 20,
                          all_activations_mb=per_sample * args.rss_images / 2 ** 20,
                          finite=bool(all(np.isfinite(s.m2).all() for s in stats.values())))))


def run_rss(args, log):
    model = Path(args.rss_model)
    if not model.exists():
        from common import ensure_full_model

        model = ensure_full_model("resnet50", "ts")
    out = []
    for n in args.rss_counts:
        cmd = [sys.executable, __file__, "--rss-child", "--rss-model", str(model), "--rss-images", str(n),
               "--rss-batch", str(args.rss_batch)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        log(f"calibration of {model.name} on {n} random images (batch {args.rss_batch}): peak RSS "
            f"{res['peak_rss_mb']:.0f} MB (after analysis {res['rss_after_analysis_mb']:.0f} MB; keeping every "
            f"exposed activation would take {res['all_activations_mb']:.0f} MB), {res['stats_seconds']} s")
        out.append(res)
    return out


# ---------------------------------------------------------------------------------------- main
def model_and_data(name: str, exporter: str):
    """(ONNX path, (calib inputs, test inputs, test labels)) of a digits net or one of OTHER."""
    if name in OTHER:
        path, data_file, keys = OTHER[name]
        z = np.load(data_file)
        return path, tuple(z[k] for k in keys)
    z = np.load(DIGITS / "data.npz")
    return DIGITS / f"{name}.{exporter}.onnx", (z["calib_x"].astype(np.float32), z["test_x"].astype(np.float32),
                                                 z["test_y"].astype(np.int64))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated (default: every trained model in manifest.json)")
    ap.add_argument("--exporter", default="ts", choices=["ts", "dynamo"])
    ap.add_argument("--targets", default="10,20,30,40,50", help="MACs reductions in percent")
    ap.add_argument("--scorers", default=",".join(SCORERS))
    ap.add_argument("--modes", default="uniform,global,knapsack,knapsack-members",
                    help="uniform: one ratio in every group; global: one ranking; knapsack: the --macs budget "
                         "path; knapsack-members: the same with --knapsack-value members")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--no-lstsq", action="store_true", help="skip the --compensate lstsq column")
    ap.add_argument("--no-per-position", action="store_true", help="skip the --per-position columns")
    ap.add_argument("--heads", action="store_true",
                    help="also run the ViT with attention-head pruning (as 'vit+heads'; MLP-only pruning cannot "
                         "reach -40%% MACs on it); Torch-Pruning is compared on MLP neurons only")
    ap.add_argument("--out", default=str(RESULTS / "retention.json"))
    ap.add_argument("--append", action="store_true",
                    help="keep the other models' results already in --out (re-run some models only)")
    ap.add_argument("--rss", action="store_true", help="peak RSS of calibrating a 224x224 ResNet-50 instead")
    ap.add_argument("--rss-model", default=str(ROOT / "models" / "onnx" / "full" / "resnet50.ts.onnx"))
    ap.add_argument("--rss-counts", default="64,256", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--rss-images", type=int, default=256)
    ap.add_argument("--rss-batch", type=int, default=32)
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.rss_child:
        return rss_child(args)
    if args.rss:
        res = run_rss(args, log)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "calib_rss.json").write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        return 0

    manifest = json.loads((DIGITS / "manifest.json").read_text())
    manifest.update({k: {} for k in OTHER})
    names = args.models.split(",") if args.models else [k for k in manifest if not k.startswith("_")]
    targets = [float(t) / 100 for t in args.targets.split(",")]
    scorers = args.scorers.split(",")
    modes = args.modes.split(",")
    results = {}
    for name in names:
        path, data = model_and_data(name, args.exporter)
        if not path.exists():
            log(f"[{name}] {path.name} missing, skipped")
            continue
        r = dict(onnxprune=run_onnxprune(name, path, data, targets, scorers, modes, heads=False, log=log,
                                             lstsq=not args.no_lstsq,
                                         per_position=not args.no_per_position))
        if not args.no_tp and name not in OTHER:
            try:
                r["torch_pruning"] = run_torch_pruning(name, data, targets, r["onnxprune"]["base_acc"], log)
            except ImportError as e:
                log(f"Torch-Pruning skipped: {e} (pip install torch-pruning)")
        results[name] = r
        if args.heads and name == "vit":  # also attention heads: reaches -40/-50% MACs (no TP counterpart here)
            results[f"{name}+heads"] = dict(onnxprune=run_onnxprune(
                f"{name}+heads", path, data, targets, scorers, modes, heads=True, log=log, lstsq=not args.no_lstsq,
                                         per_position=not args.no_per_position))
    out = Path(args.out)
    if args.append and out.exists():
        prev = json.loads(out.read_text())
        results = {**{k: v for k, v in prev.get("results", {}).items() if k not in results}, **results}
        results = {k: results[k] for k in [k for k in manifest if k in results] + [k for k in results if k not in manifest]}
    table, verdicts = summarize(results, targets)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(command="python benchmarks/retention.py " + " ".join(sys.argv[1:]),
                exporter=args.exporter, targets=targets, modes=modes, magnitude_scorers=MAGNITUDE,
                ratio_search="bisection on the pruning ratio (uniform: same ratio per group; global: one ranking) "
                             "for the smallest ratio reaching the MACs reduction, MACs measured on the ONNX graph",
                calibration="calib_x of models/digits/data.npz (textcls: calib_input_ids of "
                                "models/trained/textcls_data.npz)", evaluation="test split, ONNX Runtime CPU")
    out.write_text(json.dumps(dict(meta=meta, results=results, verdicts=verdicts), indent=1) + "\n")
    if plot(results, targets, out.with_suffix(".png")):
        log(f"wrote {out} and {out.with_suffix('.png')}")
    else:
        log(f"wrote {out} (matplotlib not installed: no plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
