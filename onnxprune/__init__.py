"""onnxprune: structured pruning of ONNX models, verified against a mask oracle.

The public names are imported on first use (PEP 562): ``import onnxprune`` and the command line's
argument parsing must not pay for onnx, onnxruntime and numpy (issue #14 item 14: ``--help`` in
well under a second)."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Analysis": "onnxprune.analysis.groups", "ChannelGroup": "onnxprune.analysis.groups",
    "Member": "onnxprune.analysis.groups", "analyze": "onnxprune.analysis.groups",
    "PruneResult": "onnxprune.api", "analyze_model": "onnxprune.api", "prune": "onnxprune.api",
    "save": "onnxprune.api", "PruneConfig": "onnxprune.config",
    "OnnxPruneError": "onnxprune.errors", "VerificationError": "onnxprune.errors",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
