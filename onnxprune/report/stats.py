"""What the report counts and measures of a model: MACs, params, peak memory, latency, and the
per-group rows. Used by the prune pipeline, `onnxprune analyze` and the MACs/params budgets."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.graph import build_view, random_feeds
from onnxprune.analysis.groups import Analysis
from onnxprune.model.shapes import fit_to_declared
from onnxprune.model.external import has_external, model_file_bytes
from onnxprune.profiling.cost import peak_memory, total_macs, total_params
from onnxprune.profiling.timing import measure_latencies
from onnxprune.report.records import GroupReport, ModelStats


def model_stats(model: onnx.ModelProto, input_shapes, file_bytes: bool = False) -> ModelStats:
    """MACs, params, peak memory (and with ``file_bytes`` the serialized size: a full pass over a large
    model's weights, so only where it is reported)."""
    v = build_view(model, fit_to_declared(model, input_shapes))
    return ModelStats(macs=total_macs(v), params=total_params(v), file_bytes=model_file_bytes(model) if file_bytes else None,
                      peak_memory_bytes=int(peak_memory(v)[0]))


def measure(models: list[onnx.ModelProto], input_shapes, *, provider="cpu", threads=None,
            time_budget_s: float = 6.0) -> list[float]:
    """Median latency (ms) of each model, measured side by side in one process."""
    feeds = random_feeds(models[0], seed=0, input_shapes=input_shapes)
    # a model with external data is timed from its files (ORT maps them), not from one protobuf
    stats = measure_latencies([m if has_external(m) else m.SerializeToString() for m in models], feeds, provider=provider,
                              threads=threads, time_budget_s=time_budget_s)
    return [s.median_ms for s in stats]


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
