"""Per-node times of one model as the runtime executes it (after its fusions), from ORT profiling.

One profiled session measures every executed node at once, so a handful of runs of a pruned
candidate gives the time of each fused kernel at that candidate's widths. Nodes are identified
across candidates by name; ORT names the nodes it inserts itself (NCHWc ``ReorderInput`` /
``ReorderOutput``, ``*_token_<n>``) with counters that shift when a layout decision changes, so
those are keyed by the last stably named node executed before them instead.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.model.external import has_external, on_disk
from onnxprune.model.runtime import SessionPurpose, ort_session, session_options
from onnxprune.profiling.median_ci import MedianCI, measure_until_stable, summarize
from onnxprune.profiling.timing import LatencyError, fit_feed, resolve_providers, timed_run

GENERATED_NAME = re.compile(r"_token_\d+|^(ReorderInput|ReorderOutput)(_|$)|^$")
KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class NodeTiming:
    """One executed node: stable key, op type, all input and output dims (flattened), median ms."""
    key: str
    op: str
    dims: tuple[int, ...]
    ms: float


@dataclass
class ProfiledRun:
    """A candidate's per-node medians and its whole-run median (``model_run`` of the same profiled
    runs, so kernels and the overhead between them are measured at the same moment)."""
    nodes: dict[str, NodeTiming]
    wall: MedianCI

    @property
    def node_sum_ms(self) -> float:
        return float(sum(n.ms for n in self.nodes.values()))


def flat_dims(shapes) -> tuple[int, ...]:
    """``[{'float': [1, 16, 32, 32]}, ...]`` (ORT's profile shape format) as one flat tuple."""
    out: list[int] = []
    for entry in shapes or []:
        for dims in entry.values():
            out.extend(int(d) for d in dims)
    return tuple(out)


def stable_keys(names: list[str], ops: list[str]) -> list[str]:
    """Keys for one run's node events in execution order (see module docstring)."""
    keys, anchor, since = [], "<start>", 0
    for name, op in zip(names, ops):
        if GENERATED_NAME.search(name):
            since += 1
            keys.append(f"{op}@{anchor}#{since}")
        else:
            anchor, since = name, 0
            keys.append(name)
    return keys


def node_events_by_run(events: list[dict]) -> list[list[dict]]:
    """Node kernel events grouped per ``session.run`` (by the ``model_run`` intervals), in order."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith(KERNEL_SUFFIX)),
                   key=lambda e: e["ts"])
    starts = np.array([r[0] for r in runs], dtype=np.float64)
    out: list[list[dict]] = [[] for _ in runs]
    for e in nodes:
        k = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if 0 <= k < len(runs) and e["ts"] <= runs[k][1]:
            out[k].append(e)
    return out


def parse_profile(events: list[dict], skip_runs: int = 0) -> ProfiledRun:
    """Per-node and whole-run median times (ms) over the profiled runs after the first ``skip_runs``
    (warm-up)."""
    per_key: dict[str, list[float]] = {}
    meta: dict[str, tuple[str, tuple[int, ...]]] = {}
    for run in node_events_by_run(events)[skip_runs:]:
        names = [e["name"][: -len(KERNEL_SUFFIX)] for e in run]
        ops = [e.get("args", {}).get("op_name", "") for e in run]
        for key, op, e in zip(stable_keys(names, ops), ops, run):
            per_key.setdefault(key, []).append(e["dur"] / 1e3)
            if key not in meta:
                args = e.get("args", {})
                meta[key] = (op, flat_dims(args.get("input_type_shape")) + flat_dims(args.get("output_type_shape")))
    nodes = {k: NodeTiming(k, meta[k][0], meta[k][1], float(np.median(v))) for k, v in per_key.items()}
    runs = sorted((e["ts"], e["dur"] / 1e3) for e in events if e.get("name") == "model_run")[skip_runs:]
    return ProfiledRun(nodes, summarize([d for _, d in runs] or [float("nan")]))


def _checked_session(model_bytes: bytes, so: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        sess = ort.InferenceSession(model_bytes, so, providers=providers)
    except Exception as e:  # ORT's own exception types
        raise LatencyError(f"ONNX Runtime cannot load the candidate: {str(e).splitlines()[0][:300]}") from None
    if sess.get_providers()[0] != providers[0]:
        raise LatencyError(f"onnxruntime did not start {providers[0]} for profiling")
    return sess


def profile_nodes(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray], *, provider: str = "cpu",
                  threads: int | None = None, runs: int = 10, warmup: int = 2, time_cap_s: float = 2.0) -> ProfiledRun:
    """Run ``model`` in a profiled timing session: per-node and whole-run medians. Runs until
    ``runs`` are timed or ``time_cap_s`` is spent (at least 3 timed runs)."""
    if isinstance(model, onnx.ModelProto) and has_external(model):
        with on_disk(model) as path:  # absolute external locations: ORT loads it from a scratch folder
            return profile_nodes(path, feeds, provider=provider, threads=threads, runs=runs, warmup=warmup,
                                 time_cap_s=time_cap_s)
    model_bytes = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    so = session_options(SessionPurpose(timing=True, threads=threads))
    with tempfile.TemporaryDirectory(prefix="onnxprune-prof-") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        sess = _checked_session(model_bytes, so, resolve_providers(provider))
        feed = {i.name: fit_feed(feeds[i.name], i.shape) for i in sess.get_inputs()}  # a resized KV cache
        t0, done = time.perf_counter(), 0
        while done < warmup + runs and (done < warmup + 3 or time.perf_counter() - t0 < time_cap_s):
            sess.run(None, feed)
            done += 1
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
    return parse_profile(events, skip_runs=warmup)


def wall_clock(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray], *, provider: str = "cpu",
               threads: int | None = None, warmup: int = 2, rel_halfwidth: float = 0.02,
               time_cap_s: float = 2.0) -> MedianCI:
    """Plain (unprofiled) timing session: median ``session.run`` time with its confidence interval."""
    sess = ort_session(model, SessionPurpose(timing=True, threads=threads), providers=resolve_providers(provider),
                       what="pruned candidate")
    feed = {i.name: fit_feed(feeds[i.name], i.shape) for i in sess.get_inputs()}
    for _ in range(warmup):
        sess.run(None, feed)

    def once() -> float:
        t = time.perf_counter()
        sess.run(None, feed)
        return (time.perf_counter() - t) * 1e3

    return measure_until_stable(once, rel_halfwidth=rel_halfwidth, time_cap_s=time_cap_s)


def side_by_side(models: list[onnx.ModelProto | bytes], feeds: dict[str, np.ndarray], *, provider: str = "cpu",
                 threads: int | None = None, rel_halfwidth: float = 0.02, time_cap_s: float = 4.0,
                 warmup: int = 3) -> list[MedianCI]:
    """Time models in rounds (each runs once per round, order rotated and re-warmed, as
    profiling/timing.py does, so drift hits all alike) until every median's 95% CI is within ``rel_halfwidth`` or the cap."""
    purpose = SessionPurpose(timing=True, threads=threads)
    sessions = [ort_session(m, purpose, providers=resolve_providers(provider), what="model") for m in models]
    run_feeds = [{i.name: fit_feed(feeds[i.name], i.shape) for i in s.get_inputs()} for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, run_feeds):
            s.run(None, f)
    samples: list[list[float]] = [[] for _ in sessions]
    t0, r = time.perf_counter(), 0
    while True:
        for j in range(len(sessions)):
            k = (r + j) % len(sessions)
            samples[k].append(timed_run(sessions[k], run_feeds[k], rewarm=len(sessions) > 1) * 1e3)
        r += 1
        if r >= 7 and r % 4 == 0:
            stats = [summarize(s, rel_halfwidth) for s in samples]
            if all(s.converged for s in stats) or time.perf_counter() - t0 > time_cap_s:
                return stats

