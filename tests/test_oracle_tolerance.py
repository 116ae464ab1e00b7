"""The oracle's tolerance follows the model's own float rounding (issue #14, class 4): a deep,
ill-conditioned conv stack whose exact prunes differ from the masked original by more than
1e-4 x output scale passes at every ratio, while a rewrite that removes a live channel instead of
a removed one is still caught, there and on a committed fixture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import GraphBuilder

from onnxprune import prune
from onnxprune.analysis.graph import random_feeds
from onnxprune.transform.rewrite import rewrite
from onnxprune.verify.oracle import compare_models, masked_model
from onnxprune.verify.rounding import FLOOR_FACTOR, MAX_REL_TOL, accumulations, tolerance, with_rounding_noise

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"x": [1, 3, 12, 12]}


def deep_tanh_stack(width=64, depth=36, gain=2.5, seed=0) -> onnx.ModelProto:
    """38 convs (3x3, fan-in 576), tanh, weights at 2.5x the variance-preserving scale: the chaotic
    regime, where a perturbation grows layer by layer while the signal stays bounded, so float32
    rounding differences between two summation orders (64 vs 45 channels: other kernel blocking)
    reach 3e-4 of the output scale at ratio 0.3, 1e-3 at 0.1."""
    b = GraphBuilder(opset=17, seed=seed)
    x = b.input("x", [3, 12, 12])
    y = b.conv(x, 3, width, name="stem")
    for i in range(depth):
        w = b.const((b.rng.standard_normal((width, width, 3, 3)) * gain / np.sqrt(width * 9)).astype(np.float32),
                    f"c{i}.weight")
        y = b.op("Conv", [b.op("Tanh", [y]), w], name=f"c{i}", kernel_shape=[3, 3], pads=[1] * 4)
    return b.model([b.conv(b.op("Tanh", [y]), width, 4, name="head")])


@pytest.fixture(scope="module")
def deep():
    return deep_tanh_stack()


def test_deep_stack_prune_passes_beyond_the_fixed_tolerance(deep):
    res = prune(deep, ratio=0.3, latency=False, input_shapes=SHAPE)
    v = res.report.verification
    assert v["passed"] is True
    # the case of the issue: exact, yet beyond what 1e-4 x output scale allowed
    assert v["max_abs_diff"] > v["rel_tol"] * v["output_scale"]
    assert v["max_abs_diff"] <= v["tolerance"] == pytest.approx(FLOOR_FACTOR * v["rounding_floor"])
    assert len(res.kept) == 37  # every conv's output group but the head's (a model output)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.7, 0.9])
def test_deep_stack_passes_at_every_ratio(deep, ratio):
    assert prune(deep, ratio=ratio, latency=False, input_shapes=SHAPE).report.verification["passed"] is True


def planted(analysis, kept: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """`kept` with one group's first kept channel swapped for its first removed one."""
    gid = next(g for g, k in sorted(kept.items()) if 0 < len(k) < analysis.groups[g].size)
    removed = np.setdiff1d(np.arange(analysis.groups[gid].size), kept[gid])
    wrong = dict(kept)
    wrong[gid] = np.sort(np.concatenate([kept[gid][1:], removed[:1]]))
    return wrong


@pytest.mark.parametrize("source", ["deep", "resnet18.ts", "vit.ts"])
def test_a_live_channel_removed_is_caught(deep, source):
    model = deep if source == "deep" else onnx.load(ROOT / "models" / "onnx" / f"{source}.onnx")
    shapes = SHAPE if source == "deep" else None
    res = prune(model, ratio=0.3, latency=False, input_shapes=shapes)
    a = res.analysis
    feeds = [random_feeds(a.view, seed=s) for s in range(3)]
    ref = masked_model(a, res.kept)
    right = compare_models(ref, rewrite(a, res.kept), feeds, rounding=accumulations(a))
    wrong = compare_models(ref, rewrite(a, planted(a, res.kept)), feeds, rounding=accumulations(a))
    assert right.passed and not wrong.passed
    assert wrong.max_abs_diff > 10 * wrong.tolerance


def test_probe_perturbs_each_accumulation_by_sqrt_n_roundoff():
    """One MatMul of length n = 4096: the probe multiplies its input by 1 + sqrt(n) u N(0, 1), so
    the output moves by sqrt(n) u |w * x|_2 per element (Higham & Mary's probabilistic bound)."""
    n, u = 4096, 2.0 ** -24
    b = GraphBuilder(opset=17, seed=1)
    x = b.input("x", [n], batch=None)  # a 1-D MatMul: opaque to the analysis, probed all the same
    w = b.weight((n, 256), "w")
    m = b.model([b.op("MatMul", [x, w], name="mm")])
    res = prune(m, ratio=0.0, latency=False, verify=False)  # only for the analysis
    (acc,) = accumulations(res.analysis)
    assert (acc.length, acc.slot, acc.unit_roundoff) == (n, 0, u)
    xs = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    ws = onnx.numpy_helper.to_array(m.graph.initializer[0]).astype(np.float64)
    import onnxruntime as ort
    sess = ort.InferenceSession(with_rounding_noise(m, [acc]).SerializeToString(), providers=["CPUExecutionProvider"])
    shift = sess.run(None, {"x": xs})[0] - xs.astype(np.float64) @ ws
    expected = np.sqrt(n) * u * np.sqrt(((xs[:, None] * ws) ** 2).sum(0))  # std of each output's shift
    assert 0.7 < np.std(shift / expected) < 1.3


def test_tolerance_is_the_larger_of_relative_and_floor_and_capped():
    assert tolerance(1e-4, 2.0, 0.0) == 2e-4
    assert tolerance(1e-4, 2.0, 1e-3) == FLOOR_FACTOR * 1e-3
    assert tolerance(1e-4, 2.0, 1.0) == MAX_REL_TOL * 2.0


def deep_tanh_mlp(width=256, depth=36, gain=2.5, seed=0) -> onnx.ModelProto:
    """The MLP counterpart of deep_tanh_stack (MatMuls: mean compensation is exact there)."""
    b = GraphBuilder(opset=17, seed=seed)
    y = b.matmul(b.input("x", [8, width]), width, width, name="l0")
    for i in range(depth):
        w = b.const((b.rng.standard_normal((width, width)) * gain / np.sqrt(width)).astype(np.float32), f"m{i}.weight")
        y = b.op("MatMul", [b.op("Tanh", [y]), w], name=f"m{i}")
    return b.model([b.matmul(b.op("Tanh", [y]), width, 4, name="head")])


def test_mean_compensation_check_follows_the_floor_too():
    """vbp's default mean compensation is checked against the mean-substituted original, exact for
    MatMuls, with the same rounding-aware tolerance: no internal error on a deep chaotic MLP."""
    calib = np.random.default_rng(0).standard_normal((16, 8, 256)).astype(np.float32)
    res = prune(deep_tanh_mlp(), ratio=0.1, scorer="vbp", calib=calib, latency=False, input_shapes={"x": [1, 8, 256]})
    v = res.report.verification
    check = v["mean_compensation"]
    assert check["exact_expected"] is True and check["passed"] is True
    assert check["max_abs_diff"] > 10 * v["rel_tol"] * v["output_scale"]  # beyond the fixed tolerance
