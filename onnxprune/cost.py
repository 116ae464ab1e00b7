"""Analytic costs from static shapes: MACs of Conv/ConvTranspose/Gemm/MatMul, parameter count."""
from __future__ import annotations

import numpy as np

from .graph import GraphView, attr


def node_macs(view: GraphView, k: int) -> int:
    n = view.nodes[k]
    op = n.op_type
    try:
        if op == "Conv":
            w = view.shape(n.input[1])
            y = view.shape(n.output[0])
            return int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
        if op == "ConvTranspose":
            w = view.shape(n.input[1])
            x = view.shape(n.input[0])
            return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
        if op == "Gemm":
            a, b = view.shape(n.input[0]), view.shape(n.input[1])
            k_dim = a[0] if attr(n, "transA", 0) else a[1]
            y = view.shape(n.output[0])
            return int(y[0] * y[1] * k_dim)
        if op == "MatMul":
            a = view.shape(n.input[0])
            y = view.shape(n.output[0])
            return int(np.prod(y, dtype=np.int64) * a[-1])
    except (TypeError, IndexError):
        return 0
    return 0


def total_macs(view: GraphView) -> int:
    return int(sum(node_macs(view, k) for k in range(len(view.nodes))))


def total_params(view: GraphView) -> int:
    """Elements of floating-point initializers (shape constants and indices are not parameters)."""
    return int(sum(a.size for a in view.consts.values() if np.issubdtype(a.dtype, np.floating)))
