"""Oracle tests of the ORT GenAI builder's operators (onnxprune/analysis/rules/genai.py):
MatMulNBits, GroupQueryAttention, RotaryEmbedding, Skip/SimplifiedLayerNormalization.

The decoders are written with onnx.helper by models/genai_decoder.py (no torch); the committed
fixtures are models/onnx/genai_tiny.onnx and genai_tiny.int4.onnx. Every pruned model is checked
against the masked original by prune() itself; the tests also assert what was removed, the rewritten
attributes, and that the pruned model really differs from the unmasked original."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import greedy_tokens

from onnxprune import analyze_model, prune, save
from onnxprune.analysis.graph import build_view
from onnxprune.analysis.rules.genai import dequantize_nbits, pack_zero_points, unpack_zero_points
from onnxprune.profiling.cost import node_macs, total_params
from onnxprune.scoring.registry import ScoreContext, score_groups
from onnxprune.verify.oracle import io_positions, masked_model, take_kept

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))
import genai_decoder as gd  # noqa: E402  (onnx.helper only)

FIXTURES = {e["name"]: e for e in json.loads((ROOT / "models" / "fixtures.json").read_text())
            if e.get("exporter") == "genai"}


def _shapes(feeds):
    return {k: list(v.shape) for k, v in feeds.items()}


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _attrs(model, op):
    return [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node if n.op_type == op]


def _init(model, suffix):
    return {t.name: tuple(t.dims) for t in model.graph.initializer if t.name.endswith(suffix)}


def _decoder(cfg, int4=False):
    m = gd.build(cfg)
    return gd.quantize_int4(m) if int4 else m


def _assert_differs(original, pruned, feeds):
    a, b = _run(original, feeds)[0], _run(pruned, feeds)[0]
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-3 * np.abs(a).max()


# --- MatMulNBits ---------------------------------------------------------------------------------

def test_zero_point_packing_round_trips():
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 16, (5, 7))
    packed = pack_zero_points(vals, 4, np.zeros((5, 4), np.uint8))
    assert packed.shape == (5, 4)
    assert packed[0, 0] == (vals[0, 0] | (vals[0, 1] << 4))  # low nibble first, as ONNX Runtime reads it
    np.testing.assert_array_equal(unpack_zero_points(packed, 5, 7, 4), vals)
    flat = pack_zero_points(vals, 4, np.zeros(20, np.uint8))
    np.testing.assert_array_equal(unpack_zero_points(flat, 5, 7, 4), vals)


def test_dequantized_weight_is_what_onnx_runtime_computes():
    """dequantize_nbits (used by scoring and the requantize measurement) against ORT's MatMulNBits."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((80, 24)).astype(np.float32)  # K = 80: a partial last block of 16
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 80])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y],
                          [numpy_helper.from_array(w, "w")])
    m = gd.quantize_int4(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    node = next(n for n in m.graph.node if n.op_type == "MatMulNBits")
    view = build_view(m, {"x": [2, 80]})
    wq = dequantize_nbits(node, view)
    assert wq.shape == (80, 24) and np.abs(wq - w).max() < 0.2 * np.abs(w).max()  # 4-bit rounding
    xs = rng.standard_normal((2, 80)).astype(np.float32)
    np.testing.assert_allclose(_run(m, {"x": xs})[0], xs @ wq, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_int4_mlp_prunes_whole_quantization_blocks(ratio):
    fx = FIXTURES["genai_tiny.int4"]
    model = onnx.load(str(ROOT / fx["file"]))
    a = analyze_model(model, input_shapes=fx["input_shapes"])
    mlp = [g for g in a.prunable_groups]
    assert len(mlp) == 2 and all(g.size == 128 // 32 for g in mlp)  # 4 blocks of 32 neurons per layer
    res = prune(model, ratio=ratio, input_shapes=fx["input_shapes"], latency=False)
    assert res.report.verification["passed"]
    kept_blocks = 4 - round(ratio * 4)
    for n in res.model.graph.node:
        if "gate_proj" in n.name or "up_proj" in n.name:  # N = kept neurons
            assert {a.name: helper.get_attribute_value(a) for a in n.attribute}["N"] == 32 * kept_blocks
    downs = [n for n in res.model.graph.node if "down_proj" in n.name]
    for n in downs:
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert at["K"] == 32 * kept_blocks and at["N"] == 64
    shapes = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    for n in downs:
        assert shapes[n.input[1]] == (64, kept_blocks, 16)
        assert shapes[n.input[2]] == (64, kept_blocks)
        assert shapes[n.input[3]] == (64, (kept_blocks + 1) // 2)  # re-packed, two blocks a byte
    feeds = gd.feeds(gd.CONFIGS["tiny"], past=3, seq=4)
    _assert_differs(model, res.model, feeds)


def test_int4_prune_keeps_the_kept_blocks_bit_exact():
    """The kept blocks' packed bytes, scales and zero points are the original ones: nothing is
    re-quantized, so a kept neuron computes with exactly the weights it had."""
    fx = FIXTURES["genai_tiny.int4"]
    model = onnx.load(str(ROOT / fx["file"]))
    res = prune(model, ratio=0.5, input_shapes=fx["input_shapes"], latency=False)
    g = next(gr for gr in res.report.groups if "layers.0/mlp" in gr.name)
    kept = np.asarray(g.kept_indices)
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    node = next(n for n in res.model.graph.node if n.name == "/model/layers.0/mlp/down_proj/MatMul_Q4")
    b = "/model/layers.0/mlp/down_proj.weight_Q4"
    np.testing.assert_array_equal(new[node.input[1]], orig[b][:, kept])
    np.testing.assert_array_equal(new[node.input[2]], orig[b.replace("_Q4", "_scales")][:, kept])


# --- Skip/SimplifiedLayerNormalization (the residual stream) ---------------------------------------

@pytest.mark.parametrize("name", ["genai_tiny", "genai_tiny.int4"])
def test_residual_stream_through_rms_norms(name):
    """--embed-dim: the embedding table, every Skip/SimplifiedLayerNormalization (RMS over the kept
    channels in the oracle), o_proj/down_proj columns and q/k/v/gate/up/lm_head rows shrink together;
    in int4, in whole blocks."""
    fx = FIXTURES[name]
    model = onnx.load(str(ROOT / fx["file"]))
    res = prune(model, ratio=0.5, input_shapes=fx["input_shapes"], latency=False, embed_dim=True)
    assert res.report.verification["passed"]
    emb = [gr for gr in res.report.groups if gr.kind == "embed"]
    assert len(emb) == 1 and emb[0].kept < emb[0].channels
    width = 32 if name == "genai_tiny" else 32  # 64 -> 32 channels, or 2 blocks -> 1 block of 32
    assert _init(res.model, "embed_tokens.weight")["model.embed_tokens.weight"] == (128, width)
    assert all(d == (width,) for d in _init(res.model, "layernorm.weight").values())
    _assert_differs(model, res.model, gd.feeds(gd.CONFIGS["tiny"], past=3, seq=4))


# --- GroupQueryAttention, RotaryEmbedding ----------------------------------------------------------

def test_gqa_channels_frozen_without_heads():
    fx = FIXTURES["genai_tiny"]
    a = analyze_model(str(ROOT / fx["file"]), input_shapes=fx["input_shapes"])
    heads = [g for g in a.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(not g.prunable for g in heads)
    assert all(any("--heads" in r for r in g.reasons) for g in heads)


def test_gqa_kv_groups_are_the_channels():
    """With heads: one channel per KV head; its q heads, k, v, output and cache slots are members."""
    fx = FIXTURES["genai_tiny"]
    a = analyze_model(str(ROOT / fx["file"]), input_shapes=fx["input_shapes"], heads=True)
    heads = [g for g in a.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.size == 2 for g in heads)  # kv_num_heads = 2
    g = heads[0]
    sizes = {(m.tensor, m.axis): m.size for m in g.members}
    assert sizes[("/model/layers.0/attn/q_proj.weight", 1)] == 64
    assert sizes[("/model/layers.0/attn/k_proj.weight", 1)] == 32
    assert sizes[("/model/layers.0/attn/o_proj.weight", 0)] == 64
    assert sizes[("past_key_values.0.key", 1)] == 2 and sizes[("present.0.value", 1)] == 2
    q = next(m for m in g.members if m.tensor == "/model/layers.0/attn/q_proj.weight")
    # query heads 0, 1 share KV head 0: channels 0..31 are canonical channel 0, 32..63 channel 1
    np.testing.assert_array_equal(q.index_map, np.repeat(np.unique(q.index_map), 32))


@pytest.mark.parametrize("variant", ["tiny", "tiny-rope", "tiny-packed"])
@pytest.mark.parametrize("int4", [False, True], ids=["fp32", "int4"])
def test_gqa_prunes_whole_kv_groups(variant, int4):
    """No KV cache IO here (prompt-only graphs): whole KV groups go, num_heads / kv_num_heads (and
    RotaryEmbedding's num_heads) are rewritten, and the result matches the masked original."""
    cfg = replace(gd.CONFIGS[variant], cache=False, heads=8, kv_heads=2, hidden=128)
    model = _decoder(cfg, int4)
    feeds = gd.feeds(cfg, past=0, seq=5)
    res = prune(model, ratio=0.5, heads=True, input_shapes=_shapes(feeds), latency=False)
    assert res.report.verification["passed"]
    kinds = {g.kind for g in res.report.groups if g.kept < g.channels}
    assert kinds == {"heads", "channels"}
    for at in _attrs(res.model, "GroupQueryAttention"):
        assert (at["num_heads"], at["kv_num_heads"]) == (4, 1)
    for at in _attrs(res.model, "RotaryEmbedding"):
        assert at["num_heads"] in (4, 1)
    assert len(_attrs(res.model, "RotaryEmbedding")) == (4 if variant == "tiny-rope" else 0)
    _assert_differs(model, res.model, feeds)


def test_rotary_embedding_refuses_without_heads():
    cfg = replace(gd.CONFIGS["tiny-rope"], cache=False)
    model = gd.build(cfg)
    a = analyze_model(model, input_shapes=_shapes(gd.feeds(cfg, past=0, seq=5)))
    q = a.group_of("/model/layers.0/attn/q_proj/output_0", 2)
    assert q is not None and not q.prunable
    assert any("RotaryEmbedding" in r or "--heads" in r for r in q.reasons)


def test_l2_scores_int4_blocks_by_their_dequantized_weights():
    """Magnitude scorers read MatMulNBits weights as floats (the rule's float_weights), not packed
    bytes: a block's l2 score is the norm of its dequantized gate/up columns and down rows."""
    fx = FIXTURES["genai_tiny.int4"]
    a = analyze_model(str(ROOT / fx["file"]), input_shapes=fx["input_shapes"])
    scores = score_groups(a, "l2", context=ScoreContext(a, seed=0))
    g = next(gr for gr in a.prunable_groups if "layers.0/mlp" in gr.name)
    nodes = {n.name.split("/")[-2]: n for n in a.view.nodes if "layers.0/mlp" in n.name and n.op_type == "MatMulNBits"}
    w = {k: dequantize_nbits(n, a.view) for k, n in nodes.items()}  # [K, N]
    sq = np.square(w["gate_proj"]).sum(0) + np.square(w["up_proj"]).sum(0) + np.square(w["down_proj"]).sum(1)
    expected = np.sqrt(sq.reshape(4, 32).sum(1))
    np.testing.assert_allclose(scores[g.id], expected, rtol=1e-5)


def test_int4_weights_count_as_parameters():
    """MatMulNBits' packed blocks count K x N parameters (the rule's packed_params): the int4 model has
    the fp32 model's parameters plus its float scales, and pruning lowers the count as it does there."""
    fx32, fx4 = FIXTURES["genai_tiny"], FIXTURES["genai_tiny.int4"]
    m4 = onnx.load(str(ROOT / fx4["file"]))
    v32 = build_view(onnx.load(str(ROOT / fx32["file"])), fx32["input_shapes"])
    v4 = build_view(m4, fx4["input_shapes"])
    scales = sum(a.size for t, a in v4.consts.items() if t.endswith("_scales"))
    assert total_params(v4) == total_params(v32) + scales
    res = prune(m4, ratio=0.5, input_shapes=fx4["input_shapes"], latency=False)
    removed = 2 * 64 * 64 * 3  # two layers, 64 neurons of gate, up and down
    assert res.report.baseline.params - res.report.pruned.params == removed + 2 * (64 * 2 * 2 + 64 * 2)


# --- the KV cache (past/present graph IO) follows its KV group ---------------------------------------

@pytest.mark.parametrize("name", ["genai_tiny", "genai_tiny.int4", "tiny-rope", "tiny-packed.int4"])
def test_kv_groups_prune_with_the_cache_and_generate_like_the_masked_original(name):
    """--heads on the cached fixtures (and on the RotaryEmbedding and packed-qkv variants): one of
    the 2 KV groups per layer goes with its 2 query heads; past/present shrink to 1 KV head; 10
    greedy tokens from the pruned model fed its own cache equal the masked original's, and differ
    when it is fed the removed head's cache slice instead."""
    if name in FIXTURES:
        fx = FIXTURES[name]
        path, shapes, cfg = str(ROOT / fx["file"]), fx["input_shapes"], gd.CONFIGS["tiny"]
        original = onnx.load(path)
    else:
        cfg = gd.CONFIGS[name.split(".")[0]]
        original = path = _decoder(cfg, int4=name.endswith(".int4"))
        shapes = _shapes(gd.feeds(cfg, past=3, seq=4))
    res = prune(path, ratio=0.5, heads=True, input_shapes=shapes, latency=False)
    assert res.report.verification["passed"]
    for vi in [*res.model.graph.input, *res.model.graph.output]:
        if vi.name.startswith(("past_key_values", "present")):
            assert vi.type.tensor_type.shape.dim[1].dim_value == 1, vi.name
    for at in _attrs(res.model, "GroupQueryAttention"):
        assert (at["num_heads"], at["kv_num_heads"]) == (2, 1)
    io = io_positions(res.analysis, res.kept)
    assert len(io) == 8 and all(len(p) == 1 for cuts in io.values() for _, p in cuts)
    feeds0 = gd.feeds(cfg, past=3, seq=5, seed=5)
    pos = cfg.rope == "node"
    masked = masked_model(res.analysis, res.kept)
    want = greedy_tokens(_sess(masked), feeds0, 10, positions=pos)
    assert greedy_tokens(_sess(res.model), feeds0, 10, cut=io, positions=pos) == want
    wrong = {k: [(ax, np.setdiff1d(np.arange(2), p)) for ax, p in cuts] for k, cuts in io.items()}
    assert greedy_tokens(_sess(res.model), feeds0, 10, cut=wrong, positions=pos) != want
    assert greedy_tokens(_sess(original), feeds0, 10, positions=pos) != want  # pruning changed the model


def _sess(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_external_data_genai_model_prunes_and_saves(tmp_path):
    """A GenAI decoder with its weights in external data: the streamed save's checker stops at
    SimplifiedLayerNormalization (ONNX Runtime's op in the default domain); the file ONNX Runtime
    loads is written, with its .data, and runs with the shrunk cache."""
    fx = FIXTURES["genai_tiny.int4"]
    src = tmp_path / "in.onnx"
    m = onnx.load(str(ROOT / fx["file"]))
    onnx.external_data_helper.convert_model_to_external_data(m, all_tensors_to_one_file=True,
                                                             location="in.onnx.data", size_threshold=0)
    onnx.save_model(m, str(src))
    res = prune(str(src), ratio=0.5, heads=True, input_shapes=fx["input_shapes"], latency=False)
    assert res.report.verification["passed"]
    out = tmp_path / "out.onnx"
    save(res.model, out)
    assert out.exists()
    feeds = gd.feeds(gd.CONFIGS["tiny"], past=3, seq=4)
    cut = io_positions(res.analysis, res.kept)
    feeds = {k: (take_kept(v, cut[k]) if k in cut else v) for k, v in feeds.items()}
    outs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert outs[1].shape == (1, 1, 7, 16) and np.isfinite(outs[0]).all()


def test_external_shared_rotary_cache_is_read_from_its_data_file(tmp_path):
    """cos/sin caches over 1024 elements shared by every layer's GQA stay in external data at load;
    normalize reads them from the data file (their location is absolute inside the tool)."""
    cfg = replace(gd.CONFIGS["tiny"], max_seq=256)
    m = gd.build(cfg)
    onnx.external_data_helper.convert_model_to_external_data(m, all_tensors_to_one_file=True,
                                                             location="m.onnx.data", size_threshold=0)
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    res = prune(str(tmp_path / "m.onnx"), ratio=0.3, input_shapes=_shapes(gd.feeds(cfg, past=3, seq=4)), latency=False)
    assert res.report.verification["passed"]


def test_gqa_macs_counted_and_scaled_with_kv_groups():
    """GroupQueryAttention's q.k and p.v MACs: 2 x S x H*D x (past + S) per layer; --heads halves them."""
    fx = FIXTURES["genai_tiny"]
    view = build_view(onnx.load(str(ROOT / fx["file"])), fx["input_shapes"])
    gqa = [k for k, n in enumerate(view.nodes) if n.op_type == "GroupQueryAttention"]
    assert [node_macs(view, k) for k in gqa] == [2 * 4 * 64 * 7] * 2
    res = prune(str(ROOT / fx["file"]), ratio=0.5, heads=True, input_shapes=fx["input_shapes"], latency=False)
    mlp = 3 * 4 * 64 * 64  # per layer and 4 tokens: gate, up, down lose 64 of 128 neurons
    qkvo = 4 * 64 * (32 + 16 + 16 + 32)  # q and o lose 32 channels, k and v 16
    attn = 2 * 4 * 32 * 7  # GQA: 2 of 4 query heads
    assert res.report.baseline.macs - res.report.pruned.macs == 2 * (mlp + qkvo + attn)


# --- MatMulNBits layouts: 4 and 8 bits, with or without zero points, 2-D or flattened scales --------

def _nbits(w, name, bits, zero_points, flat, bs=32):
    """A MatMulNBits node's initializers for float weight w [K, N], quantized here by hand."""
    k, n = w.shape
    blocks = -(-k // bs)
    wt = np.pad(w, ((0, blocks * bs - k), (0, 0))).T.reshape(n, blocks, bs)
    top = (1 << bits) - 1
    if zero_points:
        lo, hi = np.minimum(wt.min(-1), 0), np.maximum(wt.max(-1), 0)
        scale = np.maximum(hi - lo, 1e-6) / top
        zp = np.clip(np.round(-lo / scale), 0, top).astype(np.int64)
    else:
        scale = np.maximum(np.abs(wt).max(-1), 1e-6) / (1 << (bits - 1))
        zp = np.full((n, blocks), 1 << (bits - 1))
    q = np.clip(np.round(wt / scale[..., None]) + zp[..., None], 0, top).astype(np.uint8)
    per = 8 // bits
    q = q.reshape(n, blocks, bs // per, per)
    packed = np.zeros(q.shape[:3], np.uint8)
    for i in range(per):
        packed |= (q[..., i] << (bits * i)).astype(np.uint8)
    scale = scale.astype(np.float32)
    inits = [numpy_helper.from_array(packed, f"{name}_B"),
             numpy_helper.from_array(scale.reshape(-1) if flat else scale, f"{name}_scales")]
    if zero_points:
        like = np.zeros((n, -(-blocks * bits // 8)) if not flat else n * -(-blocks * bits // 8), np.uint8)
        inits.append(numpy_helper.from_array(pack_zero_points(zp, bits, like), f"{name}_zp"))
    return inits, [i.name for i in inits]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zero_points", [True, False], ids=["zp", "symmetric"])
@pytest.mark.parametrize("flat", [False, True], ids=["2d", "flat"])
def test_matmulnbits_layouts_prune_whole_blocks(bits, zero_points, flat):
    """x [N, 80] -> MatMulNBits (80 -> 160) -> Relu -> MatMulNBits (160 -> 16): the 160 hidden channels
    are 5 blocks of 32; at 0.4 two whole blocks go (K = 96 downstream, N = 96 upstream), scales and
    zero points are cut (and re-packed) in their own layout, and the result matches the oracle."""
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((80, 160)).astype(np.float32), rng.standard_normal((160, 16)).astype(np.float32)
    i1, n1 = _nbits(w1, "l1", bits, zero_points, flat)
    i2, n2 = _nbits(w2, "l2", bits, zero_points, flat)
    nodes = [helper.make_node("MatMulNBits", ["x", *n1], ["h"], name="l1", domain="com.microsoft", K=80, N=160,
                              bits=bits, block_size=32),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMulNBits", ["r", *n2], ["y"], name="l2", domain="com.microsoft", K=160, N=16,
                              bits=bits, block_size=32)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 80])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], i1 + i2)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    view = build_view(model, {"x": [2, 80]})
    x = rng.standard_normal((2, 80)).astype(np.float32)
    w1q = dequantize_nbits(model.graph.node[0], view)
    np.testing.assert_allclose(_run(model, {"x": x})[0][:, :4], (np.maximum(x @ w1q, 0) @ dequantize_nbits(
        model.graph.node[2], view))[:, :4], rtol=1e-3, atol=1e-3)  # the hand packing is what ORT reads
    res = prune(model, ratio=0.4, input_shapes={"x": [2, 80]}, latency=False)
    assert res.report.verification["passed"]
    at = _attrs(res.model, "MatMulNBits")
    assert (at[0]["N"], at[1]["K"]) == (96, 96)
    shapes = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    l2 = next(n for n in res.model.graph.node if n.name == "l2")
    assert shapes[l2.input[2]] == ((16 * 3,) if flat else (16, 3))
    if zero_points:
        per_row = -(-3 * bits // 8)
        assert shapes[l2.input[3]] == ((16 * per_row,) if flat else (16, per_row))
    _assert_differs(model, res.model, {"x": x})


def test_gqa_with_an_attention_bias_is_frozen_with_the_reason():
    """An input that may index heads (attention_bias, slot 10) is not handled: the KV groups freeze
    with that reason; the MLP still prunes."""
    cfg = replace(gd.CONFIGS["tiny"], cache=False)
    model = gd.build(cfg)
    for n in model.graph.node:
        if n.op_type == "GroupQueryAttention":
            n.input.extend(["", "attention_bias"])  # slot 9 empty, slot 10 the bias
    model.graph.input.append(helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT,
                                                           ["batch_size", 1, "sequence_length", "total_sequence_length"]))
    shapes = dict(_shapes(gd.feeds(cfg, past=0, seq=4)), attention_bias=[1, 1, 4, 4])
    a = analyze_model(model, input_shapes=shapes, heads=True)
    heads = [g for g in a.groups if g.kind == "heads"]
    assert heads and all(not g.prunable and any("attention bias" in r for r in g.reasons) for g in heads)
    assert sum(g.prunable for g in a.groups) == 2  # the two MLPs


def test_cli_prunes_the_int4_fixture_without_input_shapes(tmp_path):
    """As a user runs it: no --input-shape (the decoder default sizes agree with the cache), exit 0,
    KV groups and int4 MLP blocks pruned, and the written file runs with a 1-head cache."""
    import subprocess

    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "onnxprune", "prune", str(ROOT / FIXTURES["genai_tiny.int4"]["file"]),
                        str(out), "--ratio", "0.3", "--heads", "--no-latency", "-q", "--report", str(rep)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(rep.read_text())
    assert r["verification"]["passed"]
    assert {g["kind"] for g in r["groups"] if g["kept"] < g["channels"]} == {"heads", "channels"}
    m = onnx.load(str(out))
    assert [at["kv_num_heads"] for at in _attrs(m, "GroupQueryAttention")] == [1, 1]
    feeds = gd.feeds(gd.CONFIGS["tiny"], past=3, seq=4)
    feeds = {k: (v[:, :1] if k.startswith("past") else v) for k, v in feeds.items()}
    outs = _run(m, feeds)
    assert outs[0].shape == (1, 4, 128) and outs[1].shape == (1, 1, 7, 16)
