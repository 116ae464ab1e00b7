"""Weights behind DequantizeLinear of constants (onnxruntime.quantization QDQ models) are weights:
normalize folds them to float for the analysis, and records how, so transform/requantize.py can
write the surviving ones as integers + DequantizeLinear again."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


@dataclass(frozen=True, eq=False)
class DequantizedWeight:
    """One folded DequantizeLinear(quantized, scale[, zero point]) whose output is a float weight now."""
    name: str                 # the float weight (the DequantizeLinear's output)
    node_name: str            # the DequantizeLinear
    quantized_name: str
    dtype: np.dtype           # of the quantized integers
    scale_name: str
    scale: np.ndarray         # flat: one value per tensor, or one per position along `axis`
    zero_point_name: str | None  # None: the DequantizeLinear had no zero point (0 of `dtype`)
    zero_point: np.ndarray    # flat, as scale (a single 0 where there was none)
    zero_point_dtype: np.dtype | None
    axis: int | None          # None: per tensor


def fold_dequantize(graph: gs.Graph, record: list[DequantizedWeight] | None = None) -> bool:
    """Replace DequantizeLinear of constant integer tensors (per-tensor or per-axis) by its float
    result, computed as ONNX Runtime does: float(x - zero_point) * scale. Returns whether any folded;
    `record` gets what requantize_weights needs to undo each fold."""
    outputs = {t.name for t in graph.outputs}
    folded = False
    for node in graph.nodes:
        if not _is_plain_dequantize(node) or node.outputs[0].name in outputs:
            continue
        found = _dequantized_constant(node)
        if found is None:
            continue
        y, weight = found
        if record is not None:
            record.append(weight)
        node.outputs[0].to_constant(np.ascontiguousarray(y))
        node.outputs.clear()
        folded = True
    return folded


def _is_plain_dequantize(node: gs.Node) -> bool:
    """A standard DequantizeLinear without blocks or an output type (those are not folded)."""
    return (node.op == "DequantizeLinear" and (node.domain or "") in ("", "ai.onnx")
            and not int(node.attrs.get("block_size", 0)) and not int(node.attrs.get("output_dtype", 0)))


def _dequantized_constant(node: gs.Node) -> tuple[np.ndarray, DequantizedWeight] | None:
    """(float value, record) of a DequantizeLinear whose inputs are all constants, or None."""
    ins = [t for t in node.inputs if not t.is_empty()]
    if len(ins) < 2 or not all(isinstance(t, gs.Constant) for t in ins):
        return None
    x, scale = np.asarray(ins[0].values), np.asarray(ins[1].values)
    zp = np.asarray(ins[2].values) if len(ins) > 2 else np.zeros((), np.int32)
    if x.dtype.kind not in "iu" or scale.dtype.kind != "f":
        return None
    axis = None
    if scale.size == 1:  # per tensor
        scale, zp = scale.reshape(()), zp.reshape(()) if zp.size == 1 else zp
    else:  # per axis
        axis = int(node.attrs.get("axis", 1)) % max(x.ndim, 1)
        if scale.ndim != 1 or x.ndim == 0 or scale.shape[0] != x.shape[axis] or zp.size not in (1, scale.size):
            return None
        bshape = [1] * x.ndim
        bshape[axis] = -1
        scale, zp = scale.reshape(bshape), zp.reshape(bshape) if zp.size > 1 else zp.reshape(())
    y = (x.astype(np.int64) - zp.astype(np.int64)).astype(scale.dtype) * scale
    has_zp = len(ins) > 2
    weight = DequantizedWeight(
        name=node.outputs[0].name, node_name=node.name, quantized_name=ins[0].name, dtype=x.dtype,
        scale_name=ins[1].name, scale=scale.reshape(-1), zero_point_name=ins[2].name if has_zp else None,
        zero_point=zp.reshape(-1), zero_point_dtype=zp.dtype if has_zp else None, axis=axis)
    return y.astype(scale.dtype), weight
