"""Mean compensation: on Gemm / MatMul / 1x1-conv models the compensated pruned model equals the
original with the removed channels replaced by their calibration mean (Where(mask, x, mean)),
exactly, on the calibration data; biases are created where missing; padded convs are flagged as
approximate; the uncompensated model still equals the mask oracle."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import GraphBuilder

from onnxprune import prune
from onnxprune.scoring.calibration import FeedList, activation_stats
from onnxprune.transform.compensate import compensation_spaces, mean_substituted_model
from onnxprune.errors import OnnxPruneError
from onnxprune.model.load import validate_model
from onnxprune.verify.oracle import masked_model


def run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0].astype(np.float64)


def linear_model():
    """Gemm -> Relu -> Gemm without C (bias created) -> Relu -> MatMul + Add bias -> Relu -> Gemm transB=0 with
    alpha/beta and C -> Relu -> MatMul with no Add (an Add is inserted)."""
    b = GraphBuilder(seed=7)
    x = b.input("x", [16])
    y = b.op("Relu", [b.gemm(x, 16, 12, name="fc0")], name="r0")
    y = b.op("Relu", [b.gemm(y, 12, 11, bias=False, name="fc1")], name="r1")
    y = b.op("Relu", [b.matmul(y, 11, 10, bias=True, name="lin2")], name="r2")
    w3 = b.weight((10, 9), "fc3.weight", scale=0.3)
    c3 = b.weight((9,), "fc3.bias", scale=0.5)
    y = b.op("Gemm", [y, w3, c3], name="fc3", alpha=0.5, beta=2.0)
    y = b.op("Relu", [y], name="r3")
    return b.model([b.matmul(y, 9, 6, bias=False, name="lin4")])


def conv1x1_model():
    """1x1 convs (with and without bias, one grouped) -> GAP -> Flatten -> Gemm."""
    b = GraphBuilder(seed=8)
    x = b.input("x", [3, 5, 5])
    y = b.op("Relu", [b.conv(x, 3, 8, k=1, pads=[0] * 4, name="c1")])
    y = b.op("Relu", [b.conv(y, 8, 8, k=1, pads=[0] * 4, bias=False, name="c2")])
    y = b.op("Relu", [b.conv(y, 8, 6, k=1, group=2, pads=[0] * 4, name="c3")])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    return b.model([b.gemm(y, 6, 4, name="fc")])


def padded_conv_model():
    b = GraphBuilder(seed=9)
    x = b.input("x", [2, 6, 6])
    y = b.op("Relu", [b.conv(x, 2, 8, k=3, name="c1")])
    y = b.op("Relu", [b.conv(y, 8, 6, k=3, name="c2")])  # padded: approximate
    return b.model([b.conv(y, 6, 4, k=1, pads=[0] * 4, name="c3")])


def data(shape, n=40, seed=0):
    # non-zero means so the compensation is not trivial
    return (np.random.default_rng(seed).standard_normal((n,) + shape) + 0.5).astype(np.float32)


@pytest.mark.parametrize("builder,shape", [(linear_model, (16,)), (conv1x1_model, (3, 5, 5))])
@pytest.mark.parametrize("scorer", ["vbp", "l2"])
def test_compensated_equals_mean_substituted_original(builder, shape, scorer):
    model = builder()
    x = data(shape)
    res = prune(model, ratio=0.5, scorer=scorer, calib=x, calib_batch=7, compensate="mean", latency=False)
    assert res.kept and res.report.verification["passed"]
    mc = res.report.verification["mean_compensation"]
    assert mc["exact_expected"] and mc["passed"]
    stats = activation_stats(res.analysis.view, FeedList([{"x": x}]), compensation_spaces(res.analysis, res.kept))
    ref = run(mean_substituted_model(res.analysis, res.kept, stats), x)
    got = run(res.model, x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # and it differs from plain zero-masking: the compensation did something
    zero = run(masked_model(res.analysis, res.kept), x)
    assert np.abs(zero - ref).max() > 1e-3 * np.abs(ref).max()
    onnx.checker.check_model(res.model, full_check=True)


def test_biases_created_where_missing():
    model = linear_model()
    res = prune(model, ratio=0.5, scorer="l2", calib=data((16,)), compensate="mean", latency=False)
    g = res.model.graph
    fc1 = next(n for n in g.node if n.name == "fc1")
    assert len(fc1.input) == 3 and fc1.input[2]  # Gemm C created (fc1 had none)
    lin4 = next(n for n in g.node if n.name == "lin4")
    adds = [n for n in g.node if n.op_type == "Add" and lin4.output[0] in n.input]
    assert len(adds) == 1  # an Add inserted after the bias-less MatMul
    assert g.output[0].name in adds[0].output  # which keeps the graph output name
    inits = {t.name for t in g.initializer}
    lin2_add = next(n for n in g.node if n.name == "lin2_bias")
    assert any(i in inits and "__meancomp" in i for i in lin2_add.input)  # existing Add constant updated
    assert any("biases of" in n for n in res.report.notes)


def test_no_compensation_equals_mask_oracle_and_default_for_vbp():
    model = conv1x1_model()
    x = data((3, 5, 5))
    res = prune(model, ratio=0.5, scorer="vbp", calib=x, compensate="none", latency=False)
    np.testing.assert_allclose(run(res.model, x), run(masked_model(res.analysis, res.kept), x), rtol=1e-4, atol=1e-5)
    res2 = prune(model, ratio=0.5, scorer="vbp", calib=x, latency=False)
    assert res2.report.settings["compensate"] == "mean"
    res3 = prune(model, ratio=0.5, scorer="l2", latency=False)
    assert res3.report.settings["compensate"] == "none"
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        prune(model, ratio=0.5, scorer="l2", compensate="mean", latency=False)


def test_padded_conv_is_flagged_approximate():
    model = padded_conv_model()
    x = data((2, 6, 6))
    res = prune(model, ratio=0.5, scorer="vbp", calib=x, latency=False)
    mc = res.report.verification["mean_compensation"]
    assert mc["exact_expected"] is False and mc["passed"] is None
    assert any("padded convs" in n for n in res.report.notes)
    # still a better approximation of the original than zeroing, on average
    orig = run(model, x)
    comp = run(res.model, x)
    zero = run(masked_model(res.analysis, res.kept), x)
    assert np.abs(comp - orig).mean() < np.abs(zero - orig).mean()


# ------------------------------------------------------------------------------- lstsq refit
def low_rank_linear_model():
    """x (4 features) -> Gemm to 12 (no activation: the 12 hidden features span a 4-dim affine space)
    -> consumers of three kinds, each on its own hidden group: Gemm transB=1, Gemm transB=0, MatMul."""
    b = GraphBuilder(seed=11)
    x = b.input("x", [4])
    outs = []
    for i, (kind, tb) in enumerate((("gemm", 1), ("gemm", 0), ("matmul", None))):
        h = b.gemm(x, 4, 12, name=f"up{i}")
        outs.append(b.gemm(h, 12, 5, trans_b=tb, name=f"down{i}") if kind == "gemm"
                    else b.matmul(h, 12, 5, bias=False, name=f"down{i}"))
    return b.model([b.op("Add", [b.op("Add", [outs[0], outs[1]]), outs[2]])])


def low_rank_conv_model():
    """3 input channels -> 1x1 conv to 10 (no activation: per pixel, the 10 channels are affine in 3)
    -> unpadded 3x3 conv consumer."""
    b = GraphBuilder(seed=12)
    x = b.input("x", [3, 7, 7])
    h = b.conv(x, 3, 10, k=1, pads=[0] * 4, name="up")
    return b.model([b.conv(h, 10, 4, k=3, pads=[0] * 4, name="down")])


@pytest.mark.parametrize("builder,shape", [(low_rank_linear_model, (4,)), (low_rank_conv_model, (3, 7, 7))])
def test_lstsq_recovers_exactly_predictable_channels(builder, shape):
    """When the removed channels are exact affine functions of the kept ones, the least-squares refit
    (Gemm transB 0/1, MatMul, kxk conv) reproduces the original outputs; the mean alone does not."""
    model = builder()
    x = data(shape, n=64)
    orig = run(model, x)
    errs = {}
    for comp in ("mean", "lstsq"):
        res = prune(model, ratio=0.5, scorer="l2", calib=x, compensate=comp, latency=False)
        assert res.kept and res.report.verification["passed"]
        errs[comp] = np.abs(run(res.model, x) - orig).max() / np.abs(orig).max()
        if comp == "lstsq":
            assert res.report.verification["lstsq_compensation"]["finite_outputs"]
            assert any("refit" in n for n in res.report.notes)
            onnx.checker.check_model(res.model, full_check=True)
        # replaced weights and biases do not linger as dead initializers (params, file size)
        used = {i for n in res.model.graph.node for i in n.input}
        assert all(t.name in used for t in res.model.graph.initializer)
    x2 = data(shape, n=16, seed=1)  # fresh inputs: the relation holds everywhere, not only on calibration
    res = prune(model, ratio=0.5, scorer="l2", calib=x, compensate="lstsq", latency=False)
    held_out = np.abs(run(res.model, x2) - run(model, x2)).max() / np.abs(run(model, x2)).max()
    assert errs["mean"] > 0.05, errs
    assert errs["lstsq"] < 0.01 and held_out < 0.01, (errs, held_out)


def test_lstsq_beats_mean_on_the_calibration_data_and_falls_back_on_grouped_convs():
    """A single pruned layer (Relu between): least squares minimizes the consumer's error on the
    calibration data, so it is not worse than the mean there. The grouped conv of conv1x1_model is
    compensated by the mean only, and the note says so."""
    model = conv1x1_model()
    x = data((3, 5, 5), n=64)
    orig = run(model, x)
    err = {}
    for comp in ("mean", "lstsq"):
        res = prune(model, ratio=0.5, scorer="l2", calib=x, compensate=comp, latency=False)
        err[comp] = float(np.mean((run(res.model, x) - orig) ** 2))
    assert err["lstsq"] <= err["mean"] * 1.01, err
    assert any("mean only at 1" in n and "c3" in n for n in res.report.notes), res.report.notes


def test_mean_compensation_leaves_out_groups_through_a_channel_layernorm():
    """ConvNeXt: residual-stream groups pass LayerNorm over C; mean compensation skips them (and says
    so) and stays exact against the mean-substituted original on the groups it does compensate."""
    from pathlib import Path

    from onnxprune.transform.compensate import channel_normalized_groups

    path = Path(__file__).resolve().parents[1] / "models" / "onnx" / "convnext.ts.onnx"
    x = data((3, 64, 64), n=4)
    res = prune(str(path), ratio=0.3, scorer="l2", calib=x, compensate="mean", latency=False,
                input_shapes={"input": [1, 3, 64, 64]})
    norm = channel_normalized_groups(res.analysis) & set(res.kept)
    assert norm and set(res.kept) - norm  # both kinds are pruned here
    assert any("left out" in n and "LayerNorm" in n for n in res.report.notes), res.report.notes
    mc = res.report.verification["mean_compensation"]
    assert mc["passed"] in (True, None) and mc["max_abs_diff"] <= 10 * mc["tolerance"]


@pytest.mark.parametrize("builder,shape", [(linear_model, (16,)), (conv1x1_model, (3, 5, 5))])
def test_lstsq_where_the_consumer_output_is_pruned_too(builder, shape):
    """Chains of pruned layers: every consumer is refit on its kept inputs and sliced to its kept
    outputs (Gemm transB 0/1, MatMul, dense conv); the model passes the checker and runs."""
    x = data(shape, n=32)
    res = prune(builder(), ratio=0.5, scorer="l2", calib=x, compensate="lstsq", latency=False)
    onnx.checker.check_model(res.model, full_check=True)
    assert np.all(np.isfinite(run(res.model, x)))
    n_refit = int(next(n for n in res.report.notes if "refit" in n).split("of ")[1].split(" ")[0])
    assert n_refit == (4 if builder is linear_model else 2)  # fc0 reads the model input; c3 is grouped: mean only


def _fixtures():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    f = root / "models" / "fixtures.json"
    return [dict(e, file=str(root / e["file"])) for e in json.loads(f.read_text())] if f.exists() else []


@pytest.mark.parametrize("fx", _fixtures(), ids=[e["name"] for e in _fixtures()])
def test_every_fixture_compensates(fx):
    """vbp + mean and vbp + lstsq at 40% on every fixture (heads too for transformers): the pruned
    model passes the oracle, the compensated one the ONNX checker, and it runs to finite outputs."""
    from onnxprune.api import analyze_model
    from onnxprune.analysis.graph import random_feeds

    heads = fx["name"].split(".")[0] in ("vit", "bert")
    a = analyze_model(fx["file"], input_shapes=fx.get("input_shapes"))
    calib = FeedList([random_feeds(a.view, seed=s) for s in range(3)])
    for comp in ("mean", "lstsq"):
        res = prune(fx["file"], ratio=0.4, scorer="vbp", calib=calib, compensate=comp, latency=False,
                    input_shapes=fx.get("input_shapes"), heads=heads)
        assert res.report.verification["passed"]
        if fx["name"].endswith(".int4"):  # MatMulNBits: int4 blocks take no folded constant, and say so
            assert any("compensation skipped" in n and "MatMulNBits" in n for n in res.report.notes)
            continue
        assert res.report.verification[f"{comp}_compensation"] is not None
        if fx.get("exporter") == "genai":  # SimplifiedLayerNormalization: ONNX Runtime's, unknown to the checker
            validate_model(res.model, "the compensated model")
        else:
            onnx.checker.check_model(res.model, full_check=True)
