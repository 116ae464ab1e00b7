"""Random inputs to run a model on (shape evaluation, verification, timing)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def random_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]], seed: int = 0,
                  const_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs of the given (concrete) shapes: floats ~ N(0,1); integer inputs that index an
    embedding table get valid indices, other integer inputs (masks, flags) get ones.
    ``const_shapes``: the shapes of the model's initializers where the caller has them (else read
    from their dims: a large model's weights are never converted for this)."""
    consts = (const_shapes if const_shapes is not None
              else {t.name: tuple(t.dims) for t in model.graph.initializer})
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        if i.name in consts:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        shape = shapes[i.name]
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[i.name] = np.ones(shape, dtype=bool)
        else:
            high = _embedding_rows(model, i.name, consts)
            feeds[i.name] = (rng.integers(0, high, size=shape) if high else np.ones(shape)).astype(dtype)
    return feeds


def _embedding_rows(model: onnx.ModelProto, name: str, consts: dict[str, tuple[int, ...]]) -> int | None:
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == name and n.input[0] in consts:
            return consts[n.input[0]][_int_attr(n, "axis", 0)]
        if n.op_type == "EmbedLayerNormalization" and name in n.input[:2]:  # ORT's fused BERT embeddings
            table = n.input[2] if n.input[0] == name else (n.input[4] if len(n.input) > 4 else "")
            if table in consts:
                return consts[table][0]
    return None


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
