"""Shape vectors read at run time (Shape -> Slice/Gather -> Concat into a Reshape target): which
entry is which dim. Starts and ends clamp as ONNX says (onnxscript's SDPA lowering slices
Shape(k) from INT64_MIN), and entries past the slice's end are not dims."""
from __future__ import annotations

import numpy as np
from helpers import GraphBuilder, assert_prunes

from onnxprune.analysis.graph import build_view
from onnxprune.analysis.rules.shape_entries import SHAPE_RESOLVERS, ConstEntry, DimEntry, clamp_index, shape_entry

I64_MIN = np.iinfo(np.int64).min


def split_heads_model(start, end):
    """x [N, T, 8] -> MatMul to 16 -> Reshape to Concat(Slice(Shape(y), start, end), [4, 4])
    -> Relu -> Reshape back to [N, T, 16] the same way -> MatMul to 8."""
    b = GraphBuilder(seed=5)
    x = b.input("x", ["T", 8])
    y = b.matmul(x, 8, 16, name="up")
    lead = b.op("Slice", [b.op("Shape", [y]), b.const(np.array([start], np.int64)), b.const(np.array([end], np.int64))])
    z = b.op("Reshape", [y, b.op("Concat", [lead, b.const(np.array([4, 4], np.int64))], axis=0)], name="split")
    z = b.op("Relu", [z])
    z = b.op("Reshape", [z, b.op("Concat", [lead, b.const(np.array([16], np.int64))], axis=0)], name="merge")
    return b.model([b.matmul(z, 16, 8, name="down")], output_shapes=[["N", "T", 8]]), y


def test_slice_from_int64_min_clamps_to_the_first_dim():
    m, y = split_heads_model(I64_MIN, -1)
    view = build_view(m, {"x": [2, 5, 8]})
    split = next(n for n in view.nodes if n.name == "split")
    entries = [shape_entry(view, split.input[1], i) for i in range(4)]
    assert entries[0] == DimEntry(y, 0) and entries[1] == DimEntry(y, 1)
    assert [type(e) for e in entries[2:]] == [ConstEntry, ConstEntry]


def test_entries_past_the_slice_end_are_not_dims():
    m, y = split_heads_model(0, 2)
    view = build_view(m, {"x": [2, 5, 8]})
    shape_vec = next(n for n in view.nodes if n.op_type == "Slice").output[0]
    assert shape_entry(view, shape_vec, 1) == DimEntry(y, 1)
    assert shape_entry(view, shape_vec, 2) is None  # Slice(Shape(y), 0, 2) has two entries


def test_clamped_slice_model_prunes_against_the_oracle():
    m, y = split_heads_model(I64_MIN, -1)
    assert_prunes(m, [(y, 2)], {"x": [2, 5, 8]}, ratio=0.5)


def test_heads_merged_with_the_batch_stay_right_at_any_batch():
    """TorchScript's nn.MultiheadAttention reshapes to [T, bsz * num_heads, head_dim] with bsz read at
    run time: the oracle checks at batch 1, so check the written model at batch 3 against three
    batch-1 runs (and the count constant it rewrote)."""
    from pathlib import Path

    import onnxruntime as ort

    from onnxprune import prune

    root = Path(__file__).resolve().parents[1]
    for exporter in ("ts", "dynamo"):
        res = prune(str(root / "models" / "onnx" / f"torchvit.{exporter}.onnx"), ratio=0.5, heads=True, latency=False)
        heads = [g for g in res.report.groups if g.kind == "heads"]
        assert len(heads) == 2 and all(g.kept == 2 and g.channels == 4 for g in heads)
        s = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
        full = s.run(None, {"input": x})[0]
        one = np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(3)])
        np.testing.assert_allclose(full, one, rtol=1e-5, atol=1e-6)


def test_clamp_index_follows_onnx():
    assert [clamp_index(i, 4) for i in (0, 2, 4, 9, -1, -4, -9, I64_MIN)] == [0, 2, 4, 4, 3, 0, 0, 0]
    assert clamp_index(-1, 0) == 0


def test_every_exporter_idiom_has_a_resolver():
    assert {"Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Shape", "Gather", "Slice",
            "ReduceProd", "Max", "Min", "Mul", "Where"} <= set(SHAPE_RESOLVERS)
