"""Command line: a thin layer over onnxprune.api.

    onnxprune prune in.onnx out.onnx --ratio 0.3 --report r.json
    onnxprune in.onnx out.onnx --ratio 0.3          # same, the form deployment scripts use
    onnxprune analyze in.onnx
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from onnxprune import __version__
from onnxprune.analysis.groups import check_something_to_prune
from onnxprune.api import analyze_model, prune, save
from onnxprune.config import config_from_keywords
from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.model.load import check_not_input_file, check_writable_file, custom_ops, same_path
from onnxprune.profiling.cost import uncounted_mac_nodes
from onnxprune.profiling.latency_table import build_latency_table, default_cache_dir
from onnxprune.report.plot import check_plot_path, plot_report
from onnxprune.report.stats import group_reports, measure, model_stats
from onnxprune.report.summary import Progress, format_count
from onnxprune.scoring.registry import SCORERS

COMMANDS = ("prune", "analyze", "profile")


def _common(p):
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="fix symbolic input dims for analysis, verification and timing (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="freeze channels touched by nodes whose name or op type matches (glob; repeatable)")
    p.add_argument("--heads", action="store_true",
                   help="transformers: prune whole attention heads (q/k/v/out blocks and Reshape head counts)")
    p.add_argument("--embed-dim", action="store_true",
                   help="transformers: also prune the residual stream (hidden dim) - off by default")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider for latency (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for latency (default: all cores)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="batch size for analysis, verification and timing where the batch dim is symbolic (default 1)")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _latency_table_args(p, no_cache_help: str):
    p.add_argument("--latency-cmd", metavar="CMD", help="time candidates with a command, e.g. "
                   "'ssh board ./bench {model}'; it prints 'latency_ms: X' (see README)")
    p.add_argument("--cache-dir", metavar="DIR", help="latency table cache (default $ONNXPRUNE_CACHE/latency, else ~/.cache/onnxprune/latency)")
    p.add_argument("--no-cache", action="store_true", help=no_cache_help)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="onnxprune", description="Structured pruning for ONNX models.",
        epilog="'onnxprune IN OUT [options]' (without a command) means 'onnxprune prune IN OUT [options]'.")
    ap.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="prune channels and write a slimmer model")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels removed per group (0..1)")
    p.add_argument("--ratio-dw", type=float, default=None,
                   help="ratio for groups that pass through depthwise convs (DEPrune DW/PW setting)")
    p.add_argument("--global", dest="global_rank", action="store_true",
                   help="rank channels across groups (scores normalized by group mean) instead of per group")
    p.add_argument("--scorer", default="l2", choices=sorted(SCORERS), help="channel importance (default l2)")
    # -- calibration and training-free recovery (issue #4) --
    p.add_argument("--calib", metavar="DATA", help="calibration data: .npz (arrays named like the inputs; "
                   "FILE.npz:KEY picks one), .npy, or a folder of images (see --preprocess)")
    p.add_argument("--preprocess", action="append", default=None, metavar="KEY=VAL",
                   help="image folders: size=HxW, mean=a,b,c, std=a,b,c, layout=NCHW|NHWC, scale=1/255 (repeatable)")
    p.add_argument("--calib-batch", type=int, default=None, metavar="N", help="calibration batch size (default 32)")
    p.add_argument("--calib-limit", type=int, default=None, metavar="N", help="use at most N calibration samples")
    p.add_argument("--compensate", choices=["mean", "lstsq", "none"], default=None,
                   help="mean: fold the calibration mean of removed channels into the consumers' biases; "
                        "lstsq: also refit the kept weight columns by least squares on the calibration data "
                        "(default: mean for --scorer vbp, else none; needs --calib)")
    p.add_argument("--per-position", action="store_true",
                   help="compensation constants per position (token or pixel) instead of per channel: a constant "
                        "map added after each compensated consumer (needs static input dims except the batch; "
                        "with --ratio or --macs)")
    p.add_argument("--seed", type=int, default=0, help="seed of --scorer random (default 0)")
    # -- budgets (issue #3) --
    p.add_argument("--budget", metavar="LAT", help="latency budget: 11ms, 900us, 0.011s or 0.6x / 60%% of the "
                   "measured baseline (group knapsack on a measured latency table, then a closed loop)")
    p.add_argument("--macs", metavar="M", help="MACs budget: 50%%, 0.5x or 1.2G / 300M")
    p.add_argument("--params", metavar="P", help="parameter budget: 50%%, 0.5x or 3M / 500K")
    p.add_argument("--peak-memory", metavar="B", help="peak activation memory budget: 3.6MB, 512KiB or 50%%")
    p.add_argument("--knapsack-value", choices=["lamp", "members"], default="lamp",
                   help="budgets: what the knapsack keeps most of. lamp (default): the SP-LAMP paper's sum of "
                        "LAMP-normalized scores; members: each group's values times its number of weight members "
                        "(residual streams count for every layer they feed: better accuracy without fine-tuning)")
    p.add_argument("--round-to", type=_round_to, default=None, metavar="N|auto",
                   help="keep channel counts at multiples of N (hardware-friendly widths); 'auto': with a "
                        "latency budget, keep the widest width of each measured latency step")
    p.add_argument("--stages", type=int, default=1, metavar="K",
                   help="reach the budget in K stages, re-scoring and re-profiling the model pruned so far")
    p.add_argument("--latency-model", choices=["measured", "macs"], default="measured",
                   help="latency costs: measured per-group table (default) or analytic MACs share")
    _latency_table_args(p, "rebuild the latency table, do not store it")
    p.add_argument("--report", metavar="JSON", help="write the full report as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw the report: kept width per group, cost ratios, budget "
                   "solves (.png/.svg/.pdf; needs matplotlib: pip install 'onnxprune[plot]')")
    p.add_argument("--no-verify", action="store_true", help="skip the mask-oracle check")
    _common(p)
    pr = sub.add_parser("profile", help="build (or show the cached) per-group latency table")
    pr.add_argument("input")
    _latency_table_args(pr, "rebuild the table even if cached (and store the new one)")
    pr.add_argument("--json", metavar="FILE", help="write the table as JSON")
    _common(pr)
    a = sub.add_parser("analyze", help="print channel groups, MACs, params and baseline latency")
    a.add_argument("input")
    a.add_argument("--json", metavar="FILE", help="write groups and stats as JSON")
    a.add_argument("-v", "--verbose", action="store_true", help="list members of every group")
    _common(a)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "prune")
    args = build_parser().parse_args(argv)

    def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C, so no half-written file stays behind
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (main() called from a user's worker thread)
        pass
    args.progress = Progress(enabled=not args.quiet)
    try:
        if args.command == "prune":
            return _prune(args)
        if args.command == "profile":
            return _profile(args)
        return _analyze(args)
    except InternalError as e:  # our fault, said in one line: exit 1 as any internal error
        args.progress.abort()
        print(f"onnxprune: {e}", file=sys.stderr)
        return 1
    except OnnxPruneError as e:
        args.progress.abort()
        print(f"onnxprune: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and friends
        return 0
    except KeyboardInterrupt:
        args.progress.abort()
        print("onnxprune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback wall for users; --debug shows it
        args.progress.abort()
        if getattr(args, "debug", False):
            raise
        msg = str(e).strip().splitlines()
        print(f"onnxprune: internal error: {type(e).__name__}: {msg[0] if msg else ''} (rerun with --debug)",
              file=sys.stderr)
        return 1


def config_from_args(args):
    """The PruneConfig of `onnxprune prune` (validated as the Python API's is; the CLI has no default
    ratio: it says what to give)."""
    budgets = [b for b in (args.budget, args.macs, args.params, args.peak_memory) if b is not None]
    if args.ratio is None and not budgets:
        raise OnnxPruneError("nothing to do: give --ratio (e.g. --ratio 0.3) or a budget (--budget 0.6x, --macs 50%)")
    return config_from_keywords(
        ratio=args.ratio, ratio_dw=args.ratio_dw, global_rank=args.global_rank, scorer=args.scorer,
        exclude=args.exclude, input_shapes=args.input_shape, heads=args.heads, embed_dim=args.embed_dim,
        verify=not args.no_verify, latency=not args.no_latency, provider=args.provider, threads=args.threads,
        calib=args.calib, calib_batch=args.calib_batch, calib_limit=args.calib_limit, preprocess=args.preprocess,
        compensate=args.compensate, per_position=args.per_position, seed=args.seed, budget=args.budget,
        macs=args.macs, params=args.params, peak_memory=args.peak_memory, round_to=args.round_to,
        latency_model=args.latency_model, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        latency_cmd=args.latency_cmd, batch=args.batch, stages=args.stages, knapsack_value=args.knapsack_value)


def _check_outputs(args) -> None:
    """Refuse output paths before any work: the input, a missing folder, one file for two outputs."""
    check_not_input_file(args.output, args.input, "output path")
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir():
        raise OnnxPruneError(f"output folder does not exist: {out_dir}")
    model_files = [Path(args.output), Path(str(args.output) + ".data")]
    if args.report:
        _check_side_output(args.report, args.input, "--report")
        if any(same_path(Path(args.report), f) for f in model_files):
            raise OnnxPruneError("--report is the output model path: give the report its own file")
    if args.plot:
        check_plot_path(args.plot)
        _check_side_output(args.plot, args.input, "--plot")
        if any(same_path(Path(args.plot), f) for f in model_files + ([Path(args.report)] if args.report else [])):
            raise OnnxPruneError("--plot names another output's file: give the plot its own file")


def _prune(args) -> int:
    config = config_from_args(args)
    _check_outputs(args)
    res = prune(args.input, config, progress=args.progress)
    check_something_to_prune(res.analysis)  # the API returns the model unchanged, with a note
    save(res.model, args.output, input_path=args.input)
    res.report.output = str(args.output)
    res.report.pruned.file_bytes = os.path.getsize(args.output)
    if args.report:
        res.report.write_json(args.report)
    if args.plot:
        plot_report(res.report, args.plot)
    print(f"pruned {args.input} -> {args.output}")
    print(res.report.summary())
    return 0


def _analyze(args) -> int:
    progress = args.progress
    if args.json:
        _check_side_output(args.json, args.input, "--json")
    a = analyze_model(args.input, input_shapes=args.input_shape, exclude=args.exclude, heads=args.heads,
                      embed_dim=args.embed_dim, progress=progress)
    view = a.view
    stats = model_stats(view.model, view.input_shapes, file_bytes=True)
    if not args.no_latency and not custom_ops(view.model):
        progress.start("latency", f"({args.provider})")
        stats.latency_ms = measure([view.model], view.input_shapes, provider=args.provider, threads=args.threads)[0]
        progress.done()
    groups = group_reports(a)
    print(f"{args.input}: {len(view.nodes)} nodes, inputs {view.input_shapes}")
    lat = f"{stats.latency_ms:.3f} ms (median, {args.provider})" if stats.latency_ms is not None else "not measured"
    print(f"MACs {format_count(stats.macs)}  params {format_count(stats.params)}  latency {lat}")
    uncounted = uncounted_mac_nodes(view)
    if uncounted:
        print(f"  MACs leave out {len(uncounted)} node(s) whose shapes are unknown: {', '.join(uncounted[:3])}"
              + (" ..." if len(uncounted) > 3 else ""))
    n_frozen = sum(g.frozen for g in groups)
    print(f"channel groups: {len(groups)} ({len(groups) - n_frozen} prunable, {n_frozen} frozen)")
    w = max([len(g.name) for g in groups] + [4])
    print(f"  {'id':>3}  {'name'.ljust(w)}  {'ch':>5}  {'members':>7}  status")
    for g in groups:
        status = "frozen: " + "; ".join(g.reasons) if g.frozen else (
            "prunable" + (" (dw)" if g.depthwise else "") + (f" ({g.kind})" if g.kind != "channels" else "") +
            (f", {g.frozen_channels} channels frozen: {'; '.join(g.reasons)}" if g.frozen_channels else ""))
        print(f"  {g.id:>3}  {g.name.ljust(w)}  {g.channels:>5}  {len(g.members):>7}  {status}")
        if args.verbose:
            print("       " + ", ".join(g.members))
    for k, why in sorted(a.opaque.items()):
        print(f"  opaque: {view.node_label(k)}: {why}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(input=args.input, stats=stats.__dict__, groups=[g.__dict__ for g in groups],
                           opaque={view.node_label(k): w for k, w in a.opaque.items()}), f, indent=1)
    return 0


def _profile(args) -> int:
    if args.json:
        _check_side_output(args.json, args.input, "--json")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise OnnxPruneError(f"latency cache folder is a file: {cache}")
    a = analyze_model(args.input, input_shapes=args.input_shape, exclude=args.exclude, heads=args.heads,
                      embed_dim=args.embed_dim, progress=args.progress)
    groups = a.prunable_groups
    args.progress.start("profile", f"({len(groups)} groups, {args.provider})")
    t0 = time.perf_counter()
    table = build_latency_table(a, groups, provider=args.provider, threads=args.threads,
                                cache_dir=args.cache_dir, use_cache=True if not args.no_cache else False,
                                latency_cmd=args.latency_cmd, progress=args.progress)
    if args.no_cache:  # rebuilt on request: store it for later runs
        table.save((Path(args.cache_dir) if args.cache_dir else default_cache_dir()) / f"{table.key}.json")
    wall = time.perf_counter() - t0
    args.progress.done()
    src = f"from cache, {wall:.1f}s" if table.from_cache else f"measured in {table.build_s:.1f}s"
    print(f"{args.input}: latency table for {len(groups)} groups ({src}), baseline "
          f"{table.baseline_ms:.3f} ms, {'--latency-cmd' if args.latency_cmd else args.provider}, "
          f"inputs {a.view.input_shapes}")
    print(f"  {'id':>3}  {'group':<40} {'ch':>5}  latency delta (ms) at sampled widths")
    for g in groups:
        pts = ", ".join(f"{int(w)}:{d:+.3f}" for w, d in sorted(table.samples.get(g.id, [])))
        print(f"  {g.id:>3}  {g.name[:40]:<40} {g.size:>5}  {pts}")
    for d in table.skipped:
        print(f"  skipped: group {d['group']} at width {d['width']}: {d['reason']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(asdict(table), wall_s=wall, groups={g.id: g.name for g in groups}), f, indent=1)
    return 0


def _check_side_output(path, input_path, what: str) -> None:
    check_not_input_file(path, input_path, what)
    check_writable_file(path, what)


def _round_to(text: str):
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer or 'auto'") from None
    if n < 1:
        raise argparse.ArgumentTypeError("expected a positive integer or 'auto'")
    return n


if __name__ == "__main__":
    sys.exit(main())
