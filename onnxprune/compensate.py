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

The rewrite is checked by the mask oracle *before* compensation; compensation only touches biases.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .analyze import Analysis
from .calib import SpaceStats, activation_spaces
from .graph import attr
from .rewrite import kept_positions


@dataclass
class CompensationResult:
    model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    nodes: int = 0          # consumers whose bias changed
    approximate: int = 0    # of those, padded convs (compensation exact away from the borders only)
    skipped: list[str] = field(default_factory=list)


def compensation_spaces(analysis: Analysis, kept: dict[int, np.ndarray]) -> list[tuple[str, int]]:
    """Activation mixing spaces of the pruned groups (where removed channels need a mean)."""
    return activation_spaces(analysis, [analysis.groups[g] for g in kept])


def bias_deltas(analysis: Analysis, kept: dict[int, np.ndarray], stats: dict[tuple[str, int], SpaceStats]):
    """Per consumer node index: (output tensor, output axis, delta over the ORIGINAL output channels,
    approximate?). Nodes that cannot be compensated are returned in `skipped`."""
    view = analysis.view
    pos = kept_positions(analysis, kept)
    deltas: dict[int, list] = {}
    skipped = []
    for k, res in analysis.node_results.items():
        for (t, a) in res.mixes:
            if t in view.consts or (t, a) not in pos or (t, a) not in stats:
                continue
            size = view.shape(t)[a]
            removed = np.setdiff1d(np.arange(size), pos[(t, a)])
            if len(removed) == 0:
                continue
            m = stats[(t, a)].mean[removed]
            node = view.nodes[k]
            d = _delta(view, node, t, a, removed, m)
            if d is None:
                skipped.append(view.node_label(k))
                continue
            y, y_axis, delta, approx = d
            if k in deltas:
                deltas[k][2] = deltas[k][2] + delta
                deltas[k][3] = deltas[k][3] or approx
            else:
                deltas[k] = [y, y_axis, delta, approx]
    return deltas, skipped, pos


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
    view = analysis.view
    deltas, skipped, pos = bias_deltas(analysis, kept, stats)
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
        return f"{base}__meancomp{uid[0]}"

    res = CompensationResult(m)
    for k, (y, y_axis, delta, approx) in deltas.items():
        if (y, y_axis) in pos:
            delta = delta[pos[(y, y_axis)]]
        node = producer.get(y)
        if node is None:
            skipped.append(view.node_label(k))
            continue
        dtype = helper.tensor_dtype_to_np_dtype(view.dtypes.get(y, onnx.TensorProto.FLOAT))
        ok = False
        if node.op_type == "Conv":
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
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not ok):
            ok = _add_after(node, y, delta, dtype, inits, g, fresh, consumers, outputs)
        if not ok:
            skipped.append(view.node_label(k))
            continue
        res.nodes += 1
        res.approximate += int(approx)
    res.skipped = skipped
    if res.nodes:
        msg = f"mean compensation: biases of {res.nodes} consumer(s) updated"
        if res.approximate:
            msg += (f"; {res.approximate} of them are padded convs, where it is exact away from the borders "
                    "only (border windows see zero padding, not the mean)")
        res.notes.append(msg)
    if skipped:
        res.notes.append(f"mean compensation skipped at {len(skipped)} consumer(s) it cannot fold into a bias: "
                         + ", ".join(skipped[:5]))
    return res


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
    if len(users) == 1 and users[0].op_type == "Add" and y not in outputs:
        add = users[0]
        slot = 1 if add.input[0] == y else 0
        other = add.input[slot]
        if other in inits:
            c = numpy_helper.to_array(inits[other]).astype(np.float64)
            if c.ndim >= 1 and c.shape[-1] == len(delta) and all(s == 1 for s in c.shape[:-1]):
                add.input[slot] = _new_init(g, inits, fresh, other, (c + delta).astype(dtype))
                return True
    tmp = fresh(y)
    node.output[:] = [tmp if o == y else o for o in node.output]
    bname = _new_init(g, inits, fresh, f"{node.name or y}.bias", np.asarray(delta).astype(dtype))
    # the Add takes the old name: graph outputs and all former users read the compensated tensor
    idx = list(g.node).index(node)
    g.node.insert(idx + 1, helper.make_node("Add", [tmp, bname], [y], name=fresh(f"{node.name or y}_bias_add")))
    return True


def mean_substituted_model(analysis: Analysis, kept: dict[int, np.ndarray],
                           stats: dict[tuple[str, int], SpaceStats]) -> onnx.ModelProto:
    """The original model with every removed channel replaced by its calibration mean where it
    enters a mixing node: ``Where(mask, x, mean)`` (channel-axis normalizations over the kept
    channels only, as in the mask oracle). The compensated pruned model equals it exactly when every
    compensated consumer is a Gemm, a MatMul or an unpadded conv."""
    from .oracle import masked_model

    fill = {sp: s.mean for sp, s in stats.items()}
    return masked_model(analysis, kept, fill=fill)


def apply_mean_compensation(analysis: Analysis, kept: dict[int, np.ndarray], pruned: onnx.ModelProto, ctx, *,
                            check: bool = True) -> tuple[onnx.ModelProto, CompensationResult, dict | None]:
    """api.prune's compensation stage: statistics (shared with vbp through ``ctx.cache``), bias
    update, ONNX checker, and (``check``) the compensated model against the mean-substituted original
    on the first calibration batch. Returns (model, result, check summary or None)."""
    from .calib import cached_stats
    from .errors import OnnxPruneError
    from .oracle import compare_models

    stats = cached_stats(ctx, compensation_spaces(analysis, kept))
    res = compensate_mean(analysis, kept, pruned, stats)
    try:
        onnx.checker.check_model(res.model, full_check=True)
    except Exception as e:
        raise OnnxPruneError("internal error: the compensated model fails the ONNX checker: "
                             f"{str(e).splitlines()[0]}") from None
    summary = None
    if check and res.nodes:
        feeds = next(iter(ctx.calib))
        cmp = compare_models(mean_substituted_model(analysis, kept, stats), res.model, [feeds])
        exact = res.approximate == 0
        summary = dict(reference="original with removed channels replaced by their calibration mean",
                       max_abs_diff=cmp.max_abs_diff, tolerance=cmp.tolerance, exact_expected=exact,
                       passed=bool(cmp.passed) if exact else None, inputs="first calibration batch")
        if exact and not cmp.passed:
            raise OnnxPruneError(f"internal error: mean compensation differs from the mean-substituted original "
                                 f"by {cmp.max_abs_diff:.3e} (tolerance {cmp.tolerance:.3e})")
    return res.model, res, summary
