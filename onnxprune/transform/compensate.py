"""Training-free recovery: mean-shift compensation (VBP).

A removed channel c at a mixing point (an activation entering Conv/Gemm/MatMul) contributed
``W[:, c] * x_c`` to the consumer's output. Replacing x_c by its calibration mean m_c instead of 0
keeps the expected output unchanged; that constant is folded into the consumer's bias:

    Gemm / MatMul:  b += sum_c m_c * W[c, :]            (times Gemm alpha, over beta)
    Conv:           b[o] += sum_c m_c * sum_{kh,kw} W[o, c, kh, kw]     (grouped convs per group)

The bias is created when missing (Conv: third input; Gemm: C; MatMul: the constant Add that
follows it, or a new Add). This is exact, i.e. the compensated pruned model equals the original
with removed channels replaced by their mean (``mean_substituted_model``), for Gemm, MatMul, and
convolutions without padding; a padded conv sees zeros, not m_c, in its border windows, so there
the compensation is an approximation (right in the interior, off by the padded part of the kernel at
the borders).

Least-squares compensation (``--compensate lstsq``) goes one step further: from the calibration
covariance of the consumer's input it fits x_R ~ A x_K + c (removed channels as an affine function of
the kept ones, ridge-regularized) and folds A into the kept weight columns and c into the bias:

    Gemm / MatMul:  B_K += A^T B_R,   b += c B_R
    Conv (group 1): W[:, K] += sum_r W[:, r] A[r, K] (per kernel tap),   b += sum_r c_r * ksum W[:, r]

Groups that pass a normalization over the channel axis (LayerNorm over C as in ConvNeXt blocks,
Softmax or Reduce over C) get no *mean* compensation: there, removing a channel also changes every
kept channel (the statistics are taken over the kept ones only), which a bias constant computed on
the original network does not account for; on the digits ConvNeXt it cost accuracy (one stage's
residual-stream group alone: 98.7% -> 95.1% at -50% MACs). lstsq, which refits on the actual
kept-channel values, is applied there too.

lstsq minimizes the consumer's output error on the calibration data (exactly so for Gemm, MatMul and
1x1 convs without padding; for kxk convs it assumes the same per-pixel relation at every tap, and
padded borders are approximate as above). Where no covariance is available (spaces wider than
calib.COV_MAX_POSITIONS) or the consumer is a grouped/depthwise conv, it falls back to the mean.

The rewrite is checked by the mask oracle *before* compensation; compensation only touches the
consumers' biases (and, for lstsq, their kept weight columns).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.analysis.groups import Analysis
from onnxprune.scoring.calibration import SpaceStats, activation_spaces
from onnxprune.errors import InternalError, OnnxPruneError, first_line
from onnxprune.analysis.graph import attr
from onnxprune.model.shapes import check_model_light
from onnxprune.transform.rewrite import kept_positions


@dataclass
class CompensationResult:
    model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    nodes: int = 0          # consumers whose bias changed
    approximate: int = 0    # of those, padded convs (compensation exact away from the borders only)
    skipped: list[str] = field(default_factory=list)
    refit: int = 0          # lstsq: consumers whose kept weight columns were refit
    mean_fallback: list[str] = field(default_factory=list)  # lstsq: consumers compensated by the mean only
    position_maps: int = 0  # per-position: consumers followed by an Add of a constant map
    position_fallback: list[str] = field(default_factory=list)  # per-position: consumers given per-channel constants
    replaced: dict[str, str] = field(default_factory=dict)  # new initializer -> the original one it replaces


def affine_fit(st: SpaceStats, keep: np.ndarray, removed: np.ndarray, ridge: float = 1e-3,
               axis: int | None = None):
    """A (R x K) and c (R,) with x_R ~ A x_K + c in least squares over the calibration data (from the
    space's mean and co-moment matrix); ridge * mean kept variance regularizes near-singular inputs.
    With ``axis`` (the space's channel axis) and per-position means, the fit has one intercept per
    position instead (x_R ~ A x_K + c(p)): A then comes from the covariance within positions, the
    pooled one less the scatter of the position means; c is still the pooled intercept."""
    cov = st.c2 / max(st.n, 1.0)
    if axis is not None and st.pos_mean is not None:
        M = np.moveaxis(st.pos_mean, axis - 1, -1).reshape(-1, len(st.mean))
        D = M - st.mean
        cov = cov - (D.T @ D) * (st.pos_n / max(st.n, 1.0))
    skk = cov[np.ix_(keep, keep)]
    srk = cov[np.ix_(removed, keep)]
    lam = ridge * max(float(np.trace(skk)) / max(len(keep), 1), 1e-12)
    A = np.linalg.solve(skk + lam * np.eye(len(keep)), srk.T).T
    return A, st.mean[removed] - A @ st.mean[keep]


def compensation_spaces(analysis: Analysis, kept: dict[int, np.ndarray]) -> list[tuple[str, int]]:
    """Activation mixing spaces of the pruned groups (where removed channels need a mean)."""
    return activation_spaces(analysis, [analysis.groups[g] for g in kept])


def bias_deltas(analysis: Analysis, kept: dict[int, np.ndarray], stats: dict[tuple[str, int], SpaceStats],
                lstsq: bool = False, positions: bool = False):
    """Per consumer node index: (output tensor, output axis, delta over the ORIGINAL output channels,
    approximate?). Nodes that cannot be compensated are returned in `skipped`. With ``lstsq``, also
    the refit weights per node index: (weight over original outputs x kept inputs, in the layout of
    the node's weight), and the nodes where only the mean could be used.

    ``positions``: the constants are per position (see position_fill): the delta is the consumer's
    whole response to the fill map, shape [1, *output.shape[1:]] over the original output channels,
    with output axis None; consumers without per-position statistics get the per-channel constant and
    are listed in ``position_fallback`` (returned last)."""
    view = analysis.view
    pos = kept_positions(analysis, kept)
    deltas: dict[int, list] = {}
    weights: dict[int, np.ndarray] = {}
    skipped, fallback, pos_fallback = [], [], []
    for k, res in analysis.node_results.items():
        for (t, a) in res.mixes:
            if t in view.consts or (t, a) not in pos or (t, a) not in stats:
                continue
            size = view.shape(t)[a]
            removed = np.setdiff1d(np.arange(size), pos[(t, a)])
            if len(removed) == 0:
                continue
            st = stats[(t, a)]
            m = st.mean[removed]
            node = view.nodes[k]
            A = None
            if lstsq:
                w = None
                if st.c2 is not None and k not in weights:
                    A, c = affine_fit(st, pos[(t, a)], removed, axis=a if positions else None)
                    w = _refit_weight(view, node, t, a, pos[(t, a)], removed, A)
                if w is not None:
                    weights[k], m = w, c
                else:
                    A = None
                    fallback.append(view.node_label(k))
            d = None
            if positions and st.pos_mean is not None:
                fill = position_fill(st.pos_mean, a, pos[(t, a)], removed, A)
                d = _position_delta(view, node, t, fill)
                if d is None:
                    pos_fallback.append(f"{view.node_label(k)} (a {node.op_type} with non-constant weights)")
            elif positions:
                pos_fallback.append(f"{view.node_label(k)} ({t} {st.pos_note or 'has no per-position statistics'})")
            if d is None:
                d = _delta(view, node, t, a, removed, m)
            if d is None:
                skipped.append(view.node_label(k))
                continue
            y, y_axis, delta, approx = d
            if k in deltas and (deltas[k][1] is None) != (y_axis is None):
                skipped.append(view.node_label(k))  # mixed per-position and per-channel inputs: rare, left out
                continue
            if k in deltas:
                deltas[k][2] = deltas[k][2] + delta
                deltas[k][3] = deltas[k][3] or approx
            else:
                deltas[k] = [y, y_axis, delta, approx]
    if lstsq:
        return deltas, skipped, pos, weights, fallback, pos_fallback
    return deltas, skipped, pos, pos_fallback


def _refit_weight(view, node, t, a, keep, removed, A):
    """The consumer's weight with A folded into its kept input columns (original output channels,
    kept inputs only; the node's own layout), or None where lstsq does not apply."""
    op = node.op_type
    if op == "Conv" and node.input[0] == t and a == 1 and node.input[1] in view.consts:
        if int(attr(node, "group", 1)) != 1:
            return None
        W = view.consts[node.input[1]].astype(np.float64)
        return W[:, keep] + np.einsum("mr...,rk->mk...", W[:, removed], A)
    if op in ("Gemm", "MatMul") and node.input[0] == t and node.input[1] in view.consts:
        B = view.consts[node.input[1]].astype(np.float64)
        if op == "MatMul" and (B.ndim != 2 or a != len(view.shape(t)) - 1):
            return None
        trans = op == "Gemm" and int(attr(node, "transB", 0))
        if trans:
            B = B.T
        new = B[keep] + A.T @ B[removed]
        return new.T if trans else new
    return None


def position_fill(pos_mean: np.ndarray, a: int, keep: np.ndarray, removed: np.ndarray,
                  A: np.ndarray | None = None) -> np.ndarray:
    """What stands in for the removed channels at every position: their per-position calibration mean
    (``pos_mean``: the tensor's mean over the batch axis, shape without axis 0; channel axis ``a`` of
    the full tensor), or with lstsq's A the per-position intercept mean_R(p) - A mean_K(p); kept
    channels hold 0. Shape [1, *pos_mean.shape]."""
    P = np.moveaxis(pos_mean, a - 1, -1)
    F = np.zeros_like(P)
    F[..., removed] = P[..., removed] if A is None else P[..., removed] - P[..., keep] @ A.T
    return np.moveaxis(F, -1, a - 1)[None]


def _position_delta(view, node, t, fill):
    """The consumer's response to ``fill`` at input ``t`` (its output on fill minus its output on zeros,
    every other input constant), run in ONNX Runtime: exact for any linear consumer (Conv of any
    group, stride or padding, ConvTranspose, Gemm, MatMul). (output, None, [1, ...] delta, False) or
    None where another input is not a constant."""
    import onnxruntime as ort

    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
        return None
    others = [i for i in node.input if i and i != t]
    if any(i not in view.consts for i in others) or list(node.input).count(t) != 1:
        return None
    if _np_dtype(view, t).kind != "f":
        return None
    one = onnx.NodeProto()
    one.CopyFrom(node)
    one.input[:] = ["x" if i == t else i for i in node.input]
    one.output[:] = ["y"] + [""] * (len(node.output) - 1) if len(node.output) > 1 else ["y"]
    # in float32 whatever the model's float type: CPU kernels for float16 are few, and the map is
    # cast to the model's type when it is written
    dtype = np.dtype(np.float32)
    x_info = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    y_info = helper.make_empty_tensor_value_info("y")
    inits = [numpy_helper.from_array(np.asarray(view.consts[i]).astype(np.float32)
                                     if np.asarray(view.consts[i]).dtype.kind == "f" else np.asarray(view.consts[i]), i)
             for i in dict.fromkeys(others)]
    g = helper.make_graph([one], "position_delta", [x_info], [y_info], inits)
    m = helper.make_model(g, opset_imports=list(view.model.opset_import))
    m.ir_version = view.model.ir_version
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.concatenate([fill, np.zeros_like(fill)]).astype(dtype)
    y = sess.run(None, {"x": x})[0].astype(np.float64)
    return node.output[0], None, y[:1] - y[1:], False


def _np_dtype(view, t):
    return helper.tensor_dtype_to_np_dtype(view.dtypes.get(t, onnx.TensorProto.FLOAT))


def _delta(view, node, t, a, removed, m):
    op = node.op_type
    if op == "Conv" and node.input[0] == t and a == 1 and node.input[1] in view.consts:
        W = view.consts[node.input[1]].astype(np.float64)
        ksum = W.reshape(W.shape[0], W.shape[1], -1).sum(2)  # (M, C/g)
        g = int(attr(node, "group", 1))
        cin = view.shape(t)[1]
        M = W.shape[0]
        cg, mg = cin // g, M // g
        delta = np.zeros(M)
        for c, mc in zip(removed, m):
            gi = c // cg
            delta[gi * mg:(gi + 1) * mg] += ksum[gi * mg:(gi + 1) * mg, c % cg] * mc
        pads = attr(node, "pads", None)
        auto = attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        approx = bool((pads is not None and any(int(p) for p in pads)) or auto in ("SAME_UPPER", "SAME_LOWER"))
        return node.output[0], 1, delta, approx
    if op == "Gemm" and node.input[0] == t and node.input[1] in view.consts:
        B = view.consts[node.input[1]].astype(np.float64)
        if int(attr(node, "transB", 0)):
            B = B.T
        alpha = float(attr(node, "alpha", 1.0))
        return node.output[0], 1, alpha * (m @ B[removed]), False
    if op == "MatMul" and node.input[0] == t and node.input[1] in view.consts:
        B = view.consts[node.input[1]].astype(np.float64)
        if B.ndim != 2 or a != len(view.shape(t)) - 1:
            return None
        return node.output[0], len(view.shape(node.output[0])) - 1, m @ B[removed], False
    return None


def compensate_mean(analysis: Analysis, kept: dict[int, np.ndarray], pruned: onnx.ModelProto,
                    stats: dict[tuple[str, int], SpaceStats]) -> CompensationResult:
    """Fold the means of removed channels into the consumers' biases of the pruned model."""
    return compensate(analysis, kept, pruned, stats, "mean")


def channel_normalized_groups(analysis: Analysis) -> set[int]:
    """Groups with a member that some node normalizes or reduces over (LayerNorm/Softmax/Reduce on C)."""
    return {analysis.space_group[sp] for res in analysis.node_results.values() for sp in res.normalizes
            if sp in analysis.space_group}


def mean_compensable(analysis: Analysis, kept: dict[int, np.ndarray], stats: dict) -> tuple[dict, list[int]]:
    """The statistics mean compensation uses (groups through a channel normalization left out) and the
    pruned groups left out."""
    norm = channel_normalized_groups(analysis) & set(kept)
    return {sp: st for sp, st in stats.items() if analysis.space_group.get(sp) not in norm}, sorted(norm)


def compensate(analysis: Analysis, kept: dict[int, np.ndarray], pruned: onnx.ModelProto,
               stats: dict[tuple[str, int], SpaceStats], method: str = "mean",
               positions: bool = False) -> CompensationResult:
    """``mean``: fold removed channels' means into the consumers' biases (not for groups through a
    channel normalization, see the module doc); ``lstsq``: refit the kept weight columns and biases
    from the calibration covariance (stats with co-moments, see affine_fit). ``positions``: the
    constants are per position (stats with per-position means): an Add of a [1, ...] map after each
    consumer instead of a bias."""
    view = analysis.view
    weights, fallback, left_out = {}, [], []
    if method == "mean":
        stats, left_out = mean_compensable(analysis, kept, stats)
    if method == "lstsq":
        deltas, skipped, pos, weights, fallback, pos_fallback = bias_deltas(analysis, kept, stats, lstsq=True,
                                                                             positions=positions)
    else:
        deltas, skipped, pos, pos_fallback = bias_deltas(analysis, kept, stats, positions=positions)
    m = onnx.ModelProto()
    m.CopyFrom(pruned)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    uid = [0]

    def fresh(base):
        uid[0] += 1
        name = f"{base}{COMP_SUFFIX}{uid[0]}"
        if base in inits:  # a new version of an initializer (requantize_weights follows weights by it)
            res.replaced[name] = res.replaced.get(base, base)
        return name

    res = CompensationResult(m, mean_fallback=fallback)
    if left_out:
        res.notes.append(f"mean compensation left out {len(left_out)} group(s) that pass a normalization over "
                         "channels (LayerNorm/Softmax/Reduce over C): removal changes the kept channels there too, "
                         "which a bias cannot stand in for: " + ", ".join(analysis.groups[g].name for g in left_out[:5]))
    for k, w in weights.items():
        y = view.nodes[k].output[0]
        node = producer.get(y)
        if node is None or len(node.input) < 2 or node.input[1] not in inits:
            raise InternalError(f"internal error: lstsq compensation lost the weight of {view.node_label(k)}")
        # output channels: Conv W[M, C, ...] and Gemm transB=1 B[N, K] on axis 0; Gemm B[K, N] / MatMul on the last
        out_axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and int(attr(node, "transB", 0))) else -1
        y_axis = 1 if node.op_type in ("Conv", "Gemm") else len(view.shape(y)) - 1
        if (y, y_axis) in pos:
            w = np.take(w, pos[(y, y_axis)], axis=out_axis)
        old = inits[node.input[1]]
        if tuple(old.dims) != w.shape:
            raise InternalError(f"internal error: lstsq weight {w.shape} does not fit {tuple(old.dims)} "
                                 f"at {view.node_label(k)}")
        dtype = helper.tensor_dtype_to_np_dtype(old.data_type)
        node.input[1] = _new_init(g, inits, fresh, node.input[1], w.astype(dtype))
        res.refit += 1
    n_maps, map_params = 0, 0
    for k, (y, y_axis, delta, approx) in deltas.items():
        if y_axis is None:  # a per-position map over the original output: keep the written positions
            for ax in range(1, delta.ndim):
                if (y, ax) in pos:
                    delta = np.take(delta, pos[(y, ax)], axis=ax)
        elif (y, y_axis) in pos:
            delta = delta[pos[(y, y_axis)]]
        node = producer.get(y)
        if node is None:
            skipped.append(view.node_label(k))
            continue
        dtype = helper.tensor_dtype_to_np_dtype(view.dtypes.get(y, onnx.TensorProto.FLOAT))
        ok = False
        if y_axis is None:
            ok = _add_after(node, y, delta, dtype, inits, g, fresh, consumers, outputs)
            n_maps += int(ok)
            map_params += int(delta.size) if ok else 0
        elif node.op_type == "Conv":
            ok = _add_to_input(node, 2, delta, dtype, inits, g, fresh, shape=(len(delta),))
        elif node.op_type == "Gemm":
            beta = float(attr(node, "beta", 1.0))
            has_c = len(node.input) > 2 and node.input[2]
            if has_c and beta != 0.0 and node.input[2] in inits:
                ok = _add_to_input(node, 2, delta / beta, dtype, inits, g, fresh, shape=None)
            elif not has_c:
                ok = _add_to_input(node, 2, delta / (beta if beta != 0.0 else 1.0), dtype, inits, g, fresh,
                                   shape=(len(delta),))
                if beta == 0.0:
                    _set_attr(node, "beta", 1.0)
        if y_axis is not None and (node.op_type == "MatMul" or (node.op_type == "Gemm" and not ok)):
            ok = _add_after(node, y, delta, dtype, inits, g, fresh, consumers, outputs)
        if not ok:
            skipped.append(view.node_label(k))
            continue
        res.nodes += 1
        res.approximate += int(approx)
    res.skipped = skipped
    _drop_unused_initializers(g)
    if method == "lstsq":
        res.notes.append(f"lstsq compensation: kept weight columns of {res.refit} consumer(s) refit"
                         + (f"; mean only at {len(fallback)} (grouped conv or no covariance): "
                            + ", ".join(fallback[:5]) if fallback else ""))
    if positions:
        res.position_maps = n_maps
        res.position_fallback = pos_fallback
        res.notes.append(f"per-position {method} compensation: a constant map added after {n_maps} consumer(s) "
                         f"({map_params:,} values)"
                         + (f"; per-channel constants at {len(pos_fallback)}: " + ", ".join(pos_fallback[:5])
                            if pos_fallback else ""))
    if res.nodes - n_maps:
        msg = f"{method} compensation: biases of {res.nodes - n_maps} consumer(s) updated"
        if res.approximate:
            msg += (f"; {res.approximate} of them are padded convs, where it is exact away from the borders "
                    "only (border windows see zero padding, not the mean)")
        res.notes.append(msg)
    if skipped:
        res.notes.append(f"mean compensation skipped at {len(skipped)} consumer(s) it cannot fold into a bias: "
                         + ", ".join(skipped[:5]))
    return res


def _used_names(graph) -> set[str]:
    """Every tensor name read by a node of `graph` or of its subgraphs (If/Loop/Scan bodies may read
    outer-scope initializers), plus the graph outputs."""
    used = {o.name for o in graph.output}
    for n in graph.node:
        used.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= _used_names(sub)
    return used


COMP_SUFFIX = "__meancomp"


def _drop_unused_initializers(graph) -> None:
    """Compensation writes fresh initializers (old ones may be shared); drop those nothing reads now,
    so params and file size count only what the model uses."""
    used = _used_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _set_attr(node, name, value):
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(helper.make_attribute(name, value))


def _new_init(g, inits, fresh, base, arr):
    name = fresh(base)
    t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
    g.initializer.append(t)
    inits[name] = t
    return name


def _add_to_input(node, slot, delta, dtype, inits, g, fresh, shape):
    """bias input `slot` += delta (broadcast along the last axis); a fresh initializer every time,
    since the old one may be shared."""
    if len(node.input) > slot and node.input[slot]:
        name = node.input[slot]
        if name not in inits:
            return False
        old = numpy_helper.to_array(inits[name]).astype(np.float64)
        try:
            new = old + delta  # (N,), (1, N) or (M, N) biases broadcast along their last axis
        except ValueError:
            return False
        if new.ndim > 1 and new.shape[:-1] != old.shape[:-1] and any(s > 1 for s in new.shape[:-1]):
            return False  # would turn a per-row broadcast bias into a fixed-batch one
        node.input[slot] = _new_init(g, inits, fresh, name, new.astype(dtype))
        return True
    while len(node.input) < slot:
        node.input.append("")
    node.input.append(_new_init(g, inits, fresh, f"{node.name or node.output[0]}.bias",
                                np.asarray(delta, np.float64).reshape(shape).astype(dtype)))
    return True


def _add_after(node, y, delta, dtype, inits, g, fresh, consumers, outputs):
    """MatMul (or a Gemm with a computed C): add delta to the constant of the Add that follows when
    it is the only consumer, else insert ``Add(y, delta)``."""
    users = consumers.get(y, [])
    delta = np.asarray(delta)
    if len(users) == 1 and users[0].op_type == "Add" and y not in outputs:
        add = users[0]
        slot = 1 if add.input[0] == y else 0
        other = add.input[slot]
        if other in inits:
            c = numpy_helper.to_array(inits[other]).astype(np.float64)
            if delta.ndim == 1:
                fits = c.ndim >= 1 and c.shape[-1] == len(delta) and all(s == 1 for s in c.shape[:-1])
            else:  # a per-position map: the constant must broadcast into it, so the Add's output keeps its shape
                fits = c.ndim <= delta.ndim and _broadcasts_to(c.shape, delta.shape)
            if fits:
                add.input[slot] = _new_init(g, inits, fresh, other, (c + delta).astype(dtype))
                return True
    tmp = fresh(y)
    node.output[:] = [tmp if o == y else o for o in node.output]
    bname = _new_init(g, inits, fresh, f"{node.name or y}.bias", np.asarray(delta).astype(dtype))
    # the Add takes the old name: graph outputs and all former users read the compensated tensor
    idx = list(g.node).index(node)
    g.node.insert(idx + 1, helper.make_node("Add", [tmp, bname], [y], name=fresh(f"{node.name or y}_bias_add")))
    return True


def _broadcasts_to(shape, target) -> bool:
    try:
        return tuple(np.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except ValueError:
        return False


def mean_substituted_model(analysis: Analysis, kept: dict[int, np.ndarray],
                           stats: dict[tuple[str, int], SpaceStats], positions: bool = False) -> onnx.ModelProto:
    """The original model with every removed channel replaced by its calibration mean where it
    enters a mixing node: ``Where(mask, x, mean)`` (channel-axis normalizations over the kept
    channels only, as in the mask oracle). The compensated pruned model equals it exactly when every
    compensated consumer is a Gemm, a MatMul or an unpadded conv."""
    from onnxprune.verify.oracle import masked_model

    fill = {sp: (s.pos_mean[None] if positions and s.pos_mean is not None else s.mean) for sp, s in stats.items()}
    return masked_model(analysis, kept, fill=fill)


def check_static_positions(model: onnx.ModelProto) -> None:
    """Per-position constants are fixed-size maps: every input dim but the batch (axis 0) must be
    static, or the written model would fail on another sequence length or image size."""
    init = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name in init or not i.type.HasField("tensor_type"):
            continue
        dims = i.type.tensor_type.shape.dim
        sym = [d.dim_param or "?" for d in list(dims)[1:] if not d.HasField("dim_value")]
        if sym:
            raise OnnxPruneError(f"per-position compensation needs static input dims except the batch: input "
                                 f"'{i.name}' has symbolic dims {', '.join(sym)} (use per-channel compensation)")


def apply_compensation(analysis: Analysis, kept: dict[int, np.ndarray], pruned: onnx.ModelProto, ctx,
                       method: str = "mean", *, check: bool = True, positions: bool = False
                       ) -> tuple[onnx.ModelProto, CompensationResult, dict | None]:
    """api.prune's compensation stage: statistics (shared with vbp through ``ctx.cache``; with
    co-moments for lstsq), bias (and lstsq weight) update, ONNX checker, and (``check``) a run on the
    first calibration batch: for ``mean`` the compensated model must equal the mean-substituted
    original there (where that is exact); ``lstsq`` has no closed-form reference, its outputs must be
    finite. Returns (model, result, check summary or None)."""
    from onnxprune.scoring.calibration import cached_stats
    from onnxprune.verify.oracle import compare_models, needs_plain_execution, run_model, verify_tolerance

    if positions:
        check_static_positions(pruned)
    stats = cached_stats(ctx, compensation_spaces(analysis, kept), cov=method == "lstsq", positions=positions)
    res = compensate(analysis, kept, pruned, stats, method, positions=positions)
    try:
        check_model_light(res.model)
    except Exception as e:
        raise InternalError("internal error: the compensated model fails the ONNX checker: "
                             f"{first_line(e)}") from None
    summary = None
    if check and (res.nodes or res.refit):
        feeds = next(iter(ctx.calib))
        if method == "lstsq":
            outs = run_model(res.model, feeds)
            finite = bool(all(np.all(np.isfinite(o)) for o in outs))
            summary = dict(reference=None, finite_outputs=finite, inputs="first calibration batch")
            if not finite:
                raise InternalError("internal error: the lstsq-compensated model gives non-finite outputs")
            return res.model, res, summary
        ref = mean_substituted_model(analysis, kept, mean_compensable(analysis, kept, stats)[0], positions)
        cmp = compare_models(ref, res.model, [feeds], rel_tol=verify_tolerance(ref)[0],
                             optimize=not needs_plain_execution(ref))
        exact = res.approximate == 0
        summary = dict(reference="original with removed channels replaced by their calibration mean"
                       + (" at each position" if positions else ""),
                       max_abs_diff=cmp.max_abs_diff, tolerance=cmp.tolerance, exact_expected=exact,
                       passed=bool(cmp.passed) if exact else None, inputs="first calibration batch")
        if exact and not cmp.passed:
            raise InternalError(f"internal error: mean compensation differs from the mean-substituted original "
                                 f"by {cmp.max_abs_diff:.3e} (tolerance {cmp.tolerance:.3e})")
    return res.model, res, summary

