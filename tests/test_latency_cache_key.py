"""The latency caches (op-level model and per-group table) are keyed by what latency depends on:
the graph, shapes and integer tensors, not the weights' bytes nor where external data lives. A
one-file model over 256 MB is spilled to a random scratch file at load, so keying by its bytes
re-profiled it on every run."""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.api import analyze_model
from onnxprune.profiling.latency_model import model_key
from onnxprune.profiling.latency_table import table_key


def net(path, seed=0, reshape=(1, -1), external=False, constant_weights=False) -> str:
    """Conv -> Reshape: a float weight (over external.INLINE_MAX_ELEMS, so a spill moves it) and an
    int64 shape initializer."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((48, 3, 3, 3)).astype(np.float32)
    shape = numpy_helper.from_array(np.array(reshape, dtype=np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Reshape", ["a", "shape"], ["y"], name="flat")]
    inits = [shape]
    if constant_weights:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w"), name="wc"))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if external:
        onnx.save_model(m, str(path), save_as_external_data=True, location="w.data", size_threshold=0)
    else:
        onnx.save_model(m, str(path))
    return str(path)


def keys(path) -> tuple[str, str]:
    a = analyze_model(path)
    groups = a.prunable_groups
    return model_key(a, groups, "cpu", None, 40), table_key(a, groups, "cpu", None)


def test_keys_ignore_weight_values_and_external_locations(tmp_path):
    base = keys(net(tmp_path / "a" / "m.onnx"))
    assert keys(net(tmp_path / "b" / "m.onnx", seed=1)) == base  # retrained: same architecture
    assert keys(net(tmp_path / "c" / "m.onnx", external=True)) == base  # weights beside the model
    assert keys(net(tmp_path / "d" / "m.onnx", external=True)) == base  # ... in another folder


def test_keys_follow_structure_integer_tensors_and_constant_node_shapes(tmp_path):
    base = keys(net(tmp_path / "a" / "m.onnx"))
    assert keys(net(tmp_path / "b" / "m.onnx", reshape=(-1, 8))) != base  # another shape: another graph
    const = keys(net(tmp_path / "c" / "m.onnx", constant_weights=True))
    assert const == base  # normalize turns Constant weights into initializers: the same graph
    assert keys(net(tmp_path / "d" / "m.onnx", constant_weights=True, seed=3)) == const  # its weights' values are not


def test_digest_of_constant_nodes_hashes_their_shapes_and_integer_values():
    """The digest on raw protos (no normalize): Constant node values follow the same rule as initializers."""
    import hashlib
    from onnxprune.profiling.latency_table import structure_digest

    def digest(w_seed, shape):
        w = np.random.default_rng(w_seed).standard_normal((8, 3, 3, 3)).astype(np.float32)
        nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
                 helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(shape, np.int64), "s")),
                 helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        h = hashlib.sha256()
        structure_digest(h, helper.make_model(g))
        return h.hexdigest()
    assert digest(0, (1, -1)) == digest(1, (1, -1))
    assert digest(0, (1, -1)) != digest(0, (-1, 8))


def test_a_model_spilled_to_scratch_at_load_keeps_its_key(tmp_path, monkeypatch):
    """Over LARGE_MODEL_BYTES a one-file model's weights go to a new scratch file at every load."""
    from onnxprune.model import external
    path = net(tmp_path / "m.onnx")
    inline = keys(path)
    monkeypatch.setattr(external, "LARGE_MODEL_BYTES", 100)
    a, b = analyze_model(path), analyze_model(path)
    locations = [external.external_info(t)["location"] for x in (a, b) for t in x.view.model.graph.initializer
                 if external.is_external(t)]
    assert len(locations) == 2 and locations[0] != locations[1]  # two loads, two scratch files
    assert keys(path) == keys(path) == inline


def test_string_tensors_are_hashed_by_value_not_by_address():
    import hashlib
    from onnxprune.profiling.latency_table import _digest_tensor

    def digest(values):
        h = hashlib.sha256()
        _digest_tensor(h, helper.make_tensor("s", TensorProto.STRING, [len(values)], values))
        return h.hexdigest()
    assert digest([b"ab", b"cd"]) == digest([b"ab", b"cd"]) != digest([b"ab", b"ce"])
