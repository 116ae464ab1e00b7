"""A tiny ONNX graph builder for rule tests (no torch) and the shared oracle assertion.

    b = GraphBuilder(opset=17)
    x = b.input("x", [3, 8, 8])          # symbolic batch dim "N" is prepended
    y = b.conv(x, 3, 8, name="conv1")
    y = b.op("Relu", [y])
    y = b.conv(y, 8, 4, name="conv2")
    model = b.model([y])

Weights are random and seeded; every helper returns the name of its output tensor.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.verify.oracle import take_kept

F32 = TensorProto.FLOAT


class GraphBuilder:
    def __init__(self, opset: int = 17, seed: int = 0, ir_version: int | None = None):
        self.opset = opset
        self.ir_version = ir_version
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.domains: dict[str, int] = {}
        self._n = 0

    # --- names, tensors -----------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def input(self, name: str, shape, batch="N", dtype=F32) -> str:
        dims = ([batch] if batch is not None else []) + list(shape)
        self.inputs.append(helper.make_tensor_value_info(name, dtype, dims))
        return name

    def const(self, value, name: str | None = None, dtype=None) -> str:
        """An initializer (ints default to int64, floats to float32)."""
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        name = name or self.fresh("c")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, shape, name: str | None = None, scale: float | None = None, positive=False) -> str:
        """Random float32 weight; values in [0.5, 1.5] when positive (BN scale/var, LN gamma)."""
        if positive:
            arr = self.rng.uniform(0.5, 1.5, size=shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
            arr = self.rng.standard_normal(shape) * s
        return self.const(arr.astype(np.float32), name or self.fresh("w"))

    # --- ops ----------------------------------------------------------------------------------
    def op(self, op_type: str, inputs, n_out: int = 1, name: str | None = None, domain: str = "",
           outputs=None, **attrs):
        name = name or self.fresh(op_type.lower())
        outs = outputs or ([f"{name}_out"] if n_out == 1 else [f"{name}_out{i}" for i in range(n_out)])
        if domain:
            self.domains.setdefault(domain, 1)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain or None,
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    def conv(self, x, cin, cout, k=3, group=1, bias=True, name=None, pads=None, strides=None):
        name = name or self.fresh("conv")
        w = self.weight((cout, cin // group, k, k), f"{name}.weight")
        ins = [x, w] + ([self.weight((cout,), f"{name}.bias", scale=0.5)] if bias else [])
        p = pads if pads is not None else [k // 2] * 4
        attrs = dict(kernel_shape=[k, k], pads=p, group=group)
        if strides:
            attrs["strides"] = strides
        return self.op("Conv", ins, name=name, **attrs)

    def conv_transpose(self, x, cin, cout, k=2, group=1, bias=True, name=None, strides=(2, 2)):
        name = name or self.fresh("convT")
        w = self.weight((cin, cout // group, k, k), f"{name}.weight")
        ins = [x, w] + ([self.weight((cout,), f"{name}.bias", scale=0.5)] if bias else [])
        return self.op("ConvTranspose", ins, name=name, kernel_shape=[k, k], strides=list(strides), group=group)

    def bn(self, x, c, name=None):
        name = name or self.fresh("bn")
        s = self.weight((c,), f"{name}.scale", positive=True)
        b = self.weight((c,), f"{name}.bias", scale=0.5)
        m = self.weight((c,), f"{name}.mean", scale=0.2)
        v = self.weight((c,), f"{name}.var", positive=True)
        return self.op("BatchNormalization", [x, s, b, m, v], name=name, epsilon=1e-5)

    def gemm(self, x, k, n, trans_b=1, bias=True, name=None):
        name = name or self.fresh("gemm")
        w = self.weight((n, k) if trans_b else (k, n), f"{name}.weight", scale=1.0 / np.sqrt(k))
        ins = [x, w] + ([self.weight((n,), f"{name}.bias", scale=0.5)] if bias else [])
        return self.op("Gemm", ins, name=name, transB=trans_b)

    def matmul(self, x, k, n, bias=True, name=None):
        """x @ W (k, n) [+ b]: a Linear layer in the form exporters emit."""
        name = name or self.fresh("linear")
        w = self.weight((k, n), f"{name}.weight", scale=1.0 / np.sqrt(k))
        y = self.op("MatMul", [x, w], name=name)
        if bias:
            y = self.op("Add", [y, self.weight((n,), f"{name}.bias", scale=0.5)], name=f"{name}_bias")
        return y

    def model(self, outputs, output_dtype=F32, output_shapes=None) -> onnx.ModelProto:
        """Outputs get the shapes ONNX shape inference finds (symbolic batch kept) unless given."""
        shapes = output_shapes or [None] * len(outputs)
        outs = [helper.make_tensor_value_info(o, output_dtype, s) for o, s in zip(outputs, shapes)]
        g = helper.make_graph(self.nodes, "rule_test", self.inputs, outs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        m = helper.make_model(g, opset_imports=opsets, producer_name="onnxprune-tests")
        m.ir_version = self.ir_version or _ir_for_opset(self.opset)
        if output_shapes is None:
            inferred = onnx.shape_inference.infer_shapes(m)
            for o, io in zip(m.graph.output, inferred.graph.output):
                if io.type.tensor_type.HasField("shape"):
                    o.CopyFrom(io)
        return m


def _ir_for_opset(opset: int) -> int:
    # oldest IR that knows the opset (ORT 1.2x accepts up to IR 10)
    for ir, top in ((3, 8), (4, 9), (5, 10), (6, 11), (7, 13), (8, 17), (9, 20)):
        if opset <= top:
            return ir
    return 10


# --- assertions -------------------------------------------------------------------------------

def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def feeds_for(model: onnx.ModelProto, shapes: dict[str, list[int]], seed: int = 123) -> dict:
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):  # token ids, masks: small valid values
            out[i.name] = rng.integers(0, 2, size=shapes[i.name]).astype(dtype)
        else:
            out[i.name] = rng.standard_normal(shapes[i.name]).astype(dtype)
    return out


def group_at(analysis, tensor: str, axis: int):
    g = analysis.group_of(tensor, axis)
    assert g is not None, f"no channel group holds ({tensor!r}, {axis}); spaces: {sorted(analysis.space_group)}"
    return g


def assert_prunes(model: onnx.ModelProto, spaces, input_shapes: dict[str, list[int]], *, sizes=None,
                  ratio: float = 0.5, shrinks=None, frozen=(), exclude=None, **options):
    """The shared oracle assertion of the rule tests.

    spaces: (tensor, axis) pairs, each in a channel group that must be prunable (of size
      ``sizes[i]`` when given) and must lose channels at ``ratio``.
    shrinks: weight initializer names that must be smaller in the pruned model (default: every
      weight member of the groups under test).
    frozen: (tensor, axis) pairs whose groups must be frozen (not prunable).
    Checks: verification passed, pruned model passes the full ONNX checker, runs in ORT with the
    original's output shapes, and its outputs differ from the unmasked original.
    Returns the PruneResult.
    """
    from onnxprune import prune

    res = prune(model, ratio=ratio, latency=False, verify=True, input_shapes=input_shapes, exclude=exclude,
                **options)  # heads=True, embed_dim=True
    a = res.analysis
    groups = []
    for i, (t, ax) in enumerate(spaces):
        g = group_at(a, t, ax)
        assert g.prunable, f"group of ({t}, {ax}) is frozen: {g.reasons}"
        if sizes is not None:
            assert g.size == sizes[i], f"group of ({t}, {ax}) has {g.size} channels, expected {sizes[i]}"
        assert g.id in res.kept, f"group of ({t}, {ax}) was not pruned"
        assert 0 < len(res.kept[g.id]) < g.size
        rep = next(r for r in res.report.groups if r.id == g.id)
        assert rep.kept == len(res.kept[g.id]) < rep.channels and not rep.frozen
        groups.append(g)
    for t, ax in frozen:
        g = group_at(a, t, ax)
        assert not g.prunable, f"group of ({t}, {ax}) should be frozen"
        assert g.id not in res.kept
        assert g.reasons, "a frozen group must say why"

    v = res.report.verification
    assert v.get("passed") is True, v

    before = {k: v.shape for k, v in a.view.consts.items()}
    after = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    for n in res.model.graph.node:  # int8 weights are written back behind DequantizeLinear
        if n.op_type == "DequantizeLinear" and n.input[0] in after:
            after.setdefault(n.output[0], after[n.input[0]])
    if shrinks is None:
        shrinks = sorted({m.tensor for g in groups for m in g.weights})
    assert shrinks, "no weights to check"
    for w in shrinks:
        assert w in after, f"weight {w} missing from the pruned model"
        assert np.prod(after[w]) < np.prod(before[w]), f"weight {w} did not shrink: {before[w]} -> {after[w]}"

    onnx.checker.check_model(res.model, full_check=True)

    feeds = feeds_for(model, input_shapes)
    orig = ort_run(model, feeds)
    pruned = ort_run(res.model, feeds)
    assert len(orig) == len(pruned)
    diff = 0.0
    for o, p in zip(orig, pruned):
        assert o.shape == p.shape, f"output shape changed: {o.shape} -> {p.shape}"
        assert np.all(np.isfinite(p))
        diff = max(diff, float(np.max(np.abs(o.astype(np.float64) - p.astype(np.float64)))))
    scale = max(float(np.max(np.abs(o))) for o in orig)
    assert diff > 1e-3 * max(scale, 1e-6), "pruned output equals the unpruned original: nothing was really removed"
    return res


def greedy_tokens(sess, feeds0: dict, steps: int, cut: dict | None = None, positions: bool = True) -> list[int]:
    """Greedy decoding with a KV cache: the prompt, then one token at a time, present -> past.
    ``cut``: oracle.io_positions, the pruned model's view of a full-size cache in ``feeds0``;
    ``positions``: the model takes position_ids."""
    names = [o.name for o in sess.get_outputs()]
    feeds = {k: (take_kept(v, cut[k]) if cut and k in cut else v) for k, v in feeds0.items()}
    tokens = []
    for _ in range(steps):
        outs = dict(zip(names, sess.run(None, feeds)))
        tok = int(np.argmax(outs["logits"][0, -1]))
        tokens.append(tok)
        total = feeds["attention_mask"].shape[1] + 1
        feeds = {"input_ids": np.array([[tok]], np.int64), "attention_mask": np.ones((1, total), np.int64)}
        if positions:
            feeds["position_ids"] = np.array([[total - 1]], np.int64)
        for n in names[1:]:
            feeds["past_key_values" + n[len("present"):]] = outs[n]
    return tokens
