"""Input shapes from real exporters (issue #14, classes 5 and 6): paddle2onnx's -1 and 0 dims are
symbolic; a model that only runs at one size of its symbolic dims is run at a size its own
constants imply, or refused with a line that names the defaulted dims and asks for --input-shape."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder, ort_run

from onnxprune import OnnxPruneError, prune
from onnxprune.model.input_sizes import candidate_sizes, fitted_input_shapes, implied_sizes
from onnxprune.model.shapes import defaulted_dims, graph_input_shapes, with_batch


def recognizer(features: int = 96) -> onnx.ModelProto:
    """A text-recognizer head: three stride-2 convs, then the height folded into the features
    (Transpose to N x W' x C x H', Reshape to [0, 0, 96]: 96 = 16 channels x H' = 6, so H = 48),
    and a per-column classifier. H and W are symbolic, as exported."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [3, "H", "W"])
    y = b.op("Relu", [b.conv(x, 3, 8, strides=[2, 2])])
    y = b.op("Relu", [b.conv(y, 8, 16, strides=[2, 2])])
    y = b.op("Relu", [b.conv(y, 16, 16, strides=[2, 2])])
    y = b.op("Transpose", [y], perm=[0, 3, 1, 2])
    y = b.op("Reshape", [y, b.const(np.array([0, 0, features]))], name="fold_height")
    return b.model([b.matmul(y, features, 10)])


def test_a_height_fixed_by_a_reshape_constant_is_found():
    m = recognizer()
    with pytest.raises(Exception, match="fold_height"):  # the default 224 does not run
        ort_run(m, {"x": np.zeros((1, 3, 224, 224), np.float32)})
    res = prune(m, ratio=0.5, latency=False)
    assert res.analysis.view.input_shapes == {"x": [1, 3, 48, 224]}
    assert res.report.verification["passed"] is True
    note = next(n for n in res.report.notes if "x=1x3x48x224" in n)
    assert "x[2, 3]" in note and "--input-shape" in note
    assert len(res.kept) >= 2  # the convs before the fold prune (the Reshape constant is rewritten)
    assert ort_run(res.model, {"x": np.zeros((2, 3, 48, 64), np.float32)})[0].shape == (2, 8, 10)


def test_a_given_height_is_kept_and_runs_without_a_search():
    m = recognizer()
    assert fitted_input_shapes(m, {"x": [1, 3, 48, 100]}).note is None
    res = prune(m, ratio=0.5, latency=False, input_shapes={"x": [1, 3, 48, 100]})
    assert res.analysis.view.input_shapes == {"x": [1, 3, 48, 100]} and res.report.verification["passed"]


def test_models_that_run_at_the_defaults_keep_them():
    b = GraphBuilder(opset=17)
    x = b.input("x", [3, "H", "W"])
    m = b.model([b.conv(b.op("Relu", [b.conv(x, 3, 8)]), 8, 4)])
    fitted = fitted_input_shapes(m)
    assert fitted.shapes == {"x": [1, 3, 224, 224]} and fitted.note is None


def test_no_size_that_runs_is_a_one_line_error_naming_the_dims(tmp_path):
    m = recognizer(features=97)  # prime: no height gives 16 x H' = 97
    with pytest.raises(OnnxPruneError, match=r"symbolic dims x\[2, 3\] were defaulted.*--input-shape"):
        prune(m, ratio=0.5, latency=False)
    src, out = tmp_path / "rec.onnx", tmp_path / "out.onnx"
    onnx.save(m, src)
    r = subprocess.run([sys.executable, "-m", "onnxprune", src, out, "--ratio", "0.5", "--no-latency"],
                       capture_output=True, text=True)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("onnxprune:")]
    assert r.returncode == 2 and len(lines) == 1 and "--input-shape" in lines[0] and not out.exists()


def test_implied_sizes_scale_the_constants_by_strides():
    assert implied_sizes(recognizer()) == [96]
    sizes = candidate_sizes([96], 224)
    assert sizes[:3] == [192, 384, 96] and 48 in sizes and 6 in sizes and 224 not in sizes
    assert candidate_sizes([196], 224)[0] == 196  # and 14 = sqrt(196) comes from implied_sizes
    b = GraphBuilder(opset=17)
    x = b.input("x", [196, 32])
    m = b.model([b.op("Add", [x, b.weight((1, 196, 32), "pos_embed")])])
    assert {14, 196, 32} <= set(implied_sizes(m))


def paddle_style(dims) -> onnx.ModelProto:
    """A conv net whose input dims are written as paddle2onnx does: -1 or 0 for unknown."""
    b = GraphBuilder(opset=11)
    x = b.input("x", [3, dims[1], dims[2]], batch=dims[0])
    return b.model([b.conv(b.op("Relu", [b.conv(x, 3, 8)]), 8, 4)])


def test_minus_one_and_zero_dims_are_symbolic_before_normalization():
    m = paddle_style([-1, -1, 0])
    assert graph_input_shapes(m) == {"x": [1, 3, 224, 224]}
    assert graph_input_shapes(m, {"x": [2, 3, 48, 40]}) == {"x": [2, 3, 48, 40]}
    assert with_batch(m, None, 4) == {"x": [4, None, None, None]}
    assert graph_input_shapes(m, with_batch(m, None, 4)) == {"x": [4, 3, 224, 224]}
    assert defaulted_dims(m) == {"x": [2, 3]} and defaulted_dims(m, {"x": [1, 3, 8, 8]}) == {}
    with pytest.raises(OnnxPruneError, match="dim 1 is fixed to 3"):
        graph_input_shapes(m, {"x": [1, 4, 8, 8]})  # a real static dim still is


@pytest.mark.parametrize("args", [["--input-shape", "x=1x3x48x40"], ["--batch", "2"]])
def test_cli_prunes_a_model_with_minus_one_dims(tmp_path, args):
    src, out = tmp_path / "paddle.onnx", tmp_path / "out.onnx"
    onnx.save(paddle_style([-1, 0, -1]), src)
    r = subprocess.run([sys.executable, "-m", "onnxprune", src, out, "--ratio", "0.5", "--no-latency", *args],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "verification: passed" in r.stdout
    assert ort_run(onnx.load(out), {"x": np.ones((3, 3, 20, 24), np.float32)})[0].shape == (3, 4, 20, 24)
