"""Input shapes and shape evaluation.

Parsing ``--input-shape`` / ``--batch`` into concrete input shapes; "light" copies of a model
without its large weights' data for shape inference and the checker; and run_light, which runs
the part of a model that computes some tensors (shape values, shapes inference leaves unknown).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxprune.errors import OnnxPruneError
from onnxprune.model.external import INLINE_MAX_ELEMS, light_model, tensor_elems
from onnxprune.model.load import STANDARD_DOMAINS
from onnxprune.model.runtime import SessionPurpose, ort_session

# shape evaluation runs the graph as written (ORT's optimizer must not fold what it measures), quietly
SHAPE_EVAL = SessionPurpose(optimize=False, log_severity=4)

# Initializers bigger than this are never shape values (those are a handful of integers): shape
# inference and shape evaluation see them as typed inputs (light_model, in model/external.py), so a
# large model's weights are not serialized (and copied) once more for each pass.
LIGHT_MAX_ELEMS = INLINE_MAX_ELEMS


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


def is_static_dim(d: onnx.TensorShapeProto.Dimension) -> bool:
    """A dim with a size. paddle2onnx (and Polygraphy folding) write -1 or 0 for an unknown dim:
    symbolic, as shape inference and ONNX Runtime read it."""
    return d.HasField("dim_value") and d.dim_value > 0


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


def graph_input_shapes(model: onnx.ModelProto, overrides: dict[str, list[int | None]] | None = None) -> dict[str, list[int]]:
    """Concrete shapes for every graph input: user overrides, else static dims, else a default.

    Defaults for symbolic dims: batch (dim 0, or a dim named like a batch) -> 1; spatial dims of a
    rank-4 image input -> 224; any other symbolic dim (e.g. sequence length, also at dim 0 when it
    is named so, as in sequence-first [seq, batch, C] inputs) -> 16. A None in an override is
    that dim's default (``--batch`` sets dim 0 only).
    """
    inputs = model_inputs(model)
    overrides = _overrides_by_input(overrides, inputs)
    named = _shared_dim_values(inputs, overrides)
    named.update(_kv_cache_dims(inputs, named))
    out = {}
    for i in inputs:
        if not i.type.tensor_type.HasField("shape"):  # rank unknown (the checker rejects it, ORT runs it)
            out[i.name] = _unranked_shape(i, overrides.get(i.name))
            continue
        shape = _default_shape(i.type.tensor_type.shape.dim, named)
        if i.name in overrides:
            shape = [d if o is None else o for d, o in zip(shape, _checked_override(i, overrides[i.name]))]
        out[i.name] = shape
    return out


def fit_to_declared(model: onnx.ModelProto, shapes: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
    """Input shapes given for the original model, fitted to a pruned model whose inputs were resized
    (a KV cache with fewer heads): where the model declares a static dim that differs from the given
    one, the declared dim wins. Use only for models this tool wrote; user input goes through
    graph_input_shapes, which refuses such a conflict."""
    if not shapes:
        return shapes
    out = dict(shapes)
    for i in model_inputs(model):
        given = out.get(i.name)
        dims = i.type.tensor_type.shape.dim
        if given is None or len(given) != len(dims):
            continue
        out[i.name] = [d.dim_value if is_static_dim(d) and g is not None and d.dim_value != g else g
                       for d, g in zip(dims, given)]
    return out


PAST_DEFAULT = 8  # default cached length of a decoder's KV cache (non-empty: the oracle checks its slices)


def _kv_cache_dims(inputs: list, named: dict[str, int]) -> dict[str, int]:
    """Decoders with a KV cache: the past length (a dim named ``past*``) defaults to PAST_DEFAULT and
    the total length (named ``total*``, or ``past_seq + seq`` as the dynamo exporter writes it) to
    past + seq (seq: the dim named like a sequence, default 16), so the attention mask agrees with
    the cache. Nothing where the names do not say so."""
    names = {d.dim_param for i in inputs for d in i.type.tensor_type.shape.dim if d.HasField("dim_param") and d.dim_param}
    past = sorted(n for n in names if n.strip().lower().startswith("past") and "+" not in n)
    seq = sorted(n for n in names if _name_kind(n) == "seq")
    if len(past) != 1 or len(seq) > 1:
        return {}
    out = {past[0]: named.get(past[0], PAST_DEFAULT)}
    s = named.get(seq[0], 16) if seq else 16
    for n in names - set(past) - set(seq):
        parts = [p.strip() for p in n.split("+")]
        if n.strip().lower().startswith("total") or sorted(parts) == sorted([past[0]] + seq):
            out[n] = named.get(n, out[past[0]] + s)
    return out


def _unranked_shape(i: onnx.ValueInfoProto, override: list[int | None] | None) -> list[int]:
    """An input that declares no shape at all: only --input-shape can say what it takes."""
    if not override or any(d is None for d in override[1:]):
        raise OnnxPruneError(f"input '{i.name}' declares no shape (not even its rank): give it with "
                             f"--input-shape {i.name}=1x...")
    return [1 if override[0] is None else override[0], *override[1:]]


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers."""
    return [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]


def defaulted_dims(model: onnx.ModelProto, overrides: dict[str, list[int | None]] | None = None) -> dict[str, list[int]]:
    """input -> the symbolic dims graph_input_shapes gives a default size (224, 16) because neither
    an override nor a shared symbolic name sets them; batch dims (default 1) are left out."""
    inputs = model_inputs(model)
    overrides = _overrides_by_input(overrides, inputs)
    named = _shared_dim_values(inputs, overrides)
    named.update(_kv_cache_dims(inputs, named))
    out = {}
    for i in inputs:
        given = overrides.get(i.name) or []
        dims = i.type.tensor_type.shape.dim
        free = [k for k, d in enumerate(dims)
                if not is_static_dim(d) and (k >= len(given) or given[k] is None)
                and not (d.HasField("dim_param") and d.dim_param in named) and not _is_batch_dim(d, k)]
        if free:
            out[i.name] = free
    return out


def _overrides_by_input(overrides: dict[str, list[int]] | None, inputs: list) -> dict[str, list[int]]:
    """The overrides keyed by input name (a nameless one names the single input); unknown names raise."""
    overrides = dict(overrides or {})
    if "" in overrides:
        if len(inputs) != 1:
            raise OnnxPruneError("--input-shape without a name needs a single-input model")
        overrides[inputs[0].name] = overrides.pop("")
    unknown = set(overrides) - {i.name for i in inputs}
    if unknown:
        raise OnnxPruneError(f"--input-shape names unknown input(s): {', '.join(sorted(unknown))}; inputs are: {', '.join(i.name for i in inputs)}")
    return overrides


def _shared_dim_values(inputs: list, overrides: dict[str, list[int]]) -> dict[str, int]:
    """Symbolic dim name -> the value an override gives it: a symbolic dim shared by several inputs
    (batch, seq of input_ids and attention_mask) takes it in all of them, so the inputs stay consistent."""
    named: dict[str, int] = {}
    for i in inputs:
        for d, o in zip(i.type.tensor_type.shape.dim, overrides.get(i.name, [])):
            if o is not None and d.HasField("dim_param") and d.dim_param:
                if named.setdefault(d.dim_param, o) != o:
                    raise OnnxPruneError(f"--input-shape: symbolic dim '{d.dim_param}' is given as both "
                                         f"{named[d.dim_param]} and {o}")
    return named


def _checked_override(i: onnx.ValueInfoProto, shape: list[int]) -> list[int]:
    dims = i.type.tensor_type.shape.dim
    if len(shape) != len(dims):
        raise OnnxPruneError(f"--input-shape {i.name}: rank {len(shape)} but the model input has rank {len(dims)}")
    for k, (d, o) in enumerate(zip(dims, shape)):
        if o is not None and is_static_dim(d) and d.dim_value != o:
            raise OnnxPruneError(f"--input-shape {i.name}: dim {k} is fixed to {d.dim_value} in the model, got {o}")
    return list(shape)


def _default_shape(dims, named: dict[str, int]) -> list[int]:
    """Static dims as they are; symbolic ones from `named`, else the defaults (see graph_input_shapes)."""
    static = [d.dim_value if is_static_dim(d) else None for d in dims]
    # image spatial axes: 2,3 (NCHW), or 1,2 for channels-last inputs (tf2onnx: N x H x W x 3)
    spatial = (1, 2) if len(dims) == 4 and static[1] is None and static[3] in (1, 3, 4) else (2, 3)
    shape = []
    for k, d in enumerate(dims):
        if static[k] is not None:
            shape.append(static[k])
        elif d.HasField("dim_param") and d.dim_param in named:
            shape.append(named[d.dim_param])
        elif _is_batch_dim(d, k):
            shape.append(1)
        elif len(dims) == 4 and k in spatial:
            shape.append(224)
        else:
            shape.append(16)
    return shape


_BATCH_NAMES = {"batch", "batch_size", "batchsize", "bs", "n", "b", "num_batch", "nbatch"}
_SEQ_NAMES = {"seq", "seq_len", "seqlen", "sequence", "sequence_length", "seq_length", "t", "l", "len", "length",
              "time", "tgt_len", "src_len", "num_tokens", "tokens", "frames", "steps", "time_steps"}


def _is_batch_dim(d, k: int) -> bool:
    """A symbolic dim read as the batch: named so, or dim 0 not named like a sequence."""
    return _dim_kind(d) == "batch" or (k == 0 and _dim_kind(d) != "seq")


def _dim_kind(d) -> str | None:
    """'batch' / 'seq' for a symbolic dim whose name says so (exporters name them), else None."""
    return _name_kind(d.dim_param if d.HasField("dim_param") else "")


def _name_kind(name: str) -> str | None:
    name = (name or "").strip().lower()
    if name in _BATCH_NAMES or name.startswith("batch"):
        return "batch"
    if name in _SEQ_NAMES or name.startswith(("seq", "sequence")):
        return "seq"
    return None


def with_batch(model: onnx.ModelProto, shapes: dict[str, list[int]] | None, batch: int | None):
    """Input shape overrides with `batch` put in every symbolic dim 0 not already overridden (the
    other dims of such an input stay None: their defaults, see graph_input_shapes)."""
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
            if dims and not is_static_dim(dims[0]):
                out[i.name] = [batch] + [None] * (len(dims) - 1)
    return out


def _symbolic_batch(model: onnx.ModelProto, name: str) -> bool:
    for i in model.graph.input:
        if i.name == name:
            dims = i.type.tensor_type.shape.dim
            return bool(dims) and not is_static_dim(dims[0])
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


def runnable_part(model: onnx.ModelProto, wanted: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """The part of the graph ONNX Runtime can run without custom ops: drop custom-op nodes and
    everything downstream of them; the graph outputs become the `wanted` tensors that remain."""
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
    prune_dead(m)
    return m, avail


def run_light(model: onnx.ModelProto, names: list[str], feed_sets: list[dict]) -> list[dict]:
    """Run the part of `model` that computes `names` (see runnable_part: past a custom op nothing
    runs) on each feed dict, for shapes and shape values: large weights are zero-filled inputs
    (nothing to serialize) unless an op's output shape depends on data, then the real weights run."""
    light, big = light_model(model)
    if any(n.op_type in DATA_DEPENDENT_SHAPES for n in model.graph.node):
        light, big = model, []
    m, names = runnable_part(light, names)
    if not names:
        return [{} for _ in feed_sets]
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in m.graph.node
               for a in n.attribute):  # subgraphs read outer tensors without listing them
        read = {i for n in m.graph.node for i in n.input} | set(names)
        inputs = [i for i in m.graph.input if i.name in read]  # the part may not need every input
        del m.graph.input[:]
        m.graph.input.extend(inputs)
    sess = ort_session(m, SHAPE_EVAL)
    used = {i.name for i in m.graph.input}
    weights = {t.name: np.zeros(tuple(t.dims), helper.tensor_dtype_to_np_dtype(t.data_type))
               for t in big if t.name in used}
    return [dict(zip(names, sess.run(names, {**{k: v for k, v in feeds.items() if k in used}, **weights})))
            for feeds in feed_sets]


# ops whose output shape depends on the values of a data input (a zero-filled weight could change it;
# shape-like inputs of Reshape/Expand/Range... are small tensors, never zero-filled)
DATA_DEPENDENT_SHAPES = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "Loop", "If", "Scan", "StringSplit"}


def prune_dead(m: onnx.ModelProto) -> None:
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
