"""Calibration data loading (npz/npy/images, names, shapes, batching) and the CLI's calibration errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder

from onnxprune.scoring.calibration import CalibSet, load_calib, parse_preprocess, read_pnm
from onnxprune.errors import OnnxPruneError


def conv_model(batch="N", c=1, hw=8):
    b = GraphBuilder(seed=1)
    x = b.input("x", [c, hw, hw], batch=batch)
    y = b.op("Relu", [b.conv(x, c, 8, k=3, name="conv1")])
    y = b.conv(y, 8, 4, k=1, pads=[0, 0, 0, 0], name="conv2")
    return b.model([y])


def two_input_model():
    b = GraphBuilder(seed=2)
    x = b.input("x", [6])
    z = b.input("z", [6])
    y = b.gemm(b.op("Add", [x, z]), 6, 5, name="fc1")
    y = b.gemm(b.op("Relu", [y]), 5, 3, name="fc2")
    return b.model([y])


def batches(cs):
    return [f for f in cs]


def test_npz_named_and_batched(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x, other=np.zeros(3))
    cs = load_calib(str(tmp_path / "c.npz"), conv_model(), batch_size=4)
    assert isinstance(cs, CalibSet) and len(cs) == 3 and cs.n == 10
    got = batches(cs)
    assert [f["x"].shape[0] for f in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in got]), x)


def test_npz_single_unnamed_array_and_key_pick(tmp_path):
    x = np.ones((5, 1, 8, 8), np.float64)  # cast to the input dtype
    np.savez(tmp_path / "one.npz", x)  # stored as arr_0
    got = batches(load_calib(str(tmp_path / "one.npz"), conv_model()))
    assert got[0]["x"].dtype == np.float32 and got[0]["x"].shape == (5, 1, 8, 8)
    np.savez(tmp_path / "two.npz", calib_x=x, test_x=x * 2)
    got = batches(load_calib(f"{tmp_path / 'two.npz'}:test_x", conv_model()))
    assert float(got[0]["x"].max()) == 2.0


def test_npz_wrong_names_error(tmp_path):
    np.savez(tmp_path / "bad.npz", a=np.zeros((2, 1, 8, 8)), b=np.zeros((2, 1, 8, 8)))
    with pytest.raises(OnnxPruneError, match="none is named like the model input 'x'"):
        load_calib(str(tmp_path / "bad.npz"), conv_model())
    with pytest.raises(OnnxPruneError, match="has no array 'nope'"):
        load_calib(f"{tmp_path / 'bad.npz'}:nope", conv_model())
    np.savez(tmp_path / "half.npz", x=np.zeros((2, 6)))
    with pytest.raises(OnnxPruneError, match=r"lacks array\(s\) for model input\(s\) 'z'"):
        load_calib(str(tmp_path / "half.npz"), two_input_model())


def test_multi_input_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", x=rng.standard_normal((7, 6)), z=rng.standard_normal((7, 6)))
    got = batches(load_calib(str(tmp_path / "m.npz"), two_input_model(), batch_size=3))
    assert [sorted(f) for f in got] == [["x", "z"]] * 3
    assert sum(len(f["x"]) for f in got) == 7


def test_npy_memory_mapped_and_limit(tmp_path):
    x = np.arange(12 * 64, dtype=np.float32).reshape(12, 1, 8, 8)
    np.save(tmp_path / "c.npy", x)
    cs = load_calib(str(tmp_path / "c.npy"), conv_model(), batch_size=5, limit=9)
    assert isinstance(cs.sources["x"], np.memmap)
    got = batches(cs)
    assert [len(f["x"]) for f in got] == [5, 4]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in got]), x[:9])
    with pytest.raises(OnnxPruneError, match="only a single-input model"):
        load_calib(str(tmp_path / "c.npy"), two_input_model())


def test_shape_mismatch_and_static_batch(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(OnnxPruneError, match=r"has shape \(4, 3, 8, 8\); the model expects \(N, 1, 8, 8\)"):
        load_calib(str(tmp_path / "wrong.npy"), conv_model())
    cs = load_calib(np.zeros((5, 1, 8, 8), np.float32), conv_model(batch=1), batch_size=32)
    assert cs.batch_size == 1 and len(cs) == 5  # a static batch dim decides the batch size
    with pytest.raises(OnnxPruneError, match="not found"):
        load_calib(str(tmp_path / "missing.npz"), conv_model())
    (tmp_path / "c.txt").write_text("1 2 3")
    with pytest.raises(OnnxPruneError, match=".npz or .npy"):
        load_calib(str(tmp_path / "c.txt"), conv_model())


def test_static_batch_leaves_out_a_partial_last_batch():
    cs = load_calib(np.zeros((20, 1, 8, 8), np.float32), conv_model(batch=8))
    assert cs.batch_size == 8 and [len(f["x"]) for f in cs] == [8, 8]
    assert "4 samples left out" in cs.description
    with pytest.raises(OnnxPruneError, match="fixed at 8"):
        load_calib(np.zeros((5, 1, 8, 8), np.float32), conv_model(batch=8))


def test_non_finite_calibration_is_refused(tmp_path):
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    x[9, 0, 3, 3] = np.nan
    with pytest.raises(OnnxPruneError, match="NaN or Inf"):
        batches(load_calib(x, conv_model(), batch_size=4))
    onnx.save(conv_model(), str(tmp_path / "in.onnx"))
    np.save(tmp_path / "c.npy", x)
    r = run_cli(tmp_path / "in.onnx", tmp_path / "out.onnx", "--ratio", "0.5", "--scorer", "vbp",
                "--calib", tmp_path / "c.npy", "--no-latency", "-q")
    assert "NaN or Inf" in one_error_line(r)
    assert not (tmp_path / "out.onnx").exists()


def test_oracle_comparison_does_not_skip_nan():
    from onnxprune.verify.oracle import _max_abs_diff

    a = np.array([1.0, 2.0, np.nan, np.inf])
    assert _max_abs_diff(a, a.copy()) == 0.0  # the same NaN/Inf in both: equal
    assert _max_abs_diff(a, np.array([1.0, 2.5, np.nan, np.inf])) == 0.5
    assert _max_abs_diff(a, np.array([1.0, 2.0, 0.0, np.inf])) == np.inf
    assert _max_abs_diff(np.array([1.0]), np.array([np.nan])) == np.inf


def _argmax_model(bias):
    """y = x + bias (float, scale ~100), and ArgMax(x + bias) over the last axis (int64)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Add", ["x", "b"], ["y"]), helper.make_node("ArgMax", ["y"], ["i"], axis=1, keepdims=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
                           helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
                          [numpy_helper.from_array(np.asarray(bias, np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_integer_outputs_are_compared_exactly_and_do_not_set_the_scale():
    from onnxprune.verify.oracle import compare_models

    feeds = [{"x": np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], np.float32)}]
    same = compare_models(_argmax_model([0, 0, 0, 0]), _argmax_model([0, 0, 0, 0]), feeds)
    assert same.passed and not same.mismatched and same.scale == pytest.approx(0.4)  # not the index 3
    # a changed index is reported as mismatched elements (exact comparison, whatever the float scale)
    flip = compare_models(_argmax_model([0, 0, 0, 0]), _argmax_model([0, 0, 0.2, 0]), feeds)
    assert not flip.passed and flip.mismatched == {"i": 1}


def _write_pgm(path, arr):
    h, w = arr.shape
    path.write_bytes(b"P5\n# comment\n%d %d\n255\n" % (w, h) + arr.astype(np.uint8).tobytes())


def test_pgm_folder_without_pillow(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (8, 8)) for _ in range(3)]
    for i, im in enumerate(imgs):
        _write_pgm(tmp_path / f"{i}.pgm", im)
    np.testing.assert_array_equal(read_pnm(tmp_path / "0.pgm")[..., 0], imgs[0].astype(np.float32))
    cs = load_calib(str(tmp_path), conv_model(), preprocess=["mean=0.5", "std=0.25"], batch_size=2)
    x = np.concatenate([f["x"] for f in cs])
    assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[1, 0], (imgs[1] / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_png_folder_needs_pillow_or_says_so(tmp_path, monkeypatch):
    arr = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        Image.fromarray(arr).save(tmp_path / "a.png")
        cs = load_calib(str(tmp_path), conv_model(), preprocess="size=8x8 scale=1/255")
        x = next(iter(cs))["x"]
        assert x.shape == (1, 1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
    else:
        (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import fails as if Pillow were absent
    cs = load_calib(str(tmp_path), conv_model())
    with pytest.raises(OnnxPruneError, match="needs Pillow"):
        next(iter(cs))


def test_parse_preprocess():
    p = parse_preprocess(["size=224", "mean=0.485,0.456,0.406", "std=0.229,0.224,0.225", "layout=nhwc",
                          "scale=1/255"])
    assert p["size"] == (224, 224) and p["layout"] == "NHWC" and p["mean"] == [0.485, 0.456, 0.406]
    assert abs(p["scale"] - 1 / 255) < 1e-12
    with pytest.raises(OnnxPruneError, match="bad --preprocess"):
        parse_preprocess(["colour=red"])


# --- CLI -------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *map(str, args)], capture_output=True, text=True)


def one_error_line(r):
    assert r.returncode == 2, (r.returncode, r.stderr)
    errs = [l for l in r.stderr.splitlines() if l.startswith("onnxprune:")]
    assert len(errs) == 1 and "Traceback" not in r.stderr, r.stderr
    return errs[0]


def test_cli_data_scorer_without_calib(tmp_path):
    onnx.save(conv_model(), str(tmp_path / "in.onnx"))
    r = run_cli(tmp_path / "in.onnx", tmp_path / "out.onnx", "--ratio", "0.3", "--scorer", "vbp", "-q")
    assert "needs calibration data" in one_error_line(r)
    assert not (tmp_path / "out.onnx").exists()
    r = run_cli(tmp_path / "in.onnx", tmp_path / "out.onnx", "--ratio", "0.3", "--compensate", "mean", "-q")
    assert "needs calibration data" in one_error_line(r)
    np.savez(tmp_path / "c.npz", a=np.zeros((2, 1, 8, 8)), b=np.zeros((2, 1, 8, 8)))
    r = run_cli(tmp_path / "in.onnx", tmp_path / "out.onnx", "--ratio", "0.3", "--scorer", "vbp",
                "--calib", tmp_path / "c.npz", "-q")
    assert "named like the model input" in one_error_line(r)


def test_cli_vbp_with_calib(tmp_path):
    onnx.save(conv_model(), str(tmp_path / "in.onnx"))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32))
    r = run_cli(tmp_path / "in.onnx", tmp_path / "out.onnx", "--ratio", "0.5", "--scorer", "vbp",
                "--calib", tmp_path / "c.npz", "--calib-batch", "5", "--no-latency", "-q",
                "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["settings"]["compensate"] == "mean" and rep["settings"]["scorer"] == "vbp"
    assert rep["verification"]["passed"] is True
    assert any("mean compensation" in n for n in rep["notes"])
    assert (tmp_path / "out.onnx").exists()


def uint8_nhwc_model():
    """tf2onnx-style image input: uint8 NHWC raw pixels, cast and scaled inside the model."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])]
    g = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("img", TensorProto.UINT8, ["N", 8, 8, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_integer_image_inputs_get_raw_pixels(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (8, 8)) for _ in range(3)]
    for i, im in enumerate(imgs):
        _write_pgm(tmp_path / f"{i}.pgm", im)
    x = np.concatenate([f["img"] for f in load_calib(str(tmp_path), uint8_nhwc_model())])
    assert x.dtype == np.uint8 and x.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(x[2, ..., 0], imgs[2])  # not 0/1 from 0..1 floats cast to uint8
    with pytest.raises(OnnxPruneError, match="raw pixels, so --preprocess scale"):
        load_calib(str(tmp_path), uint8_nhwc_model(), preprocess=["scale=1/255"])


def test_fractional_data_for_an_integer_input_is_refused(tmp_path):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32))
    with pytest.raises(OnnxPruneError, match="fractional values, but the input is uint8"):
        list(load_calib(str(tmp_path / "f.npy"), uint8_nhwc_model()))
    np.save(tmp_path / "big.npy", np.full((4, 8, 8, 1), 300.0, np.float32))
    with pytest.raises(OnnxPruneError, match="outside the range"):
        list(load_calib(str(tmp_path / "big.npy"), uint8_nhwc_model()))
    np.save(tmp_path / "ok.npy", np.full((4, 8, 8, 1), 200.0, np.float32))
    assert next(iter(load_calib(str(tmp_path / "ok.npy"), uint8_nhwc_model())))["img"].max() == 200
