"""The Python API the CLI is a thin layer over:

    import onnxprune
    result = onnxprune.prune("in.onnx", ratio=0.3)
    onnxprune.save(result.model, "out.onnx")
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.groups import Analysis, analyze
from onnxprune.profiling.cost import total_macs, total_params, uncounted_mac_nodes
from onnxprune.errors import InternalError, OnnxPruneError, VerificationError, first_line
from onnxprune.analysis.graph import build_view, random_feeds
from onnxprune.model.load import custom_ops, load_model, sanitized, validate_model
from onnxprune.model.normalize import normalize, normalize_model
from onnxprune.model.save import initializers_as_inputs, save_model
from onnxprune.model.shapes import check_model_light, parse_input_shapes, with_batch
from onnxprune.transform.requantize import requantize_weights
from onnxprune.verify.oracle import compare_models, masked_model, needs_plain_execution, verify_tolerance
from onnxprune.report.summary import GroupReport, ModelStats, Progress, Report
from onnxprune.transform.rewrite import rewrite
from onnxprune.scoring.registry import score_groups
from onnxprune.planning.ratio import keep_every_member, select_by_ratio


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    analysis: Analysis
    kept: dict[int, np.ndarray]


def _as_model(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return sanitized(model), "<in-memory model>"  # ORT must run it for the latency baseline
    return load_model(model), str(model)


def _shapes(input_shapes):
    if input_shapes is None or isinstance(input_shapes, dict):
        return input_shapes
    if isinstance(input_shapes, str):  # "x=1x3x224x224" or "a=1x16,b=1x16"
        input_shapes = input_shapes.split(",")
    return parse_input_shapes(list(input_shapes))


def split_patterns(patterns) -> list[str]:
    """--exclude values: a string or a list of strings, each possibly comma-separated."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    return [p.strip() for s in patterns for p in str(s).split(",") if p.strip()]


LATENCY_MODELS = ("measured", "macs")


def check_prune_args(*, ratio, ratio_dw, budgets: dict, round_to, stages, latency_model, seed, calib_batch,
                     calib_limit, threads, batch, knapsack_value: str = "lamp") -> None:
    """One place for the argument rules, so the CLI and the Python API accept and refuse the same
    things (a flag that would be silently ignored is refused with the reason)."""
    given = [k for k, v in budgets.items() if v is not None]
    if ratio is not None and given:
        raise OnnxPruneError("give either a ratio or a budget, not both")
    for r in (ratio, ratio_dw):
        if r is not None and not (isinstance(r, (int, float)) and 0.0 <= r < 1.0):
            raise OnnxPruneError(f"ratio must be in [0, 1), got {r}")
    if ratio_dw is not None and given:
        raise OnnxPruneError("--ratio-dw applies to ratio pruning, not to budgets")
    if round_to is not None and round_to != "auto" and not (isinstance(round_to, int) and round_to >= 1):
        raise OnnxPruneError(f"round_to must be a positive integer or 'auto', got {round_to!r}")
    if round_to == "auto" and given != ["budget"]:
        raise OnnxPruneError("--round-to auto uses measured latency steps: it needs a latency budget (--budget)")
    if not (isinstance(stages, int) and stages >= 1):
        raise OnnxPruneError(f"stages must be an integer >= 1, got {stages!r}")
    if stages > 1 and not given:
        raise OnnxPruneError("--stages applies to budgets, not to --ratio")
    from onnxprune.planning.budget import KNAPSACK_VALUES

    if knapsack_value not in KNAPSACK_VALUES:
        raise OnnxPruneError(f"knapsack value must be one of {', '.join(KNAPSACK_VALUES)}, got {knapsack_value!r}")
    if knapsack_value != "lamp" and not given:
        raise OnnxPruneError("--knapsack-value applies to budgets (--budget, --macs, --params, --peak-memory)")
    if latency_model not in LATENCY_MODELS:
        raise OnnxPruneError(f"latency model must be one of {', '.join(LATENCY_MODELS)}, got {latency_model!r}")
    if latency_model != "measured" and given != ["budget"]:
        raise OnnxPruneError("--latency-model applies to latency budgets (--budget)")
    for name, v, lo in (("seed", seed, 0), ("calib batch", calib_batch, 1), ("calib limit", calib_limit, 1),
                        ("threads", threads, 1), ("batch", batch, 1)):
        if v is not None and not (isinstance(v, (int, np.integer)) and v >= lo):
            raise OnnxPruneError(f"{name} must be an integer >= {lo}, got {v!r}")


def check_per_position(compensate: str, spec) -> None:
    """Per-position compensation adds a constant map and an Add after each compensated consumer:
    a budget on latency, params or memory did not plan for them."""
    if compensate == "none":
        raise OnnxPruneError("--per-position shapes the compensation constants: it needs --compensate mean or lstsq "
                             "(or --scorer vbp)")
    if spec is not None and spec.metric != "macs":
        raise OnnxPruneError(f"--per-position adds constant maps and Adds that a {spec.metric} budget did not plan "
                             "for: use it with --ratio or --macs")


def unmatched_excludes(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    from onnxprune.analysis.groups import _excluded

    return [p for p in patterns if not any(_excluded(n, [p]) for n in model.graph.node)]


def analyze_model(model, *, input_shapes=None, exclude=None, heads: bool = False, embed_dim: bool = False,
                  progress: Progress | None = None) -> Analysis:
    """Load (path or ModelProto), normalize and find channel groups."""
    progress = progress or Progress(False)
    progress.start("load")
    m, src = _as_model(model)
    validate_model(m, src)
    progress.start("normalize")
    norm = normalize(m)
    progress.start("analyze")
    view = build_view(norm, _shapes(input_shapes))
    a = analyze(view, exclude=split_patterns(exclude), heads=heads, embed_dim=embed_dim)
    progress.done()
    return a


def group_reports(analysis: Analysis, kept: dict[int, np.ndarray] | None = None) -> list[GroupReport]:
    out = []
    for g in analysis.groups:
        k = kept.get(g.id) if kept else None
        out.append(GroupReport(
            id=g.id, name=g.name, channels=g.size, kept=len(k) if k is not None else g.size,
            frozen=not g.prunable, frozen_channels=int(g.frozen.sum()), reasons=list(g.reasons),
            depthwise=g.depthwise, kind=g.kind, members=[f"{m.tensor}:{m.axis}" for m in g.members],
            kept_indices=[int(i) for i in k] if k is not None else None))
    return out


def model_stats(model: onnx.ModelProto, input_shapes, file_bytes: bool = False) -> ModelStats:
    """MACs, params, peak memory (and with ``file_bytes`` the serialized size: a full pass over a large
    model's weights, so only where it is reported)."""
    from onnxprune.profiling.cost import peak_memory

    v = build_view(model, input_shapes)
    return ModelStats(macs=total_macs(v), params=total_params(v), file_bytes=model.ByteSize() if file_bytes else None,
                      peak_memory_bytes=int(peak_memory(v)[0]))


def measure(models: list[onnx.ModelProto], input_shapes, *, provider="cpu", threads=None,
            time_budget_s: float = 6.0) -> list[float]:
    """Median latency (ms) of each model, measured side by side in one process."""
    from onnxprune.profiling.timing import measure_latencies

    feeds = random_feeds(models[0], seed=0, input_shapes=input_shapes)
    stats = measure_latencies([m.SerializeToString() for m in models], feeds, provider=provider,
                              threads=threads, time_budget_s=time_budget_s)
    return [s.median_ms for s in stats]


def _budget_spec(budget, macs, params, peak_memory):
    from onnxprune.planning.budget import BudgetSpec, parse_budget_spec

    given = [(k, v) for k, v in (("latency", budget), ("macs", macs), ("params", params),
                                 ("peak_memory", peak_memory)) if v is not None]
    if len(given) > 1:
        raise OnnxPruneError("give one budget at a time (--budget, --macs, --params or --peak-memory)")
    if not given:
        return None
    k, v = given[0]
    return v if isinstance(v, BudgetSpec) else parse_budget_spec(k, v)


def prune(model, *, ratio: float | None = None, ratio_dw: float | None = None, global_rank: bool = False,
          scorer: str = "l2", exclude: list[str] | None = None, input_shapes=None, heads: bool = False,
          embed_dim: bool = False, verify: bool = True,
          latency: bool = True, provider: str = "cpu", threads: int | None = None,
          progress: Progress | None = None,
          calib=None, calib_batch: int | None = None, calib_limit: int | None = None, preprocess=None,
          compensate: str | None = None, per_position: bool = False, seed: int = 0,
          budget: str | None = None, macs: str | None = None, params: str | None = None,
          peak_memory: str | None = None, round_to: int | None = None, latency_model: str = "measured",
          cache_dir=None, use_cache: bool = True, latency_cmd: str | None = None,
          batch: int | None = None, stages: int = 1, knapsack_value: str = "lamp") -> PruneResult:
    """Remove `ratio` of the channels of every prunable channel group (lowest scores first; 0.3 when
    neither a ratio nor a budget is given).

    Calibration (data-driven scorers such as ``vbp``, and ``compensate="mean"``): ``calib`` is a
    .npz/.npy path, a folder of images (``preprocess``), an array, a dict of arrays or a list of feed
    dicts (see onnxprune/calib.py). ``compensate``: "mean" (default for vbp) folds the calibration
    mean of every removed channel into the consumer's bias after verification; "none" disables it.
    ``per_position``: compensation constants per position (token / pixel: the mean over the batch axis
    only) instead of per channel, added as a constant map after each consumer; exact in expectation at
    every position, padded conv borders included; needs static input dims except the batch.

    Budgets (instead of ``ratio``): ``budget`` latency ("11ms", "0.6x"), ``macs`` / ``params``
    ("50%", "1.2G", "3M") or ``peak_memory`` ("3.6MB", "50%"): a group knapsack over LAMP-normalized
    scores (use ``scorer="sp-lamp"`` for the paper's method) with a measured, cached, position-aware
    latency table (``latency_model="macs"`` for an analytic estimate), then a closed loop on the
    written model (``knapsack_value="members"`` weights each group's values by its number of weight
    members: better accuracy without fine-tuning, see budget.group_choices). ``round_to`` keeps channel counts at multiples of N (or "auto": widest width of
    each measured latency step); ``stages`` reaches the budget in k steps, re-scoring and
    re-measuring on the model pruned so far (SP-LAMP Sec. 3.3).

    The result is verified against the mask oracle unless ``verify=False``; a mismatch raises
    :class:`VerificationError` and no model is returned.
    """
    check_prune_args(ratio=ratio, ratio_dw=ratio_dw,
                     budgets=dict(budget=budget, macs=macs, params=params, peak_memory=peak_memory),
                     round_to=round_to, stages=stages, latency_model=latency_model, seed=seed,
                     calib_batch=calib_batch, calib_limit=calib_limit, threads=threads, batch=batch,
                     knapsack_value=knapsack_value)
    if ratio is None and all(v is None for v in (budget, macs, params, peak_memory)):
        ratio = 0.3
    exclude = split_patterns(exclude)
    progress = progress or Progress(False)
    progress.start("load")
    m, src = _as_model(model)
    # ONNX Runtime runs the input before the rewrite when calibrating or timing: check types and
    # shapes first, so an inconsistent input is named as such (the rewrite checks it otherwise)
    checker_note = validate_model(m, src, full=calib is not None or budget is not None)
    progress.start("normalize")
    normalized = normalize_model(m)
    norm = normalized.model
    progress.start("analyze")
    shapes = with_batch(norm, _shapes(input_shapes), batch)
    view = build_view(norm, shapes)
    analysis = analyze(view, exclude=exclude, heads=heads, embed_dim=embed_dim)
    # -- calibration data and compensation mode (issue #4) --
    from onnxprune.scoring.calibration import load_calib, resolve_compensate
    from onnxprune.scoring.registry import ScoreContext

    calib_set = load_calib(calib, norm, batch_size=calib_batch, limit=calib_limit, preprocess=preprocess)
    compensate = resolve_compensate(compensate, scorer, calib_set is not None)
    if per_position:
        from onnxprune.transform.compensate import check_static_positions

        check_per_position(compensate, _budget_spec(budget, macs, params, peak_memory))
        check_static_positions(norm)  # before any work: the written model keeps these inputs
    score_ctx = ScoreContext(analysis, calib=calib_set, seed=seed)
    progress.start("score", scorer)
    scores = score_groups(analysis, scorer, context=score_ctx)
    spec = _budget_spec(budget, macs, params, peak_memory)
    customs = custom_ops(norm)
    if spec is not None and spec.metric == "latency" and customs and not latency_cmd:
        raise OnnxPruneError(f"a latency budget needs ONNX Runtime to run the model, which has custom op(s) "
                             f"{', '.join(customs)}: time it with --latency-cmd, or use --macs / --params")
    budget_res = None
    if spec is None:
        kept = select_by_ratio(analysis.groups, scores, ratio, ratio_dw=ratio_dw, global_rank=global_rank,
                               round_to=round_to)
    else:
        from onnxprune.planning.budget import plan_for_budget

        plan_kw = dict(original=m, provider=provider, threads=threads, round_to=round_to, knapsack_value=knapsack_value,
                       latency_model=latency_model, cache_dir=cache_dir, use_cache=use_cache,
                       latency_cmd=latency_cmd, progress=progress)
        if stages > 1:
            from onnxprune.planning.budget import plan_in_stages

            def reanalyze(model):
                return analyze(build_view(model, view.input_shapes), exclude=exclude, heads=heads, embed_dim=embed_dim)

            def score_fn(a):
                return score_groups(a, scorer, context=ScoreContext(a, calib=calib_set, seed=seed))
            budget_res = plan_in_stages(analysis, score_fn, spec, stages, reanalyze=reanalyze, **plan_kw)
        else:
            budget_res = plan_for_budget(analysis, scores, spec, **plan_kw)
        kept = budget_res.kept
    kept = keep_every_member(analysis.groups, kept, scores)
    progress.start("rewrite")
    pruned = rewrite(analysis, kept)
    try:
        check_model_light(pruned)
    except Exception as e:
        # the plain check at load skips type/shape inference: was the input already inconsistent?
        input_note = validate_model(m, src, full=True)  # raises if ONNX Runtime cannot load the input
        if input_note is None:
            raise InternalError(f"internal error: the rewritten model fails the ONNX checker: "
                                 f"{first_line(e)}") from None
        validate_model(pruned, "the rewritten model")  # held to what the input meets: ONNX Runtime loads it
        checker_note = checker_note or input_note

    report = Report(input=src, output=None,
                    settings=dict(ratio=ratio, ratio_dw=ratio_dw, global_rank=global_rank, round_to=round_to,
                                  scorer=scorer,
                                  exclude=exclude or [], heads=heads, embed_dim=embed_dim,
                                  input_shapes=view.input_shapes, provider=provider,
                                  threads=threads),
                    baseline=model_stats(norm, view.input_shapes))
    report.baseline.file_bytes = m.ByteSize()
    if checker_note:
        report.notes.append(checker_note)
    for p in unmatched_excludes(norm, exclude):
        report.notes.append(f"--exclude '{p}' matches no node name or op type")
    report.settings.update(seed=seed, compensate=compensate, per_position=per_position,
                           calib=getattr(calib_set, "description", None) if calib_set is not None else None)
    report.notes.extend(score_ctx.notes)
    if budget_res is not None:
        report.budget = dict(metric=budget_res.metric, spec=spec.text, budget=budget_res.budget,
                             baseline=budget_res.baseline,
                             # a sum of per-group deltas can fall below zero where latency is not
                             # additive (tiny, overhead-bound models): no prediction then, the loop measured
                             predicted=budget_res.predicted if budget_res.predicted > 0 else None,
                             measured=budget_res.measured, met=budget_res.met, iterations=budget_res.iterations,
                             round_to=round_to, stages=stages, knapsack_value=knapsack_value,
                             **{"latency_model": latency_model if spec.metric == "latency" else None,
                                **budget_res.info})
        if not budget_res.met:
            raise OnnxPruneError(
                f"{spec.metric} budget {spec.text} not met after {len(budget_res.iterations)} tries "
                f"(best measured {budget_res.measured:.4g} vs budget {budget_res.budget:.4g}); nothing written")
    progress.start("stats")
    report.pruned = model_stats(pruned, view.input_shapes)
    report.groups = group_reports(analysis, kept)
    if not any(len(kept[g.id]) < g.size for g in analysis.groups if g.id in kept):
        prunable = [g for g in analysis.groups if g.prunable]
        why = ("no channel group was found (every node is excluded or not understood: see `onnxprune analyze`)"
               if not analysis.groups else "every channel group is frozen" if not prunable
               else "the ratio or budget leaves every group at full width")
        report.notes.append(f"no channel was removed: {why}")
    if customs:
        report.notes.append(f"custom op(s) {', '.join(customs)}: groups touching them are frozen")
    uncounted = uncounted_mac_nodes(view)
    if uncounted:
        report.notes.append(f"MACs leave out {len(uncounted)} node(s) whose shapes are unknown: "
                            + ", ".join(uncounted[:3]) + (" ..." if len(uncounted) > 3 else ""))

    if verify:
        progress.start("verify")
        if customs:
            raise OnnxPruneError(
                f"cannot verify: ONNX Runtime has no kernel for custom op(s) {', '.join(customs)}; "
                "rerun with --no-verify to write the model unverified")
        feeds = [random_feeds(view, seed=s) for s in range(3)]
        plain = needs_plain_execution(norm)
        rel_tol, half = verify_tolerance(norm)
        res = compare_models(masked_model(analysis, kept), pruned, feeds, rel_tol=rel_tol, optimize=not plain)
        report.verification = dict(passed=res.passed, max_abs_diff=res.max_abs_diff, tolerance=res.tolerance,
                                   rel_tol=rel_tol, output_scale=res.scale, inputs=len(feeds),
                                   per_output=res.per_output)
        if half:
            report.verification["tolerance_note"] = (f"{half} model: tolerance {rel_tol:g} x output scale (a few "
                                                     f"{half} ulps per layer), not 1e-4")
        if plain:
            report.verification["note"] = ("quantize/dequantize ops: both models run op by op (ONNX Runtime graph "
                                            "optimizations off), as fused integer kernels round differently")
        if res.mismatched:
            report.verification["mismatched_elements"] = res.mismatched
        if not res.passed:
            what = ("integer output(s) differ: " + ", ".join(f"'{k}' in {v} element(s)" for k, v in res.mismatched.items())
                    if res.mismatched else
                    f"pruned model differs from the masked original by {res.max_abs_diff:.3e} "
                    f"(tolerance {res.tolerance:.3e})")
            raise VerificationError(f"verification failed: {what}; nothing written")
    else:
        report.verification = dict(skipped="--no-verify")

    replaced = {}  # compensated initializer -> the one it replaces
    if compensate != "none" and kept:
        progress.start("compensate", compensate)
        from onnxprune.transform.compensate import apply_compensation

        pruned, comp, comp_check = apply_compensation(analysis, kept, pruned, score_ctx, compensate, check=verify,
                                                      positions=per_position)
        report.notes.extend(comp.notes)
        replaced = comp.replaced
        if comp_check is not None:
            report.verification[f"{compensate}_compensation"] = comp_check
        report.pruned = model_stats(pruned, view.input_shapes)

    pruned, notes = requantize_weights(pruned, analysis, kept, normalized.dequantized, replaced)  # int8 stays int8
    report.notes.extend(notes)
    report.pruned.file_bytes = pruned.ByteSize()
    pruned = initializers_as_inputs(m, pruned)  # the written model keeps the original's inputs
    if latency:
        progress.start("latency", f"({provider})")
        if customs and not latency_cmd:
            report.baseline.latency_note = "not measured: custom ops have no ONNX Runtime kernel"
        else:
            if latency_cmd:
                from onnxprune.profiling.latency_cmd import measure_with_command

                base_ms, pruned_ms = (measure_with_command(latency_cmd, x) for x in (m, pruned))
                report.baseline.latency_note = "measured by --latency-cmd"
            else:
                base_ms, pruned_ms = measure([m, pruned], view.input_shapes, provider=provider, threads=threads)
                report.baseline.latency_note = f"median, {provider}, side by side in one process"
            report.baseline.latency_ms, report.pruned.latency_ms = base_ms, pruned_ms
    progress.done()
    report.timings_s = dict(progress.timings)
    return PruneResult(pruned, report, analysis, kept)


def save(model: onnx.ModelProto, path: str | os.PathLike, *, input_path=None) -> None:
    save_model(model, path, input_path=input_path)
