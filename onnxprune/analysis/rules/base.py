"""The per-op rule registry.

A rule says, for one node, how channel spaces on its inputs, outputs and weights relate:
``relate(node, ctx) -> RuleResult`` (or raises :class:`Opaque`), and how to update the node's
attributes / shape constants once the kept channels are known: ``rewrite(node, rctx)``.

A *space* is ``(tensor_name, axis)``. A relation ties two spaces element-wise: identity (same size)
or explicit index pairs (offset for Concat, slice for Split, block for Flatten/Reshape, ...).
Pass-through rules (elementwise, Transpose, Concat, ...) relate only axes that are *live* (already
a channel space on some side): channel spaces start at weights (Conv, Gemm, MatMul, norms) and
spread from there, so spatial and batch axes never become spaces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from onnxprune.analysis.graph import GraphView, attr

Space = tuple[str, int]


class Opaque(Exception):
    """The rule cannot reason about this node: every channel space it touches is frozen."""


@dataclass
class Relation:
    a: Space
    b: Space
    pairs: tuple[np.ndarray, np.ndarray] | None = None  # None: identity, sizes equal


@dataclass
class RuleResult:
    relations: list[Relation] = field(default_factory=list)
    claims: list[Space] = field(default_factory=list)      # handled spaces with no relation
    mixes: list[Space] = field(default_factory=list)       # input spaces whose channels are summed here
    normalizes: list[Space] = field(default_factory=list)  # input spaces reduced/normalized over here
    refused: dict[Space, str] = field(default_factory=dict)  # spaces left unhandled (frozen), and why
    # graph input/output spaces this node knows to carry recurrent state (a KV cache: the caller feeds
    # back what the model returns), which may shrink with their channel group: see groups.state_spaces
    state_io: list[Space] = field(default_factory=list)

    def relate(self, a: Space, b: Space, pairs=None) -> "RuleResult":
        self.relations.append(Relation(a, b, pairs))
        return self

    def touched(self) -> set[Space]:
        s = set(self.claims) | set(self.mixes) | set(self.normalizes)
        for r in self.relations:
            s.add(r.a)
            s.add(r.b)
        return s


class RuleContext:
    """What a rule may ask while relating: shapes, constants, and which spaces are live so far."""

    def __init__(self, view: GraphView, live: dict[str, set[int]], options=None):
        self.view = view
        self.live_axes_map = live
        self.options = options or {}

    def shape(self, t: str) -> tuple[int, ...]:
        s = self.view.shape(t)
        if s is None:
            raise Opaque(f"shape of '{t}' unknown")
        return s

    def rank(self, t: str) -> int:
        return len(self.shape(t))

    def const(self, t: str) -> np.ndarray | None:
        return self.view.const(t) if t else None

    def is_const(self, t: str) -> bool:
        return bool(t) and t in self.view.consts

    def live(self, t: str, axis: int) -> bool:
        return bool(t) and axis in self.live_axes_map.get(t, ())

    def live_axes(self, t: str) -> list[int]:
        return sorted(self.live_axes_map.get(t, ())) if t else []

    def opset(self) -> int:
        return self.view.opset


class RewriteContext:
    """What a rule may ask and change while rewriting one node of the graphsurgeon graph."""

    def __init__(self, view: GraphView, kept: dict[Space, np.ndarray], gs_node, set_input_const: Callable):
        self.view = view
        self._kept = kept
        self.node = gs_node
        self._set_input_const = set_input_const

    def kept(self, t: str, axis: int) -> np.ndarray | None:
        """Kept positions of a space, or None when that space is unchanged."""
        return self._kept.get((t, axis))

    def size(self, t: str, axis: int) -> int:
        k = self.kept(t, axis)
        return len(k) if k is not None else self.view.shape(t)[axis]

    def changed(self, t: str) -> list[int]:
        return [a for (n, a) in self._kept if n == t]

    def set_input_const(self, slot: int, value: np.ndarray, node=None) -> None:
        """Replace constant input ``slot`` of this node (or of ``node``, e.g. the Concat that builds a
        Reshape shape) with a fresh constant: the old one may be shared with other nodes."""
        self._set_input_const(node if node is not None else self.node, slot, value)


@dataclass(frozen=True)
class WeightRole:
    """One weight input of a node: ``out_axis`` holds the node's output channels (a producer slice),
    ``in_axis`` the input channels it reads (a consumer slice); either may be None."""
    input: int
    out_axis: int | None
    in_axis: int | None


@dataclass(frozen=True)
class ChannelAffine:
    """The per-channel map ``y = scale * x + shift`` a node computes at inference (BatchNormalization
    with its running statistics): scoring folds it into the producer's weights. ``learned_scale`` /
    ``learned_shift``: the input slots of its trained gamma (OCSPruner's saliency scores it) and beta;
    every constant input is folded, so running statistics are never scored as weights."""
    scale: np.ndarray
    shift: np.ndarray
    learned_scale: int
    learned_shift: int


@dataclass(frozen=True)
class CompensationTarget:
    """How a removed input channel's constant folds into a weighted consumer (see transform/compensate):
    ``y = scale * sum_c W[out, c, taps...] x_c (+ bias)``.

    weight_input: input slot of the weight; out_axis / in_axis: its output- and input-channel axes
    (the other axes are kernel taps, summed); groups: channel groups (grouped convs: removed input c
    only reaches the outputs of its group); y_axis: the output's channel axis; bias_slot: input slot
    of an additive bias (None: the bias goes into an Add after the output); bias_scale_attr: the
    attribute that multiplies that bias (Gemm beta), set to 1 when the bias is created while it is 0;
    approximate: the fold is exact away from padded borders only."""
    weight_input: int
    out_axis: int
    in_axis: int
    y_axis: int
    groups: int = 1
    scale: float = 1.0
    bias_slot: int | None = None
    bias_scale_attr: str | None = None
    approximate: bool = False


@dataclass(frozen=True)
class AttentionAxes:
    """Channel spaces of an attention node: ``head_dim`` (per-head features: never pruned alone),
    ``heads`` (axes that index heads), ``embed`` (the residual stream it reads), and ``projected``:
    operands made by a linear projection whose input is the residual stream (see groups._classify)."""
    head_dim: tuple[Space, ...] = ()
    heads: tuple[Space, ...] = ()
    embed: tuple[Space, ...] = ()
    projected: tuple[str, ...] = ()


# Hooks a rule with weights must implement or opt out of (``opts_out``), checked by
# tests/test_rule_hooks.py: the defaults below would otherwise silently count 0 MACs, skip
# compensation, miss a depthwise conv or score a weight without its role.
WEIGHT_HOOKS = ("macs", "compensation_target", "is_depthwise", "weight_roles")


class OpRule:
    op_types: tuple[str, ...] = ()
    domain: str = ""  # "" is the default ONNX domain; "com.microsoft" for ONNX Runtime's contrib ops
    weighted: bool = False  # has weight inputs (initializers sliced with its channels)
    opts_out: dict[str, str] = {}  # hook name in WEIGHT_HOOKS -> why this rule leaves it at its default
    is_norm: bool = False  # a normalization whose input 1 is its per-channel scale (gamma): bn-scale scores it
    layer: bool = False  # weights x activations (Conv, Gemm, MatMul): its output names the group in reports
    linear: bool = False  # output is linear in each input when the others are constant

    def relate(self, node: onnx.NodeProto, ctx: RuleContext) -> RuleResult:
        raise NotImplementedError

    def rewrite(self, node: onnx.NodeProto, rctx: RewriteContext) -> None:
        """Default: only weights change, and those are sliced by the rewriter itself."""

    def macs(self, node: onnx.NodeProto, view: GraphView) -> int | None:
        """Multiply-accumulates of one run from static shapes; None: not a compute op. May raise
        TypeError / IndexError where shapes are unknown (counted as 0, listed as uncounted)."""
        return None

    def compensation_target(self, node: onnx.NodeProto, view: GraphView, tensor: str,
                            axis: int) -> CompensationTarget | None:
        """How removed channels of input space (tensor, axis) fold into this node's bias, or None."""
        return None

    def is_depthwise(self, node: onnx.NodeProto, view: GraphView) -> bool:
        """One filter per input channel (DEPrune's depthwise ratio applies to its channels)."""
        return False

    def depthwise_spaces(self, node: onnx.NodeProto, view: GraphView) -> list[Space]:
        """The channel spaces a depthwise node ties (input and output channels, NCHW axis 1)."""
        return [(node.input[0], 1), (node.output[0], 1)] if self.is_depthwise(node, view) else []

    def output_channel_groups(self, node: onnx.NodeProto, view: GraphView) -> int | None:
        """A grouped (not depthwise) layer: how many channel groups its output's channel axis holds,
        laid out (group, channels per group); None for every other node. A Reshape that splits
        that axis keeps the per-group piece as the channels (shape._split_preference)."""
        return None

    def weight_roles(self, node: onnx.NodeProto, view: GraphView) -> list[WeightRole]:
        """The node's constant weight inputs and their channel axes, main weight first."""
        return []

    def float_weights(self, node: onnx.NodeProto, view: GraphView) -> dict[str, Callable[[], np.ndarray]]:
        """Weights stored packed or quantized (MatMulNBits' int4 blocks): tensor -> a function that
        gives the float values the node computes with, on the same channel axes. Magnitude scorers
        read these, one tensor at a time (a large model's weights are never all expanded at once)."""
        return {}

    def packed_params(self, node: onnx.NodeProto, view: GraphView) -> dict[str, int]:
        """Integer-packed weights (no float initializer to count): tensor -> parameters it holds
        (MatMulNBits: K x N). Costs count these as parameters."""
        return {}

    def channel_affine(self, node: onnx.NodeProto, view: GraphView) -> ChannelAffine | None:
        """The per-channel affine map of input 0's axis 1 this node computes at inference, or None."""
        return None

    def attention(self, node: onnx.NodeProto, view: GraphView) -> AttentionAxes | None:
        """Spaces of an attention node (two activations multiplied, or a fused attention op), or None."""
        return None

    def projection_input(self, node: onnx.NodeProto, view: GraphView) -> Space | None:
        """For a linear projection (constant weight x activation): the activation space it contracts."""
        return None

    def removed_value(self, node: onnx.NodeProto, tensor: str) -> str:
        """The tensor whose value a removed channel of input ``tensor`` contributes nothing with (an
        integer op's zero point); "" for zero."""
        return ""


# The opt-outs of a rule whose weights are per-channel vectors (norm scales and shifts, fused biases).
PER_CHANNEL_PARAMS = {
    "macs": "per-channel arithmetic: no multiply-accumulates counted",
    "compensation_target": "does not sum over channels: nothing to compensate",
    "is_depthwise": "not a convolution",
}


def hooks_missing(rule: OpRule) -> list[str]:
    """WEIGHT_HOOKS a weighted rule neither implements nor opts out of (with a reason)."""
    if not rule.weighted:
        return []
    cls = type(rule)
    return [h for h in WEIGHT_HOOKS if getattr(cls, h) is getattr(OpRule, h) and not rule.opts_out.get(h)]


def counts_macs(rule: OpRule | None) -> bool:
    """Whether the rule's ops are compute ops (implement ``macs``)."""
    return rule is not None and type(rule).macs is not OpRule.macs


RULES: dict[str, OpRule] = {}  # "OpType" (default domain) or "domain::OpType"


def register(cls):
    inst = cls()
    for op in cls.op_types:
        RULES[op if not cls.domain else f"{cls.domain}::{op}"] = inst
    return cls


# Ops that move channels without computing on them; analysis follows attention operands back
# through them (and CHANNELWISE ops, see elementwise) to the projection that made them.
LAYOUT_OPS = ("Reshape", "Transpose", "Gather", "Split", "Slice", "Squeeze", "Unsqueeze")


def rule_for(node: onnx.NodeProto) -> OpRule | None:
    if node.domain in ("", "ai.onnx"):
        return RULES.get(node.op_type)
    return RULES.get(f"{node.domain}::{node.op_type}")


# --- helpers shared by rules -------------------------------------------------------------------

def norm_axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def read_ints(node, ctx_or_view, name: str, slot: int | None, default=None):
    """An int-list attribute (older opsets) or constant input (newer opsets). Raises Opaque if computed."""
    view = ctx_or_view.view if hasattr(ctx_or_view, "view") else ctx_or_view
    v = attr(node, name)
    if v is not None:
        return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    if slot is not None and len(node.input) > slot and node.input[slot]:
        c = view.const(node.input[slot])
        if c is None:
            raise Opaque(f"{node.op_type} '{node.name}': '{name}' is computed at run time")
        return [int(x) for x in np.atleast_1d(c)]
    return default


def block_pairs(in_shape, out_shape, a: int, b: int):
    """For a reshape-like op: pairs (in position on axis a, out position on axis b) sharing elements.

    Only axes in the same aligned block can be related; returns None if a and b are not.
    """
    for ins, outs in align_blocks(in_shape, out_shape):
        if a in ins and b in outs:
            P = int(np.prod([in_shape[i] for i in ins]))
            f = np.arange(P)
            pa = (f // int(np.prod([in_shape[i] for i in ins if i > a]))) % in_shape[a]
            pb = (f // int(np.prod([out_shape[j] for j in outs if j > b]))) % out_shape[b]
            pairs = np.unique(np.stack([pa, pb], 1), axis=0)
            if len(pairs) != max(in_shape[a], out_shape[b]):
                return None  # not a subdivision: channels would be scrambled
            return pairs[:, 0], pairs[:, 1]
    return None


def align_blocks(in_shape, out_shape):
    """Split a reshape into aligned blocks of input axes and output axes with equal products."""
    blocks, i, j = [], 0, 0
    n, m = len(in_shape), len(out_shape)
    while i < n and j < m:
        i0, j0 = i, j
        pi, pj = in_shape[i], out_shape[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj and i < n:
                pi *= in_shape[i]
                i += 1
            elif pj < pi and j < m:
                pj *= out_shape[j]
                j += 1
            else:
                return blocks + [(list(range(i0, n)), list(range(j0, m)))]
        blocks.append((list(range(i0, i)), list(range(j0, j))))
    if blocks:  # trailing size-1 axes join the last block
        ins, outs = blocks[-1]
        blocks[-1] = (ins + list(range(i, n)), outs + list(range(j, m)))
    return blocks


def broadcast_relate(res: RuleResult, node, ctx: RuleContext, inputs: list[str], output: str) -> RuleResult:
    """Elementwise ops with numpy broadcasting: aligned axes of full size are one space."""
    out_shape = ctx.shape(output)
    r = len(out_shape)
    for o in range(r):
        members = [(output, o)]
        any_live = ctx.live(output, o)
        for t in inputs:
            if not t:
                continue
            s = ctx.shape(t)
            ax = o - (r - len(s))
            if ax < 0:
                continue
            if s[ax] == out_shape[o] and out_shape[o] > 1:
                members.append((t, ax))
                any_live |= ctx.live(t, ax)
            elif ctx.live(t, ax):
                res.claims.append((t, ax))  # broadcast size-1 channel axis: nothing to slice
        if any_live:
            for sp in members[1:]:
                res.relate(sp, members[0])
    return res
