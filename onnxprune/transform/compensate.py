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

from onnxprune.analysis.graph import attr
from onnxprune.analysis.groups import Analysis
from onnxprune.analysis.rules import CompensationTarget, Space, rule_for
from onnxprune.errors import InternalError, OnnxPruneError, first_line
from onnxprune.model.external import read_tensor
from onnxprune.model.load import validate_model
from onnxprune.model.runtime import ort_session
from onnxprune.model.shapes import check_model_light
from onnxprune.scoring.calibration import SpaceStats, activation_spaces, cached_stats
from onnxprune.scoring.recon import consumer_weight
from onnxprune.transform.rewrite import kept_positions
from onnxprune.verify.oracle import (compare_models, io_positions, masked_model, needs_plain_execution, run_model,
                                     split_feeds, verify_tolerance)
from onnxprune.verify.rounding import accumulations


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


@dataclass
class ConsumerDelta:
    """What one consumer's output gains from the constants standing in for its removed inputs."""
    output: str
    y_axis: int | None  # the output's channel axis; None: ``delta`` is a per-position map [1, ...]
    delta: np.ndarray   # over the ORIGINAL output channels (positions)
    approximate: bool   # exact away from padded borders only
    target: CompensationTarget | None  # None for a per-position map


@dataclass
class Refit:
    """lstsq: a consumer's weight with A folded in (original output channels x kept input channels)."""
    weight: np.ndarray
    target: CompensationTarget


@dataclass
class BiasDeltas:
    """bias_deltas' result. ``skipped``: consumers that cannot be compensated; ``mean_fallback``
    (lstsq): consumers compensated by the mean only; ``position_fallback`` (per-position): consumers
    given per-channel constants."""
    positions: dict[Space, np.ndarray]  # kept positions of every pruned space
    deltas: dict[int, ConsumerDelta] = field(default_factory=dict)  # by consumer node index
    refits: dict[int, Refit] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    mean_fallback: list[str] = field(default_factory=list)
    position_fallback: list[str] = field(default_factory=list)


def bias_deltas(analysis: Analysis, kept: dict[int, np.ndarray], stats: dict[tuple[str, int], SpaceStats],
                lstsq: bool = False, positions: bool = False) -> BiasDeltas:
    """Per consumer node (a node whose rule gives a CompensationTarget for the mixing input): the
    change of its output, over the ORIGINAL output channels. With ``lstsq``, also the refit weights.

    ``positions``: the constants are per position (see position_fill): the delta is the consumer's
    whole response to the fill map, shape [1, *output.shape[1:]] over the original output channels,
    with output axis None; consumers without per-position statistics get the per-channel constant."""
    view = analysis.view
    out = BiasDeltas(kept_positions(analysis, kept))
    for k, res in analysis.node_results.items():
        for (t, a) in res.mixes:
            if t in view.consts or (t, a) not in out.positions or (t, a) not in stats:
                continue
            removed = np.setdiff1d(np.arange(view.shape(t)[a]), out.positions[(t, a)])
            if len(removed):
                _add_consumer(out, view, k, (t, a), stats[(t, a)], removed, lstsq, positions)
    return out


def _add_consumer(out: BiasDeltas, view, k: int, space: Space, st: SpaceStats, removed: np.ndarray,
                  lstsq: bool, positions: bool) -> None:
    """Add the delta of consumer k for its mixing input ``space`` (and its lstsq refit) to ``out``."""
    t, a = space
    keep = out.positions[space]
    node = view.nodes[k]
    rule = rule_for(node)
    target = rule.compensation_target(node, view, t, a) if rule is not None else None
    m, A = st.mean[removed], None
    if lstsq:
        w = None
        if st.c2 is not None and k not in out.refits:
            A, c = affine_fit(st, keep, removed, axis=a if positions else None)
            w = refit_weight(view, node, target, keep, removed, A)
        if w is not None:
            out.refits[k], m = Refit(w, target), c
        else:
            A = None
            out.mean_fallback.append(view.node_label(k))
    d = None
    if positions and st.pos_mean is not None:
        d = _position_delta(view, node, t, position_fill(st.pos_mean, a, keep, removed, A))
        if d is None:
            out.position_fallback.append(f"{view.node_label(k)} (a {node.op_type} with non-constant weights)")
    elif positions:
        out.position_fallback.append(f"{view.node_label(k)} ({t} {st.pos_note or 'has no per-position statistics'})")
    if d is None and target is not None:
        d = ConsumerDelta(node.output[0], target.y_axis, channel_delta(view, node, target, view.shape(t)[a],
                                                                       removed, m), target.approximate, target)
    _merge_delta(out, view, k, d)


def _merge_delta(out: BiasDeltas, view, k: int, d: ConsumerDelta | None) -> None:
    if d is None:
        out.skipped.append(view.node_label(k))
        return
    prev = out.deltas.get(k)
    if prev is None:
        out.deltas[k] = d
    elif (prev.y_axis is None) != (d.y_axis is None):
        out.skipped.append(view.node_label(k))  # mixed per-position and per-channel inputs: rare, left out
    else:
        prev.delta = prev.delta + d.delta
        prev.approximate = prev.approximate or d.approximate


def refit_weight(view, node, target: CompensationTarget | None, keep, removed, A):
    """The consumer's weight with A folded into its kept input columns (original output channels,
    kept inputs only; the node's own layout), or None where lstsq does not apply (grouped convs)."""
    if target is None or target.groups != 1:
        return None
    W = consumer_weight(view, node, target)
    new = W[:, keep] + np.einsum("mr...,rk->mk...", W[:, removed], A)
    return np.moveaxis(new, (0, 1), (target.out_axis, target.in_axis))


def channel_delta(view, node, target: CompensationTarget, cin: int, removed, m) -> np.ndarray:
    """scale x sum over removed c of m_c x (kernel sum of W[:, c]), over the outputs of c's group."""
    ksum = consumer_weight(view, node, target)
    ksum = ksum.reshape(ksum.shape[0], ksum.shape[1], -1).sum(2)  # (M, C/g)
    M = ksum.shape[0]
    cg, mg = cin // target.groups, M // target.groups
    delta = np.zeros(M)
    for c, mc in zip(removed, m):
        gi = c // cg
        delta[gi * mg:(gi + 1) * mg] += ksum[gi * mg:(gi + 1) * mg, c % cg] * mc
    return target.scale * delta


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


def _position_delta(view, node, t, fill) -> ConsumerDelta | None:
    """The consumer's response to ``fill`` at input ``t`` (its output on fill minus its output on zeros,
    every other input constant), run in ONNX Runtime: exact for any linear consumer (Conv of any
    group, stride or padding, ConvTranspose, Gemm, MatMul). None where the op is not linear or another
    input is not a constant."""
    rule = rule_for(node)
    if rule is None or not rule.linear:
        return None
    others = [i for i in node.input if i and i != t]
    if any(i not in view.consts for i in others) or list(node.input).count(t) != 1:
        return None
    if view.np_dtype(t).kind != "f":
        return None
    one = onnx.NodeProto()
    one.CopyFrom(node)
    one.input[:] = ["x" if i == t else i for i in node.input]
    one.output[:] = ["y"] + [""] * (len(node.output) - 1) if len(node.output) > 1 else ["y"]
    # in float32 whatever the model's float type: CPU kernels for float16 are few, and the map is
    # cast to the model's type when it is written
    x_info = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    y_info = helper.make_empty_tensor_value_info("y")
    inits = [numpy_helper.from_array(np.asarray(view.consts[i]).astype(np.float32)
                                     if np.asarray(view.consts[i]).dtype.kind == "f" else np.asarray(view.consts[i]), i)
             for i in dict.fromkeys(others)]
    g = helper.make_graph([one], "position_delta", [x_info], [y_info], inits)
    m = helper.make_model(g, opset_imports=list(view.model.opset_import))
    m.ir_version = view.model.ir_version
    x = np.concatenate([fill, np.zeros_like(fill)]).astype(np.float32)
    y = ort_session(m).run(None, {"x": x})[0].astype(np.float64)
    return ConsumerDelta(node.output[0], None, y[:1] - y[1:], False, None)


def channel_normalized_groups(analysis: Analysis) -> set[int]:
    """Groups with a member that some node normalizes or reduces over (LayerNorm/Softmax/Reduce on C)."""
    return {analysis.space_group[sp] for res in analysis.node_results.values() for sp in res.normalizes
            if sp in analysis.space_group}


def mean_compensable(analysis: Analysis, kept: dict[int, np.ndarray], stats: dict) -> tuple[dict, list[int]]:
    """The statistics mean compensation uses (groups through a channel normalization left out) and the
    pruned groups left out."""
    norm = channel_normalized_groups(analysis) & set(kept)
    return {sp: st for sp, st in stats.items() if analysis.space_group.get(sp) not in norm}, sorted(norm)


class GraphEditor:
    """The pruned model's graph while compensation edits it. Every changed constant is a fresh
    initializer (the old one may be shared); ``replaced`` maps each to the original initializer it
    stands in for."""

    def __init__(self, model: onnx.ModelProto):
        g = self.graph = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.replaced: dict[str, str] = {}
        self._uid = 0

    def fresh(self, base: str) -> str:
        self._uid += 1
        return f"{base}{COMP_SUFFIX}{self._uid}"

    def new_init(self, base: str, arr: np.ndarray, replaces: str | None = None) -> str:
        name = self.fresh(base)
        t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        self.graph.initializer.append(t)
        self.inits[name] = t
        if replaces is not None:
            self.replaced[name] = self.replaced.get(replaces, replaces)
        return name

    def add_to_input(self, node, slot: int, delta, dtype, shape) -> bool:
        """bias input `slot` += delta (broadcast along the last axis), or a new bias of ``shape``."""
        if len(node.input) > slot and node.input[slot]:
            name = node.input[slot]
            if name not in self.inits:
                return False
            old = read_tensor(self.inits[name]).astype(np.float64)
            try:
                new = old + delta  # (N,), (1, N) or (M, N) biases broadcast along their last axis
            except ValueError:
                return False
            if new.ndim > 1 and new.shape[:-1] != old.shape[:-1] and any(s > 1 for s in new.shape[:-1]):
                return False  # would turn a per-row broadcast bias into a fixed-batch one
            node.input[slot] = self.new_init(name, new.astype(dtype), replaces=name)
            return True
        while len(node.input) < slot:
            node.input.append("")
        node.input.append(self.new_init(f"{node.name or node.output[0]}.bias",
                                        np.asarray(delta, np.float64).reshape(shape).astype(dtype)))
        return True

    def add_after(self, node, y: str, delta, dtype) -> bool:
        """Add delta to the constant of the Add that follows ``y`` when it is the only consumer, else
        insert ``Add(y, delta)``."""
        users = self.consumers.get(y, [])
        delta = np.asarray(delta)
        if len(users) == 1 and users[0].op_type == "Add" and y not in self.outputs:
            add = users[0]
            slot = 1 if add.input[0] == y else 0
            other = add.input[slot]
            if other in self.inits:
                c = read_tensor(self.inits[other]).astype(np.float64)
                if delta.ndim == 1:
                    fits = c.ndim >= 1 and c.shape[-1] == len(delta) and all(s == 1 for s in c.shape[:-1])
                else:  # a per-position map: the constant must broadcast into it, so the Add keeps its shape
                    fits = c.ndim <= delta.ndim and _broadcasts_to(c.shape, delta.shape)
                if fits:
                    add.input[slot] = self.new_init(other, (c + delta).astype(dtype), replaces=other)
                    return True
        tmp = self.fresh(y)
        node.output[:] = [tmp if o == y else o for o in node.output]
        bname = self.new_init(f"{node.name or y}.bias", delta.astype(dtype))
        # the Add takes the old name: graph outputs and all former users read the compensated tensor
        g = self.graph
        idx = list(g.node).index(node)
        g.node.insert(idx + 1, helper.make_node("Add", [tmp, bname], [y], name=self.fresh(f"{node.name or y}_bias_add")))
        return True


def compensate(analysis: Analysis, kept: dict[int, np.ndarray], pruned: onnx.ModelProto,
               stats: dict[tuple[str, int], SpaceStats], method: str = "mean",
               positions: bool = False) -> CompensationResult:
    """``mean``: fold removed channels' means into the consumers' biases (not for groups through a
    channel normalization, see the module doc); ``lstsq``: refit the kept weight columns and biases
    from the calibration covariance (stats with co-moments, see affine_fit). ``positions``: the
    constants are per position (stats with per-position means): an Add of a [1, ...] map after each
    consumer instead of a bias."""
    view = analysis.view
    left_out = []
    if method == "mean":
        stats, left_out = mean_compensable(analysis, kept, stats)
    bd = bias_deltas(analysis, kept, stats, lstsq=method == "lstsq", positions=positions)
    m = onnx.ModelProto()
    m.CopyFrom(pruned)
    ed = GraphEditor(m)
    res = CompensationResult(m, mean_fallback=bd.mean_fallback, skipped=list(bd.skipped))
    if left_out:
        res.notes.append(f"mean compensation left out {len(left_out)} group(s) that pass a normalization over "
                         "channels (LayerNorm/Softmax/Reduce over C): removal changes the kept channels there too, "
                         "which a bias cannot stand in for: " + ", ".join(analysis.groups[g].name for g in left_out[:5]))
    for k, refit in bd.refits.items():
        _apply_refit(ed, view, k, refit, bd.positions)
        res.refit += 1
    map_params = 0
    for k, d in bd.deltas.items():
        if not _apply_delta(ed, view, d, bd.positions):
            res.skipped.append(view.node_label(k))
            continue
        res.nodes += 1
        res.approximate += int(d.approximate)
        res.position_maps += int(d.y_axis is None)
        map_params += int(d.delta.size) if d.y_axis is None else 0
    _drop_unused_initializers(m.graph)
    used = {t.name for t in m.graph.initializer}
    res.replaced = {new: old for new, old in ed.replaced.items() if new in used}
    res.position_fallback = bd.position_fallback
    res.notes.extend(_notes(method, positions, res, map_params))
    return res


def _apply_refit(ed: GraphEditor, view, k: int, refit: Refit, pos) -> None:
    """lstsq: the consumer's weight becomes the refit one, its output channels sliced as pruned."""
    tg = refit.target
    y = view.nodes[k].output[0]
    node = ed.producer.get(y)
    slot = tg.weight_input
    if node is None or len(node.input) <= slot or node.input[slot] not in ed.inits:
        raise InternalError(f"internal error: lstsq compensation lost the weight of {view.node_label(k)}")
    w = refit.weight
    if (y, tg.y_axis) in pos:
        w = np.take(w, pos[(y, tg.y_axis)], axis=tg.out_axis)
    old = ed.inits[node.input[slot]]
    if tuple(old.dims) != w.shape:
        raise InternalError(f"internal error: lstsq weight {w.shape} does not fit {tuple(old.dims)} "
                             f"at {view.node_label(k)}")
    dtype = helper.tensor_dtype_to_np_dtype(old.data_type)
    node.input[slot] = ed.new_init(node.input[slot], w.astype(dtype), replaces=node.input[slot])


def _apply_delta(ed: GraphEditor, view, d: ConsumerDelta, pos) -> bool:
    """Fold one consumer's delta (sliced to the written output channels) into the pruned model."""
    y, delta = d.output, d.delta
    if d.y_axis is None:  # a per-position map over the original output: keep the written positions
        for ax in range(1, delta.ndim):
            if (y, ax) in pos:
                delta = np.take(delta, pos[(y, ax)], axis=ax)
    elif (y, d.y_axis) in pos:
        delta = delta[pos[(y, d.y_axis)]]
    node = ed.producer.get(y)
    if node is None:
        return False
    dtype = helper.tensor_dtype_to_np_dtype(view.dtypes.get(y, onnx.TensorProto.FLOAT))
    if d.y_axis is None:
        return ed.add_after(node, y, delta, dtype)
    if d.target.bias_slot is not None and _fold_into_bias(ed, node, d.target, delta, dtype):
        return True
    # an Add after the output broadcasts along its last axis: right only where the channels are
    return d.y_axis == len(view.shape(y)) - 1 and ed.add_after(node, y, delta, dtype)


def _fold_into_bias(ed: GraphEditor, node, tg: CompensationTarget, delta, dtype) -> bool:
    """delta into the node's bias input (divided by the attribute that scales it, Gemm beta)."""
    slot = tg.bias_slot
    beta = float(attr(node, tg.bias_scale_attr, 1.0)) if tg.bias_scale_attr else 1.0
    has_bias = len(node.input) > slot and node.input[slot]
    if has_bias:
        return beta != 0.0 and node.input[slot] in ed.inits and ed.add_to_input(node, slot, delta / beta, dtype, None)
    ok = ed.add_to_input(node, slot, delta / (beta if beta != 0.0 else 1.0), dtype, shape=(len(delta),))
    if beta == 0.0:
        _set_attr(node, tg.bias_scale_attr, 1.0)
    return ok


def _notes(method: str, positions: bool, res: CompensationResult, map_params: int) -> list[str]:
    notes = []
    n_maps, fallback, pos_fallback, skipped = res.position_maps, res.mean_fallback, res.position_fallback, res.skipped
    if method == "lstsq":
        notes.append(f"lstsq compensation: kept weight columns of {res.refit} consumer(s) refit"
                     + (f"; mean only at {len(fallback)} (grouped conv or no covariance): "
                        + ", ".join(fallback[:5]) if fallback else ""))
    if positions:
        notes.append(f"per-position {method} compensation: a constant map added after {n_maps} consumer(s) "
                     f"({map_params:,} values)"
                     + (f"; per-channel constants at {len(pos_fallback)}: " + ", ".join(pos_fallback[:5])
                        if pos_fallback else ""))
    if res.nodes - n_maps:
        msg = f"{method} compensation: biases of {res.nodes - n_maps} consumer(s) updated"
        if res.approximate:
            msg += (f"; {res.approximate} of them are padded convs, where it is exact away from the borders "
                    "only (border windows see zero padding, not the mean)")
        notes.append(msg)
    if skipped:
        notes.append(f"mean compensation skipped at {len(skipped)} consumer(s) it cannot fold into a bias: "
                     + ", ".join(skipped[:5]))
    return notes


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
    if positions:
        check_static_positions(pruned)
    stats = cached_stats(ctx, compensation_spaces(analysis, kept), cov=method == "lstsq", positions=positions)
    res = compensate(analysis, kept, pruned, stats, method, positions=positions)
    try:
        check_model_light(res.model)
    except Exception as e:
        # held to what the input meets: ORT GenAI graphs use ops the checker does not know
        # (SimplifiedLayerNormalization in the default domain), and ONNX Runtime loads them
        if validate_model(analysis.view.model, full=True) is None:
            raise InternalError("internal error: the compensated model fails the ONNX checker: "
                                f"{first_line(e)}") from None
        validate_model(res.model, "the compensated model")
    summary = None
    if check and (res.nodes or res.refit):
        feeds = next(iter(ctx.calib))
        io = io_positions(analysis, kept)  # a KV cache that shrank: the pruned model reads its kept slices
        if method == "lstsq":
            outs = run_model(res.model, split_feeds([feeds], io)[1][0])
            finite = bool(all(np.all(np.isfinite(o)) for o in outs))
            summary = dict(reference=None, finite_outputs=finite, inputs="first calibration batch")
            if not finite:
                raise InternalError("internal error: the lstsq-compensated model gives non-finite outputs")
            return res.model, res, summary
        ref = mean_substituted_model(analysis, kept, mean_compensable(analysis, kept, stats)[0], positions)
        cmp = compare_models(ref, res.model, [feeds], rel_tol=verify_tolerance(ref)[0],
                             optimize=not needs_plain_execution(ref), rounding=accumulations(analysis), io=io)
        exact = res.approximate == 0
        summary = dict(reference="original with removed channels replaced by their calibration mean"
                       + (" at each position" if positions else ""),
                       max_abs_diff=cmp.max_abs_diff, tolerance=cmp.tolerance, exact_expected=exact,
                       passed=bool(cmp.passed) if exact else None, inputs="first calibration batch")
        if exact and not cmp.passed:
            raise InternalError(f"internal error: mean compensation differs from the mean-substituted original "
                                 f"by {cmp.max_abs_diff:.3e} (tolerance {cmp.tolerance:.3e})")
    return res.model, res, summary

