"""LSTM / GRU / RNN, and ONNX Runtime's com.microsoft DynamicQuantizeLSTM: no channel rule (their
gates tie hidden channels across steps), so every space they touch is frozen; their MACs still
count in the totals a --macs budget is a share of."""
from __future__ import annotations

import numpy as np

from .base import Opaque, OpRule, WeightRole, register


@register
class Recurrent(OpRule):
    op_types = ("LSTM", "GRU", "RNN")
    weighted = True
    opts_out = {"compensation_target": "opaque: its channels are frozen",
                "is_depthwise": "not a convolution"}

    def relate(self, node, ctx):
        raise Opaque(f"no channel rule for op {node.op_type} (its gates tie the hidden channels across time steps)")

    def weight_roles(self, node, view):
        """W and R, with no channel axes: the gates tie them (MACs then scale with no group)."""
        return [WeightRole(i, None, None) for i in (1, 2) if len(node.input) > i and node.input[i] in view.consts]

    def macs(self, node, view):
        """Every step of every sequence: W (dirs, gates*hidden, input) and R (dirs, gates*hidden, hidden)."""
        x, w, r = (view.shape(t) for t in node.input[:3])
        return int(np.prod(x[:2], dtype=np.int64) * (np.prod(w, dtype=np.int64) + np.prod(r, dtype=np.int64)))


@register
class DynamicQuantizeLSTM(Recurrent):
    """What quantize_dynamic makes of an LSTM: int8/uint8 W [dirs, input, 4*hidden] and R [dirs,
    hidden, 4*hidden] (transposed against LSTM's), dequantized by scales and zero points at inputs
    8-11. Frozen like LSTM; the same MACs (the products of the shapes do not care about the order)."""
    domain = "com.microsoft"
    op_types = ("DynamicQuantizeLSTM",)
