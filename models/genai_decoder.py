#!/usr/bin/env python
"""Llama-style decoders written with the operators of the ONNX Runtime GenAI model builder.

No onnxruntime-genai package is available here, so the graph the builder emits is written directly
with onnx.helper (random weights, seeded):

- ``input_ids`` [batch, sequence_length], ``attention_mask`` [batch, total_sequence_length] and
  ``past_key_values.{i}.key/value`` [batch, kv_num_heads, past_sequence_length, head_size] in;
  ``logits`` and ``present.{i}.key/value`` [batch, kv_num_heads, total_sequence_length, head_size] out;
- embedding ``Gather``; ``SimplifiedLayerNormalization`` (RMSNorm) on the embeddings, then
  ``SkipSimplifiedLayerNormalization`` (com.microsoft) for every later norm, carrying the residual sum;
- ``GroupQueryAttention`` (com.microsoft) with ``kv_num_heads < num_heads``, the KV cache as
  past/present, ``seqlens_k`` / ``total_sequence_length`` computed from the attention mask as the
  builder does (ReduceSum - 1, Cast int32; Shape -> Gather -> Cast);
- rotary embeddings inside GQA (``do_rotary=1``, cos/sin caches) or, in ``tiny-rope``, as separate
  ``RotaryEmbedding`` (com.microsoft) nodes on q and k with a ``position_ids`` input;
- separate q/k/v projections, or one packed qkv projection whose output GQA splits (``tiny-packed``);
- SwiGLU MLP (gate, up, SiLU as Sigmoid x Mul, down);
- with ``--int4``: every projection MatMul (lm_head included) becomes ``MatMulNBits`` (4 bits, block
  size 32, asymmetric), written by onnxruntime.quantization's MatMulNBitsQuantizer.

    python models/genai_decoder.py --config tiny --out models/onnx/genai_tiny.onnx
    python models/genai_decoder.py --config tiny --int4 --out models/onnx/genai_tiny.int4.onnx
    python models/genai_decoder.py --config 100m --int4 --out /tmp/genai_100m.int4.onnx
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # SimplifiedLayerNormalization is registered in the default domain by ONNX Runtime
MS = "com.microsoft"


@dataclass(frozen=True)
class Config:
    vocab: int = 128
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    max_seq: int = 64  # rows of the cos/sin caches
    rope: str = "gqa"  # gqa: do_rotary inside GroupQueryAttention; node: RotaryEmbedding ops
    packed: bool = False  # one qkv projection
    cache: bool = True  # past/present KV cache as graph inputs/outputs (False: a prompt-only graph)
    eps: float = 1e-5
    theta: float = 10000.0

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads


CONFIGS = {
    "tiny": Config(),
    "tiny-rope": Config(rope="node"),
    "tiny-packed": Config(packed=True),
    # ~100M parameters: hidden 768, 12 layers, 12 query heads sharing 4 KV heads, MLP 2048
    "100m": Config(vocab=16000, hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048, max_seq=256),
}


def _param_count(cfg: Config) -> int:
    h, kv = cfg.hidden, cfg.kv_heads * cfg.head_size
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * cfg.intermediate + 2 * h
    return cfg.layers * per_layer + 2 * cfg.vocab * h + h


class _Graph:
    def __init__(self, rng: np.random.Generator):
        self.rng, self.nodes, self.inits = rng, [], []

    def weight(self, name, shape, std=None, value=None):
        arr = value if value is not None else (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, outputs, name, domain="", **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def linear(self, x, k, n, name):
        w = self.weight(f"{name}.weight", (k, n), std=1.0 / np.sqrt(k))
        return self.node("MatMul", [x, w], [f"{name}/output_0"], name=f"{name}/MatMul")

    def norm_weight(self, name, n):
        return self.weight(name, None, value=(1.0 + 0.2 * self.rng.standard_normal(n)).astype(np.float32))


def _rope_caches(g: _Graph, cfg: Config):
    inv = 1.0 / (cfg.theta ** (np.arange(0, cfg.head_size, 2) / cfg.head_size))
    ang = np.outer(np.arange(cfg.max_seq), inv)
    return (g.weight("cos_cache", None, value=np.cos(ang).astype(np.float32)),
            g.weight("sin_cache", None, value=np.sin(ang).astype(np.float32)))


def _mask_inputs(g: _Graph):
    """seqlens_k = sum(mask) - 1 and total_sequence_length = mask.shape[1], int32 (the builder's)."""
    s = g.node("ReduceSum", ["attention_mask", g.weight("one_axis", None, value=np.array([1], np.int64))],
               ["/model/attn_mask_reformat/ReduceSum/output_0"], "/model/attn_mask_reformat/ReduceSum", keepdims=0)
    s = g.node("Sub", [s, g.weight("one_i64", None, value=np.array(1, np.int64))],
               ["/model/attn_mask_reformat/Sub/output_0"], "/model/attn_mask_reformat/Sub")
    seqlens = g.node("Cast", [s], ["seqlens_k"], "/model/attn_mask_reformat/Cast", to=TensorProto.INT32)
    shp = g.node("Shape", ["attention_mask"], ["/model/attn_mask_reformat/Shape/output_0"],
                 "/model/attn_mask_reformat/Shape")
    tot = g.node("Gather", [shp, g.weight("one_idx", None, value=np.array(1, np.int64))],
                 ["/model/attn_mask_reformat/Gather/output_0"], "/model/attn_mask_reformat/Gather", axis=0)
    total = g.node("Cast", [tot], ["total_seq_len"], "/model/attn_mask_reformat/Cast_1", to=TensorProto.INT32)
    return seqlens, total


def _attention(g: _Graph, cfg: Config, i: int, x, seqlens, total, caches):
    p = f"/model/layers.{i}/attn"
    h, kv = cfg.hidden, cfg.kv_heads * cfg.head_size
    if cfg.packed:
        q, k, v = g.linear(x, h, h + 2 * kv, f"{p}/qkv_proj"), "", ""
    else:
        q, k, v = (g.linear(x, h, h, f"{p}/q_proj"), g.linear(x, h, kv, f"{p}/k_proj"),
                   g.linear(x, h, kv, f"{p}/v_proj"))
    if cfg.rope == "node":
        q, k = (g.node("RotaryEmbedding", [t, "position_ids", *caches], [f"{p}/{n}_rotary/output_0"],
                       f"{p}/{n}_rotary/RotaryEmbedding", domain=MS, interleaved=0, num_heads=nh)
                for t, n, nh in ((q, "q", cfg.heads), (k, "k", cfg.kv_heads)))
    rotary = list(caches) if cfg.rope == "gqa" else ["", ""]
    past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"] if cfg.cache else ["", ""]
    present = [f"present.{i}.key", f"present.{i}.value"] if cfg.cache else [f"{p}/present_key", f"{p}/present_value"]
    out = g.node("GroupQueryAttention", [q, k, v, *past, seqlens, total, *rotary],
                 [f"{p}/GroupQueryAttention/output_0", *present],
                 f"{p}/GroupQueryAttention", domain=MS, num_heads=cfg.heads, kv_num_heads=cfg.kv_heads,
                 do_rotary=int(cfg.rope == "gqa"), rotary_interleaved=0, local_window_size=-1,
                 scale=float(1.0 / np.sqrt(cfg.head_size)))
    return g.linear(out[0], h, h, f"{p}/o_proj")


def _mlp(g: _Graph, cfg: Config, i: int, x):
    p = f"/model/layers.{i}/mlp"
    gate = g.linear(x, cfg.hidden, cfg.intermediate, f"{p}/gate_proj")
    up = g.linear(x, cfg.hidden, cfg.intermediate, f"{p}/up_proj")
    sig = g.node("Sigmoid", [gate], [f"{p}/act_fn/Sigmoid/output_0"], f"{p}/act_fn/Sigmoid")
    act = g.node("Mul", [gate, sig], [f"{p}/act_fn/Mul/output_0"], f"{p}/act_fn/Mul")
    prod = g.node("Mul", [act, up], [f"{p}/Mul/output_0"], f"{p}/Mul")
    return g.linear(prod, cfg.intermediate, cfg.hidden, f"{p}/down_proj")


def _skip_norm(g: _Graph, cfg: Config, name, x, residual):
    """SkipSimplifiedLayerNormalization(x, residual): (normalized sum, new residual)."""
    w = g.norm_weight(f"{name}.weight", cfg.hidden)
    outs = g.node("SkipSimplifiedLayerNormalization", [x, residual, w],
                  [f"{name}/output_0", "", "", f"{name}/output_3"], f"{name}/SkipLayerNorm", domain=MS,
                  epsilon=cfg.eps)
    return outs[0], outs[3]


def build(cfg: Config, seed: int = 0) -> onnx.ModelProto:
    """The fp32 decoder (every projection a MatMul with a constant weight)."""
    g = _Graph(np.random.default_rng(seed))
    h, kvh, hs = cfg.hidden, cfg.kv_heads, cfg.head_size
    emb = g.weight("model.embed_tokens.weight", (cfg.vocab, h), std=1.0)
    x = g.node("Gather", [emb, "input_ids"], ["/model/embed_tokens/Gather/output_0"], "/model/embed_tokens/Gather")
    seqlens, total = _mask_inputs(g)
    caches = _rope_caches(g, cfg)
    residual = x
    normed = g.node("SimplifiedLayerNormalization", [x, g.norm_weight("model.layers.0.input_layernorm.weight", h)],
                    ["/model/layers.0/input_layernorm/output_0"], "/model/layers.0/input_layernorm/LayerNorm",
                    axis=-1, epsilon=cfg.eps, stash_type=1)
    for i in range(cfg.layers):
        if i:
            normed, residual = _skip_norm(g, cfg, f"/model/layers.{i}/input_layernorm", x, residual)
        a = _attention(g, cfg, i, normed, seqlens, total, caches)
        normed, residual = _skip_norm(g, cfg, f"/model/layers.{i}/post_attention_layernorm", a, residual)
        x = _mlp(g, cfg, i, normed)
    normed, _ = _skip_norm(g, cfg, "/model/norm", x, residual)
    logits = g.linear(normed, h, cfg.vocab, "/lm_head")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/lm_head/Identity"))

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    if cfg.rope == "node":
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab])]
    for i in range(cfg.layers if cfg.cache else 0):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                                                        ["batch_size", kvh, "past_sequence_length", hs]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         ["batch_size", kvh, "total_sequence_length", hs]))
    graph = helper.make_graph(g.nodes, "genai_decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="onnxprune models/genai_decoder.py")
    model.ir_version = 8
    return model


def quantize_int4(model: onnx.ModelProto, block_size: int = 32) -> onnx.ModelProto:
    """Every MatMul with a constant weight -> MatMulNBits (4 bits, asymmetric, ``block_size``)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=False, accuracy_level=0)
    q.process()
    out = q.model.model
    out.graph.ClearField("value_info")
    return out


def feeds(cfg: Config, past: int = 0, seq: int = 4, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid input set: tokens, an all-ones mask over past + seq, random past keys/values."""
    rng = np.random.default_rng(seed)
    f = {"input_ids": rng.integers(0, cfg.vocab, (batch, seq)).astype(np.int64),
         "attention_mask": np.ones((batch, past + seq), np.int64)}
    if cfg.rope == "node":
        f["position_ids"] = np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1))
    for i in range(cfg.layers if cfg.cache else 0):
        for kind in ("key", "value"):
            f[f"past_key_values.{i}.{kind}"] = rng.standard_normal((batch, cfg.kv_heads, past, cfg.head_size)).astype(np.float32)
    return f


def save(model: onnx.ModelProto, path: str) -> None:
    large = model.ByteSize() > 1_500_000_000
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save_model(model, path, save_as_external_data=large, location=os.path.basename(path) + ".data" if large else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--int4", action="store_true", help="MatMulNBits int4 weights (block size 32)")
    ap.add_argument("--layers", type=int, help="override the number of layers")
    ap.add_argument("--no-cache", action="store_true", help="no past/present KV cache inputs/outputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    cfg = CONFIGS[args.config] if args.layers is None else replace(CONFIGS[args.config], layers=args.layers)
    cfg = replace(cfg, cache=not args.no_cache)
    model = build(cfg, args.seed)
    if args.int4:
        model = quantize_int4(model)
    save(model, args.out)  # (onnx.checker does not know SimplifiedLayerNormalization: ORT is the check)
    import onnxruntime as ort

    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    out = sess.run(None, feeds(cfg, past=3 if cfg.cache else 0, seq=4))
    print(f"{args.out}: {_param_count(cfg) / 1e6:.2f}M parameters, {os.path.getsize(args.out) / 1e3:.0f} KB, "
          f"outputs {[o.shape for o in out[:2]]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
