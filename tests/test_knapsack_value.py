"""--knapsack-value energy: per consumer, the share of its output energy each channel carries
(scoring/energy.py); a width's value is the log of the share each consumer keeps, summed over the
consumers. Computed by hand on a small graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import GraphBuilder, group_at

from onnxprune import OnnxPruneError, analyze_model
from onnxprune.planning.choices import group_choices
from onnxprune.scoring.calibration import CalibSet
from onnxprune.scoring.registry import ScoreContext, score_groups

ROOT = Path(__file__).resolve().parents[1]
SD = np.array([1.0, 2.0, 3.0])  # hidden channel standard deviations: variances 1, 4, 9
W2 = np.array([[1.0, 0.0, 1.0 / 3.0], [0.0, 1.0, 0.0]])  # consumer 1 (out x in): column norms^2 1, 1, 1/9
W3 = np.array([[2.0, 0.5, 0.0]])                         # consumer 2: column norms^2 4, 1/4, 0
# consumer 1: var x col = 1, 4, 1 (total 6) -> shares 1/6, 4/6, 1/6
# consumer 2: var x col = 4, 1, 0 (total 5) -> shares 0.8, 0.2, 0
SHARES = np.array([[1 / 6, 4 / 6, 1 / 6], [0.8, 0.2, 0.0]])
# kept in vbp's order (channel 2, then 1, then 0): consumer 1 keeps 1/6, 5/6, 1; consumer 2 keeps 0 (the
# floor 1e-6), 0.2, 1
EXPECTED = np.array([np.log(1 / 6) + np.log(1e-6), np.log(5 / 6) + np.log(0.2), 0.0])


def two_consumers():
    """x(3) -> Gemm(identity) = h -> Gemm(W2) and Gemm(W3): one prunable group (h) read by two layers."""
    b = GraphBuilder(seed=0)
    x = b.input("x", [3])
    h = b.op("Gemm", [x, b.const(np.eye(3), "w1")], transB=1, name="fc1")
    y2 = b.op("Gemm", [h, b.const(W2, "w2")], transB=1, name="fc2")
    y3 = b.op("Gemm", [h, b.const(W3, "w3")], transB=1, name="fc3")
    return b.model([y2, y3])


def scored(scorer="vbp"):
    a = analyze_model(two_consumers())
    x = (np.array([1.0, -1.0, 1.0, -1.0])[:, None] * SD[None, :]).astype(np.float32)  # mean 0, var SD^2
    ctx = ScoreContext(a, calib=CalibSet({"x": x}, batch_size=4))
    return a, score_groups(a, scorer, context=ctx)


def test_energy_value_sums_the_log_kept_share_over_consumers():
    a, scores = scored()
    g = group_at(a, "w1", 0)
    np.testing.assert_allclose(scores[g.id], SD ** 2, rtol=1e-6)  # vbp: the variances
    np.testing.assert_allclose(scores.energy[g.id], SHARES, rtol=1e-6, atol=1e-12)
    (c,) = group_choices([g], scores, value="energy")
    np.testing.assert_array_equal(c.order, [2, 1, 0])
    np.testing.assert_allclose(c.values, EXPECTED, rtol=1e-6, atol=1e-12)
    # the highest-variance channel alone starves consumer 2: keeping it alone is worth far less
    # than LAMP says (LAMP prices the top channel at 1 of 1 + 4/13 + 1/14 by the variances alone)
    lamp = group_choices([g], scores)[0].values
    assert lamp[0] / lamp[-1] > 0.6 and c.values[0] < -15


def test_energy_value_needs_activation_statistics():
    a, scores = scored("l2")
    with pytest.raises(OnnxPruneError, match="needs activation statistics"):
        group_choices(a.prunable_groups, scores, value="energy")


def test_energy_value_on_a_macs_budget_end_to_end(tmp_path):
    """A --macs budget with the energy value writes a model that passes the mask oracle and meets it."""
    from onnxprune import prune

    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    res = prune(str(ROOT / "models" / "onnx" / "resnet18.ts.onnx"), macs="50%", scorer="vbp",
                calib=str(tmp_path / "calib.npz"), knapsack_value="energy", latency=False)
    assert res.report.verification.passed
    assert res.report.pruned.macs <= 0.5 * res.report.baseline.macs


def test_energy_value_with_another_scorer_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "onnxprune", str(ROOT / "models" / "onnx" / "resnet18.ts.onnx"),
                          str(tmp_path / "o.onnx"), "--macs", "50%", "--knapsack-value", "energy"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "use it with --scorer vbp" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()
