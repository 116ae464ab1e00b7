"""Position-aware latency tables (SP-LAMP paper, Sec. 3.2 and Eq. 6-7).

A group's latency contribution at width w is measured on the WHOLE model with only that group cut
to its top w channels, timed side by side with the unpruned model in one process: residual
connections and the layer's position are in the number, unlike HALP's per-layer tables. Widths are
sampled (full, 7/8 ... 1/8, one channel) and linearly interpolated in between. Tables are cached
on disk, keyed by the model's structure (structure_digest), runtime settings and input shapes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from onnxprune.analysis.groups import Analysis, ChannelGroup
from onnxprune.errors import OnnxPruneError
from onnxprune.analysis.graph import random_feeds
from onnxprune.model.external import has_external, read_tensor
from onnxprune.model.runtime import NativeCrash, run_isolated
from onnxprune.planning.ratio import keep_every_member
from onnxprune.profiling.latency_cmd import measure_with_command
from onnxprune.profiling.timing import measure_latencies
from onnxprune.transform.rewrite import rewrite

TABLE_VERSION = 4  # 4: keyed by the model's structure, not its weights' bytes; 3: candidates keep a channel in every member (as a final prune does)
SAMPLE_FRACTIONS = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ONNXPRUNE_CACHE", Path.home() / ".cache" / "onnxprune")) / "latency"


@dataclass
class LatencyTable:
    key: str
    provider: str
    threads: int | None
    input_shapes: dict
    baseline_ms: float
    # group id -> sorted list of [width, delta_ms] (delta = latency at that width - baseline)
    samples: dict[int, list[list[float]]] = field(default_factory=dict)
    group_sizes: dict[int, int] = field(default_factory=dict)
    build_s: float = 0.0
    # candidates that could not be timed: {"group", "width", "reason"} (ONNX Runtime crashed on them)
    skipped: list[dict] = field(default_factory=list)
    from_cache: bool = False

    def contribution(self, gid: int) -> np.ndarray:
        """Latency delta (ms) of the group at every width 1..size, interpolated from the samples."""
        size = self.group_sizes[gid]
        pts = np.array(sorted(self.samples.get(gid, [[size, 0.0]])), dtype=np.float64)
        w = np.arange(1, size + 1)
        return np.interp(w, pts[:, 0], pts[:, 1])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        d = asdict(self)
        d.pop("from_cache")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "LatencyTable":
        d = json.loads(path.read_text())
        d["samples"] = {int(k): v for k, v in d["samples"].items()}
        d["group_sizes"] = {int(k): v for k, v in d["group_sizes"].items()}
        t = cls(**d, from_cache=True)
        vals = [t.baseline_ms] + [x for pts in t.samples.values() for p in pts for x in p]
        if not np.all(np.isfinite(np.asarray(vals, dtype=np.float64))) or t.baseline_ms <= 0:
            raise ValueError("non-finite or non-positive latency in the cached table")
        return t


def sample_widths(size: int, n_frozen: int = 0) -> list[int]:
    lo = max(1, n_frozen)
    ws = {size, lo} | {max(lo, int(round(f * size))) for f in SAMPLE_FRACTIONS}
    return sorted(w for w in ws if lo <= w <= size)


# tensors up to this many elements are hashed with their values: float ones (a Resize's scales, an
# epsilon held as a tensor), integer ones (shapes, axes, indices); larger ones, the weights (int8
# quantized ones too), by name, type and shape only
SMALL_TENSOR, SMALL_INT_TENSOR = 64, 4096


def structure_digest(h, model: onnx.ModelProto) -> None:
    """Feed ``h`` what the model's latency depends on: its nodes, inputs, outputs, opsets, and its
    tensors (initializers, Constant values) by name, type and shape, with their values where they
    are integers (shapes, axes, indices) or small. Not the weights' bytes nor where external data
    lives: a model spilled to a random scratch file at load, moved, or retrained with the same
    architecture keeps its cached latency model."""
    g = model.graph
    for part in [*model.opset_import, *g.input, *g.output]:
        h.update(part.SerializeToString(deterministic=True))
    for n in g.node:
        tensors = [a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
        h.update(_with_tensors_as_shapes(n).SerializeToString(deterministic=True) if tensors else
                 n.SerializeToString(deterministic=True))
        for t in tensors:
            _digest_tensor(h, t)
    for t in sorted(g.initializer, key=lambda t: t.name):  # loading external data may reorder them
        _digest_tensor(h, t)


def _digest_tensor(h, t: TensorProto) -> None:
    """Name, type and shape; the values too where the tensor is small (read from external data if
    it lives there)."""
    h.update(f"{t.name}|{t.data_type}|{list(t.dims)}".encode())
    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    if n <= (SMALL_TENSOR if t.data_type in FLOAT_TYPES else SMALL_INT_TENSOR):
        a = read_tensor(t)
        # strings come back as objects, whose bytes would be pointers
        h.update(repr(a.tolist()).encode() if a.dtype == object else np.ascontiguousarray(a).tobytes())


def _with_tensors_as_shapes(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    for a in out.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            a.t.CopyFrom(TensorProto(name=a.t.name, data_type=a.t.data_type, dims=a.t.dims))
    return out


FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def table_key(analysis: Analysis, groups: list[ChannelGroup], provider: str, threads, extra: str = "") -> str:
    h = hashlib.sha256()
    structure_digest(h, analysis.view.model)
    h.update(json.dumps(dict(v=TABLE_VERSION, provider=provider, threads=threads,
                             shapes=analysis.view.input_shapes, groups=[(g.id, g.size) for g in groups],
                             extra=extra), sort_keys=True).encode())
    return h.hexdigest()[:32]


def top_width_kept(group: ChannelGroup, order: np.ndarray, width: int) -> np.ndarray:
    """Canonical channels kept at `width`: frozen channels first, then by descending score order."""
    return np.sort(order[:width])


def keep_order(group: ChannelGroup, scores: np.ndarray | None) -> np.ndarray:
    """Channels in the order they are kept: frozen ones first, then highest score first."""
    s = np.zeros(group.size) if scores is None else np.asarray(scores, dtype=np.float64)
    idx = np.arange(group.size)
    return np.lexsort((idx, -s, ~group.frozen))


def candidate_kept(group: ChannelGroup, order: np.ndarray, width: int) -> np.ndarray:
    """Kept channels of the latency candidate at `width`: the top `width` in `order`, plus what a
    final prune adds (planning.ratio.keep_every_member: one channel in every member, e.g. every
    Concat segment), so no candidate has a 0-channel tensor or a group=0 depthwise conv."""
    rank = np.empty(group.size)
    rank[order] = np.arange(group.size, 0, -1)  # earlier in `order` = better
    kept = {group.id: top_width_kept(group, order, width)}
    return keep_every_member([group], kept, {group.id: rank})[group.id]


def group_candidates(group: ChannelGroup) -> list[np.ndarray]:
    """Kept channels of every candidate of a group, narrower than the full group, distinct widths."""
    order = keep_order(group, None)
    out: dict[int, np.ndarray] = {}
    for w in sample_widths(group.size, int(group.frozen.sum())):
        k = candidate_kept(group, order, w)
        if len(k) < group.size:
            out.setdefault(len(k), k)
    return [out[w] for w in sorted(out)]


def build_latency_table(analysis: Analysis, groups: list[ChannelGroup], *, provider: str = "cpu",
                        threads: int | None = None, cache_dir: Path | None = None, use_cache: bool = True,
                        time_per_group_s: float = 6.0, progress=None, latency_cmd: str | None = None) -> LatencyTable:
    """Measure (or load) every group's latency contribution at sampled widths."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if use_cache and cache_dir.exists() and not cache_dir.is_dir():
        raise OnnxPruneError(f"latency cache folder is a file: {cache_dir}")
    key = table_key(analysis, groups, provider, threads, extra=latency_cmd or "")
    path = cache_dir / f"{key}.json"
    if use_cache and path.exists():
        try:
            table = LatencyTable.load(path)
            if set(table.group_sizes) == {g.id for g in groups}:
                return table
        except Exception:
            pass  # a corrupt or incomplete cache entry is rebuilt
    t0 = time.perf_counter()
    timing = dict(provider=provider, threads=threads, time_budget_s=time_per_group_s, latency_cmd=latency_cmd,
                  min_time_s=min(1.0, time_per_group_s))
    base_model = analysis.view.model
    feeds = random_feeds(analysis.view, seed=0)
    table = LatencyTable(key, provider, threads, analysis.view.input_shapes, 0.0,
                         group_sizes={g.id: g.size for g in groups})
    base_runs = []
    for i, g in enumerate(groups):
        if progress is not None:
            progress.update(i, len(groups))
        base_ms, points = _time_group(analysis, g, base_model, feeds, timing, table.skipped)
        base_runs.append(base_ms)
        table.samples[g.id] = [[float(g.size), 0.0]] + points
    table.baseline_ms = float(np.median(base_runs)) if base_runs else measure_medians([base_model], feeds, **timing)[0]
    table.build_s = time.perf_counter() - t0
    if use_cache:
        table.save(path)
    return table


def _time_group(analysis: Analysis, g: ChannelGroup, base_model, feeds, timing: dict,
                skipped: list[dict]) -> tuple[float, list[list[float]]]:
    """(baseline ms, [[width, delta ms], ...]) of one group's candidates, timed side by side with
    the unpruned model. If ONNX Runtime crashes on the batch, each candidate is timed alone with the
    baseline, and the ones it crashes on are left out (recorded in `skipped` with the reason)."""
    kept = group_candidates(g)
    models = [rewrite(analysis, {g.id: k}) for k in kept]
    try:
        lat = measure_medians([base_model] + models, feeds, **timing)
        return lat[0], [[float(len(k)), float(x - lat[0])] for k, x in zip(kept, lat[1:])]
    except NativeCrash:
        pass
    base, points = [], []
    for k, m in zip(kept, models):
        try:
            lat = measure_medians([base_model, m], feeds, **timing)
        except NativeCrash as e:
            skipped.append(dict(group=g.id, width=len(k), reason=f"ONNX Runtime crashed on it: {e.reason}"))
            continue
        base.append(lat[0])
        points.append([float(len(k)), float(lat[1] - lat[0])])
    if not base:  # the baseline alone tells whether the unpruned model is the one that crashes
        base = measure_medians([base_model], feeds, **timing)
    return float(np.median(base)), points


def measure_medians(models, feeds, *, provider: str, threads: int | None, time_budget_s: float,
                    latency_cmd: str | None = None, min_time_s: float | None = None,
                    rel_halfwidth: float | None = None) -> list[float]:
    """Median latency (ms) of each model: side by side in one ONNX Runtime process (a child
    process: a native crash of ONNX Runtime on a model raises NativeCrash instead of ending the
    tool), or one `--latency-cmd` run per model on the user's device."""
    if latency_cmd:
        return [measure_with_command(latency_cmd, m) for m in models]
    timing = dict(min_time_s=min_time_s) if min_time_s is not None else {}
    if rel_halfwidth is not None:
        timing["rel_halfwidth"] = rel_halfwidth
    try:
        # external data (absolute paths, model/external.py): the proto itself, ORT loads it from a scratch folder
        stats = run_isolated(measure_latencies, [m if has_external(m) else m.SerializeToString() for m in models], feeds,
                             provider=provider,
                             threads=threads, warmup=3, time_budget_s=time_budget_s, **timing)
    except NativeCrash as e:
        raise e.within(f"ONNX Runtime crashed timing {'the model' if len(models) == 1 else f'{len(models)} models'}"
                       ) from None
    return [s.median_ms for s in stats]
