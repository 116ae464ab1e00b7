"""How far float rounding alone moves a model's outputs: the noise floor of the mask oracle.

Removing channels changes how ONNX Runtime blocks every accumulation (another kernel, another
summation order), so the pruned model and the masked original round differently. In a deep or
ill-conditioned net those differences grow layer by layer and can exceed a fixed 1e-4 x output
scale although the rewrite is exact. ORT's CPU provider has no float64 Conv, ConvTranspose or
AveragePool kernel, so running both in double is no way out for CNNs; the floor is measured instead.

Backward error analysis (Higham & Mary 2019, probabilistic form): a float dot product of length n
computed with unit roundoff u is the exact dot product of inputs perturbed relatively by about
sqrt(n) u each. The probe runs the masked original with every accumulating node's input multiplied
by (1 + sqrt(n) u r), r ~ N(0, 1) per element; how far its outputs move is a sample of how far
rounding alone moves them in this model, through its own depth and conditioning. A wrong channel
moves outputs by that channel's contribution, orders of magnitude more.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxprune.analysis.groups import Analysis
from onnxprune.analysis.rules import rule_for

# The pruned model and the masked original each carry their own rounding (sqrt 2 over one), and
# three random inputs sample the maximum of a noisy quantity: 4 x the probed shift covers both
# with margin (tests/test_oracle_tolerance.py's deep fixture: exact prunes at ratios 0.1 to 0.9
# reach 0.12x to 0.5x the floor, while a planted wrong channel reaches 276x the tolerance).
FLOOR_FACTOR = 4.0
# Beyond this the outputs are mostly rounding noise and a check could no longer tell a wrong channel:
# the tolerance stops growing (a failure then names the floor).
MAX_REL_TOL = 1e-2


@dataclass(frozen=True)
class Accumulation:
    """One node that sums products: ``output`` (its first output) names it in copies of the model
    (the oracle renames inputs, never outputs); the input in ``slot`` is the one perturbed."""
    output: str
    slot: int
    length: int
    unit_roundoff: float


def accumulations(analysis: Analysis) -> list[Accumulation]:
    """The nodes whose rule counts MACs, with the number of products summed per output element (the
    rule's MACs / output elements). The input perturbed is the first channel axis the rule says is
    summed (``mixes``), else input 0 (a node left opaque still rounds)."""
    view = analysis.view
    out = []
    for k, node in enumerate(view.nodes):
        rule = rule_for(node)
        if rule is None or not node.output or not node.output[0] or not node.input:
            continue
        res = analysis.node_results.get(k)
        t = res.mixes[0][0] if res is not None and res.mixes else node.input[0]
        dtype = view.np_dtype(t)
        if t not in node.input or dtype not in (np.float32, np.float64):
            continue  # integer ops round nothing; half types have their own tolerance (oracle.REL_TOL)
        length = _accumulation_length(rule, node, view)
        if length > 1:
            out.append(Accumulation(node.output[0], list(node.input).index(t), length,
                                    float(np.finfo(dtype).eps) / 2))
    return out


def _accumulation_length(rule, node: onnx.NodeProto, view) -> int:
    """MACs per output element; 0 where the rule cannot count them (unknown shapes)."""
    try:
        macs = rule.macs(node, view)
        y = view.shape(node.output[0])
    except (TypeError, IndexError, ValueError):
        return 0
    if not macs or not y or not all(y):
        return 0
    return int(round(macs / float(np.prod(y, dtype=np.float64))))


def with_rounding_noise(model: onnx.ModelProto, accs: list[Accumulation], seed: int = 0) -> onnx.ModelProto:
    """A copy of `model` whose accumulating inputs are multiplied by 1 + sqrt(n) u N(0, 1) noise."""
    by_output = {a.output: a for a in accs}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = []
    for k, node in enumerate(m.graph.node):
        a = by_output.get(node.output[0]) if node.output else None
        if a is not None and a.slot < len(node.input) and node.input[a.slot]:
            x = node.input[a.slot]
            noise, noisy = f"__rounding_{k}_noise", f"__rounding_{k}_x"
            sigma = float(np.sqrt(a.length) * a.unit_roundoff)
            nodes.append(helper.make_node("RandomNormalLike", [x], [noise], mean=1.0, scale=sigma,
                                          seed=float(seed + k), name=f"__rounding_{k}_rand"))
            nodes.append(helper.make_node("Mul", [x, noise], [noisy], name=f"__rounding_{k}_mul"))
            node.input[a.slot] = noisy
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def rounding_floor(refs: list[list[np.ndarray]], probed: list[list[np.ndarray]]) -> float:
    """max |probed - reference| over the float outputs' finite elements."""
    worst = 0.0
    for r, p in zip(refs, probed):
        for a, b in zip(r, p):
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype.kind != "f" or a.shape != b.shape or not a.size:
                continue
            both = np.isfinite(a) & np.isfinite(b)
            if both.any():
                worst = max(worst, float(np.max(np.abs(a[both].astype(np.float64) - b[both]))))
    return worst


def tolerance(rel_tol: float, scale: float, floor: float) -> float:
    """rel_tol x scale, raised to FLOOR_FACTOR x the rounding floor, at most MAX_REL_TOL x scale."""
    return max(rel_tol * scale, min(FLOOR_FACTOR * floor, MAX_REL_TOL * scale))
