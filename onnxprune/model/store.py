"""Load, validate, normalize and save ONNX models.

Normalization makes exporter variety disappear before analysis: weights held in Constant nodes or
behind Identity/Cast/DequantizeLinear of constants become initializers, IR<4 graphs that list
initializers as inputs lose those inputs, and shape computations on static dims are folded.
Symbolic dims are kept: the written model must accept what the original accepted.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import OnnxPruneError, first_line

DEQUANTIZED_KEY = "onnxprune:dequantized"  # normalized model -> rewrite: weights folded from DQ
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with its external data; every failure becomes one clear line."""
    p = Path(path)
    if not p.exists():
        raise OnnxPruneError(f"input file not found: {p}")
    if p.is_dir():
        raise OnnxPruneError(f"input path is a directory, not an ONNX file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise OnnxPruneError(f"{p} is not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'parse error'})") from None
    if not model.graph.node and not model.graph.output:
        raise OnnxPruneError(f"{p} is not an ONNX model (empty or not a ModelProto)")
    _load_external(model, p.parent)
    return sanitized(model)


def _load_external(model: onnx.ModelProto, base: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    missing = []
    for t in _all_tensors(model):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is None or not (base / loc).exists():
                missing.append(loc or "?")
    if missing:
        raise OnnxPruneError(
            f"external data file(s) missing next to the model: {', '.join(sorted(set(missing)))} (expected in {base})")
    try:
        load_external_data_for_model(model, str(base))
    except Exception as e:
        raise OnnxPruneError(f"cannot read external data: {e}") from None


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def validate_model(model: onnx.ModelProto, name: str = "model", full: bool = False) -> str | None:
    """Raise if the model is broken; return a note if only the (strict) checker objects but ONNX
    Runtime loads it, as exporters in the wild often leave e.g. output shapes out. `full` adds the
    checker's type and shape inference (as slow as the plain check on large models)."""
    try:
        onnx.checker.check_model(model, full_check=full)
        return None
    except Exception as e:
        first = first_line(e)
    if not custom_ops(model):
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.log_severity_level = 4
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return f"the ONNX checker objects ({first}) but ONNX Runtime loads the model"
        except Exception as e:
            # ONNX Runtime's reason is usually the precise one (the checker stops at its first complaint)
            raise OnnxPruneError(f"{name} is not a valid model: ONNX Runtime cannot load it ({first_line(e)}); "
                                 f"the ONNX checker says {first}") from None
    raise OnnxPruneError(f"{name} is not a valid model: the ONNX checker says {first}")


def custom_ops(model: onnx.ModelProto) -> list[str]:
    # a call of a model-local function is not a custom op: ONNX Runtime runs its body
    local = {(f.domain, f.name) for f in model.functions}
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node
                   if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local})


def sanitized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, or a fixed copy where it has legal ONNX that ONNX Runtime mishandles: trailing
    empty optional outputs (BatchNormalization(..., ["y", "", ""]) crashes ORT) and duplicate node
    names (ORT refuses the model). Neither is part of the model's interface."""
    if not _needs_sanitizing(model.graph):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _sanitize_graph(m.graph, set())
    return m


def _subgraphs(g: onnx.GraphProto):
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield a.g
            elif a.type == onnx.AttributeProto.GRAPHS:
                yield from a.graphs


def _needs_sanitizing(g: onnx.GraphProto, seen: set | None = None) -> bool:
    seen = set() if seen is None else seen
    for n in g.node:
        if n.output and not n.output[-1]:
            return True
        if n.name:
            if n.name in seen:
                return True
            seen.add(n.name)
    return any(_needs_sanitizing(sg, seen) for sg in _subgraphs(g))


def _sanitize_graph(g: onnx.GraphProto, names: set[str]) -> None:
    """In place; `names` holds node names already used (across subgraphs too, so renames stay unique)."""
    dups = []
    for n in g.node:
        while n.output and not n.output[-1]:
            n.output.pop()
        if n.name:
            if n.name in names:
                dups.append(n)
            else:
                names.add(n.name)
    for n in dups:  # later duplicates get a suffix; the first keeps its name
        k = 1
        while f"{n.name}_{k}" in names:
            k += 1
        n.name = f"{n.name}_{k}"
        names.add(n.name)
    for sg in _subgraphs(g):
        _sanitize_graph(sg, names)


def opset_version(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 1


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a normalized copy (see module doc). Names of inputs/outputs and metadata are kept."""
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # constant folding runs ORT; its optimizer chatter is noise here
    m = onnx.ModelProto()
    m.CopyFrom(sanitized(model))
    if m.functions:  # model-local functions (dynamo/onnxscript exports): analyze their bodies like any op
        try:
            m = onnx.inliner.inline_local_functions(m)
        except Exception:
            pass  # left as calls: frozen like unknown ops, yet ORT still runs them
        _sanitize_graph(m.graph, set())
    _constant_attrs_to_tensors(m.graph)
    g = m.graph
    # a dim of -1 or 0 in a declared shape (paddle2onnx after Polygraphy folding) means "unknown":
    # spell it as a symbolic dim, as shape inference and ONNX Runtime read it
    k = 0
    for v in [*g.input, *g.output, *g.value_info]:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.dim_param = f"unk__dim{k}"
                k += 1
    # IR < 4 (old Caffe2 exports): initializers also listed as graph inputs. Treat them as weights.
    init_names = {t.name for t in g.initializer}
    keep_inputs = [i for i in g.input if i.name not in init_names]
    if len(keep_inputs) != len(g.input):
        del g.input[:]
        g.input.extend(keep_inputs)
        if m.ir_version < 4:
            m.ir_version = 4
    fold = dict(error_ok=True, should_exclude_node=lambda n: (n.domain or "") not in STANDARD_DOMAINS)
    dtypes = _elem_types(m)
    dequantized: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Rounds of (shape inference with data propagation, constant folding) while the graph
        # shrinks: a round turns Constant nodes into constants and lets the next infer static dims
        # through computed Reshape targets, so Shape->Gather/Slice of static dims fold
        # (TorchScript's x.size(1) // 2 and friends). Symbolic dims stay symbolic.
        for _ in range(4):
            try:
                m = with_inferred_shapes(m, data_prop=True)
            except Exception:
                pass
            _explicit_squeeze_axes(m)
            graph = gs.import_onnx(m)
            n_before = len(graph.nodes)
            graph.fold_constants(**fold)
            if _fold_dequantize(graph, dequantized):  # graphsurgeon never folds Q/DQ; weights behind DQ are weights
                graph.cleanup(remove_unused_graph_inputs=False)
                graph.fold_constants(**fold)
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            m = fold_static_shape_values(gs.export_onnx(graph, do_type_check=False))
            m.graph.ClearField("value_info")
            if len(m.graph.node) == n_before:
                break
        out = m
    _restore_dtypes(out, dtypes)
    _unshare_uniform_constants(out)
    _copy_model_fields(model, out)
    out.graph.ClearField("value_info")
    # Neither shape inference nor ONNX Runtime can give shapes past a custom op: keep what the
    # model itself declares for custom-op outputs, so the graph after them can still be analyzed.
    custom_outs = {t for n in out.graph.node if n.domain not in STANDARD_DOMAINS for t in n.output}
    out.graph.value_info.extend(vi for vi in model.graph.value_info
                                if vi.name in custom_outs and vi.type.tensor_type.HasField("shape"))
    # for requantize_weights (the written model keeps its integer weights): the folded weights that
    # are initializers now (not folded further, e.g. through a Transpose)
    dequantized = {k: v for k, v in dequantized.items() if k in {t.name for t in out.graph.initializer}}
    if dequantized:
        out.metadata_props.add(key=DEQUANTIZED_KEY, value=json.dumps(dequantized))
    return out


def _constant_attrs_to_tensors(g: onnx.GraphProto) -> None:
    """Constant(value_float(s)/value_int(s)) -> Constant(value=tensor) of the spec's dtype (float32,
    int64): graphsurgeon's folding would make float64 of a float attribute, so a Mul(x, 0.5) would
    mix float and double."""
    from onnx import helper

    kinds = {"value_float": (TensorProto.FLOAT, False), "value_floats": (TensorProto.FLOAT, True),
             "value_int": (TensorProto.INT64, False), "value_ints": (TensorProto.INT64, True)}
    for n in g.node:
        if n.op_type != "Constant" or n.domain not in ("", "ai.onnx") or len(n.attribute) != 1 \
                or n.attribute[0].name not in kinds:
            continue
        a = n.attribute[0]
        dtype, is_list = kinds[a.name]
        v = helper.get_attribute_value(a)
        t = helper.make_tensor(n.output[0], dtype, [len(v)] if is_list else [], list(v) if is_list else [v])
        del n.attribute[:]
        n.attribute.append(helper.make_attribute("value", t))
    for sg in _subgraphs(g):
        _constant_attrs_to_tensors(sg)


# Initializers bigger than this are never shape values (those are a handful of integers): shape
# inference and shape evaluation see them as typed inputs, so a large model's weights are not
# serialized (and copied) once more for each pass.
LIGHT_MAX_ELEMS = 1024


def _elems(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def light_model(m: onnx.ModelProto, max_elems: int = LIGHT_MAX_ELEMS) -> tuple[onnx.ModelProto, list]:
    """A copy of `m` without its large initializers' data: each becomes a graph input of the same
    type and shape. Returns (light model, the moved initializers' TensorProtos, not copied)."""
    from onnx import helper

    g = m.graph
    big = [t for t in g.initializer if _elems(t) > max_elems]
    light = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, f, getattr(m, f))
    light.opset_import.extend(m.opset_import)
    light.functions.extend(m.functions)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    big_names = {t.name for t in big}
    lg.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big
                    if t.name not in {i.name for i in g.input})
    lg.initializer.extend(t for t in g.initializer if t.name not in big_names)
    lg.sparse_initializer.extend(g.sparse_initializer)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    return light, big


def check_model_light(m: onnx.ModelProto) -> None:
    """onnx.checker (full: with type and shape inference) on light_model(m), for models this tool
    wrote: their large initializers come from numpy arrays, so their data is consistent by
    construction, and ONNX Runtime runs the full model right after (verification)."""
    onnx.checker.check_model(light_model(m)[0], full_check=True)


def infer_shapes_light(m: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """onnx shape inference on light_model(m): value_info and outputs as for `m` itself (raises as
    infer_shapes does)."""
    light, _ = light_model(m)
    return onnx.shape_inference.infer_shapes(light, data_prop=data_prop)


def with_inferred_shapes(m: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """`m` (changed in place) with the value_info and output types of shape inference."""
    inf = infer_shapes_light(m, data_prop).graph
    m.graph.ClearField("value_info")
    m.graph.value_info.extend(inf.value_info)
    del m.graph.output[:]
    m.graph.output.extend(inf.output)
    return m


def _unshare_uniform_constants(m: onnx.ModelProto, max_elems: int = 65536) -> None:
    """Give every node its own copy of a shared constant whose values are all equal (the dynamo
    exporter dedups e.g. the ones/zeros scale and bias of every GroupNorm's InstanceNormalization
    into one initializer). Shared weights tie the channels of their users; equal values do not."""
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    uses: dict[str, list[tuple[int, int]]] = {}
    for k, n in enumerate(g.node):
        for s, i in enumerate(n.input):
            if i in inits:
                uses.setdefault(i, []).append((k, s))
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    for name, us in uses.items():
        t = inits[name]
        if len({k for k, _ in us}) < 2 or not 1 < _elems(t) <= max_elems:
            continue
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind not in "fiu" or not np.all(arr == arr.reshape(-1)[0]):
            continue
        for j, (k, s) in enumerate(us[1:], 1):
            new = f"{name}__u{j}"
            while new in taken:
                new += "_"
            taken.add(new)
            g.initializer.append(numpy_helper.from_array(arr, new))
            g.node[k].input[s] = new


def _elem_types(m: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph whose type is known (inferred where not declared)."""
    try:
        inf = infer_shapes_light(m)
    except Exception:
        inf = m
    g = inf.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)
           if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    out.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = n.attribute[0].t.data_type
    return out


def _restore_dtypes(m: onnx.ModelProto, dtypes: dict[str, int]) -> None:
    """Folding must not change a tensor's element type (a consumer's type constraints expect the
    original one): cast folded initializers back where they drifted."""
    from onnx import helper

    for i, t in enumerate(m.graph.initializer):
        want = dtypes.get(t.name)
        if want and t.data_type != want and want not in (TensorProto.STRING, TensorProto.UNDEFINED):
            try:
                arr = numpy_helper.to_array(t).astype(helper.tensor_dtype_to_np_dtype(want))
            except Exception:
                continue
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))


def _explicit_squeeze_axes(m: onnx.ModelProto) -> None:
    """Squeeze without axes removes every size-1 dim, so a channel axis pruned to one channel would
    go too. Pin its axes to the dims that are 1 now, where the input shape is fully static (a
    symbolic dim may be 1 at run time: left as is; the analyzer freezes channels through it)."""
    from onnx import helper

    g = m.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = [d.dim_value for d in dims]
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    attr_axes = opset_version(m) < 13
    names = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type != "Squeeze" or n.domain not in ("", "ai.onnx") or not n.input:
            continue
        if any(a.name == "axes" for a in n.attribute) or (len(n.input) > 1 and n.input[1]):
            continue
        s = shapes.get(n.input[0])
        if s is None or 1 not in s:
            continue
        axes = [i for i, d in enumerate(s) if d == 1]
        if attr_axes:
            n.attribute.append(helper.make_attribute("axes", axes))
        else:
            name, k = f"{n.output[0]}__axes", 0
            while name in names:
                k += 1
                name = f"{n.output[0]}__axes{k}"
            names.add(name)
            g.initializer.append(numpy_helper.from_array(np.asarray(axes, np.int64), name))
            del n.input[1:]
            n.input.append(name)


def initializers_as_inputs(original: onnx.ModelProto, written: onnx.ModelProto) -> onnx.ModelProto:
    """Where the original listed initializers as graph inputs (torch keep_initializers_as_inputs=True,
    IR < 4), list the written model's surviving ones again, in the original order, with their new
    (pruned) shapes: normalize strips them for analysis, but they are part of the model's interface."""
    from onnx import helper

    orig_inits = {t.name for t in original.graph.initializer}
    if not any(i.name in orig_inits for i in original.graph.input):
        return written
    inits = {t.name: t for t in written.graph.initializer}
    have = {i.name: i for i in written.graph.input}
    new = []
    for i in original.graph.input:
        if i.name in have:
            new.append(have.pop(i.name))
        elif i.name in orig_inits and i.name in inits:
            t = inits[i.name]
            new.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    new.extend(have.values())  # inputs the original did not have (none expected)
    m = onnx.ModelProto()
    m.CopyFrom(written)
    del m.graph.input[:]
    m.graph.input.extend(new)
    return m


def requantize_weights(model: onnx.ModelProto, analysis, kept) -> tuple[onnx.ModelProto, list[str]]:
    """Undo normalize's DequantizeLinear folding in a pruned model: every surviving folded weight
    becomes integers + DequantizeLinear again, with its scale / zero point (per-axis ones sliced
    like the weight). Exact, as the float values came from integers; a weight that compensation
    moved off its grid is rounded back onto it, or kept float where it left the integer range,
    with a note.
    Returns (model, notes)."""
    from onnxprune.transform.rewrite import kept_positions

    meta = next((p.value for p in model.metadata_props if p.key == DEQUANTIZED_KEY), None)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep_meta = [p for p in m.metadata_props if p.key != DEQUANTIZED_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(keep_meta)
    if meta is None:
        return m, []
    g = m.graph
    pos = kept_positions(analysis, kept)
    inits = {t.name: k for k, t in enumerate(g.initializer)}
    used = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    node_names = {n.name for n in g.node}

    def fresh(name, taken):
        k, out = 0, name
        while out in taken:
            k += 1
            out = f"{name}_{k}"
        taken.add(out)
        return out

    from onnxprune.transform.compensate import compensated_base

    records = json.loads(meta)
    # compensation writes a changed weight under a new name derived from the old one
    items = [(t.name, compensated_base(t.name)) for t in g.initializer]
    items = [(name, base) for name, base in items if base in records]
    new_nodes, drop, floats, rounded = [], set(), [], []
    for wname, base in items:
        r = records[base]
        w = numpy_helper.to_array(g.initializer[inits[wname]])
        scale = np.asarray(r["scale_values"], w.dtype)  # folding made w of the scale's dtype
        qdt = helper.tensor_dtype_to_np_dtype(r["q_type"])
        zp = np.asarray(r["zp_values"], np.int64)
        shape = [1] * w.ndim
        if r["axis"] is not None:
            p = pos.get((base, r["axis"]), np.arange(len(scale)))
            if len(p) != w.shape[r["axis"]]:
                floats.append(wname)
                continue
            scale, zp = scale[p], (zp[p] if zp.size > 1 else zp)
            shape[r["axis"]] = -1
        sb, zb = scale.reshape(shape if scale.size > 1 else ()), zp.reshape(shape if zp.size > 1 else ())
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.round(w / sb) + zb
        info = np.iinfo(qdt)
        if not np.all(np.isfinite(q)):
            floats.append(wname)
            continue
        if q.min(initial=0) < info.min or q.max(initial=0) > info.max:
            # out of the integer range of its scale (lstsq refits can grow weights): a new scale would
            # have to go to the bias too (its scale is input x weight scale); keep it float instead
            floats.append(wname)
            continue
        q = q.astype(qdt)
        if not np.array_equal((q.astype(np.int64) - zb).astype(w.dtype) * sb, w):
            # moved by compensation (mean: biases; lstsq: weights too): back onto the original grid, as a
            # quantizer would put it, so the model stays integer and ONNX Runtime keeps its int8 kernels
            rounded.append(wname)
        names = [fresh(r["q"], used), fresh(r["scale"], used)]
        g.initializer.append(numpy_helper.from_array(q, names[0]))
        g.initializer.append(numpy_helper.from_array(scale.reshape(() if r["axis"] is None else -1), names[1]))
        if r["zp"] is not None:
            names.append(fresh(r["zp"], used))
            zdt = helper.tensor_dtype_to_np_dtype(r["zp_type"])
            g.initializer.append(numpy_helper.from_array(zp.reshape(() if r["axis"] is None else -1).astype(zdt), names[2]))
        attrs = {} if r["axis"] is None else dict(axis=r["axis"])
        new_nodes.append(helper.make_node("DequantizeLinear", names, [wname],
                                          name=fresh(r["node"] or f"{wname}_dequantize", node_names), **attrs))
        drop.add(wname)
    if drop:
        kept_inits = [t for t in g.initializer if t.name not in drop]
        del g.initializer[:]
        g.initializer.extend(kept_inits)
        rest = list(g.node)
        del g.node[:]
        g.node.extend(new_nodes + rest)  # inputs are initializers: first is topological
    notes = []
    if floats:
        notes.append(f"{len(floats)} quantized weight(s) changed by compensation ({_few(floats)}) fall outside the "
                     "integer range of their scale: written as float (ONNX Runtime runs their layers in float, not "
                     "int8; --compensate mean leaves weights alone); other quantized weights stay integer + DequantizeLinear")
    if rounded:
        notes.append(f"{len(rounded)} quantized weight(s)/bias(es) changed by compensation ({_few(rounded)}) are "
                     f"re-quantized with their original scales and zero points (rounding within half a step)")
    return m, notes


def _few(names: list[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _fold_dequantize(graph, record: dict | None = None) -> bool:
    """Replace DequantizeLinear of constant integer tensors (per-tensor or per-axis) by its float
    result, computed as ONNX Runtime does: float(x - zero_point) * scale. Returns whether any folded;
    `record` gets, per folded output, what requantize_weights needs to undo it."""
    import onnx_graphsurgeon as gs

    outputs = {t.name for t in graph.outputs}
    folded = False
    for node in graph.nodes:
        if node.op != "DequantizeLinear" or (node.domain or "") not in ("", "ai.onnx") \
                or int(node.attrs.get("block_size", 0)) or int(node.attrs.get("output_dtype", 0)):
            continue
        ins = [t for t in node.inputs if not t.is_empty()]
        if len(ins) < 2 or not all(isinstance(t, gs.Constant) for t in ins) or node.outputs[0].name in outputs:
            continue
        x, scale = np.asarray(ins[0].values), np.asarray(ins[1].values)
        zp = np.asarray(ins[2].values) if len(ins) > 2 else np.zeros((), np.int32)
        if x.dtype.kind not in "iu" or scale.dtype.kind != "f":
            continue
        if scale.size == 1:  # per tensor
            scale, zp = scale.reshape(()), zp.reshape(()) if zp.size == 1 else zp
        else:  # per axis
            axis = int(node.attrs.get("axis", 1)) % max(x.ndim, 1)
            if scale.ndim != 1 or x.ndim == 0 or scale.shape[0] != x.shape[axis] or zp.size not in (1, scale.size):
                continue
            bshape = [1] * x.ndim
            bshape[axis] = -1
            scale, zp = scale.reshape(bshape), zp.reshape(bshape) if zp.size > 1 else zp.reshape(())
        y = (x.astype(np.int64) - zp.astype(np.int64)).astype(scale.dtype) * scale
        if record is not None:
            record[node.outputs[0].name] = dict(
                node=node.name, axis=None if scale.ndim == 0 else axis,
                q=ins[0].name, q_type=int(helper.np_dtype_to_tensor_dtype(x.dtype)),
                scale=ins[1].name, scale_values=scale.reshape(-1).tolist(),
                zp=ins[2].name if len(ins) > 2 else None, zp_values=zp.reshape(-1).tolist(),
                zp_type=int(helper.np_dtype_to_tensor_dtype(zp.dtype)) if len(ins) > 2 else None)
        node.outputs[0].to_constant(np.ascontiguousarray(y.astype(scale.dtype)))
        node.outputs.clear()
        folded = True
    return folded


def _copy_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """graphsurgeon drops some ModelProto fields; restore them so the output stays the user's model."""
    dst.ir_version = max(src.ir_version, 4) if src.ir_version else dst.ir_version
    dst.producer_name = src.producer_name
    dst.producer_version = src.producer_version
    dst.domain = src.domain
    dst.model_version = src.model_version
    dst.doc_string = src.doc_string
    dst.graph.name = src.graph.name
    dst.graph.doc_string = src.graph.doc_string
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    extra = [o for o in dst.opset_import if o.domain not in {s.domain for s in src.opset_import}]
    del dst.opset_import[:]
    dst.opset_import.extend(list(src.opset_import) + extra)  # + domains that inlined function bodies use
    if src.functions and not dst.functions:  # only functions still called (normalize inlines them)
        called = {(n.domain, n.op_type) for n in dst.graph.node}
        if any((f.domain, f.name) in called for f in src.functions):
            dst.functions.extend(src.functions)


def parse_input_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """Parse ``name=1x3x224x224`` entries (a bare ``1x3x224x224`` applies to a single-input model)."""
    out: dict[str, list[int]] = {}
    for s in specs or []:
        name, _, dims = s.rpartition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise OnnxPruneError(f"bad --input-shape '{s}': expected name=1x3x224x224") from None
        if any(d <= 0 for d in shape):
            raise OnnxPruneError(f"bad --input-shape '{s}': dims must be positive")
        if name in out:
            raise OnnxPruneError(f"--input-shape given twice for {name or 'the input'}")
        out[name] = shape
    return out


def graph_input_shapes(model: onnx.ModelProto, overrides: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Concrete shapes for every graph input: user overrides, else static dims, else a default.

    Defaults for symbolic dims: batch (dim 0, or a dim named like a batch) -> 1; spatial dims of a
    rank-4 image input -> 224; any other symbolic dim (e.g. sequence length, also at dim 0 when it
    is named so, as in sequence-first [seq, batch, C] inputs) -> 16.
    """
    overrides = dict(overrides or {})
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if "" in overrides:
        if len(inputs) != 1:
            raise OnnxPruneError("--input-shape without a name needs a single-input model")
        overrides[inputs[0].name] = overrides.pop("")
    unknown = set(overrides) - {i.name for i in inputs}
    if unknown:
        raise OnnxPruneError(f"--input-shape names unknown input(s): {', '.join(sorted(unknown))}; inputs are: {', '.join(i.name for i in inputs)}")
    # a symbolic dim shared by several inputs (batch, seq of input_ids and attention_mask) takes the
    # value given for any of them, so the inputs stay consistent
    named: dict[str, int] = {}
    for i in inputs:
        for d, o in zip(i.type.tensor_type.shape.dim, overrides.get(i.name, [])):
            if d.HasField("dim_param") and d.dim_param:
                if named.setdefault(d.dim_param, o) != o:
                    raise OnnxPruneError(f"--input-shape: symbolic dim '{d.dim_param}' is given as both "
                                         f"{named[d.dim_param]} and {o}")
    shapes = {}
    for i in inputs:
        dims = i.type.tensor_type.shape.dim
        if i.name in overrides:
            if len(overrides[i.name]) != len(dims):
                raise OnnxPruneError(f"--input-shape {i.name}: rank {len(overrides[i.name])} but the model input has rank {len(dims)}")
            for k, (d, o) in enumerate(zip(dims, overrides[i.name])):
                if d.HasField("dim_value") and d.dim_value != o:
                    raise OnnxPruneError(f"--input-shape {i.name}: dim {k} is fixed to {d.dim_value} in the model, got {o}")
            shapes[i.name] = list(overrides[i.name])
            continue
        shape = []
        static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
        # image spatial axes: 2,3 (NCHW), or 1,2 for channels-last inputs (tf2onnx: N x H x W x 3)
        spatial = (1, 2) if len(dims) == 4 and static[1] is None and static[3] in (1, 3, 4) else (2, 3)
        for k, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif d.HasField("dim_param") and d.dim_param in named:
                shape.append(named[d.dim_param])
            elif _dim_kind(d) == "batch" or (k == 0 and _dim_kind(d) != "seq"):
                shape.append(1)
            elif len(dims) == 4 and k in spatial:
                shape.append(224)
            else:
                shape.append(16)
        shapes[i.name] = shape
    return shapes


_BATCH_NAMES = {"batch", "batch_size", "batchsize", "bs", "n", "b", "num_batch", "nbatch"}
_SEQ_NAMES = {"seq", "seq_len", "seqlen", "sequence", "sequence_length", "seq_length", "t", "l", "len", "length",
              "time", "tgt_len", "src_len", "num_tokens", "tokens", "frames", "steps", "time_steps"}


def _dim_kind(d) -> str | None:
    """'batch' / 'seq' for a symbolic dim whose name says so (exporters name them), else None."""
    name = (d.dim_param or "").strip().lower() if d.HasField("dim_param") else ""
    if name in _BATCH_NAMES or name.startswith("batch"):
        return "batch"
    if name in _SEQ_NAMES or name.startswith(("seq", "sequence")):
        return "seq"
    return None


def with_batch(model: onnx.ModelProto, shapes: dict[str, list[int]] | None, batch: int | None):
    """Input shape overrides with `batch` put in every symbolic dim 0 not already overridden."""
    if batch is None:
        return shapes
    if batch < 1:
        raise OnnxPruneError(f"--batch must be >= 1, got {batch}")
    out = dict(shapes or {})
    defaults = graph_input_shapes(model, out)
    static = {v[0] for k, v in defaults.items() if v and not _symbolic_batch(model, k)}
    if static and not any(_symbolic_batch(model, k) for k in defaults) and batch not in static:
        raise OnnxPruneError(f"--batch {batch}: the model's batch dim is fixed at {min(static)}")
    for i in model.graph.input:
        if i.name in defaults and i.name not in out:
            dims = i.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                out[i.name] = [batch] + defaults[i.name][1:]
    return out


def _symbolic_batch(model: onnx.ModelProto, name: str) -> bool:
    for i in model.graph.input:
        if i.name == name:
            dims = i.type.tensor_type.shape.dim
            return bool(dims) and not dims[0].HasField("dim_value")
    return False


def with_fixed_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    params: dict[str, int] = {}  # symbolic dim name -> its value, from the inputs that use it
    for i in m.graph.input:
        if i.name in shapes:
            dims = i.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[i.name]):
                if d.HasField("dim_param") and d.dim_param:
                    params.setdefault(d.dim_param, v)
                d.Clear()
                d.dim_value = v
    # declared shapes elsewhere (e.g. of custom-op outputs) that use the same symbols get the values too
    for vi in list(m.graph.value_info) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in params:
                v = params[d.dim_param]
                d.Clear()
                d.dim_value = v
    return m


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None) -> None:
    """Write atomically: a temp file in the same folder, renamed into place, so a failure leaves nothing.

    Models over ~1.8 GB are written with external data (``<name>.data``) as protobuf cannot hold them.
    """
    p = Path(path)
    if input_path is not None:
        check_not_input_file(p, input_path, "output path")
        check_not_input_file(p.parent / (p.name + ".data"), input_path, "output's external data file")
    if p.exists() and p.is_dir():
        raise OnnxPruneError(f"output path is a directory: {p}")
    if not p.parent.exists():
        raise OnnxPruneError(f"output folder does not exist: {p.parent}")
    big = model.ByteSize() > 1_800_000_000 if _safe_bytesize(model) else True
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written model should be as readable as any file
    data_name = p.name + ".data"
    tmp_data = None
    try:
        if big:
            tmp_data = p.parent / f".{data_name}.tmp"
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            # the location stored in the model must be the final name
            m2 = onnx.load(tmp, load_external_data=False)
            for t in _all_tensors(m2):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            onnx.save_model(m2, tmp)
            os.replace(tmp_data, p.parent / data_name)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, p)
    except BaseException:
        for f in (tmp, tmp_data):
            if f and os.path.exists(f):
                os.unlink(f)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def input_files(input_path: str | os.PathLike) -> list[Path]:
    """The model file and every external-data file it references (all must stay untouched)."""
    src = Path(input_path)
    files = [src]
    try:
        m = onnx.load(str(src), load_external_data=False)
    except Exception:
        return files
    for t in _all_tensors(m):
        for e in t.external_data:
            if e.key == "location":
                f = src.parent / e.value
                if f not in files:
                    files.append(f)
    return files


def check_not_input_file(path: str | os.PathLike, input_path: str | os.PathLike, what: str) -> None:
    """Refuse to write `path` when it is the input model or one of its external-data files."""
    for f in input_files(input_path):
        if _same_path(Path(path), f):
            kind = "the input model" if f == Path(input_path) else f"the input's external data file {f.name}"
            raise OnnxPruneError(f"{what} is {kind}: refusing to overwrite it")


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """Fail before any work when a side output (report, JSON) cannot be written where asked."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise OnnxPruneError(f"{what} is a directory: {p}")
    if not p.resolve().parent.is_dir():
        raise OnnxPruneError(f"{what} folder does not exist: {p.resolve().parent}")


def _safe_bytesize(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:
        return False


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def tensor_array(t: TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


SHAPE_MATH = {"Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Div", "Mul", "Add", "Sub",
              "Floor", "Ceil", "Equal", "Where", "Reshape", "Identity", "Max", "Min", "Abs", "Neg", "Mod",
              "Range", "ReduceProd", "ReduceSum"}


def fold_static_shape_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold shape arithmetic that does not depend on symbolic dims.

    Exporters compute e.g. ``x.size(1) // 2`` at run time even where dim 1 is static; such values
    are constants for every input the model accepts. Small integer tensors downstream of Shape are
    evaluated with two different values of every symbolic input dim; those that come out equal are
    replaced by constants (so channel counts become rewritable), the rest stay computed.
    """

    g = model.graph
    if not any(n.op_type == "Shape" for n in g.node):
        return model
    consts = {t.name for t in g.initializer}
    # tensors reachable from Shape outputs through integer shape math only
    derived: set[str] = set()
    cand: list[str] = []
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type == "Shape" or (n.op_type in SHAPE_MATH and any(i in derived for i in ins)
                                    and all(i in derived or i in consts for i in ins)):
            derived.update(n.output)
            cand.extend(n.output)
    if not cand:
        return model
    inputs = [i for i in g.input if i.name not in consts]
    sym = any(not d.HasField("dim_value") for i in inputs for d in i.type.tensor_type.shape.dim)
    base = graph_input_shapes(model)
    other = {}
    for i in inputs:
        dims = i.type.tensor_type.shape.dim
        other[i.name] = [v if d.HasField("dim_value") else (v + 1 if k == 0 else v + 8)
                         for k, (d, v) in enumerate(zip(dims, base[i.name]))]
    try:
        va, vb = _eval_tensors(model, [base, other] if sym else [base], cand) * (1 if sym else 2)
    except Exception:
        return model
    static = {t for t in cand if t in va and t in vb and va[t].shape == vb[t].shape and np.array_equal(va[t], vb[t])
              and va[t].size <= 64 and np.issubdtype(va[t].dtype, np.integer)}
    # replace only where a static value meets a consumer outside the static set
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    produced_static = {o for n in g.node for o in n.output if o in static}
    roots = [t for t in produced_static if any(not set(u.output) <= static for u in users.get(t, []))]
    if not roots:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rename = {}
    for t in roots:
        name = f"{t}__static"
        m.graph.initializer.append(numpy_helper.from_array(va[t], name))
        rename[t] = name
    for n in m.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    _prune_dead(m)
    return m


def runnable_part(model: onnx.ModelProto, wanted: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """The part of the graph ONNX Runtime can run without custom ops: drop custom-op nodes and
    everything downstream of them; the graph outputs become the `wanted` tensors that remain."""
    from onnx import helper

    tainted = set()
    keep = []
    for n in model.graph.node:
        if n.domain not in STANDARD_DOMAINS or any(i in tainted for i in n.input):
            tainted.update(n.output)
        else:
            keep.append(n)
    avail = [t for t in wanted if t not in tainted]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in avail)
    _prune_dead(m)
    return m, avail


def _eval_tensors(model, shape_sets, names) -> list[dict]:
    """`names` evaluated on random inputs of each of `shape_sets`: one session for all of them."""
    from onnxprune.analysis.graph import random_feeds

    return run_light(model, names, [random_feeds(model, seed=0, input_shapes=shapes) for shapes in shape_sets])


def run_light(model: onnx.ModelProto, names: list[str], feed_sets: list[dict]) -> list[dict]:
    """Run the part of `model` that computes `names` (see runnable_part: past a custom op nothing
    runs) on each feed dict, for shapes and shape values: large weights are zero-filled inputs
    (nothing to serialize) unless an op's output shape depends on data, then the real weights run."""
    import onnxruntime as ort

    light, big = light_model(model)
    if any(n.op_type in DATA_DEPENDENT_SHAPES for n in model.graph.node):
        light, big = model, []
    m, names = runnable_part(light, names)
    if not names:
        return [{} for _ in feed_sets]
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    used = {i.name for i in m.graph.input}
    weights = {t.name: np.zeros(tuple(t.dims), helper.tensor_dtype_to_np_dtype(t.data_type))
               for t in big if t.name in used}
    return [dict(zip(names, sess.run(names, {**feeds, **weights}))) for feeds in feed_sets]


# ops whose output shape depends on the values of a data input (a zero-filled weight could change it;
# shape-like inputs of Reshape/Expand/Range... are small tensors, never zero-filled)
DATA_DEPENDENT_SHAPES = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "Loop", "If", "Scan", "StringSplit"}


def _prune_dead(m: onnx.ModelProto) -> None:
    """Drop nodes and initializers no graph output depends on."""
    g = m.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
