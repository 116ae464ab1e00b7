"""onnxprune: structured pruning of ONNX models, verified against a mask oracle."""
from onnxprune.analysis.groups import Analysis, ChannelGroup, Member, analyze
from onnxprune.api import PruneResult, analyze_model, prune, save
from onnxprune.config import PruneConfig
from onnxprune.errors import OnnxPruneError, VerificationError

__version__ = "0.1.0"
__all__ = ["Analysis", "ChannelGroup", "Member", "OnnxPruneError", "PruneConfig", "PruneResult", "VerificationError", "analyze",
           "analyze_model", "prune", "save", "__version__"]
