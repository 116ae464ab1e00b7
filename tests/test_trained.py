"""Outcomes on the trained digits models (models/digits, real handwritten digits): pruning keeps the
model useful, and mean compensation repairs what channel removal breaks. Accuracy is measured with
ONNX Runtime on the held-out test split; calibration uses the separate calibration split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxprune import prune

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"
pytestmark = pytest.mark.skipif(not (DIGITS / "data.npz").exists(), reason="models/digits not present")


def accuracy(model, x, y) -> float:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = s.run(None, {s.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


@pytest.fixture(scope="module")
def data():
    d = np.load(DIGITS / "data.npz")
    return {k: d[k] for k in d.files}


def test_manifest_accuracy_is_real(data):
    """The committed ONNX files reach the accuracy the manifest claims (>= 95%, issue #4)."""
    import onnx

    man = json.loads((DIGITS / "manifest.json").read_text())
    for name, e in man.items():
        if name.startswith("_"):
            continue
        for kind, o in e["onnx"].items():
            acc = accuracy(onnx.load(str(DIGITS / o["file"])), data["test_x"], data["test_y"])
            assert acc >= 0.95, (name, kind, acc)
            assert abs(acc - o["ort_test_acc"]) < 1e-9, (name, kind)


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_vbp_with_mean_compensation_keeps_accuracy(name, data):
    """10% of every group by activation variance: compensated accuracy stays within 3 points of the
    original and is not below the uncompensated one (compensation repairs, it does not harm)."""
    import onnx

    path = DIGITS / f"{name}.ts.onnx"
    base = accuracy(onnx.load(str(path)), data["test_x"], data["test_y"])
    accs = {}
    for comp in ("none", "mean"):
        res = prune(str(path), ratio=0.1, scorer="vbp", calib=data["calib_x"], compensate=comp,
                    latency=False, heads=False)
        assert res.report.verification.get("passed"), res.report.verification
        accs[comp] = accuracy(res.model, data["test_x"], data["test_y"])
    assert accs["mean"] >= base - 0.03, (base, accs)
    assert accs["mean"] >= accs["none"] - 0.005, accs
