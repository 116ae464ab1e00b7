"""The mask oracle: the original model with removed channels zeroed where they enter a node that
mixes channels (Conv/Gemm/MatMul inputs), and with channel-axis normalizations (LayerNorm over C,
Softmax/Reduce over C) computed over the kept channels only. A correct rewrite equals it exactly
(to float tolerance) on any input."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis.groups import Analysis
from onnxprune.analysis.rules import rule_for
from onnxprune.errors import InternalError, OnnxPruneError, first_line
from onnxprune.model.runtime import SessionPurpose, ort_session
from onnxprune.transform.rewrite import kept_positions
from onnxprune.verify.rounding import Accumulation, rounding_floor, with_rounding_noise
from onnxprune.verify.rounding import tolerance as rounding_tolerance


def masked_model(analysis: Analysis, kept: dict[int, np.ndarray], fill: dict | None = None) -> onnx.ModelProto:
    """``fill``: optional {(tensor, axis): per-position values} put in place of zeros (the
    mean-substituted oracle of mean compensation, see compensate.py)."""
    view = analysis.view
    pos = kept_positions(analysis, kept)
    m = onnx.ModelProto()
    m.CopyFrom(view.model)
    g = m.graph
    new_nodes, inits = [], []
    masked: dict[tuple[str, int], str] = {}
    uid = [0]

    def name(base):
        uid[0] += 1
        return f"__oracle_{uid[0]}_{base}"

    def mask_of(t, a, neutral=""):
        """``neutral``: a tensor a removed channel takes instead of zero (an integer op's zero point)."""
        if (t, a, neutral) in masked:
            return masked[(t, a, neutral)]
        r = len(view.shape(t))
        mshape = [1] * r
        mshape[a] = view.shape(t)[a]
        mk = np.zeros(view.shape(t)[a], dtype=bool)
        mk[pos[(t, a)]] = True
        mn, zn, out = name("mask"), name("zero"), name(t)
        zero = np.zeros((), dtype=view.np_dtype(t))
        if fill is not None and (t, a) in fill:
            zero = np.asarray(fill[(t, a)])
            # a per-channel vector, or a full [1, ...] map of per-position values (used as it is)
            zero = (zero if zero.ndim == r else zero.reshape(mshape)).astype(view.np_dtype(t))
        if view.opset >= 9:  # Where: a removed channel holding inf/nan is zeroed too
            inits.append(numpy_helper.from_array(mk.reshape(mshape), mn))
            if neutral:
                zn = neutral
            else:
                inits.append(numpy_helper.from_array(zero, zn))
            new_nodes.append(helper.make_node("Where", [mn, t, zn], [out], name=name("Where")))
        else:  # no Where before opset 9: multiply by a 0/1 mask
            inits.append(numpy_helper.from_array(mk.reshape(mshape).astype(view.np_dtype(t)), mn))
            if zero.ndim:  # fill values: x * mask + fill * (1 - mask)
                inits.append(numpy_helper.from_array((zero * ~mk.reshape(mshape)).astype(zero.dtype), zn))
                mul = name("mul")
                new_nodes.append(helper.make_node("Mul", [t, mn], [mul], name=name("Mul")))
                new_nodes.append(helper.make_node("Add", [mul, zn], [out], name=name("Add")))
            else:
                new_nodes.append(helper.make_node("Mul", [t, mn], [out], name=name("Mul")))
        masked[(t, a, neutral)] = out
        return out

    for k, node in enumerate(list(g.node)):
        res = analysis.node_results.get(k)
        node = onnx.NodeProto()
        node.CopyFrom(g.node[k])
        if res is not None:
            rule = rule_for(node)
            for (t, a) in res.mixes:
                if (t, a) in pos and t not in view.consts:
                    neutral = rule.removed_value(node, t) if rule is not None else ""
                    node.input[:] = [mask_of(t, a, neutral) if i == t else i for i in node.input]
            norms = [(t, a) for (t, a) in res.normalizes if (t, a) in pos]
            if norms:
                new_nodes.extend(_over_kept(view, node, norms, pos, inits, name))
                continue
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    g.ClearField("value_info")
    return m


def _over_kept(view, node, norms, pos, inits, name):
    """Gather kept channels before the node, run it, scatter outputs back (zeros elsewhere)."""
    nodes = []
    (t, a), = norms[:1]
    idx = pos[(t, a)]
    n_in = view.shape(t)[a]
    iname = name("idx")
    inits.append(numpy_helper.from_array(idx.astype(np.int64), iname))
    new_inputs = list(node.input)
    for slot, inp in enumerate(node.input):
        if not inp:
            continue
        s = view.shape(inp)
        if inp == t:
            g_out = name("gathered")
            nodes.append(helper.make_node("Gather", [inp, iname], [g_out], axis=a, name=name("Gather")))
            new_inputs[slot] = g_out
        elif inp in view.consts and (inp, len(s) - (len(view.shape(t)) - a)) in pos:
            pa = len(s) - (len(view.shape(t)) - a)  # a per-channel parameter (LayerNorm scale/bias)
            arr = np.take(view.consts[inp], pos[(inp, pa)], axis=pa)
            cn = name(inp)
            inits.append(numpy_helper.from_array(arr, cn))
            new_inputs[slot] = cn
        elif s is not None and (inp, len(s) - (len(view.shape(t)) - a)) in pos:
            # a second data input on the same channels (SkipLayerNormalization's skip)
            pa = len(s) - (len(view.shape(t)) - a)
            other = name("idx")
            inits.append(numpy_helper.from_array(pos[(inp, pa)].astype(np.int64), other))
            g_out = name("gathered")
            nodes.append(helper.make_node("Gather", [inp, other], [g_out], axis=pa, name=name("Gather")))
            new_inputs[slot] = g_out
    node.input[:] = new_inputs
    outs = list(node.output)
    scatter = []
    for j, o in enumerate(outs):
        so = view.shape(o) if o else None
        # the output axis on these channels: usually axis a; EmbedLayerNormalization's tables
        # carry them on axis 1 of a rank-2 table, its output on the last axis
        axes = [b for b in range(len(so or ())) if so[b] == n_in and (o, b) in pos]
        if len(axes) == 1:
            tmp = name(o)
            node.output[j] = tmp
            scatter.append((tmp, o, axes[0]))
    nodes.append(node)
    for tmp, o, a in scatter:
        # positions of kept channels -> their rank; removed ones -> index of an appended zero slice
        src = np.full(n_in, len(idx), dtype=np.int64)
        src[idx] = np.arange(len(idx))
        sname, z1, zz, cat = name("src"), name("z1"), name("zz"), name("cat")
        inits.append(numpy_helper.from_array(src, sname))
        if view.opset >= 10:
            st, en, ax = name("st"), name("en"), name("ax")
            inits += [numpy_helper.from_array(np.array([0], np.int64), st),
                      numpy_helper.from_array(np.array([1], np.int64), en),
                      numpy_helper.from_array(np.array([a], np.int64), ax)]
            nodes.append(helper.make_node("Slice", [tmp, st, en, ax], [z1], name=name("Slice")))
        else:  # Slice-1: bounds are attributes
            nodes.append(helper.make_node("Slice", [tmp], [z1], starts=[0], ends=[1], axes=[a], name=name("Slice")))
        if view.opset >= 8:  # zeros of the output's type (Sub has no uint8 kernel: DynamicQuantizeLinear)
            zero, shp = name("zero"), name("shape")
            inits.append(numpy_helper.from_array(np.zeros((), view.np_dtype(o)), zero))
            nodes.append(helper.make_node("Shape", [z1], [shp], name=name("Shape")))
            nodes.append(helper.make_node("Expand", [zero, shp], [zz], name=name("Expand")))
        else:
            nodes.append(helper.make_node("Sub", [z1, z1], [zz], name=name("Sub")))
        nodes.append(helper.make_node("Concat", [tmp, zz], [cat], axis=a, name=name("Concat")))
        nodes.append(helper.make_node("Gather", [cat, sname], [o], axis=a, name=name("Gather")))
    return nodes


@dataclass
class VerifyResult:
    max_abs_diff: float
    scale: float
    tolerance: float
    passed: bool
    per_output: dict[str, float]
    mismatched: dict[str, int] = field(default_factory=dict)  # integer/bool outputs: differing elements
    rounding_floor: float | None = None  # how far rounding alone moved the reference (see rounding.py)


IoCuts = dict[str, list[tuple[int, np.ndarray]]]  # graph input/output name -> [(axis, kept positions)]


def io_positions(analysis: Analysis, kept: dict[int, np.ndarray]) -> IoCuts:
    """The kept positions of every resized graph input/output axis (``analysis.resized_io``: KV
    caches that shrink with their group), for compare_models' ``io``."""
    pos = kept_positions(analysis, kept)
    out: IoCuts = {}
    for (t, a) in analysis.resized_io:
        if (t, a) in pos:
            out.setdefault(t, []).append((a, pos[(t, a)]))
    return out


def take_kept(arr: np.ndarray, cuts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The kept slices of a full-size input/output (the pruned model's view of it)."""
    for a, p in cuts:
        arr = np.take(arr, p, axis=a)
    return arr


def zero_removed(arr: np.ndarray, cuts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """A full-size input with its removed slices zeroed (what the masked original is fed)."""
    arr = np.array(arr, copy=True)
    for a, p in cuts:
        drop = np.ones(arr.shape[a], dtype=bool)
        drop[p] = False
        idx = [slice(None)] * arr.ndim
        idx[a] = drop
        arr[tuple(idx)] = 0
    return arr


def split_feeds(feeds_list: list[dict], io: IoCuts | None) -> tuple[list[dict], list[dict]]:
    """(reference feeds, candidate feeds): resized inputs zeroed at removed positions for the masked
    original, cut to the kept positions for the pruned model."""
    if not io:
        return feeds_list, feeds_list
    ref = [{k: zero_removed(v, io[k]) if k in io else v for k, v in f.items()} for f in feeds_list]
    cand = [{k: take_kept(v, io[k]) if k in io else v for k, v in f.items()} for f in feeds_list]
    return ref, cand


def compare_models(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds_list: list[dict],
                   rel_tol: float = 1e-4, optimize: bool = True,
                   rounding: list[Accumulation] | None = None, io: IoCuts | None = None) -> VerifyResult:
    """Run both on the same inputs; pass when max |diff| <= rel_tol x max |reference output|, or,
    with ``rounding`` (the reference's accumulating nodes), within what float rounding alone moves
    the reference's outputs (rounding.tolerance). `optimize=False` runs both as written, op by op
    (see needs_plain_execution). ``io`` (io_positions): graph inputs/outputs the candidate has cut to
    kept positions (a pruned KV cache): the reference gets zeros there, its outputs are compared at
    the kept positions."""
    names = [o.name for o in reference.graph.output]
    feeds_list, cand_feeds = split_feeds(feeds_list, io)
    # one session at a time: a large model's weights are held once more by each
    purpose = SessionPurpose(optimize=optimize)
    try:
        refs = _run_all(reference, purpose, "masked original", names, feeds_list)
    except OnnxPruneError:
        raise
    except Exception as e:  # the original itself (masks only zero channels) does not run
        raise OnnxPruneError(f"ONNX Runtime cannot run the model on random inputs: {first_line(e)}") from None
    floor = None
    if rounding:
        try:
            probed = _run_all(with_rounding_noise(reference, rounding), purpose, "rounding probe", names, feeds_list)
            floor = rounding_floor(refs, probed)
        except Exception:  # noqa: BLE001 (ORT's own types)
            floor = None  # no probe (a type RandomNormalLike lacks): the plain tolerance, reported as such
    try:
        cands = _run_all(candidate, purpose, "pruned model", names, cand_feeds)
    except OnnxPruneError:
        raise
    except Exception as e:
        raise InternalError(f"internal error: the pruned model does not run in ONNX Runtime: "
                            f"{first_line(e)}; nothing written") from None
    if io:
        refs = [[take_kept(o, io[n]) if n in io else o for n, o in zip(names, r)] for r in refs]
    worst, scale, per, mismatched = _differences(names, refs, cands)
    tol = rounding_tolerance(rel_tol, scale, floor or 0.0)
    return VerifyResult(worst, scale, tol, bool(worst <= tol and not mismatched), per, mismatched, floor)


def _run_all(model: onnx.ModelProto, purpose: SessionPurpose, what: str, names: list[str],
             feeds_list: list[dict]) -> list[list[np.ndarray]]:
    sess = ort_session(model, purpose, what=what)
    return [sess.run(names, feeds) for feeds in feeds_list]


def _differences(names, refs, cands) -> tuple[float, float, dict[str, float], dict[str, int]]:
    """(max |diff| of float outputs, max |reference float output| (1 where none), per output max
    |diff|, differing elements of integer/bool outputs)."""
    worst, scale, per, mismatched = 0.0, 0.0, {}, {}
    for r, c in zip(refs, cands):
        for n, a, b in zip(names, r, c):
            discrete = np.asarray(a).dtype.kind in "iub"  # indices, classes, masks: exact, not scaled
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape != b.shape:
                raise OnnxPruneError(f"verification failed: output '{n}' has shape {b.shape}, expected {a.shape}")
            per[n] = max(per.get(n, 0.0), _max_abs_diff(a, b))
            if discrete:
                wrong = int(np.sum(a != b))
                if wrong:
                    mismatched[n] = mismatched.get(n, 0) + wrong
                continue
            worst = max(worst, per[n])
            fin = a[np.isfinite(a)]
            scale = max(scale, float(np.max(np.abs(fin))) if fin.size else 0.0)
    return worst, (scale if scale > 0 else 1.0), per, mismatched


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, where a NaN/Inf in one output that the other does not have at the same place is an
    infinite difference (a plain max would skip NaN and let a broken model pass)."""
    if not a.size:
        return 0.0
    fa, fb = np.isfinite(a), np.isfinite(b)
    same_nonfinite = ~fa & ~fb & ((a == b) | (np.isnan(a) & np.isnan(b)))
    if np.any((fa != fb) | (~fa & ~fb & ~same_nonfinite)):
        return float("inf")
    both = fa & fb
    return float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0


# Verification tolerance relative to the output scale, by the narrowest float type the model
# computes in: removing channels changes the accumulation order (kernel blocking), which moves
# results by a few ulps of that type per layer.
REL_TOL = {TensorProto.FLOAT: 1e-4, TensorProto.DOUBLE: 1e-4, TensorProto.FLOAT16: 1e-2, TensorProto.BFLOAT16: 5e-2}


def verify_tolerance(model: onnx.ModelProto) -> tuple[float, str | None]:
    """(relative tolerance, name of the half-precision type that set it, if any)."""
    g = model.graph
    types = {t.data_type for t in g.initializer}
    types |= {v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types |= {a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    half = [t for t in (TensorProto.BFLOAT16, TensorProto.FLOAT16) if t in types]
    if not half:
        return REL_TOL[TensorProto.FLOAT], None
    return REL_TOL[half[0]], TensorProto.DataType.Name(half[0]).lower()


def needs_plain_execution(model: onnx.ModelProto) -> bool:
    """QDQ models: ONNX Runtime's optimizer fuses DequantizeLinear -> op -> QuantizeLinear into integer
    kernels where the pattern matches, and the oracle's mask Muls break some of those patterns, so the
    two models would round differently. Op by op, both compute exactly what the graph says."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul")
               for n in model.graph.node)


def run_model(model: onnx.ModelProto, feeds: dict, what: str = "compensated model") -> list[np.ndarray]:
    """All outputs of `model` on one feed dict (ONNX Runtime CPU)."""
    return ort_session(model, what=what).run(None, feeds)
