"""Undo normalize's DequantizeLinear folding in a pruned model (a post-rewrite step): every
surviving folded weight becomes integers + DequantizeLinear again, with its scale / zero point
(per-axis ones sliced like the weight). Exact, as the float values came from integers; a weight that
compensation moved off its grid is rounded back onto it, or kept float where it left the integer
range, with a note."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.groups import Analysis
from onnxprune.model.dequantize import DequantizedWeight
from onnxprune.model.external import read_tensor
from onnxprune.transform.rewrite import kept_positions


@dataclass
class QuantizedWeight:
    """A float weight back on its integer grid: integers, the scale and zero point that fit it (sliced
    like the weight), and whether it needed rounding (compensation moved it off the grid)."""
    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    rounded: bool


def requantize_weights(model: onnx.ModelProto, analysis: Analysis, kept: dict[int, np.ndarray],
                       dequantized: Sequence[DequantizedWeight], replaced: Mapping[str, str] | None = None
                       ) -> tuple[onnx.ModelProto, list[str]]:
    """``dequantized``: the weights normalize folded (NormalizedModel.dequantized). ``replaced``: the
    initializers compensation wrote in place of old ones -> the name of the one each replaces
    (CompensationResult.replaced). Returns (model, notes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if not dequantized:
        return m, []
    g = m.graph
    records = {w.name: w for w in dequantized}
    replaced = replaced or {}
    pos = kept_positions(analysis, kept)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    node_names = {n.name for n in g.node}
    new_nodes, floats, rounded = [], [], []
    for k in range(len(g.initializer)):  # the initializers added on the way are not weights
        t = g.initializer[k]
        base = replaced.get(t.name, t.name)
        rec = records.get(base)
        if rec is None:
            continue
        positions = pos.get((base, rec.axis)) if rec.axis is not None else None
        qw = quantized(read_tensor(t), rec, positions)
        if qw is None:
            floats.append(t.name)
            continue
        if qw.rounded:
            rounded.append(t.name)
        new_nodes.append(_dequantize_node(g, t.name, rec, qw, taken, node_names))
    _replace_by_nodes(g, {n.output[0] for n in new_nodes}, new_nodes)
    return m, _notes(floats, rounded)


def quantized(w: np.ndarray, rec: DequantizedWeight, positions: np.ndarray | None) -> QuantizedWeight | None:
    """`w` as integers with `rec`'s scale and zero point (their entries at `positions` along a per-axis
    weight's axis; all where None), or None where it cannot be: positions that do not fit the weight,
    or values outside the integer range of their scale (lstsq refits can grow weights: a new scale would
    have to go to the bias too, whose scale is input x weight scale)."""
    scale = np.asarray(rec.scale, w.dtype)  # folding made w of the scale's dtype
    zp = np.asarray(rec.zero_point, np.int64)
    shape = [1] * w.ndim
    if rec.axis is not None:
        p = np.arange(len(scale)) if positions is None else positions
        if len(p) != w.shape[rec.axis]:
            return None
        scale, zp = scale[p], (zp[p] if zp.size > 1 else zp)
        shape[rec.axis] = -1
    sb, zb = scale.reshape(shape if scale.size > 1 else ()), zp.reshape(shape if zp.size > 1 else ())
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.round(w / sb) + zb
    info = np.iinfo(rec.dtype)
    if not np.all(np.isfinite(q)) or q.min(initial=0) < info.min or q.max(initial=0) > info.max:
        return None
    q = q.astype(rec.dtype)
    # moved by compensation (mean: biases; lstsq: weights too): back onto the original grid, as a
    # quantizer would put it, so the model stays integer and ONNX Runtime keeps its int8 kernels
    exact = np.array_equal((q.astype(np.int64) - zb).astype(w.dtype) * sb, w)
    return QuantizedWeight(q, scale, zp, rounded=not exact)


def _dequantize_node(g: onnx.GraphProto, wname: str, rec: DequantizedWeight, qw: QuantizedWeight,
                     taken: set[str], node_names: set[str]) -> onnx.NodeProto:
    """Add `qw`'s integers, scale (and zero point) to `g` as initializers under fresh names; return the
    DequantizeLinear that computes `wname` from them."""
    flat = () if rec.axis is None else -1
    names = [_fresh_name(rec.quantized_name, taken), _fresh_name(rec.scale_name, taken)]
    g.initializer.append(numpy_helper.from_array(qw.values, names[0]))
    g.initializer.append(numpy_helper.from_array(qw.scale.reshape(flat), names[1]))
    if rec.zero_point_name is not None:
        names.append(_fresh_name(rec.zero_point_name, taken))
        g.initializer.append(numpy_helper.from_array(qw.zero_point.reshape(flat).astype(rec.zero_point_dtype),
                                                     names[2]))
    attrs = {} if rec.axis is None else dict(axis=rec.axis)
    return helper.make_node("DequantizeLinear", names, [wname],
                            name=_fresh_name(rec.node_name or f"{wname}_dequantize", node_names), **attrs)


def _replace_by_nodes(g: onnx.GraphProto, drop: set[str], new_nodes: list[onnx.NodeProto]) -> None:
    """Drop the initializers `drop`, now computed by `new_nodes` (put first: their inputs are initializers)."""
    if not drop:
        return
    kept_inits = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    rest = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + rest)


def _fresh_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_<k>` with the smallest k not in `taken`; added to `taken`."""
    k, out = 0, name
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def _notes(floats: list[str], rounded: list[str]) -> list[str]:
    notes = []
    if floats:
        notes.append(f"{len(floats)} quantized weight(s) changed by compensation ({_few(floats)}) fall outside the "
                     "integer range of their scale: written as float (ONNX Runtime runs their layers in float, not "
                     "int8; --compensate mean leaves weights alone); other quantized weights stay integer + DequantizeLinear")
    if rounded:
        notes.append(f"{len(rounded)} quantized weight(s)/bias(es) changed by compensation ({_few(rounded)}) are "
                     f"re-quantized with their original scales and zero points (rounding within half a step)")
    return notes


def _few(names: list[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
