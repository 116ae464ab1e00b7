"""Every committed fixture (models/fixtures.json), from both exporters, prunes at 0.3 and 0.7 and
passes the mask oracle; MACs and params fall; only model inputs/outputs freeze CNN groups."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from onnxprune import analyze_model, prune
from onnxprune.analysis.graph import random_feeds

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "models" / "fixtures.json"
FIXTURES = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else []
CNN = [f for f in FIXTURES if f.get("kind", "cnn") == "cnn"]


def _shapes(f):
    return {k: list(v) for k, v in f["input_shapes"].items()}


def test_manifest_present():
    assert FIXTURES, "models/fixtures.json lists no fixtures"
    exporters = {f["exporter"] for f in FIXTURES}
    assert {"dynamo", "ts"} <= exporters


@pytest.mark.parametrize("ratio", [0.3, 0.7])
@pytest.mark.parametrize("fx", CNN, ids=[f["name"] for f in CNN])
def test_cnn_fixture_prunes_and_matches_oracle(fx, ratio):
    res = prune(str(ROOT / fx["file"]), ratio=ratio, input_shapes=_shapes(fx), latency=False)
    rep = res.report
    assert rep.verification["passed"], rep.verification
    assert rep.pruned.macs < rep.baseline.macs
    assert rep.pruned.params < rep.baseline.params
    pruned_groups = [g for g in rep.groups if g.kept < g.channels]
    assert pruned_groups
    for g in pruned_groups:
        assert g.kept >= 1
        removed, want = g.channels - g.kept, round(ratio * g.channels)
        # fewer only where frozen channels or the one-channel-per-member guard keep some back
        assert removed <= want and (removed >= want - g.frozen_channels - len(g.members) or g.kept == 1)
    # the written model keeps input/output names and still accepts another batch size
    assert [i.name for i in res.model.graph.input] == [i for i in _shapes(fx)]
    onnx.checker.check_model(res.model, full_check=True)
    if ratio == 0.3:
        shapes = {k: [3] + v[1:] for k, v in _shapes(fx).items()}
        feeds = random_feeds(res.model, seed=1, input_shapes=shapes)
        sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, feeds)
        assert out[0].shape[0] == 3


@pytest.mark.parametrize("fx", CNN, ids=[f["name"] for f in CNN])
def test_cnn_fixture_freezes_only_at_model_boundary(fx):
    a = analyze_model(str(ROOT / fx["file"]), input_shapes=_shapes(fx))
    # YOLO's DFL (a fixed 16->1 conv over distance bins, just before the output) is part of the
    # detection boundary: the box channels and bins it reads must not be pruned
    head = ("is a spatial/batch axis of Conv",) if fx["name"].startswith("yolo") else ()
    for g in a.groups:
        if not g.prunable and g.size > 1:
            assert all(r.startswith(("model output", "model input")) or any(h in r for h in head)
                       for r in g.reasons), (g.name, g.reasons)
    assert a.prunable_groups


TRANSFORMERS = [f for f in FIXTURES if f.get("kind") == "transformer"]


def _grow_symbolic(model, shapes):
    """Input shapes with every symbolic dim changed (batch +2, others +3): the pruned model must
    still accept them."""
    out = {}
    for i in model.graph.input:
        if i.name not in shapes:
            continue
        dims = i.type.tensor_type.shape.dim
        out[i.name] = [v if d.HasField("dim_value") else v + (2 if k == 0 else 3)
                       for k, (d, v) in enumerate(zip(dims, shapes[i.name]))]
    return out


@pytest.mark.parametrize("mode", ["mlp", "heads", "heads+embed"])
@pytest.mark.parametrize("fx", TRANSFORMERS, ids=[f["name"] for f in TRANSFORMERS])
def test_transformer_fixture_prunes_and_matches_oracle(fx, mode):
    heads, embed = "heads" in mode, "embed" in mode
    res = prune(str(ROOT / fx["file"]), ratio=0.3, input_shapes=_shapes(fx), heads=heads, embed_dim=embed,
                latency=False)
    rep = res.report
    assert rep.verification["passed"], rep.verification
    assert rep.pruned.macs < rep.baseline.macs
    kinds = {g.kind for g in rep.groups if g.kept < g.channels}
    assert "channels" in kinds  # MLP hidden neurons
    assert ("heads" in kinds) == heads
    assert ("embed" in kinds) == embed
    assert "head_dim" not in kinds
    shapes = _grow_symbolic(res.model, _shapes(fx))
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, random_feeds(res.model, seed=2, input_shapes=shapes))
    assert out[0].shape[0] == next(iter(shapes.values()))[0]


@pytest.mark.parametrize("exporter", ["dynamo", "ts"])
def test_unknown_op_in_transformer_freezes_only_its_groups(exporter):
    """Swap the first block's Erf (inside GELU) for an op nobody knows: only that block's MLP group
    freezes, with a reason naming the op; heads and the other MLP stay prunable."""
    fx = next(f for f in TRANSFORMERS if f["name"] == f"vit.{exporter}")
    m = onnx.load(str(ROOT / fx["file"]))
    erf = next(n for n in m.graph.node if n.op_type == "Erf")
    erf.op_type, erf.domain = "MysteryErf", "com.example"
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    # declared shape of the custom op's output (what a real exporter of a custom op would write)
    full = onnx.shape_inference.infer_shapes(onnx.load(str(ROOT / fx["file"])))
    vi = next(v for v in full.graph.value_info if v.name == erf.output[0])
    vi.type.tensor_type.shape.dim[0].CopyFrom(m.graph.input[0].type.tensor_type.shape.dim[0])
    m.graph.value_info.append(vi)
    base = analyze_model(str(ROOT / fx["file"]), input_shapes=_shapes(fx), heads=True)
    a = analyze_model(m, input_shapes=_shapes(fx), heads=True)
    frozen = [g for g in a.groups if any("MysteryErf" in r for r in g.reasons)]
    assert len(frozen) == 1 and frozen[0].size == 128 and frozen[0].kind == "channels"
    assert len(a.prunable_groups) == len(base.prunable_groups) - 1
    assert sum(g.kind == "heads" and g.prunable for g in a.groups) == 2


@pytest.mark.parametrize("fx", TRANSFORMERS, ids=[f["name"] for f in TRANSFORMERS])
def test_transformer_fixture_uneven_heads(fx):
    """Layers keeping different numbers of heads and MLP widths (dynamo exports share one Reshape
    shape tensor across layers; each layer needs its own sizes): rewrite matches the oracle, and
    the global ranking through the whole pipeline does too."""
    import numpy as np

    from onnxprune.verify.oracle import compare_models, masked_model
    from onnxprune.transform.rewrite import rewrite

    a = analyze_model(str(ROOT / fx["file"]), input_shapes=_shapes(fx), heads=True)
    heads = [g for g in a.prunable_groups if g.kind == "heads"]
    assert len(heads) >= 2
    kept = {}
    for i, g in enumerate(a.prunable_groups):  # a different share in every group: layer j keeps j+1 heads
        n = min(heads.index(g) + 1, g.size - 1) if g in heads else max(1, g.size * (i + 1) // (len(a.groups) + 1))
        kept[g.id] = np.sort(np.random.default_rng(i).choice(g.size, n, replace=False))
    assert len({len(kept[g.id]) for g in heads}) > 1
    pruned = rewrite(a, kept)
    onnx.checker.check_model(pruned, full_check=True)
    r = compare_models(masked_model(a, kept), pruned, [random_feeds(a.view, seed=s) for s in range(2)])
    assert r.passed, (r.max_abs_diff, r.tolerance)

    res = prune(str(ROOT / fx["file"]), ratio=0.5, global_rank=True, heads=True, input_shapes=_shapes(fx),
                latency=False)
    assert res.report.verification["passed"], res.report.verification
    ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
