"""The Python API the CLI is a thin layer over:

    import onnxprune
    result = onnxprune.prune("in.onnx", ratio=0.3)          # or prune("in.onnx", PruneConfig(...))
    onnxprune.save(result.model, "out.onnx")

``prune`` runs the pipeline as stages, each a small function returning a typed result: load and
analyze, calibrate and score, plan (ratio or budget), rewrite and check, verify, compensate,
finalize and measure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.analysis.graph import build_view, random_feeds
from onnxprune.analysis.groups import Analysis, analyze, excluded_by
from onnxprune.config import PruneConfig, config_from_keywords, input_shapes_from, split_patterns
from onnxprune.errors import InternalError, OnnxPruneError, VerificationError, first_line
from onnxprune.model.dequantize import DequantizedWeight
from onnxprune.model.external import externalized, model_file_bytes, portable
from onnxprune.model.load import custom_ops, load_model, sanitized, validate_model
from onnxprune.model.normalize import normalize, normalize_model
from onnxprune.model.probe import check_runs_natively
from onnxprune.model.save import initializers_as_inputs, save_model
from onnxprune.model.shapes import check_model_light, with_batch
from onnxprune.planning.budget import BUDGET_FLAGS, BudgetResult, BudgetSpec, plan_for_budget, plan_in_stages
from onnxprune.planning.ratio import keep_every_member, select_by_ratio
from onnxprune.profiling.cost import uncounted_mac_nodes
from onnxprune.profiling.latency_cmd import measure_with_command
from onnxprune.report.records import BudgetReport, ModelStats, RunSettings, VerificationResult
from onnxprune.report.stats import group_reports, measure, model_stats
from onnxprune.report.summary import Progress, Report
from onnxprune.scoring.calibration import load_calib, resolve_compensate
from onnxprune.scoring.registry import ScoreContext, score_groups
from onnxprune.transform.compensate import apply_compensation, check_static_positions
from onnxprune.transform.requantize import requantize_weights
from onnxprune.transform.rewrite import rewrite
from onnxprune.verify.oracle import compare_models, io_positions, masked_model, needs_plain_execution, verify_tolerance
from onnxprune.verify.rounding import accumulations

__all__ = ["PruneConfig", "PruneResult", "analyze_model", "group_reports", "measure", "model_stats",
           "prune", "save", "split_patterns", "unmatched_excludes", "unused_flag_notes"]


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    analysis: Analysis
    kept: dict[int, np.ndarray]


@dataclass
class LoadedModel:
    """Stage 1: the input as given, its normalized form and its channel groups."""
    original: onnx.ModelProto
    source: str
    normalized: onnx.ModelProto
    analysis: Analysis
    checker_note: str | None
    custom_ops: list[str]
    dequantized: tuple[DequantizedWeight, ...] = ()  # int8 weights folded by normalize, requantized at the end

    @property
    def input_shapes(self) -> dict:
        return self.analysis.view.input_shapes


@dataclass
class Scored:
    """Stage 2: calibration data, the compensation mode it allows, and channel scores."""
    calib: object
    compensate: str
    context: ScoreContext
    scores: dict[int, np.ndarray]


@dataclass
class Plan:
    """Stage 3: kept canonical channels per group (only groups that lose channels), and the
    closed loop's record for a budget."""
    kept: dict[int, np.ndarray]
    budget: BudgetResult | None = None


@dataclass
class Rewritten:
    """Stage 4: the pruned model, and what the ONNX checker had to say about the input."""
    model: onnx.ModelProto
    checker_note: str | None


@dataclass
class Compensated:
    """Stage 6: the compensated model (the rewritten one when there is nothing to compensate)."""
    model: onnx.ModelProto
    applied: bool = False
    notes: list[str] = field(default_factory=list)
    check: dict | None = None
    replaced: dict[str, str] = field(default_factory=dict)  # compensated initializer -> the one it replaces


def _as_model(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        # ORT must run it for the latency baseline; a large one runs from a scratch data file
        return externalized(sanitized(model)), "<in-memory model>"
    return load_model(model), str(model)


def _file_of(source: str) -> str | None:
    """The input's path (the checker reads a model with external data from its file), if it has one."""
    return None if source.startswith("<") else source


def check_per_position(compensate: str, spec: BudgetSpec | None) -> None:
    """Per-position compensation adds a constant map and an Add after each compensated consumer:
    a budget on latency, params or memory did not plan for them."""
    if compensate == "none":
        raise OnnxPruneError("--per-position shapes the compensation constants: it needs --compensate mean or lstsq "
                             "(or --scorer vbp)")
    if spec is not None and spec.metric != "macs":
        raise OnnxPruneError(f"--per-position adds constant maps and Adds that a {spec.metric} budget did not plan "
                             "for: use it with --ratio or --macs")


def unmatched_excludes(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    return [p for p in patterns if not any(excluded_by(n, [p]) for n in model.graph.node)]


def analyze_model(model, *, input_shapes=None, exclude=None, heads: bool = False, embed_dim: bool = False,
                  progress: Progress | None = None, batch: int | None = None) -> Analysis:
    """Load (path or ModelProto), normalize and find channel groups (`batch` for symbolic batch dims)."""
    progress = progress or Progress(False)
    progress.start("load")
    m, src = _as_model(model)
    validate_model(m, src)
    check_runs_natively(m, input_shapes_from(input_shapes), src)
    progress.start("normalize")
    norm = normalize(m)
    progress.start("analyze")
    view = build_view(norm, with_batch(norm, input_shapes_from(input_shapes), batch))
    a = analyze(view, exclude=split_patterns(exclude), heads=heads, embed_dim=embed_dim)
    progress.done()
    return a


def load_and_analyze(model, config: PruneConfig, progress: Progress) -> LoadedModel:
    ac = config.analysis
    progress.start("load")
    m, src = _as_model(model)
    # ONNX Runtime runs the input before the rewrite when calibrating or timing: check types and
    # shapes first, so an inconsistent input is named as such (the rewrite checks it otherwise)
    spec = config.target.budget
    runs_input = config.scoring.calib is not None or (spec is not None and spec.metric == "latency")
    checker_note = validate_model(m, src, full=runs_input, path=_file_of(src))
    check_runs_natively(m, ac.input_shapes, src, batch=ac.batch)
    progress.start("normalize")
    normalized = normalize_model(m)
    norm = normalized.model
    progress.start("analyze")
    view = build_view(norm, with_batch(norm, ac.input_shapes, ac.batch))
    analysis = analyze(view, exclude=ac.exclude, heads=ac.heads, embed_dim=ac.embed_dim)
    return LoadedModel(m, src, norm, analysis, checker_note, custom_ops(norm), normalized.dequantized)


def calibrate_and_score(loaded: LoadedModel, config: PruneConfig, progress: Progress) -> Scored:
    sc = config.scoring
    calib = load_calib(sc.calib, loaded.normalized, batch_size=sc.calib_batch, limit=sc.calib_limit,
                       preprocess=sc.preprocess)
    compensate = resolve_compensate(config.compensation.mode, sc.scorer, calib is not None)
    if config.compensation.per_position:
        check_per_position(compensate, config.target.budget)
        check_static_positions(loaded.normalized)  # before any work: the written model keeps these inputs
    ctx = ScoreContext(loaded.analysis, calib=calib, seed=sc.seed)
    progress.start("score", sc.scorer)
    return Scored(calib, compensate, ctx, score_groups(loaded.analysis, sc.scorer, context=ctx))


def plan(loaded: LoadedModel, scored: Scored, config: PruneConfig, progress: Progress) -> Plan:
    """Kept channels by ratio, or by a budget's knapsack and closed loop (in stages if asked)."""
    t, rt, spec = config.target, config.runtime, config.target.budget
    analysis = loaded.analysis
    if spec is not None and spec.metric == "latency" and loaded.custom_ops and not rt.latency_cmd:
        raise OnnxPruneError(f"a latency budget needs ONNX Runtime to run the model, which has custom op(s) "
                             f"{', '.join(loaded.custom_ops)}: time it with --latency-cmd, or use --macs / --params")
    if spec is None:
        kept = select_by_ratio(analysis.groups, scored.scores, t.ratio, ratio_dw=t.ratio_dw,
                               global_rank=t.global_rank, round_to=t.round_to)
        return Plan(keep_every_member(analysis.groups, kept, scored.scores))
    plan_kw = dict(original=loaded.original, provider=rt.provider, threads=rt.threads, round_to=t.round_to,
                   knapsack_value=t.value, latency_model=rt.latency_model, cache_dir=rt.cache_dir,
                   min_macs=t.min_macs,
                   use_cache=rt.use_cache, latency_cmd=rt.latency_cmd, progress=progress)
    try:
        if t.stages > 1:
            res = plan_in_stages(analysis, _stage_scorer(scored, config), spec, t.stages,
                                 reanalyze=_stage_analyzer(loaded, config), **plan_kw)
        else:
            res = plan_for_budget(analysis, scored.scores, spec, **plan_kw)
    except OnnxPruneError as e:
        hint = unlock_hint(analysis, heads=config.analysis.heads, embed_dim=config.analysis.embed_dim)
        if "cannot be met" not in str(e) or not hint or type(e) is not OnnxPruneError:
            raise
        raise OnnxPruneError(f"{e}; {hint}") from None
    return Plan(keep_every_member(analysis.groups, res.kept, scored.scores), res)


def unlock_hint(analysis: Analysis, *, heads: bool, embed_dim: bool) -> str:
    """For a budget out of reach: the flags that would let frozen transformer channels be pruned."""
    kinds = {g.kind for g in analysis.groups}
    flags = [f for f, off, kind in (("--heads (whole attention heads)", not heads, "head_dim"),
                                    ("--embed-dim (the residual stream)", not embed_dim, "embed")) if off and kind in kinds]
    return f"give {' and '.join(flags)} to prune more" if flags else ""


def _stage_analyzer(loaded: LoadedModel, config: PruneConfig):
    """Re-analysis of an intermediate stage's model with the run's options."""
    ac = config.analysis

    def reanalyze(model):
        return analyze(build_view(model, loaded.input_shapes), exclude=ac.exclude, heads=ac.heads,
                       embed_dim=ac.embed_dim)
    return reanalyze


def _stage_scorer(scored: Scored, config: PruneConfig):
    """Scores of an intermediate stage's groups, on the run's calibration data."""
    sc = config.scoring

    def score(a):
        return score_groups(a, sc.scorer, context=ScoreContext(a, calib=scored.calib, seed=sc.seed))
    return score


def rewrite_and_check(loaded: LoadedModel, plan_: Plan, progress: Progress) -> Rewritten:
    progress.start("rewrite")
    pruned = rewrite(loaded.analysis, plan_.kept)
    checker_note = loaded.checker_note
    try:
        check_model_light(pruned)
    except Exception as e:
        # the plain check at load skips type/shape inference: was the input already inconsistent?
        # raises if ORT cannot load it
        input_note = validate_model(loaded.original, loaded.source, full=True, path=_file_of(loaded.source))
        if input_note is None:
            raise InternalError(f"internal error: the rewritten model fails the ONNX checker: "
                                f"{first_line(e)}") from None
        validate_model(pruned, "the rewritten model")  # held to what the input meets: ONNX Runtime loads it
        checker_note = checker_note or input_note
    return Rewritten(pruned, checker_note)


def budget_report(plan_: Plan, config: PruneConfig) -> BudgetReport | None:
    """The closed loop's record for the report; a budget that was not met stops the run."""
    res, spec, t = plan_.budget, config.target.budget, config.target
    if res is None:
        return None
    info = dict(res.info)
    latency_model = info.pop("latency_model", config.runtime.latency_model if spec.metric == "latency" else None)
    report = BudgetReport(
        metric=res.metric, spec=spec.text, budget=res.budget, baseline=res.baseline,
        # a sum of per-group deltas can fall below zero where latency is not additive (tiny,
        # overhead-bound models): no prediction then, the loop measured
        predicted=res.predicted if res.predicted > 0 else None, measured=res.measured, met=res.met,
        iterations=res.iterations, round_to=t.round_to, stages=t.stages, knapsack_value=t.value,
        latency_model=latency_model, **info)
    if not res.met:
        raise OnnxPruneError(
            f"{BUDGET_FLAGS[spec.metric]} budget {spec.text} not met after {len(res.iterations)} tries "
            f"(best measured {res.measured:.4g} vs budget {res.budget:.4g}); nothing written")
    return report


def verify(loaded: LoadedModel, plan_: Plan, pruned: onnx.ModelProto, progress: Progress) -> VerificationResult:
    """The mask oracle: the original with removed channels zeroed must give the pruned model's outputs."""
    progress.start("verify")
    if loaded.custom_ops:
        raise OnnxPruneError(
            f"cannot verify: ONNX Runtime has no kernel for custom op(s) {', '.join(loaded.custom_ops)}; "
            "rerun with --no-verify to write the model unverified")
    feeds = [random_feeds(loaded.analysis.view, seed=s) for s in range(3)]
    plain = needs_plain_execution(loaded.normalized)
    rel_tol, half = verify_tolerance(loaded.normalized)
    res = compare_models(masked_model(loaded.analysis, plan_.kept), pruned, feeds, rel_tol=rel_tol, optimize=not plain,
                         rounding=accumulations(loaded.analysis), io=io_positions(loaded.analysis, plan_.kept))
    result = VerificationResult(
        passed=res.passed, max_abs_diff=res.max_abs_diff, tolerance=res.tolerance, rel_tol=rel_tol,
        output_scale=res.scale, inputs=len(feeds), per_output=res.per_output, rounding_floor=res.rounding_floor,
        tolerance_note=(f"{half} model: tolerance {rel_tol:g} x output scale (a few {half} ulps per layer), not 1e-4"
                        if half else None),
        note=("quantize/dequantize ops: both models run op by op (ONNX Runtime graph optimizations off), as fused "
              "integer kernels round differently" if plain else None),
        mismatched_elements=res.mismatched or None)
    if not res.passed:
        what = ("integer output(s) differ: " + ", ".join(f"'{k}' in {v} element(s)" for k, v in res.mismatched.items())
                if res.mismatched else
                f"pruned model differs from the masked original by {res.max_abs_diff:.3e} "
                f"(tolerance {res.tolerance:.3e}; float rounding alone moves it by {res.rounding_floor or 0:.1e})")
        raise VerificationError(f"verification failed: {what}; nothing written")
    return result


def compensate(loaded: LoadedModel, scored: Scored, plan_: Plan, pruned: onnx.ModelProto, config: PruneConfig,
               progress: Progress) -> Compensated:
    """Fold what removed channels contributed on average into their consumers (after verification)."""
    if scored.compensate == "none" or not plan_.kept:
        return Compensated(pruned)
    progress.start("compensate", scored.compensate)
    model, comp, check = apply_compensation(loaded.analysis, plan_.kept, pruned, scored.context, scored.compensate,
                                            check=config.runtime.verify, positions=config.compensation.per_position)
    return Compensated(model, True, list(comp.notes), check, dict(comp.replaced))


def finalize(loaded: LoadedModel, plan_: Plan, comp: Compensated) -> tuple[onnx.ModelProto, list[str], int]:
    """The model as written: int8 weights behind DequantizeLinear stay int8, and the original's
    graph inputs are kept. Returns (model, notes, its serialized size before the inputs are restored)."""
    model, notes = requantize_weights(comp.model, loaded.analysis, plan_.kept, loaded.dequantized, comp.replaced)
    size = model_file_bytes(model)
    return initializers_as_inputs(loaded.original, model), notes, size


def measure_latency(loaded: LoadedModel, pruned: onnx.ModelProto, config: PruneConfig, progress: Progress
                    ) -> tuple[float | None, float | None, str]:
    """(baseline ms, pruned ms, how) of the original and written models."""
    rt = config.runtime
    progress.start("latency", f"({rt.provider})")
    if loaded.custom_ops and not rt.latency_cmd:
        return None, None, "not measured: custom ops have no ONNX Runtime kernel"
    if rt.latency_cmd:
        base_ms, pruned_ms = (measure_with_command(rt.latency_cmd, x) for x in (loaded.original, pruned))
        return base_ms, pruned_ms, "measured by --latency-cmd"
    base_ms, pruned_ms = measure([loaded.original, pruned], loaded.input_shapes, provider=rt.provider,
                                 threads=rt.threads)
    return base_ms, pruned_ms, f"median, {rt.provider}, side by side in one process"


def run_settings(loaded: LoadedModel, scored: Scored, config: PruneConfig) -> RunSettings:
    t, ac = config.target, config.analysis
    return RunSettings(ratio=t.ratio, ratio_dw=t.ratio_dw, global_rank=t.global_rank, round_to=t.round_to,
                       scorer=config.scoring.scorer, exclude=list(ac.exclude), heads=ac.heads,
                       embed_dim=ac.embed_dim, input_shapes=loaded.input_shapes, provider=config.runtime.provider,
                       threads=config.runtime.threads, seed=config.scoring.seed, compensate=scored.compensate,
                       per_position=config.compensation.per_position,
                       calib=getattr(scored.calib, "description", None) if scored.calib is not None else None)


def outcome_notes(loaded: LoadedModel, kept: dict[int, np.ndarray]) -> list[str]:
    """What the user should know about the result: nothing removed (and why), frozen custom ops,
    MACs that could not be counted."""
    analysis, notes = loaded.analysis, list(loaded.analysis.view.notes)
    if not any(len(kept[g.id]) < g.size for g in analysis.groups if g.id in kept):
        prunable = [g for g in analysis.groups if g.prunable]
        why = ("no channel group was found (every node is excluded or not understood: see `onnxprune analyze`)"
               if not analysis.groups else "every channel group is frozen" if not prunable
               else "the ratio or budget leaves every group at full width")
        notes.append(f"no channel was removed: {why}")
    if loaded.custom_ops:
        notes.append(f"custom op(s) {', '.join(loaded.custom_ops)}: groups touching them are frozen")
    uncounted = uncounted_mac_nodes(analysis.view)
    if uncounted:
        notes.append(f"MACs leave out {len(uncounted)} node(s) whose shapes are unknown: "
                     + ", ".join(uncounted[:3]) + (" ..." if len(uncounted) > 3 else ""))
    return notes


def input_notes(loaded: LoadedModel, rewritten: Rewritten, scored: Scored, config: PruneConfig) -> list[str]:
    """Notes about the input and the options: checker findings, unmatched excludes, scorer notes."""
    notes = [rewritten.checker_note] if rewritten.checker_note else []
    notes += [f"--exclude '{p}' matches no node name or op type"
              for p in unmatched_excludes(loaded.normalized, config.analysis.exclude)]
    notes += unused_flag_notes(loaded.analysis, heads=config.analysis.heads, embed_dim=config.analysis.embed_dim)
    return notes + list(getattr(scored.calib, "notes", [])) + list(scored.context.notes)


def unused_flag_notes(analysis: Analysis, *, heads: bool, embed_dim: bool) -> list[str]:
    """--heads / --embed-dim on a model where they find nothing to prune (a CNN): said, not silent."""
    kinds = {g.kind for g in analysis.groups}
    notes = []
    if heads and "heads" not in kinds:
        notes.append("--heads found no attention heads in this model: it changed nothing")
    if embed_dim and "embed" not in kinds:
        notes.append("--embed-dim found no transformer residual stream in this model: it changed nothing")
    return notes


def baseline_stats(loaded: LoadedModel) -> ModelStats:
    stats = model_stats(loaded.normalized, loaded.input_shapes)
    stats.file_bytes = model_file_bytes(loaded.original)
    return stats


def prune(model, config: PruneConfig | None = None, *, progress: Progress | None = None, **options) -> PruneResult:
    """Remove channels of every prunable channel group (lowest scores first) and verify the result.

    ``config`` is a :class:`onnxprune.config.PruneConfig`; or give its options as keywords
    (``prune(model, ratio=0.3, scorer="vbp", calib="calib.npz")``, see
    :func:`onnxprune.config.config_from_keywords`): a ratio of 0.3 when neither a ratio nor a budget
    is given.

    Calibration (data-driven scorers such as ``vbp``, and ``compensate="mean"``): ``calib`` is a
    .npz/.npy path, a folder of images (``preprocess``), an array, a dict of arrays or a list of feed
    dicts (see onnxprune/scoring/calibration.py). ``compensate``: "mean" (default for vbp) folds the
    calibration mean of every removed channel into the consumer's bias after verification; "none"
    disables it. ``per_position``: compensation constants per position (token / pixel: the mean over
    the batch axis only) instead of per channel, added as a constant map after each consumer; exact in
    expectation at every position, padded conv borders included; needs static input dims except the
    batch.

    Budgets (instead of ``ratio``): ``budget`` latency ("11ms", "0.6x"), ``macs`` / ``params``
    ("50%", "1.2G", "3M") or ``peak_memory`` ("3.6MB", "50%"): a group knapsack over LAMP-normalized
    scores (use ``scorer="sp-lamp"`` for the paper's method) with a measured, cached, position-aware
    latency table (``latency_model="macs"`` for an analytic estimate), then a closed loop on the
    written model. The knapsack keeps most of ``knapsack_value``: "members" (the default) weights each
    group's values by its number of weight members (more accuracy without fine-tuning), "lamp" is the
    paper's plain sum, "energy" (vbp) the consumers' output energy; see planning/choices.group_choices. ``round_to``
    keeps channel counts at multiples of N (or "auto": widest width of each measured latency step);
    ``stages`` reaches the budget in k steps, re-scoring and re-measuring on the model pruned so far
    (SP-LAMP Sec. 3.3).

    The result is verified against the mask oracle unless ``verify=False``; a mismatch raises
    :class:`VerificationError` and no model is returned.
    """
    if config is not None and options:
        raise TypeError(f"prune() takes a PruneConfig or keyword options, not both (got {', '.join(options)})")
    config = config if config is not None else config_from_keywords(**options)
    progress = progress or Progress(False)
    loaded = load_and_analyze(model, config, progress)
    scored = calibrate_and_score(loaded, config, progress)
    plan_ = plan(loaded, scored, config, progress)
    rewritten = rewrite_and_check(loaded, plan_, progress)
    report = Report(input=loaded.source, output=None, settings=run_settings(loaded, scored, config),
                    baseline=baseline_stats(loaded), notes=input_notes(loaded, rewritten, scored, config))
    report.budget = budget_report(plan_, config)
    progress.start("stats")
    report.pruned = model_stats(rewritten.model, loaded.input_shapes)
    report.groups = group_reports(loaded.analysis, plan_.kept)
    report.notes += outcome_notes(loaded, plan_.kept)
    report.verification = (verify(loaded, plan_, rewritten.model, progress) if config.runtime.verify
                           else VerificationResult(skipped="--no-verify"))
    comp = compensate(loaded, scored, plan_, rewritten.model, config, progress)
    if comp.applied:
        report.notes += comp.notes
        if comp.check is not None:
            report.verification.compensation[scored.compensate] = comp.check
        report.pruned = model_stats(comp.model, loaded.input_shapes)
    written, notes, report.pruned.file_bytes = finalize(loaded, plan_, comp)
    report.notes += notes
    if config.runtime.latency:
        report.baseline.latency_ms, report.pruned.latency_ms, report.baseline.latency_note = \
            measure_latency(loaded, written, config, progress)
    progress.done()
    report.timings_s = dict(progress.timings)
    return PruneResult(portable(written), report, loaded.analysis, plan_.kept)


def save(model: onnx.ModelProto, path: str | os.PathLike, *, input_path=None) -> None:
    save_model(model, path, input_path=input_path)
