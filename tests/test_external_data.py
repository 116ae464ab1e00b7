"""Models whose weights stay in external data (issue #15): memory-mapped reads, the large-model
path taken below a (monkeypatched) small threshold, the streamed rewrite giving the same model as
the in-memory one, inputs never modified, and the output's .data file written all-or-nothing."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.analysis.graph import build_view
from onnxprune.model import external
from onnxprune.model.external import DataFile, has_external, read_tensor, reference_external
from onnxprune.model.load import load_model
from onnxprune.model.save import StagedOutputs, save_model, stage_model
from onnxprune.report.stats import measure


def mlp(d=64, h=256, layers=2, seed=0) -> onnx.ModelProto:
    """x -> (MatMul, Add, Relu, MatMul) x layers; weights big enough to go external."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array((rng.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32), f"w1_{i}"),
                  numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), f"b1_{i}"),
                  numpy_helper.from_array((rng.standard_normal((h, d)) / np.sqrt(h)).astype(np.float32), f"w2_{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w1_{i}"], [f"m{i}"], name=f"fc1_{i}"),
                  helper.make_node("Add", [f"m{i}", f"b1_{i}"], [f"a{i}"], name=f"add_{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu_{i}"),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"y{i}"], name=f"fc2_{i}")]
        x = f"y{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", d])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def save_external(m: onnx.ModelProto, path) -> None:
    c = onnx.ModelProto()
    c.CopyFrom(m)  # onnx.save_model moves the data of the model it is given
    onnx.save_model(c, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)


def digest(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(open(p, "rb").read())
    return h.hexdigest()


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def arrays(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))  # with its external data
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def test_load_keeps_external_data_on_disk_and_reads_memmaps(tmp_path):
    src = tmp_path / "in.onnx"
    m = mlp()
    save_external(m, src)
    loaded = load_model(src)
    assert has_external(loaded)
    assert loaded.ByteSize() < 4096  # the proto holds no weight bytes
    w = {t.name: t for t in loaded.graph.initializer}
    big = read_tensor(w["w1_0"])
    assert isinstance(big, np.memmap) and not big.flags.writeable
    assert np.array_equal(big, numpy_helper.to_array(m.graph.initializer[0]))
    # tiny external tensors (<= INLINE_MAX_ELEMS: shape values, small biases) are read into the proto
    assert not external.is_external(w["b1_0"])
    view = build_view(loaded)
    assert isinstance(view.consts["w2_1"], np.memmap)
    assert view.shapes["w2_1"] == (256, 64)


def test_missing_or_short_external_data_is_one_line(tmp_path):
    src = tmp_path / "in.onnx"
    save_external(mlp(), src)
    data = tmp_path / "in.onnx.data"
    with open(data, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(onnxprune.errors.OnnxPruneError, match="external data"):
        load_model(src)


def test_streamed_rewrite_equals_in_memory_rewrite(tmp_path, monkeypatch):
    m = mlp()
    src_mem, src_ext = tmp_path / "mem.onnx", tmp_path / "ext.onnx"
    onnx.save_model(m, str(src_mem))
    save_external(m, src_ext)
    before = digest(src_ext, tmp_path / "ext.onnx.data")
    r_mem = onnxprune.prune(str(src_mem), ratio=0.3, latency=False)
    monkeypatch.setattr(external, "LARGE_MODEL_BYTES", 10_000)  # the result stays in external data
    r_ext = onnxprune.prune(str(src_ext), ratio=0.3, latency=False)
    assert r_ext.report.verification.passed
    assert not has_external(r_mem.model) and has_external(r_ext.model)
    out_mem, out_ext = tmp_path / "out_mem.onnx", tmp_path / "out_ext.onnx"
    onnxprune.save(r_mem.model, out_mem)
    onnxprune.save(r_ext.model, out_ext, input_path=src_ext)
    assert not (tmp_path / "out_mem.onnx.data").exists()
    assert (tmp_path / "out_ext.onnx.data").exists()
    a, b = arrays(out_mem), arrays(out_ext)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert a["w1_0"].shape == (64, 179)  # 256 - round(0.3 * 256)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    assert np.array_equal(run(out_mem, x), run(out_ext, x))
    onnx.checker.check_model(str(out_ext), full_check=True)
    assert digest(src_ext, tmp_path / "ext.onnx.data") == before  # the input is never modified


def test_small_threshold_spills_an_in_memory_model(tmp_path, monkeypatch):
    """The >2 GB path on a small model: over LARGE_MODEL_BYTES, a model without external data has its
    weights moved to a scratch data file at load, and is written with a .data file."""
    monkeypatch.setattr(external, "LARGE_MODEL_BYTES", 10_000)
    src = tmp_path / "in.onnx"
    onnx.save_model(mlp(), str(src))
    before = digest(src)
    loaded = load_model(src)
    assert has_external(loaded) and loaded.ByteSize() < 4096
    res = onnxprune.prune(str(src), ratio=0.5, latency=False)
    assert res.report.verification.passed
    out = tmp_path / "out.onnx"
    onnxprune.save(res.model, out, input_path=src)
    assert (tmp_path / "out.onnx.data").exists()
    onnx.checker.check_model(str(out))
    x = np.ones((2, 64), np.float32)
    assert run(out, x).shape == (2, 64)
    assert digest(src) == before
    # an in-memory ModelProto over the threshold takes the same path through the API
    res2 = onnxprune.prune(mlp(), ratio=0.5, latency=False)
    assert has_external(res2.model) and res2.report.verification.passed


def test_output_data_is_all_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(external, "LARGE_MODEL_BYTES", 10_000)
    src = tmp_path / "in.onnx"
    save_external(mlp(), src)
    model = onnxprune.prune(str(src), ratio=0.3, latency=False).model
    out = tmp_path / "out.onnx"
    with pytest.raises(RuntimeError):
        with StagedOutputs() as outputs:
            stage_model(model, out, outputs, input_path=src)
            raise RuntimeError("interrupted before commit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "in.onnx.data"]
    (tmp_path / "out.onnx.data").write_bytes(b"stale")  # an older output's data is replaced whole
    save_model(model, out, input_path=src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "in.onnx.data", "out.onnx", "out.onnx.data"]
    assert run(out, np.ones((1, 64), np.float32)).shape == (1, 64)


def test_output_onto_input_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(external, "LARGE_MODEL_BYTES", 10_000)
    src = tmp_path / "in.onnx"
    save_external(mlp(), src)
    model = onnxprune.prune(str(src), ratio=0.3, latency=False).model
    with pytest.raises(onnxprune.errors.OnnxPruneError, match="external data"):
        save_model(model, tmp_path / "in.onnx.data", input_path=src)
    (tmp_path / "out.onnx.data").mkdir()
    with pytest.raises(onnxprune.errors.OnnxPruneError, match="directory"):
        save_model(model, tmp_path / "out.onnx", input_path=src)
    assert not (tmp_path / "out.onnx").exists()


def test_data_file_round_trip_and_alignment(tmp_path):
    data = DataFile(tmp_path / "w.data")
    a = np.arange(3000, dtype=np.float16).reshape(30, 100)
    b = np.arange(10, dtype=np.int64)
    ta, tb = data.add(a, "a"), data.add(b, "b")
    data.close()
    assert int(external.external_info(tb)["offset"]) % external.ALIGN == 0
    assert np.array_equal(read_tensor(ta), a) and read_tensor(ta).dtype == np.float16
    assert np.array_equal(read_tensor(tb), b)


def test_reference_external_makes_locations_absolute(tmp_path):
    src = tmp_path / "in.onnx"
    save_external(mlp(), src)
    m = onnx.load(str(src), load_external_data=False)
    reference_external(m, tmp_path)
    locs = {external.external_info(t)["location"] for t in m.graph.initializer if external.is_external(t)}
    assert locs == {str((tmp_path / "in.onnx.data").resolve())}
    assert os.path.isabs(locs.pop())


def test_external_weight_behind_transpose_is_folded_and_spilled(tmp_path):
    """A weight read only with constants (Transpose of a stored weight) is folded by normalize as in
    a small model; the folded weight goes to a scratch data file, and the result verifies."""
    rng = np.random.default_rng(0)
    wt = rng.standard_normal((128, 64)).astype(np.float32)  # stored transposed
    w2 = rng.standard_normal((128, 64)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                          [numpy_helper.from_array(wt, "wt"), numpy_helper.from_array(w2, "w2")])
    src = tmp_path / "in.onnx"
    save_external(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    res = onnxprune.prune(str(src), ratio=0.25, latency=False)
    assert res.report.verification.passed
    norm = res.analysis.view.model
    assert not any(n.op_type == "Transpose" for n in norm.graph.node)  # folded
    assert all(external.is_external(t) for t in norm.graph.initializer)  # and spilled
    sliced = {t.name: read_tensor(t) for t in res.model.graph.initializer}
    kept = np.sort(res.kept[next(iter(res.kept))])
    assert np.array_equal(sliced["w2"], w2[kept])


def test_small_external_result_is_a_plain_model(tmp_path):
    """Under LARGE_MODEL_BYTES the API returns a model with its weights in the proto (checker,
    SerializeToString and ORT take it), written as one file as before."""
    src = tmp_path / "in.onnx"
    save_external(mlp(), src)
    res = onnxprune.prune(str(src), ratio=0.3, latency=False)
    assert has_external(res.analysis.view.model) and not has_external(res.model)
    onnx.checker.check_model(res.model, full_check=True)
    ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnxprune.save(res.model, tmp_path / "out.onnx", input_path=src)
    assert not (tmp_path / "out.onnx.data").exists()


def test_latency_of_models_with_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(external, "LARGE_MODEL_BYTES", 10_000)
    src = tmp_path / "in.onnx"
    save_external(mlp(), src)
    res = onnxprune.prune(str(src), ratio=0.3, latency=False)
    ms = measure([load_model(src), res.model], {"x": [1, 64]}, time_budget_s=0.3)
    assert len(ms) == 2 and all(v > 0 for v in ms)
