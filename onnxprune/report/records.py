"""Typed results that cross pipeline stages and end up in the JSON report. Each one's ``to_dict``
gives the report's keys and values exactly as the JSON always had them; a leaf module (no
intra-package imports) so planning and reporting can both use it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


class Record:
    """Read access by key (``rec["passed"]``, ``rec.get("note")``, ``"x" in rec``) over ``to_dict``:
    these records were plain dicts, and user code and the tests read them that way."""

    def to_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)


def without_none(d: dict, optional: tuple[str, ...]) -> dict:
    """`d` less the `optional` keys whose value is None (keys the dict report only had when set)."""
    return {k: v for k, v in d.items() if k not in optional or v is not None}


@dataclass
class ModelStats(Record):
    macs: int
    params: int
    file_bytes: int | None = None
    peak_memory_bytes: int | None = None
    latency_ms: float | None = None
    latency_note: str = ""


@dataclass
class GroupReport(Record):
    id: int
    name: str
    channels: int
    kept: int
    frozen: bool
    frozen_channels: int
    reasons: list[str]
    depthwise: bool
    kind: str
    members: list[str]
    kept_indices: list[int] | None = None


@dataclass
class RunSettings(Record):
    """What the run was asked to do (after defaults: the ratio, the compensation mode)."""
    ratio: float | None
    ratio_dw: float | None
    global_rank: bool
    round_to: int | str | None
    scorer: str
    exclude: list[str]
    heads: bool
    embed_dim: bool
    input_shapes: dict
    provider: str
    threads: int | None
    seed: int = 0
    compensate: str = "none"
    per_position: bool = False
    calib: str | None = None


@dataclass
class VerificationResult(Record):
    """The mask-oracle check of the written model (``skipped`` set when it did not run), and the
    check of each compensation applied after it (``compensation[mode]``, reported as
    ``<mode>_compensation``)."""
    passed: bool | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    rel_tol: float | None = None
    output_scale: float | None = None
    inputs: int | None = None
    per_output: dict | None = None
    rounding_floor: float | None = None  # how far float rounding alone moved the outputs (verify/rounding.py)
    tolerance_note: str | None = None
    note: str | None = None
    mismatched_elements: dict | None = None
    compensation: dict[str, dict] = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("compensation", "skipped")}
        d = without_none(d, ("tolerance_note", "note", "mismatched_elements", "rounding_floor"))
        d.update({f"{mode}_compensation": check for mode, check in self.compensation.items()})
        return d


@dataclass
class BudgetIteration(Record):
    """One solve of the closed loop: the target it solved for, the knapsack's predicted cost, the
    measured cost of the written model and the knapsack value kept."""
    target: float
    predicted: float | None
    measured: float
    value: float | None
    remeasured: int | None = None  # medians taken at the floor (noise near the budget)
    uniform_fraction: float | None = None  # peak memory's uniform fallback
    info: dict = field(default_factory=dict)  # how the costs were priced (first solve of a plan)
    stage: int | None = None

    def to_dict(self) -> dict:
        d = dict(target=self.target, predicted=self.predicted, measured=self.measured, value=self.value)
        d.update(without_none(dict(remeasured=self.remeasured, uniform_fraction=self.uniform_fraction),
                              ("remeasured", "uniform_fraction")))
        d.update(self.info)
        if self.stage is not None:
            d["stage"] = self.stage
        return d


@dataclass
class BudgetReport(Record):
    metric: str
    spec: str
    budget: float
    baseline: float
    predicted: float | None  # None where per-group costs are not additive (their sum fell below zero)
    measured: float | None
    met: bool
    iterations: list[BudgetIteration]
    round_to: int | str | None
    stages: int
    knapsack_value: str
    latency_model: str | None
    table_key: str | None = None
    table_cached: bool | None = None
    table_build_s: float | None = None
    table_skipped: list[str] | None = None  # latency candidates not timed (ONNX Runtime crashed on them)
    method: str | None = None  # set when the plan fell back from the knapsack
    latency_model_info: dict | None = None  # the op-level model: key, build time, designs, scale, baseline CI
    macs_fraction: float | None = None  # MACs kept by a latency budget (refused under --min-macs)
    widths: str | None = None  # which widths the knapsack could choose, where restricted by default

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["iterations"] = [it.to_dict() for it in self.iterations]
        return without_none(d, ("table_key", "table_cached", "table_build_s", "table_skipped", "method",
                                "latency_model_info", "macs_fraction", "widths"))


@dataclass
class RunInfo(Record):
    """What a deployment pipeline needs to reproduce a run: tool and library versions, when it ran
    (UTC, ISO 8601) and the command line (the process's argv for the Python API)."""
    onnxprune: str
    versions: dict[str, str | None]
    timestamp_utc: str
    command: list[str]
