"""The one place ONNX Runtime sessions are made.

Every stage that runs a model (shape evaluation, calibration, compensation, the oracle, timing)
asks :func:`ort_session` with a :class:`SessionPurpose`, so how a session is set up for a purpose
(optimizations, spinning, threads, memory arena) is decided once, here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import onnx
import onnxruntime as ort

from onnxprune.errors import OnnxPruneError, first_line


@dataclass(frozen=True)
class SessionPurpose:
    """How a session is set up.

    ``optimize``: ORT graph optimizations (off where a model is run op by op: QDQ models, whose fused
    integer kernels round differently, and shape evaluation, which must not fold what it measures).
    ``timing``: fair timing (no idle thread spinning, fixed threads, sequential execution; see
    profiling/timing.py). ``arena``: the CPU memory arena (off for calibration, which streams large
    batches: the arena keeps its high-water mark). ``log_severity``: 3 errors, 4 fatal only.
    """
    optimize: bool = True
    timing: bool = False
    threads: int | None = None
    arena: bool = True
    log_severity: int = 3


def session_options(purpose: SessionPurpose = SessionPurpose()) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = purpose.log_severity
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if purpose.optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if not purpose.arena:
        so.enable_cpu_mem_arena = False
    if purpose.timing:
        # idle intra-op threads that spin steal the cores of the other session timed beside this one
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if purpose.threads is not None or purpose.timing:
        so.intra_op_num_threads = int(purpose.threads) if purpose.threads else (os.cpu_count() or 1)
    return so


def ort_session(model: onnx.ModelProto | bytes | str | os.PathLike, purpose: SessionPurpose = SessionPurpose(), *,
                providers: list[str] | None = None, what: str | None = None) -> ort.InferenceSession:
    """An InferenceSession for ``model`` (a ModelProto, serialized bytes or a path).

    ``what`` names the model in the error raised when ORT cannot load it (an OnnxPruneError, so the
    CLI prints one line); without it ORT's own exception propagates (callers that word it themselves).
    """
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    providers = providers or ["CPUExecutionProvider"]
    if what is None:
        return ort.InferenceSession(model, session_options(purpose), providers=providers)
    try:
        return ort.InferenceSession(model, session_options(purpose), providers=providers)
    except Exception as e:  # ORT's own exception types
        raise OnnxPruneError(f"ONNX Runtime cannot run the {what}: {first_line(e)}") from None
