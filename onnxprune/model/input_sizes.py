"""Sizes for symbolic input dims that the model can run at.

A symbolic dim the user did not set gets a default (224 for image spatial dims, 16 otherwise; see
shapes.graph_input_shapes). Some models only run at one size although their inputs say any size
(a text recognizer whose Reshape after the conv stack fixes the height at 48; a ViT whose position
embedding fixes the token count). Where the defaults do not run, the sizes the model's own
constants imply are tried (Reshape/Expand/Resize constants, pooling windows, lengths of constants
added or concatenated to activations), scaled by the strides a backbone may have, before giving
up with an error that names the defaulted dims and asks for --input-shape.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import OnnxPruneError, first_line
from onnxprune.model.feeds import random_inputs
from onnxprune.model.shapes import (DATA_DEPENDENT_SHAPES, SHAPE_EVAL, defaulted_dims, graph_input_shapes,
                                    light_model, runnable_part, with_fixed_input_shapes)
from onnxprune.model.runtime import ort_session

MAX_TRIES = 40  # ONNX Runtime runs at most, after the defaults (shape inference screens most candidates)
STRIDES = (1, 2, 4, 8, 16, 32, 64)  # a constant may hold a size after this much downsampling
SIZE_RANGE = (2, 2048)
POOLS = {"AveragePool", "MaxPool", "LpPool"}
ADDED = {"Add", "Concat", "Sub", "Mul"}  # position embeddings, class tokens: their lengths fix sizes


@dataclass
class FittedShapes:
    """Concrete input shapes; ``note`` says which defaulted dims were changed to what, and why."""
    shapes: dict[str, list[int]]
    note: str | None = None


def fitted_input_shapes(model: onnx.ModelProto, overrides: dict | None = None) -> FittedShapes:
    """graph_input_shapes, with defaulted dims moved to a size the model's constants imply where the
    defaults do not run (see module doc). Raises OnnxPruneError when no tried size runs."""
    shapes = graph_input_shapes(model, overrides)
    free = defaulted_dims(model, overrides)
    if not free:
        return FittedShapes(shapes)
    runner = _Runner.build(model)
    error = runner.error(shapes) if runner is not None else None
    if error is None:  # runs; or ORT cannot load it at all: not a size problem, later stages say so
        return FittedShapes(shapes)
    # where inference sees the failure ORT hit, it screens candidates cheaply (it misses some: a
    # Reshape without -1 is not checked against its input's size)
    screen = _inference(model, shapes) == "failed"
    tried = 0
    for cand in candidate_shapes(shapes, free, implied_sizes(model)):
        if tried >= MAX_TRIES:
            break
        if screen and _inference(model, cand) == "failed":
            continue
        tried += 1
        if runner.error(cand) is None:
            return FittedShapes(cand, f"input dims {_dims_text(free)} are symbolic and did not run at their "
                                      f"defaults ({error}); ran at {_shapes_text(cand)}, a size the model's "
                                      f"constants imply (give --input-shape to choose)")
    raise OnnxPruneError(f"ONNX Runtime cannot run the model at the default input size {_shapes_text(shapes)} "
                         f"({error}); symbolic dims {_dims_text(free)} were defaulted and no size its constants "
                         f"imply ran either: give --input-shape with the size the model expects")


def implied_sizes(model: onnx.ModelProto) -> list[int]:
    """Positive integers the model's constants hold where sizes live (see module doc), and the square
    roots of perfect squares among them (a token count of H x W patches)."""
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    values: set[int] = set()
    for n in g.node:
        if n.op_type in POOLS:
            for a in n.attribute:
                if a.name == "kernel_shape":
                    values.update(a.ints)
        for k, i in enumerate(n.input):
            t = consts.get(i)
            if t is None or k == 0 and n.op_type not in ADDED:
                continue
            if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _elems(t) <= 64:
                values.update(int(v) for v in numpy_helper.to_array(t).ravel())
            elif n.op_type in ADDED and len(t.dims) >= 2:
                values.update(int(d) for d in t.dims)
    values = {v for v in values if v > 1}
    values |= {math.isqrt(v) for v in values if math.isqrt(v) ** 2 == v}
    return sorted(values)


def candidate_sizes(implied: list[int], default: int) -> list[int]:
    """Each implied size times or over a stride, in SIZE_RANGE, nearest the default first."""
    sizes = {v * s for v in implied for s in STRIDES} | {v // s for v in implied for s in STRIDES if v % s == 0}
    sizes = {s for s in sizes if SIZE_RANGE[0] <= s <= SIZE_RANGE[1] and s != default}
    return sorted(sizes, key=lambda s: (abs(math.log(s / default)), s))


def candidate_shapes(shapes: dict[str, list[int]], free: dict[str, list[int]], implied: list[int]):
    """Shapes with one defaulted dim set to a candidate size, then all of an input's defaulted dims."""
    for name, dims in free.items():
        default = shapes[name][dims[0]]
        for size in candidate_sizes(implied, default):
            options = [[k] for k in dims] + ([dims] if len(dims) > 1 else [])
            for ks in options:
                cand = {k: list(v) for k, v in shapes.items()}
                for k in ks:
                    cand[name][k] = size
                yield cand


def _inference(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> str:
    """ONNX shape inference (strict, with data propagation) at these input shapes: "failed" where it
    finds an inconsistency, else "ok"."""
    try:
        light, _ = light_model(with_fixed_input_shapes(model, shapes))
        onnx.shape_inference.infer_shapes(light, strict_mode=True, data_prop=True)
    except Exception:  # noqa: BLE001 (inference errors have no common type)
        return "failed"
    return "ok"


@dataclass
class _Runner:
    """One ONNX Runtime session on the runnable part of the model, run at any input shapes."""
    model: onnx.ModelProto
    session: object
    names: list[str]
    weights: dict[str, np.ndarray]

    @classmethod
    def build(cls, model: onnx.ModelProto) -> "_Runner | None":
        light, big = light_model(model)
        if any(n.op_type in DATA_DEPENDENT_SHAPES for n in model.graph.node):
            light, big = model, []
        m, names = runnable_part(light, [o.name for o in model.graph.output])
        if not names:
            return None
        try:
            sess = ort_session(m, SHAPE_EVAL)
        except Exception:  # noqa: BLE001 (ORT's own types)
            return None
        used = {i.name for i in m.graph.input}
        weights = {t.name: np.zeros(tuple(t.dims), helper.tensor_dtype_to_np_dtype(t.data_type))
                   for t in big if t.name in used}
        return cls(model, sess, names, weights)

    def error(self, shapes: dict[str, list[int]]) -> str | None:
        """None when the model runs at these input shapes, else ORT's message (first line)."""
        try:
            self.session.run(self.names, {**random_inputs(self.model, shapes), **self.weights})
            return None
        except Exception as e:  # noqa: BLE001 (ORT's own types)
            return _short_error(first_line(e))


def _short_error(message: str) -> str:
    """ORT's "... running Reshape node. Name:'r' Status Message: <C++ trace>" as "Reshape 'r' fails"."""
    m = re.search(r"running (\w+) node\. Name:'([^']*)'", message)
    return f"ONNX Runtime fails in {m.group(1)} '{m.group(2)}'" if m else message[:160]


def _elems(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1


def _dims_text(free: dict[str, list[int]]) -> str:
    return ", ".join(f"{name}[{', '.join(map(str, ks))}]" for name, ks in free.items())


def _shapes_text(shapes: dict[str, list[int]]) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())
