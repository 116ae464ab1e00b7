"""Per-position compensation (--per-position): the constants that stand in for removed channels are
their calibration means at every position (token, pixel), not one mean per channel. The compensated
pruned model equals the original with removed channels replaced by their per-position mean, exactly,
for every linear consumer (padded, strided and grouped convs included, where the per-channel bias is
only approximate); with lstsq the intercept is fitted per position."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import GraphBuilder

from onnxprune import prune
from onnxprune.scoring.calibration import FeedList, activation_stats
from onnxprune.transform.compensate import compensation_spaces, mean_substituted_model, position_fill
from onnxprune.errors import OnnxPruneError


def run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0].astype(np.float64)


def conv_model():
    """A positional offset map makes channel means differ by pixel; consumers: a padded 3x3 conv, a
    strided one, a grouped one, then GAP -> Gemm."""
    b = GraphBuilder(seed=21)
    x = b.input("x", [3, 8, 8])
    y = b.op("Add", [b.conv(x, 3, 8, k=1, pads=[0] * 4, name="c0"), b.weight((1, 8, 8, 8), "posmap", scale=2.0)])
    y = b.op("Relu", [y])
    y = b.op("Relu", [b.conv(y, 8, 8, k=3, name="c1")])               # padded
    y = b.op("Relu", [b.conv(y, 8, 8, k=3, strides=[2, 2], name="c2")])  # padded + strided
    y = b.op("Relu", [b.conv(y, 8, 6, k=3, group=2, name="c3")])        # grouped
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    return b.model([b.gemm(y, 6, 4, name="fc")])


def token_model(seq=5):
    """[N, T, C] tokens with a position embedding; an MLP (MatMul + Add, Relu, MatMul without bias)."""
    b = GraphBuilder(seed=22)
    x = b.input("x", [seq, 6])
    y = b.op("Add", [x, b.weight((seq, 6), "pos_embed", scale=2.0)])
    y = b.op("Relu", [b.matmul(y, 6, 12, bias=True, name="fc1")])
    y = b.op("Relu", [b.matmul(y, 12, 10, bias=False, name="fc2")])
    return b.model([b.matmul(y, 10, 3, bias=True, name="fc3")])


def data(shape, n=48, seed=0):
    return (np.random.default_rng(seed).standard_normal((n,) + shape) + 0.3).astype(np.float32)


@pytest.mark.parametrize("builder,shape", [(conv_model, (3, 8, 8)), (token_model, (5, 6))])
def test_equals_position_mean_substituted_original(builder, shape):
    model = builder()
    x = data(shape)
    res = prune(model, ratio=0.5, scorer="l2", calib=x, calib_batch=10, compensate="mean", per_position=True,
                latency=False)
    mc = res.report.verification["mean_compensation"]
    assert mc["exact_expected"] and mc["passed"], mc  # padded convs too: the map is their exact response
    assert res.report.settings["per_position"] is True
    assert any("per-position mean compensation: a constant map added after" in n for n in res.report.notes)
    stats = activation_stats(res.analysis.view, FeedList([{"x": x}]), compensation_spaces(res.analysis, res.kept),
                             positions=True)
    ref = run(mean_substituted_model(res.analysis, res.kept, stats, positions=True), x)
    got = run(res.model, x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # it is not the per-channel compensation, and it is closer to the original on average
    per_channel = prune(model, ratio=0.5, scorer="l2", calib=x, compensate="mean", latency=False)
    orig = run(model, x)
    assert np.abs(got - orig).mean() < np.abs(run(per_channel.model, x) - orig).mean()
    onnx.checker.check_model(res.model, full_check=True)
    # the batch stays symbolic; another batch size runs
    assert res.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert run(res.model, x[:3]).shape[0] == 3


def test_position_fill_matches_definition():
    rng = np.random.default_rng(0)
    pm = rng.standard_normal((4, 3, 2))  # tensor [N, C=4, 3, 2]: channel axis 1
    keep, removed = np.array([0, 2]), np.array([1, 3])
    f = position_fill(pm, 1, keep, removed)
    assert f.shape == (1, 4, 3, 2)
    np.testing.assert_array_equal(f[0, keep], 0.0)
    np.testing.assert_array_equal(f[0, removed], pm[removed])
    A = rng.standard_normal((2, 2))
    g = position_fill(pm, 1, keep, removed, A)
    np.testing.assert_allclose(g[0, removed], pm[removed] - np.einsum("rk,khw->rhw", A, pm[keep]))


def low_rank_positional_model():
    """3 input channels -> 1x1 conv to 10 plus a positional map: per pixel the 10 channels are affine in
    3 with an intercept that depends on the pixel -> padded 3x3 consumer."""
    b = GraphBuilder(seed=23)
    x = b.input("x", [3, 6, 6])
    h = b.op("Add", [b.conv(x, 3, 10, k=1, pads=[0] * 4, name="up"), b.weight((1, 10, 6, 6), "posmap", scale=3.0)])
    return b.model([b.conv(h, 10, 4, k=3, name="down")])


def test_lstsq_with_a_per_position_intercept_recovers_the_original():
    model = low_rank_positional_model()
    x = data((3, 6, 6), n=64)
    orig = run(model, x)
    kw = dict(ratio=0.5, scorer="l2", calib=x, compensate="lstsq", latency=False)
    pooled = run(prune(model, **kw).model, x)
    per_pos = run(prune(model, per_position=True, **kw).model, x)
    scale = np.abs(orig).max()
    assert np.abs(per_pos - orig).max() < 1e-3 * scale  # exact relation, exactly recovered
    assert np.abs(pooled - orig).max() > 1e-2 * scale    # one intercept for all pixels cannot


def test_refusals():
    x = data((5, 6))
    with pytest.raises(OnnxPruneError, match="needs --compensate"):
        prune(token_model(), ratio=0.5, per_position=True, latency=False)
    with pytest.raises(OnnxPruneError, match="latency budget did not plan|with --ratio or --macs"):
        prune(token_model(), budget="0.8x", calib=x, compensate="mean", per_position=True)
    # a symbolic sequence length: a fixed-size map would break other lengths
    b = GraphBuilder(seed=24)
    t = b.input("x", ["T", 6])
    y = b.op("Relu", [b.matmul(t, 6, 8, name="fc1")])
    m = b.model([b.matmul(y, 8, 3, name="fc2")])
    with pytest.raises(OnnxPruneError, match="static input dims except the batch: input 'x' has symbolic dims T"):
        prune(m, ratio=0.5, calib=x, compensate="mean", per_position=True, input_shapes="x=2x5x6", latency=False)


def test_axis0_not_batch_falls_back_per_channel_and_says_so():
    """A Reshape to [N*T, C] before the consumer: axis 0 is not the batch, so no positions there."""
    b = GraphBuilder(seed=25)
    x = b.input("x", [5, 6])
    y = b.op("Reshape", [b.op("Relu", [b.matmul(x, 6, 12, name="fc1")]), b.const(np.array([-1, 12], np.int64))])
    m = b.model([b.gemm(y, 12, 3, name="fc2")], output_shapes=[["M", 3]])
    xd = data((5, 6))
    res = prune(m, ratio=0.5, calib=xd, compensate="mean", per_position=True, latency=False)
    note = next(n for n in res.report.notes if n.startswith("per-position mean compensation"))
    assert "per-channel constants at 1" in note and "axis 0 is not the batch" in note
    assert res.report.verification["mean_compensation"]["passed"]
