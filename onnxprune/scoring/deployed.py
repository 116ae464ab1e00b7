"""The weights the deployed model computes with, for magnitude scoring.

An inference BatchNormalization is the per-channel map y = s * x + t (s = gamma / sqrt(var + eps),
t = beta - mean * s; its rule's ``channel_affine``). Where it directly follows a layer (Conv, Gemm,
MatMul: a rule with ``layer`` and an output-channel weight role) whose output it alone reads, the
deployed model is the layer with the effective filter W * s (scaled along the output-channel axis)
and the effective bias s * b + t. Scoring uses those arrays: the BN parameters (running mean and
variance included) are never scored as weights themselves. A BN that follows no such layer (after a
residual Add, say) is scored as its effective scale s and shift t.

``WeightTable`` holds, per weight tensor, the array to score and which tensors are folded away; it
also names the layer weight axes that are output channels (filters) and input channels (consumer
slices), from the rules' ``weight_roles``.
"""
from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.groups import Analysis
from onnxprune.analysis.rules import ChannelAffine, Space, rule_for


@dataclass
class WeightTable:
    consts: Mapping[str, np.ndarray]                   # tensor -> the array to score (folded where a BN follows)
    skip: set[str] = field(default_factory=set)        # folded into another tensor: never scored on their own
    filters: set[Space] = field(default_factory=set)   # output-channel axes of layer weights
    inputs: set[Space] = field(default_factory=set)    # input-channel axes of layer weights (consumer slices)
    learned_scales: set[str] = field(default_factory=set)  # BN gammas (raw): OCSPruner's saliency scores them


def layer_weight_axes(analysis: Analysis) -> tuple[set[Space], set[Space]]:
    """(filters, inputs): weight axes of layer nodes that hold output / input channels."""
    view = analysis.view
    filters, inputs = set(), set()
    for n in view.nodes:
        rule = rule_for(n)
        if rule is None or not rule.layer:
            continue
        for r in rule.weight_roles(n, view):
            t = n.input[r.input]
            if r.out_axis is not None:
                filters.add((t, r.out_axis))
            if r.in_axis is not None:
                inputs.add((t, r.in_axis))
    return filters, inputs


def scale_along(arr: np.ndarray, axis: int, s: np.ndarray) -> np.ndarray:
    shape = [1] * arr.ndim
    shape[axis] = -1
    return arr.astype(np.float64) * s.reshape(shape)


def same_positions(analysis: Analysis, a: Space, b: Space) -> bool:
    """Two spaces of one group whose positions are the same canonical channels, in order."""
    ga, gb = analysis.space_group.get(a), analysis.space_group.get(b)
    if ga is None or ga != gb:
        return False
    maps = {(m.tensor, m.axis): m.index_map for m in analysis.groups[ga].members}
    return a in maps and b in maps and np.array_equal(maps[a], maps[b])


def foldable_producer(analysis: Analysis, bn_input: str, filters: set[Space]):
    """(node, weight tensor, out axis) of the layer whose output only the BN reads, or None."""
    view = analysis.view
    k = view.producer.get(bn_input)
    if k is None or len(view.consumers.get(bn_input, [])) != 1:
        return None
    node = view.nodes[k]
    rule = rule_for(node)
    if rule is None or not rule.layer or node.output[0] != bn_input:
        return None
    for r in rule.weight_roles(node, view):
        w = node.input[r.input]
        if (r.out_axis is not None and (w, r.out_axis) in filters and len(view.consumers.get(w, [])) == 1
                and same_positions(analysis, (w, r.out_axis), (bn_input, 1))):
            return node, w, r.out_axis
    return None


def producer_bias(analysis: Analysis, node, weight: str, bn_input: str) -> str | None:
    """The layer's per-output-channel constant (its bias): a 1-D constant input on the BN's channels."""
    view = analysis.view
    for t in node.input:
        if t and t != weight and t in view.consts and view.consts[t].ndim == 1 \
                and same_positions(analysis, (t, 0), (bn_input, 1)):
            return t
    return None


def fold_one(analysis: Analysis, table: WeightTable, bn, aff: ChannelAffine) -> None:
    view = analysis.view
    params = [t for t in bn.input[1:] if t and t in view.consts]
    gamma, beta = bn.input[aff.learned_scale], bn.input[aff.learned_shift]
    table.learned_scales.add(gamma)
    table.skip.update(t for t in params if t != beta)
    prod = foldable_producer(analysis, bn.input[0], table.filters)
    if prod is None:  # standalone affine: its effective scale and shift are the channel's weights
        table.skip.discard(gamma)
        table.consts[gamma], table.consts[beta] = aff.scale, aff.shift
        return
    node, w, axis = prod
    table.consts[w] = scale_along(view.consts[w], axis, aff.scale)
    b = producer_bias(analysis, node, w, bn.input[0])
    bias = np.zeros_like(aff.scale) if b is None else view.consts[b].astype(np.float64)
    if b is not None:
        table.skip.add(b)
    table.consts[beta] = aff.scale * bias + aff.shift


class FloatConsts(ChainMap):
    """The weight arrays, where packed ones (the rules' ``float_weights``) read as their float values,
    expanded on each access and never kept. Arrays set here (BN-folded ones) go in front of the
    stored weights, which are read through: a large model's are memory-mapped on each read, never
    held here."""

    def __init__(self, consts: Mapping, expand: dict):
        super().__init__({}, consts)
        self.expand = expand

    def __getitem__(self, key):
        f = self.expand.get(key)
        return f() if f is not None else super().__getitem__(key)


def _weight_table(analysis: Analysis, on_affine) -> WeightTable:
    """The weights with the same layer axes; ``on_affine(table, node, affine)`` for every node whose
    rule declares a channel affine (a BatchNormalization)."""
    view = analysis.view
    filters, inputs = layer_weight_axes(analysis)
    expand = {}
    for n in view.nodes:
        rule = rule_for(n)
        if rule is not None:
            expand.update(rule.float_weights(n, view))
    table = WeightTable(FloatConsts(view.consts, expand), filters=filters, inputs=inputs)
    for n in view.nodes:
        rule = rule_for(n)
        aff = rule.channel_affine(n, view) if rule is not None else None
        if aff is not None:
            on_affine(table, n, aff)
    return table


def deployed_weights(analysis: Analysis) -> WeightTable:
    """Every weight tensor as the deployed model computes with it (BN folded where it can be)."""
    return _weight_table(analysis, lambda table, n, aff: fold_one(analysis, table, n, aff))


def raw_weights(analysis: Analysis) -> WeightTable:
    """The weights as stored (the papers' forms), with the same layer axes and BN gammas."""
    return _weight_table(analysis, lambda table, n, aff: table.learned_scales.add(n.input[aff.learned_scale]))
