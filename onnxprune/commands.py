"""The commands behind the command line (`prune`, `analyze`, `profile`), run on parsed arguments.

onnxprune/cli.py imports this module only after the arguments parse, so `--help` and usage errors
stay fast. Every command checks its arguments and output paths before it loads the model, writes
its files all-or-nothing, and writes them before it prints (a reader that stops early, as
`| head` does, must not lose a file)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from onnxprune.profiling.latency_model import build_latency_model, check_summary
from onnxprune.analysis.groups import check_something_to_prune
from onnxprune.api import analyze_model, prune, unused_flag_notes
from onnxprune.config import PruneConfig, config_from_keywords
from onnxprune.errors import OnnxPruneError
from onnxprune.model.load import check_not_input_file, custom_ops, same_path
from onnxprune.model.save import StagedOutputs, check_output_file, stage_model, staged_bytes
from onnxprune.planning.budget import resolve_latency_model
from onnxprune.planning.choices import aligned_width
from onnxprune.profiling.cost import uncounted_mac_nodes
from onnxprune.profiling.latency_table import build_latency_table, default_cache_dir
from onnxprune.report.plot import check_plot_path, plot_report
from onnxprune.report.stats import group_reports, measure, model_stats
from onnxprune.report.summary import format_count, run_info

__all__ = ["analysis_config", "check_prune_outputs", "config_from_args", "run"]


def run(args) -> int:
    """Run the parsed command; raises OnnxPruneError for what the user can fix."""
    if args.command == "prune":
        return prune_command(args)
    if args.command == "profile":
        return profile_command(args)
    return analyze_command(args)


def config_from_args(args) -> PruneConfig:
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
        min_macs=args.min_macs,
        latency_cmd=args.latency_cmd, batch=args.batch, stages=args.stages, knapsack_value=args.knapsack_value)


def analysis_config(args) -> PruneConfig:
    """`analyze` and `profile` options, validated like prune's before the model is loaded."""
    return config_from_keywords(exclude=args.exclude, input_shapes=args.input_shape, heads=args.heads,
                                embed_dim=args.embed_dim, provider=args.provider, threads=args.threads,
                                batch=args.batch)


def check_prune_outputs(args) -> None:
    """Refuse output paths before any work: the input, a folder that is missing or cannot be
    written, one file for two outputs, a plot format matplotlib does not write."""
    check_not_input_file(args.output, args.input, "output path")
    check_output_file(args.output, "output path")
    model_files = [Path(args.output), Path(str(args.output) + ".data")]
    if args.report:
        check_side_output(args.report, args.input, "--report")
        if any(same_path(Path(args.report), f) for f in model_files):
            raise OnnxPruneError("--report is the output model path: give the report its own file")
    if args.plot:
        check_plot_path(args.plot)
        check_side_output(args.plot, args.input, "--plot")
        if any(same_path(Path(args.plot), f) for f in model_files + ([Path(args.report)] if args.report else [])):
            raise OnnxPruneError("--plot names another output's file: give the plot its own file")


def check_side_output(path, input_path, what: str) -> None:
    check_not_input_file(path, input_path, what)
    check_output_file(path, what)


def prune_command(args) -> int:
    config = config_from_args(args)
    check_prune_outputs(args)
    res = prune(args.input, config, progress=args.progress)
    check_something_to_prune(res.analysis)  # the API returns the model unchanged, with a note
    res.report.run = run_info(args.command_line)
    res.report.output = str(args.output)
    with StagedOutputs() as outputs:  # the model, the report and the plot: all of them or none
        model_tmp = stage_model(res.model, args.output, outputs, input_path=args.input)
        res.report.pruned.file_bytes = staged_bytes(model_tmp)
        if args.report:
            res.report.write_json(str(outputs.stage(args.report)))
        if args.plot:
            plot_report(res.report, outputs.stage(args.plot))
        outputs.commit()
    print(f"pruned {args.input} -> {args.output}")
    print(res.report.summary())
    return 0


def write_json_output(path, data: dict) -> None:
    """A JSON side output, written whole or not at all."""
    with StagedOutputs() as outputs:
        with open(outputs.stage(path), "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        outputs.commit()


def analyze_command(args) -> int:
    cfg = analysis_config(args)
    if args.json:
        check_side_output(args.json, args.input, "--json")
    ac, rt = cfg.analysis, cfg.runtime
    a = analyze_model(args.input, input_shapes=ac.input_shapes, exclude=ac.exclude, heads=ac.heads,
                      embed_dim=ac.embed_dim, batch=ac.batch, progress=args.progress)
    view = a.view
    stats = model_stats(view.model, view.input_shapes, file_bytes=True)
    if not args.no_latency and not custom_ops(view.model):
        args.progress.start("latency", f"({rt.provider})")
        stats.latency_ms = measure([view.model], view.input_shapes, provider=rt.provider, threads=rt.threads)[0]
    args.progress.done()
    groups = group_reports(a)
    opaque = {view.node_label(k): why for k, why in sorted(a.opaque.items())}
    notes = unused_flag_notes(a, heads=ac.heads, embed_dim=ac.embed_dim)
    if args.json:
        write_json_output(args.json, dict(input=args.input, stats=stats.__dict__, groups=[g.__dict__ for g in groups],
                                          opaque=opaque, notes=notes, run=run_info(args.command_line).to_dict()))
    lat = f"{stats.latency_ms:.3f} ms (median, {rt.provider})" if stats.latency_ms is not None else "not measured"
    lines = [f"{args.input}: {len(view.nodes)} nodes, inputs {view.input_shapes}",
             f"MACs {format_count(stats.macs)}  params {format_count(stats.params)}  latency {lat}"]
    uncounted = uncounted_mac_nodes(view)
    if uncounted:
        lines.append(f"  MACs leave out {len(uncounted)} node(s) whose shapes are unknown: "
                     f"{', '.join(uncounted[:3])}" + (" ..." if len(uncounted) > 3 else ""))
    lines += group_lines(groups, args.verbose)
    lines += [f"  opaque: {k}: {why}" for k, why in opaque.items()] + [f"note: {n}" for n in notes]
    print("\n".join(lines))
    return 0


def group_lines(groups, verbose: bool) -> list[str]:
    """The channel-group table of `onnxprune analyze`."""
    n_frozen = sum(g.frozen for g in groups)
    w = max([len(g.name) for g in groups] + [4])
    lines = [f"channel groups: {len(groups)} ({len(groups) - n_frozen} prunable, {n_frozen} frozen)",
             f"  {'id':>3}  {'name'.ljust(w)}  {'ch':>5}  {'members':>7}  status"]
    for g in groups:
        status = "frozen: " + "; ".join(g.reasons) if g.frozen else (
            "prunable" + (" (dw)" if g.depthwise else "") + (f" ({g.kind})" if g.kind != "channels" else "") +
            (f", {g.frozen_channels} channels frozen: {'; '.join(g.reasons)}" if g.frozen_channels else ""))
        lines.append(f"  {g.id:>3}  {g.name.ljust(w)}  {g.channels:>5}  {len(g.members):>7}  {status}")
        if verbose:
            lines.append("       " + ", ".join(g.members))
    return lines


def build_op_model(args, a, groups, cache: Path, rt):
    """The op-level latency model a latency budget uses, built or read from the cache as `profile`'s
    --no-cache / --rebuild say."""
    args.progress.start("profile", f"(op-level model, {len(groups)} groups, {rt.provider})")
    return build_latency_model(a, groups, provider=rt.provider, threads=rt.threads, cache_dir=cache,
                               use_cache=not args.no_cache, rebuild=args.rebuild, progress=args.progress)


def op_model_source(model) -> str:
    return "from cache" if model.from_cache else f"built in {model.build_s:.1f}s from {model.n_designs} designs"


def check_latency_model(args, a, groups, cache: Path, rt) -> int:
    """`profile --check K`: build (or load) the op-level latency model, then measure K held-out random
    width assignments side by side with the unpruned model and print predicted next to measured."""
    if args.check < 1:
        raise OnnxPruneError(f"--check needs a number of assignments >= 1, got {args.check}")
    model = build_op_model(args, a, groups, cache, rt)
    args.progress.start("check", f"({args.check} random assignments)")
    points = model.check(a, args.check)
    args.progress.done()
    summary = check_summary(points)
    lines = [f"{args.input}: op-level latency model ({op_model_source(model)}), {rt.provider}, "
             f"inputs {a.view.input_shapes}",
             f"  {'#':>3}  {'predicted ms':>12}  {'measured ms':>11}  {'95% CI':>17}  {'error':>7}  "
             f"{'speed-up pred/meas':>18}"]
    for i, p in enumerate(points):
        lines.append(f"  {i:>3}  {p.predicted_ms:>12.3f}  {p.measured_ms:>11.3f}  "
                     f"[{p.measured_lo_ms:7.3f},{p.measured_hi_ms:8.3f}]  {100 * p.rel_error:>+6.1f}%  "
                     f"{p.predicted_ms / p.predicted_baseline_ms:>8.3f} / {p.measured_ms / p.baseline_ms:.3f}")
    lines.append("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    if args.json:  # before printing: a closed pipe must not lose the file
        write_json_output(args.json, dict(summary=summary, points=[asdict(p) for p in points],
                                          run=run_info(args.command_line).to_dict()))
    print("\n".join(lines))
    return 0


SHOWN_FRACTIONS = (0.75, 0.5, 0.25)  # `profile`: each group alone at these shares of its channels


def show_op_model(args, a, groups, cache: Path, rt) -> int:
    """`profile` with the op-level model (a budget's default): build or read it, then print its
    baseline, fixed part and in-sample error, and per group what it predicts with that group alone
    narrowed (aligned widths, as a budget keeps them)."""
    t0 = time.perf_counter()
    model = build_op_model(args, a, groups, cache, rt)
    wall = time.perf_counter() - t0
    args.progress.done()
    if args.json:
        write_json_output(args.json, dict(model.to_json(), wall_s=wall, groups={g.id: g.name for g in groups},
                                          run=run_info(args.command_line).to_dict()))
    full = model.predict({})
    fit = model.fit_error()
    lo, hi = model.baseline_ci_ms
    lines = [f"{args.input}: op-level latency model for {len(groups)} groups ({op_model_source(model)}), "
             f"{rt.provider}, inputs {a.view.input_shapes}",
             f"  unpruned: measured {model.baseline_ms:.3f} ms (95% CI {lo:.3f}-{hi:.3f}), predicted {full:.3f} ms "
             f"(a budget scales predictions to the unpruned model it measures), constant term {model.fixed_ms:+.3f} ms",
             (f"  fit on the designs timed plain: median |error| {100 * fit[0]:.1f}%, "
              f"p90 {100 * fit[1]:.1f}% ({len(model.fit_rel_errors)} designs)") if fit else
             "  fit: no design was timed plain",
             f"  {'id':>3}  {'group':<40} {'ch':>5}  predicted ms with the group alone at "
             + " / ".join(f"{f:.0%}" for f in SHOWN_FRACTIONS) + " of its channels"]
    for g in groups:
        pts = " / ".join(f"{w}: {model.predict({g.id: w}):.3f}"
                         for w in (aligned_width(g.size, f) for f in SHOWN_FRACTIONS))
        lines.append(f"  {g.id:>3}  {g.name[:40]:<40} {g.size:>5}  {pts}")
    lines.append(f"  how well it predicts: onnxprune profile {args.input} --check K")
    print("\n".join(lines))
    return 0


def profile_command(args) -> int:
    """Build (or show the cached) latency model a budget would use: the op-level model, or with
    --latency-model table (the default with --latency-cmd) the per-group table. --no-cache: neither
    read nor store it, as under `prune`; --rebuild: measure afresh and store it."""
    cfg = analysis_config(args)
    if args.json:
        check_side_output(args.json, args.input, "--json")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise OnnxPruneError(f"latency cache folder is a file: {cache}")
    if args.no_cache and args.rebuild:
        raise OnnxPruneError("--rebuild stores the model in the cache that --no-cache keeps away: give one of them")
    kind = resolve_latency_model(args.latency_model, args.latency_cmd)
    if args.check is not None and kind != "op":
        raise OnnxPruneError("--check measures the op-level latency model (ONNX Runtime's node profile): "
                             "not with --latency-model table or --latency-cmd")
    ac, rt = cfg.analysis, cfg.runtime
    a = analyze_model(args.input, input_shapes=ac.input_shapes, exclude=ac.exclude, heads=ac.heads,
                      embed_dim=ac.embed_dim, batch=ac.batch, progress=args.progress)
    groups = a.prunable_groups
    if args.check is not None:
        return check_latency_model(args, a, groups, cache, rt)
    if kind == "op":
        return show_op_model(args, a, groups, cache, rt)
    args.progress.start("profile", f"({len(groups)} groups, {rt.provider})")
    t0 = time.perf_counter()
    table = build_latency_table(a, groups, provider=rt.provider, threads=rt.threads, cache_dir=cache,
                                use_cache=not (args.no_cache or args.rebuild), latency_cmd=args.latency_cmd,
                                progress=args.progress)
    if args.rebuild:
        table.save(cache / f"{table.key}.json")
    wall = time.perf_counter() - t0
    args.progress.done()
    if args.json:
        write_json_output(args.json, dict(asdict(table), wall_s=wall, groups={g.id: g.name for g in groups},
                                          run=run_info(args.command_line).to_dict()))
    src = f"from cache, {wall:.1f}s" if table.from_cache else f"measured in {table.build_s:.1f}s"
    lines = [f"{args.input}: latency table for {len(groups)} groups ({src}), baseline "
             f"{table.baseline_ms:.3f} ms, {'--latency-cmd' if args.latency_cmd else rt.provider}, "
             f"inputs {a.view.input_shapes}",
             f"  {'id':>3}  {'group':<40} {'ch':>5}  latency delta (ms) at sampled widths"]
    for g in groups:
        pts = ", ".join(f"{int(w)}:{d:+.3f}" for w, d in sorted(table.samples.get(g.id, [])))
        lines.append(f"  {g.id:>3}  {g.name[:40]:<40} {g.size:>5}  {pts}")
    lines += [f"  skipped: group {d['group']} at width {d['width']}: {d['reason']}" for d in table.skipped]
    print("\n".join(lines))
    return 0
