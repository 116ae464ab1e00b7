"""The typed configuration of a prune run, validated once when it is built: the CLI
(``cli.config_from_args``) and the Python API (``config_from_keywords``, behind
``onnxprune.prune(model, ratio=0.3, ...)``) accept and refuse the same things, and a flag that
would be silently ignored is refused with the reason."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxprune.errors import OnnxPruneError
from onnxprune.model.shapes import parse_input_shapes
from onnxprune.planning.budget import BudgetSpec, parse_budget_spec
from onnxprune.planning.choices import DEFAULT_KNAPSACK_VALUE, KNAPSACK_VALUES
from onnxprune.scoring.calibration import COMPENSATE_CHOICES, parse_preprocess
from onnxprune.scoring.registry import NEEDS_CALIB, SCORERS

LATENCY_MODELS = ("op", "table", "macs")  # planning/budget.resolve_latency_model: None = op (table with --latency-cmd)
DEFAULT_RATIO = 0.3  # the Python API's ratio when neither a ratio nor a budget is given
BUDGET_KEYWORDS = {"budget": "latency", "macs": "macs", "params": "params", "peak_memory": "peak_memory"}


@dataclass(frozen=True)
class TargetConfig:
    """What to remove: a ratio per group (or globally) or a budget, and the width rules."""
    ratio: float | None = None
    ratio_dw: float | None = None
    global_rank: bool = False
    budget: BudgetSpec | None = None
    round_to: int | str | None = None
    stages: int = 1
    knapsack_value: str | None = None  # None: DEFAULT_KNAPSACK_VALUE for a budget
    min_macs: float = 0.2  # a latency budget refuses a result with fewer MACs than this share (issue #11)

    @property
    def value(self) -> str:
        """The budget knapsack's value: the one asked for, else the default."""
        return self.knapsack_value or DEFAULT_KNAPSACK_VALUE


@dataclass(frozen=True)
class AnalysisConfig:
    input_shapes: dict[str, list[int]] | None = None
    batch: int | None = None
    exclude: list[str] = field(default_factory=list)
    heads: bool = False
    embed_dim: bool = False


@dataclass(frozen=True)
class ScoringConfig:
    """How channels are ranked, and the calibration data that data-driven scorers (and
    compensation) read: a .npz/.npy path, a folder of images (``preprocess``), an array, a dict of
    arrays or a list of feed dicts."""
    scorer: str = "l2"
    seed: int = 0
    calib: object = None
    calib_batch: int | None = None
    calib_limit: int | None = None
    preprocess: object = None


@dataclass(frozen=True)
class CompensationConfig:
    mode: str | None = None  # None: "mean" for vbp, else "none" (decided once calibration data is known)
    per_position: bool = False


@dataclass(frozen=True)
class RuntimeConfig:
    provider: str = "cpu"
    threads: int | None = None
    latency_model: str | None = None
    latency_cmd: str | None = None
    cache_dir: object = None
    use_cache: bool = True
    verify: bool = True
    latency: bool = True


@dataclass(frozen=True)
class PruneConfig:
    target: TargetConfig = field(default_factory=TargetConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    compensation: CompensationConfig = field(default_factory=CompensationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _check_target(self.target)
        _check_latency_model(self.runtime.latency_model, self.target.budget)
        _check_integers(seed=(self.scoring.seed, 0), calib_batch=(self.scoring.calib_batch, 1),
                        calib_limit=(self.scoring.calib_limit, 1), threads=(self.runtime.threads, 1),
                        batch=(self.analysis.batch, 1))
        _check_calibration(self.scoring, self.compensation)
        if self.target.knapsack_value == "energy" and self.scoring.scorer != "vbp":
            raise OnnxPruneError("--knapsack-value energy weighs vbp's activation variances by the consumers' "
                                 "weights: use it with --scorer vbp")


def _check_calibration(sc: ScoringConfig, comp: CompensationConfig) -> None:
    """What can be said about scorer, calibration data and compensation before the model is loaded
    (a large model takes seconds to load): unknown names, missing data, data nothing would read."""
    if sc.scorer not in SCORERS:
        raise OnnxPruneError(f"unknown scorer '{sc.scorer}' (choose from {', '.join(sorted(SCORERS))})")
    if comp.mode is not None and comp.mode not in COMPENSATE_CHOICES:
        raise OnnxPruneError(f"unknown --compensate '{comp.mode}' (choose from {', '.join(COMPENSATE_CHOICES)})")
    compensates = comp.mode in ("mean", "lstsq") or (comp.mode is None and sc.scorer in NEEDS_CALIB)
    if sc.calib is None:
        if sc.scorer in NEEDS_CALIB:
            raise OnnxPruneError(f"scorer '{sc.scorer}' needs calibration data: pass --calib FILE")
        if comp.mode in ("mean", "lstsq"):
            raise OnnxPruneError(f"--compensate {comp.mode} needs calibration data: pass --calib FILE")
        if sc.preprocess:
            raise OnnxPruneError("--preprocess applies to --calib image folders: give --calib too")
        return
    if sc.scorer not in NEEDS_CALIB and not compensates:
        raise OnnxPruneError(f"--calib is read only by --scorer {', '.join(sorted(NEEDS_CALIB))} and by --compensate "
                             f"mean/lstsq: with --scorer {sc.scorer} and no compensation it would be ignored")
    if isinstance(sc.calib, (str, os.PathLike)):
        _check_calib_path(str(sc.calib))
    parse_preprocess(sc.preprocess)  # its syntax errors, now


def _check_calib_path(path: str) -> None:
    p = Path(path)
    if not p.exists() and ":" in path:  # FILE.npz:KEY
        p = Path(path.rpartition(":")[0])
    if not p.exists():
        raise OnnxPruneError(f"calibration data not found: {path}")


def _check_target(t: TargetConfig) -> None:
    if t.ratio is not None and t.budget is not None:
        raise OnnxPruneError("give either a ratio or a budget, not both")
    for r in (t.ratio, t.ratio_dw):
        if r is not None and not (isinstance(r, (int, float)) and 0.0 <= r < 1.0):
            raise OnnxPruneError(f"ratio must be in [0, 1), got {r}")
    if t.ratio_dw is not None and t.budget is not None:
        raise OnnxPruneError("--ratio-dw applies to ratio pruning, not to budgets")
    if t.round_to is not None and t.round_to != "auto" and not (isinstance(t.round_to, int) and t.round_to >= 1):
        raise OnnxPruneError(f"round_to must be a positive integer or 'auto', got {t.round_to!r}")
    if t.round_to == "auto" and not _is_latency(t.budget):
        raise OnnxPruneError("--round-to auto uses measured latency steps: it needs a latency budget (--budget)")
    if not (isinstance(t.stages, int) and t.stages >= 1):
        raise OnnxPruneError(f"stages must be an integer >= 1, got {t.stages!r}")
    if t.stages > 1 and t.budget is None:
        raise OnnxPruneError("--stages applies to budgets, not to --ratio")
    if t.knapsack_value is not None and t.knapsack_value not in KNAPSACK_VALUES:
        raise OnnxPruneError(f"knapsack value must be one of {', '.join(KNAPSACK_VALUES)}, got {t.knapsack_value!r}")
    if t.knapsack_value is not None and t.budget is None:
        raise OnnxPruneError("--knapsack-value applies to budgets (--budget, --macs, --params, --peak-memory)")
    if not (isinstance(t.min_macs, (int, float)) and 0.0 <= t.min_macs <= 1.0):
        raise OnnxPruneError(f"--min-macs must be a share in [0, 1], got {t.min_macs!r}")


def _is_latency(spec: BudgetSpec | None) -> bool:
    return spec is not None and spec.metric == "latency"


def _check_latency_model(latency_model: str | None, spec: BudgetSpec | None) -> None:
    if latency_model is None:
        return
    if latency_model not in LATENCY_MODELS:
        raise OnnxPruneError(f"latency model must be one of {', '.join(LATENCY_MODELS)}, got {latency_model!r}")
    if not _is_latency(spec):
        raise OnnxPruneError("--latency-model applies to latency budgets (--budget)")


def _check_integers(**values: tuple[object, int]) -> None:
    """Each value None or an integer >= its lower bound (names as users read them: 'calib batch')."""
    for name, (v, lo) in values.items():
        if v is not None and not (isinstance(v, (int, np.integer)) and v >= lo):
            raise OnnxPruneError(f"{name.replace('_', ' ')} must be an integer >= {lo}, got {v!r}")


def split_patterns(patterns) -> list[str]:
    """--exclude values: a string or a list of strings, each possibly comma-separated."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    return [p.strip() for s in patterns for p in str(s).split(",") if p.strip()]


def input_shapes_from(input_shapes) -> dict[str, list[int]] | None:
    """A dict, "x=1x3x224x224" / "a=1x16,b=1x16", or a list of such entries."""
    if input_shapes is None or isinstance(input_shapes, dict):
        return input_shapes
    if isinstance(input_shapes, str):
        input_shapes = input_shapes.split(",")
    return parse_input_shapes(list(input_shapes))


def budget_spec(budget=None, macs=None, params=None, peak_memory=None) -> BudgetSpec | None:
    """The one budget given (text such as "0.6x", "50%", "3M", or a BudgetSpec), parsed; None if none."""
    given = [(k, v) for k, v in dict(budget=budget, macs=macs, params=params, peak_memory=peak_memory).items()
             if v is not None]
    if len(given) > 1:
        raise OnnxPruneError("give one budget at a time (--budget, --macs, --params or --peak-memory)")
    if not given:
        return None
    k, v = given[0]
    return v if isinstance(v, BudgetSpec) else parse_budget_spec(BUDGET_KEYWORDS[k], v)


def config_from_keywords(*, ratio: float | None = None, ratio_dw: float | None = None, global_rank: bool = False,
                         scorer: str = "l2", exclude=None, input_shapes=None, heads: bool = False,
                         embed_dim: bool = False, verify: bool = True, latency: bool = True, provider: str = "cpu",
                         threads: int | None = None, calib=None, calib_batch: int | None = None,
                         calib_limit: int | None = None, preprocess=None, compensate: str | None = None,
                         per_position: bool = False, seed: int = 0, budget=None, macs=None, params=None,
                         peak_memory=None, round_to=None, latency_model: str | None = None, cache_dir=None,
                         use_cache: bool = True, latency_cmd: str | None = None, batch: int | None = None,
                         stages: int = 1, knapsack_value: str | None = None, min_macs: float = 0.2) -> PruneConfig:
    """The keyword options of ``onnxprune.prune`` as a validated PruneConfig (a ratio of 0.3 when
    neither a ratio nor a budget is given)."""
    spec = budget_spec(budget, macs, params, peak_memory)
    if ratio is None and spec is None:
        ratio = DEFAULT_RATIO
    return PruneConfig(
        target=TargetConfig(ratio=ratio, ratio_dw=ratio_dw, global_rank=global_rank, budget=spec, round_to=round_to,
                            stages=stages, knapsack_value=knapsack_value, min_macs=min_macs),
        analysis=AnalysisConfig(input_shapes=input_shapes_from(input_shapes), batch=batch,
                                exclude=split_patterns(exclude), heads=heads, embed_dim=embed_dim),
        scoring=ScoringConfig(scorer=scorer, seed=seed, calib=calib, calib_batch=calib_batch,
                              calib_limit=calib_limit, preprocess=preprocess),
        compensation=CompensationConfig(mode=compensate, per_position=per_position),
        runtime=RuntimeConfig(provider=provider, threads=threads, latency_model=latency_model,
                              latency_cmd=latency_cmd, cache_dir=cache_dir, use_cache=use_cache, verify=verify,
                              latency=latency))
