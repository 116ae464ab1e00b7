"""Position-aware latency tables (SP-LAMP paper, Sec. 3.2 and Eq. 6-7).

A group's latency contribution at width w is measured on the WHOLE model with only that group cut
to its top w channels, timed side by side with the unpruned model in one process: residual
connections and the layer's position are in the number, unlike HALP's per-layer tables. Widths are
sampled (full, 7/8 ... 1/8, one channel) and linearly interpolated in between. Tables are cached
on disk, keyed by the model's content, runtime settings and input shapes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from onnxprune.analysis.groups import Analysis, ChannelGroup
from onnxprune.errors import OnnxPruneError
from onnxprune.analysis.graph import random_feeds
from onnxprune.profiling.latency_cmd import measure_with_command
from onnxprune.profiling.timing import measure_latencies
from onnxprune.transform.rewrite import rewrite

TABLE_VERSION = 2
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


def table_key(analysis: Analysis, groups: list[ChannelGroup], provider: str, threads, extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(analysis.view.model.SerializeToString(deterministic=True))
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
    base_model = analysis.view.model
    feeds = random_feeds(analysis.view, seed=0)
    table = LatencyTable(key, provider, threads, analysis.view.input_shapes, 0.0,
                         group_sizes={g.id: g.size for g in groups})
    base_runs = []
    for i, g in enumerate(groups):
        if progress is not None:
            progress.update(i, len(groups))
        order = keep_order(g, None)
        widths = [w for w in sample_widths(g.size, int(g.frozen.sum())) if w < g.size]
        models = [base_model] + [rewrite(analysis, {g.id: top_width_kept(g, order, w)}) for w in widths]
        lat = measure_medians(models, feeds, provider=provider, threads=threads, time_budget_s=time_per_group_s,
                              latency_cmd=latency_cmd, min_time_s=min(1.0, time_per_group_s))
        base_runs.append(lat[0])
        table.samples[g.id] = [[float(g.size), 0.0]] + [[float(w), float(l - lat[0])] for w, l in zip(widths, lat[1:])]
    table.baseline_ms = float(np.median(base_runs)) if base_runs else measure_medians(
        [base_model], feeds, provider=provider, threads=threads, time_budget_s=time_per_group_s,
        latency_cmd=latency_cmd, min_time_s=min(1.0, time_per_group_s))[0]
    table.build_s = time.perf_counter() - t0
    if use_cache:
        table.save(path)
    return table


def measure_medians(models, feeds, *, provider: str, threads: int | None, time_budget_s: float,
                    latency_cmd: str | None = None, min_time_s: float | None = None) -> list[float]:
    """Median latency (ms) of each model: side by side in one ONNX Runtime process, or one
    `--latency-cmd` run per model on the user's device."""
    if latency_cmd:
        return [measure_with_command(latency_cmd, m) for m in models]
    timing = dict(min_time_s=min_time_s) if min_time_s is not None else {}
    stats = measure_latencies([m.SerializeToString() for m in models], feeds, provider=provider, threads=threads,
                              warmup=3, time_budget_s=time_budget_s, **timing)
    return [s.median_ms for s in stats]
