"""Normalize a model for the analysis.

Normalization makes exporter variety disappear before analysis: weights held in Constant nodes or
behind Identity/Cast/DequantizeLinear of constants become initializers, IR<4 graphs that list
initializers as inputs lose those inputs, and shape computations on static dims are folded.
Symbolic dims are kept: the written model must accept what the original accepted.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.model.dequantize import DequantizedWeight, fold_dequantize
from onnxprune.model.external import DataFile, has_external, inline, is_external, read_tensor, spill_large
from onnxprune.model.load import STANDARD_DOMAINS, opset_version, sanitize_graph, sanitized, subgraphs
from onnxprune.model.save import copy_model_fields
from onnxprune.model.shape_values import fold_static_shape_values
from onnxprune.model.shapes import infer_shapes_light, tensor_elems, with_inferred_shapes

FOLD_ROUNDS = 4  # (shape inference, constant folding) rounds at most; each usually ends the graph shrinking


@dataclass(frozen=True)
class NormalizedModel:
    """normalize's result: the model, and the weights it folded from DequantizeLinear (for
    transform/requantize.py, which writes the surviving ones as integers again)."""
    model: onnx.ModelProto
    dequantized: tuple[DequantizedWeight, ...] = ()


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """The normalized model alone (see normalize_model; the analysis needs nothing else)."""
    return normalize_model(model).model


def normalize_model(model: onnx.ModelProto) -> NormalizedModel:
    """Return a normalized copy (see module doc). Names of inputs/outputs and metadata are kept."""
    ort.set_default_logger_severity(3)  # constant folding runs ORT; its optimizer chatter is noise here
    m = onnx.ModelProto()
    m.CopyFrom(sanitized(model))
    stubs = _stub_external(m)
    if m.functions:  # model-local functions (dynamo/onnxscript exports): analyze their bodies like any op
        m = _inline_functions(m)
    _constant_attrs_to_tensors(m.graph)
    _unknown_dims_as_symbolic(m.graph)
    _drop_initializer_inputs(m)
    dtypes = _elem_types(m)
    dequantized: list[DequantizedWeight] = []
    out = _fold_constants(m, dequantized)
    if stubs or has_external(model):
        _restore_stubs(out, stubs)
    restore_dtypes(out, dtypes)
    _unshare_uniform_constants(out)
    copy_model_fields(model, out)
    out.graph.ClearField("value_info")
    keep_declared_output_types(model.graph, out.graph)
    # Neither shape inference nor ONNX Runtime can give shapes past a custom op: keep what the
    # model itself declares for custom-op outputs, so the graph after them can still be analyzed.
    custom_outs = {t for n in out.graph.node if n.domain not in STANDARD_DOMAINS for t in n.output}
    out.graph.value_info.extend(vi for vi in model.graph.value_info
                                if vi.name in custom_outs and vi.type.tensor_type.HasField("shape"))
    # only folded weights that are initializers now (not folded further, e.g. through a Transpose)
    inits = {t.name for t in out.graph.initializer}
    return NormalizedModel(out, tuple(w for w in dequantized if w.name in inits))


def _stub_external(m: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """In place: external weights (model/external.py) become typed graph inputs for the folding
    rounds, so graphsurgeon never loads them; returns them by name. A weight that a node reads
    together with constants only (a Transpose or DequantizeLinear of weights) stays, read into
    memory, and is folded as in a small model (the result is spilled by _restore_stubs)."""
    g = m.graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    foldable = {i for n in g.node if all(not x or x in consts for x in n.input) for i in n.input}
    stubs = {}
    for t in g.initializer:
        if is_external(t):
            if t.name in foldable:
                inline(t)
            else:
                stubs[t.name] = onnx.TensorProto()
                stubs[t.name].CopyFrom(t)  # a reference into the field would not survive its clearing
    if not stubs:
        return stubs
    have = {i.name for i in g.input}
    keep = [t for t in g.initializer if t.name not in stubs]
    stub_list = list(stubs.values())
    del g.initializer[:]
    g.initializer.extend(keep)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in stub_list
                   if t.name not in have)
    return {t.name: t for t in stub_list}


def _restore_stubs(m: onnx.ModelProto, stubs: dict[str, onnx.TensorProto]) -> None:
    """Undo _stub_external on the normalized model: the stubs are initializers again (where still
    read), and weights that folding made in memory move to a scratch data file."""
    g = m.graph
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    inputs = [i for i in g.input if i.name not in stubs]
    del g.input[:]
    g.input.extend(inputs)
    g.initializer.extend(t for name, t in stubs.items() if name in read)
    data = DataFile()
    spill_large(m, data)
    data.close()


def keep_declared_output_types(original: onnx.GraphProto, out: onnx.GraphProto) -> None:
    """Graph outputs keep the type the model declares where normalization lost it: past a contrib
    op (DynamicQuantizeLSTM, ...) shape inference knows nothing, and an output type without a
    shape fails the checker ("Field 'shape' of 'type' is required") though the model is fine."""
    declared = {o.name: o.type for o in original.output if o.type.HasField("tensor_type")}
    for o in out.output:
        d = declared.get(o.name)
        if d is None or not d.tensor_type.HasField("shape"):
            continue
        tt = o.type.tensor_type
        if not o.type.HasField("tensor_type") or not tt.HasField("shape") or not tt.elem_type:
            o.type.CopyFrom(d)


def _inline_functions(m: onnx.ModelProto) -> onnx.ModelProto:
    try:
        m = onnx.inliner.inline_local_functions(m)
    except Exception:
        pass  # left as calls: frozen like unknown ops, yet ORT still runs them
    sanitize_graph(m.graph, set())
    return m


def _unknown_dims_as_symbolic(g: onnx.GraphProto) -> None:
    """A dim of -1 or 0 in a declared shape (paddle2onnx after Polygraphy folding) means "unknown":
    spell it as a symbolic dim, as shape inference and ONNX Runtime read it."""
    k = 0
    for v in [*g.input, *g.output, *g.value_info]:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.dim_param = f"unk__dim{k}"
                k += 1


def _drop_initializer_inputs(m: onnx.ModelProto) -> None:
    """IR < 4 (old Caffe2 exports): initializers also listed as graph inputs. Treat them as weights."""
    g = m.graph
    init_names = {t.name for t in g.initializer}
    keep_inputs = [i for i in g.input if i.name not in init_names]
    if len(keep_inputs) != len(g.input):
        del g.input[:]
        g.input.extend(keep_inputs)
        if m.ir_version < 4:
            m.ir_version = 4


def _fold_constants(m: onnx.ModelProto, dequantized: list[DequantizedWeight]) -> onnx.ModelProto:
    """Rounds of (shape inference with data propagation, constant folding) while the graph shrinks:
    a round turns Constant nodes into constants and lets the next infer static dims through computed
    Reshape targets, so Shape->Gather/Slice of static dims fold (TorchScript's x.size(1) // 2 and
    friends). Symbolic dims stay symbolic. `dequantized` gets the weights folded from DequantizeLinear."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(FOLD_ROUNDS):
            try:
                m = with_inferred_shapes(m, data_prop=True)
            except Exception:
                pass
            _explicit_squeeze_axes(m)
            n_before = len(m.graph.node)
            m = _sound_fold_round(m, dequantized)
            if len(m.graph.node) == n_before:
                break
    return m


def _sound_fold_round(m: onnx.ModelProto, dequantized: list[DequantizedWeight]) -> onnx.ModelProto:
    """One folding round whose result defines every tensor it reads. graphsurgeon flattens an If
    with a constant condition into its parent graph, and where the chosen branch's output was
    itself folded to a constant (an initial LSTM state of zeros, say) the If's output is left with
    no producer. Such a round is redone without flattening; if even that leaves a read of an
    undefined tensor, the round is dropped (the graph stays unfolded there)."""
    for flatten in (True, False):
        found: list[DequantizedWeight] = []
        out = _fold_round(m, found, flatten)
        if not undefined_reads(out.graph):
            dequantized.extend(found)
            return out
    return m


def _fold_round(m: onnx.ModelProto, dequantized: list[DequantizedWeight], flatten: bool) -> onnx.ModelProto:
    fold = dict(error_ok=True, flatten_subgraphs=flatten,
                should_exclude_node=lambda n: (n.domain or "") not in STANDARD_DOMAINS)
    graph = gs.import_onnx(m)
    graph.fold_constants(**fold)
    if fold_dequantize(graph, dequantized):  # graphsurgeon never folds Q/DQ; weights behind DQ are weights
        graph.cleanup(remove_unused_graph_inputs=False)
        graph.fold_constants(**fold)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = fold_static_shape_values(gs.export_onnx(graph, do_type_check=False))
    out.graph.ClearField("value_info")
    return out


def undefined_reads(g: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> list[str]:
    """Tensors that nodes of `g` (or of its subgraphs, at any depth) read but that neither `g` nor an
    enclosing scope defines (inputs, initializers, node outputs)."""
    defined = set(outer) | {i.name for i in g.input} | {t.name for t in g.initializer}
    defined |= {t.values.name for t in g.sparse_initializer} | {o for n in g.node for o in n.output if o}
    bad = [i for n in g.node for i in n.input if i and i not in defined]
    bad += [o.name for o in g.output if o.name not in defined]
    inner = frozenset(defined)
    for sg in subgraphs(g):
        bad += undefined_reads(sg, inner)
    return sorted(set(bad))


def _constant_attrs_to_tensors(g: onnx.GraphProto) -> None:
    """Constant(value_float(s)/value_int(s)) -> Constant(value=tensor) of the spec's dtype (float32,
    int64): graphsurgeon's folding would make float64 of a float attribute, so a Mul(x, 0.5) would
    mix float and double."""
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
    for sg in subgraphs(g):
        _constant_attrs_to_tensors(sg)


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
        if len({k for k, _ in us}) < 2 or not 1 < tensor_elems(t) <= max_elems:
            continue
        arr = read_tensor(t)  # an external tensor's location is absolute inside the tool
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


def restore_dtypes(m: onnx.ModelProto, dtypes: dict[str, int]) -> None:
    """Folding must not change a tensor's element type (a consumer's type constraints expect the
    original one): cast folded initializers back where they drifted."""
    for i, t in enumerate(m.graph.initializer):
        want = dtypes.get(t.name)
        if want and t.data_type != want and want not in (TensorProto.STRING, TensorProto.UNDEFINED):
            try:
                arr = read_tensor(t).astype(helper.tensor_dtype_to_np_dtype(want))
            except Exception:
                continue
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))


def _explicit_squeeze_axes(m: onnx.ModelProto) -> None:
    """Squeeze without axes removes every size-1 dim, so a channel axis pruned to one channel would
    go too. Pin its axes to the dims that are 1 now, where the input shape is fully static (a
    symbolic dim may be 1 at run time: left as is; the analyzer freezes channels through it)."""
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

