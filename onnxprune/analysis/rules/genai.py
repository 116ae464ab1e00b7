"""The operators of ONNX Runtime GenAI decoders (its model builder's Llama/Qwen/Phi graphs):
MatMulNBits (block-quantized int4 weights), GroupQueryAttention (KV-head groups, past/present KV
cache), RotaryEmbedding, and SimplifiedLayerNormalization (RMSNorm; the Skip variant is in
``contrib``).

MatMulNBits: B is [N, K / block_size, block_size * bits / 8] (packed), scales and zero points are
per (column, block). Output columns (N) are sliced freely; the input channels (K) only in whole
quantization blocks: the relation ties the block_size channels of a block into one channel. That
keeps the outputs exact: the kept blocks keep their bytes, scales and zero points as they are. (Re-
quantizing a dequantized and sliced weight with the same block size changes the weights the kept
channels compute with; benchmarks/genai.py measures by how much.)

GroupQueryAttention: with ``heads``, a KV head and the num_heads / kv_num_heads query heads that
share it are one channel (the *KV group*): its q, k and v channels, its output channels and its
past/present cache slots along axis 1 are tied together, and num_heads / kv_num_heads are
rewritten. Without ``heads`` its channels are frozen.
"""
from __future__ import annotations

import numpy as np

from onnxprune.analysis.graph import attr
from .base import (PER_CHANNEL_PARAMS, AttentionAxes, Opaque, OpRule, RuleResult, WeightRole, register)
from .norm import LayerNorm

MS = "com.microsoft"
WHOLE_HEADS = "whole KV-head groups are pruned with heads=True / --heads"


def _relate_batch(res: RuleResult, ctx, x: str, y: str, n: int) -> None:
    """Leading (batch, sequence) axes pass through where they already carry channels."""
    for a in range(n):
        if ctx.live(x, a) or ctx.live(y, a):
            res.relate((x, a), (y, a))


# --- MatMulNBits -------------------------------------------------------------------------------

def nbits_layout(node, view) -> tuple[int, int, int, int]:
    """(K, N, bits, block_size) of a MatMulNBits node."""
    return (int(attr(node, "K")), int(attr(node, "N")), int(attr(node, "bits", 4)), int(attr(node, "block_size")))


def unpack_zero_points(zp: np.ndarray, n: int, blocks: int, bits: int) -> np.ndarray:
    """Packed uint8 zero points ([N, ceil(blocks * bits / 8)] or flattened) -> [N, blocks] integers;
    float zero points ([N, blocks] or flattened) are returned reshaped."""
    if zp.dtype != np.uint8:
        return zp.reshape(n, blocks)
    rows = zp.reshape(n, -1)
    per = 8 // bits
    vals = np.stack([(rows >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], axis=-1)
    return vals.reshape(n, -1)[:, :blocks]


def pack_zero_points(vals: np.ndarray, bits: int, like: np.ndarray) -> np.ndarray:
    """[N, blocks] integers -> uint8 packed as ``like`` (2-D, or flattened where it was)."""
    n, blocks = vals.shape
    per = 8 // bits
    pad = (-blocks) % per
    v = np.pad(vals.astype(np.uint8), ((0, 0), (0, pad))).reshape(n, -1, per)
    packed = np.zeros(v.shape[:2], np.uint8)
    for i in range(per):
        packed |= (v[..., i] << (bits * i)).astype(np.uint8)
    return packed if like.ndim == 2 else packed.reshape(-1)


def dequantize_nbits(node, view) -> np.ndarray:
    """The float weight [K, N] a MatMulNBits node computes with (for measurements)."""
    k, n = nbits_layout(node, view)[:2]
    return dequantize_blocks(node, view).reshape(n, -1)[:, :k].T


def dequantize_blocks(node, view, dtype=np.float64) -> np.ndarray:
    """B's values as floats, block by block: [N, blocks, block_size] (B's channel axes)."""
    k, n, bits, bs = nbits_layout(node, view)
    b = view.consts[node.input[1]]
    blocks = b.shape[1]
    per = 8 // bits
    q = np.stack([(b >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], axis=-1).reshape(n, blocks, -1)
    scales = view.consts[node.input[2]].astype(np.float64).reshape(n, blocks)
    zp_name = node.input[3] if len(node.input) > 3 else ""
    if zp_name:
        zp = unpack_zero_points(view.consts[zp_name], n, blocks, bits).astype(np.float64)
    else:
        zp = np.full((n, blocks), float(1 << (bits - 1)))
    return ((q.astype(np.float64) - zp[:, :, None]) * scales[:, :, None]).astype(dtype)


@register
class MatMulNBits(OpRule):
    """Y = A @ dequantize(B) (+ bias). Output channels: B axis 0, scales / zero points rows, bias;
    input channels: A's last axis, tied block_size at a time to B axis 1 (one quantization block is
    one channel of the group). The rule rewrites scales, zero points (re-packed) and K / N."""
    domain = MS
    op_types = ("MatMulNBits",)
    weighted = layer = linear = True
    opts_out = {"compensation_target": "int4 block-quantized weights: a removed channel's constant is not "
                                       "folded into them", "is_depthwise": "a dense layer"}

    def macs(self, node, view):
        y = view.shape(node.output[0])
        return int(np.prod(y, dtype=np.int64) * int(attr(node, "K")))

    def weight_roles(self, node, view):
        return [WeightRole(1, 0, 1)] if node.input[1] in view.consts else []

    def projection_input(self, node, view):
        s = view.shape(node.input[0])
        return (node.input[0], len(s) - 1) if s else None

    def packed_params(self, node, view):
        return {node.input[1]: int(attr(node, "K")) * int(attr(node, "N"))} if node.input[1] in view.consts else {}

    def float_weights(self, node, view):
        """B as the dequantized blocks [N, blocks, block_size] (scorers see weights, not packed bytes)."""
        if node.input[1] not in view.consts:
            return {}
        return {node.input[1]: lambda: dequantize_blocks(node, view, np.float32)}

    def relate(self, node, ctx):
        a, b, y = node.input[0], node.input[1], node.output[0]
        ins = list(node.input) + [""] * (6 - len(node.input))
        k, n, bits, bs = nbits_layout(node, ctx.view)
        if bits not in (2, 4, 8) or ins[4]:
            raise Opaque("MatMulNBits with g_idx (act-order) or an unusual bit width")
        if not all(ctx.is_const(t) for t in (b, ins[2], ins[3]) if t):
            raise Opaque("MatMulNBits weights computed at run time")
        ra, ry = ctx.rank(a), ctx.rank(y)
        res = RuleResult()
        kk = np.arange(k)
        res.relate((a, ra - 1), (b, 1), (kk, kk // bs))
        res.mixes.append((a, ra - 1))
        res.relate((b, 0), (y, ry - 1))
        if ins[5]:
            res.relate((ins[5], 0), (y, ry - 1))
        _relate_batch(res, ctx, a, y, min(ra, ry) - 1)
        return res

    def rewrite(self, node, rctx):
        view = rctx.view
        n, bits = int(node.attrs["N"]), int(node.attrs.get("bits", 4))
        b = node.inputs[1].name
        keep_n, keep_b = rctx.kept(b, 0), rctx.kept(b, 1)
        if keep_n is None and keep_b is None:
            return
        blocks = view.shape(b)[1]
        keep_n = np.arange(n) if keep_n is None else keep_n
        keep_b = np.arange(blocks) if keep_b is None else keep_b
        names = [t.name for t in node.inputs]
        scales = view.consts[names[2]]
        s2 = scales.reshape(n, blocks)[np.ix_(keep_n, keep_b)]
        rctx.set_input_const(2, s2 if scales.ndim == 2 else s2.reshape(-1))
        zp_name = names[3] if len(names) > 3 else ""
        if zp_name:
            zp = view.consts[zp_name]
            vals = unpack_zero_points(zp, n, blocks, bits)[np.ix_(keep_n, keep_b)]
            if zp.dtype == np.uint8:
                rctx.set_input_const(3, pack_zero_points(vals, bits, zp))
            else:
                rctx.set_input_const(3, vals if zp.ndim == 2 else vals.reshape(-1))
        a = node.inputs[0].name
        node.attrs["N"] = int(len(keep_n))
        node.attrs["K"] = int(rctx.size(a, len(view.shape(a)) - 1))


# --- GroupQueryAttention -----------------------------------------------------------------------

def gqa_layout(heads: int, kv_heads: int, inputs: list[str], view) -> tuple[int, int, int, bool]:
    """(num_heads, kv_num_heads, head_size, packed qkv) of a GroupQueryAttention node."""
    h, kv = int(heads), int(kv_heads)
    packed = len(inputs) < 3 or not inputs[1]
    width = view.shape(inputs[0])[-1]
    d = width // (h + 2 * kv) if packed else width // h
    return h, kv, d, packed


def _gqa_inputs(node):
    ins = list(node.input) + [""] * (7 - len(node.input))
    outs = list(node.output) + [""] * (3 - len(node.output))
    return ins, outs


@register
class GroupQueryAttention(OpRule):
    """ONNX Runtime's grouped-query attention: query [B, S, H*D] (or packed q|k|v [B, S, (H+2KV)*D]),
    key / value [B, S, KV*D], past_key / past_value [B, KV, P, D] -> output [B, S, H*D], present_key /
    present_value [B, KV, P+S, D]. With ``heads`` the channel of a group is one KV group: KV head g,
    the query heads g*H/KV .. (g+1)*H/KV - 1, their q/k/v/output channels and cache slot g (the
    group's canonical channel is the first output channel of the group). Rotary embedding inside it
    (do_rotary) works within a head: untouched."""
    domain = MS
    op_types = ("GroupQueryAttention",)
    weighted = True  # its MACs are counted (the weight-hook contract); it has no channel weights of its own
    opts_out = {"compensation_target": "attention over activations: no weight to fold a constant into",
                "is_depthwise": "not a convolution",
                "weight_roles": "its constants are the rotary cos/sin caches, indexed by position, not channels"}

    def macs(self, node, view):
        """q @ k^T and p @ v: 2 x batch x sequence x num_heads x total sequence x head size."""
        b, s, width = view.shape(node.output[0])
        present = node.output[1] if len(node.output) > 1 and node.output[1] else ""
        total = view.shape(present)[2] if present else s
        return int(2 * b * s * width * total)

    def attention(self, node, view):
        y, sy = node.output[0], view.shape(node.output[0])
        operands = tuple(t for t in node.input[:3] if t)
        return AttentionAxes(heads=((y, len(sy) - 1),) if sy else (), projected=operands)

    def relate(self, node, ctx):
        ins, outs = _gqa_inputs(node)
        q, y = ins[0], outs[0]
        rq, ry = ctx.rank(q), ctx.rank(y)
        res = RuleResult()
        _relate_batch(res, ctx, q, y, min(rq, ry) - 1)
        spaces = self._head_spaces(ins, outs, ctx)
        unsupported = self._unsupported(node, ins, ctx)
        if unsupported or not ctx.options.get("heads"):
            for sp in spaces:
                res.refused[sp] = unsupported or WHOLE_HEADS
            return res
        h, kv, d, packed = gqa_layout(attr(node, "num_heads"), attr(node, "kv_num_heads"), list(node.input), ctx.view)
        r = h // kv
        j = np.arange(h * d)
        group = j // d // r
        anchor = lambda g: g * r * d  # noqa: E731 (the output channel that names KV group g)
        c = np.arange(kv * d)
        yl = (y, ry - 1)
        if packed:
            src = np.concatenate([j, j, h * d + c, (h + kv) * d + c])
            dst = np.concatenate([j, anchor(group), anchor(c // d), anchor(c // d)])
            res.relate((q, rq - 1), yl, (src, dst))
        else:
            res.relate((q, rq - 1), yl, (np.concatenate([j, j]), np.concatenate([j, anchor(group)])))
            for t in (ins[1], ins[2]):
                res.relate((t, ctx.rank(t) - 1), yl, (c, anchor(c // d)))
        g = np.arange(kv)
        for t in (ins[3], ins[4], outs[1], outs[2]):
            if t:
                res.relate((t, 1), yl, (g, anchor(g)))
                res.state_io.append((t, 1))  # the KV cache: past/present graph IO shrink with the group
        return res

    @staticmethod
    def _head_spaces(ins, outs, ctx):
        sp = [(t, ctx.rank(t) - 1) for t in (ins[0], ins[1], ins[2], outs[0]) if t]
        return sp + [(t, 1) for t in (ins[3], ins[4], outs[1], outs[2]) if t]

    @staticmethod
    def _unsupported(node, ins, ctx) -> str:
        # slot 9 (position_ids) and the q/k norm weights (14, 15: per head dim, shared by the heads)
        # do not index heads; an attention bias, head sinks, cache scales or query lengths might
        extra = [i for s, i in enumerate(node.input) if i and s >= 9 and s not in (9, 14, 15)]
        if extra or (len(node.output) > 3 and node.output[3]):
            return "attention bias, head sinks, quantized caches or the qk output are not handled"
        quant = attr(node, "k_quant_type", b"NONE")
        if (quant.decode() if isinstance(quant, bytes) else str(quant)).upper() != "NONE" \
                or int(attr(node, "kv_cache_bit_width", 0) or 0):
            return "a quantized KV cache is not handled"
        if int(attr(node, "kv_num_heads", 0)) < 1 or int(attr(node, "num_heads", 0)) % int(attr(node, "kv_num_heads", 1)):
            return "num_heads is not a multiple of kv_num_heads"
        if ctx.rank(ins[0]) != 3:
            return "query is not [batch, sequence, hidden]"
        return ""

    def rewrite(self, node, rctx):
        view = rctx.view
        h, kv, d, _ = gqa_layout(node.attrs["num_heads"], node.attrs["kv_num_heads"], [t.name for t in node.inputs], view)
        y = node.outputs[0].name
        if rctx.kept(y, len(view.shape(y)) - 1) is None:
            return
        new_h = rctx.size(y, len(view.shape(y)) - 1) // d
        node.attrs["num_heads"] = int(new_h)
        node.attrs["kv_num_heads"] = int(new_h // (h // kv))


# --- RotaryEmbedding ---------------------------------------------------------------------------

@register
class RotaryEmbedding(OpRule):
    """Rotary position embedding of q or k: [B, S, H*D] in and out (the GenAI builder's layout). It
    rotates pairs of channels inside a head, so the head dim is never pruned: with ``heads`` the
    channels of a head are tied into one (whole heads pass, num_heads is rewritten); without it they
    are frozen. A [B, H, S, D] input is not handled (opaque)."""
    domain = MS
    op_types = ("RotaryEmbedding",)

    def relate(self, node, ctx):
        x, y = node.input[0], node.output[0]
        if ctx.rank(x) != 3:
            raise Opaque("RotaryEmbedding on [batch, heads, sequence, head dim] is not handled")
        res = RuleResult()
        _relate_batch(res, ctx, x, y, 2)
        if not (ctx.live(x, 2) or ctx.live(y, 2)):
            return res
        if not ctx.options.get("heads"):
            for sp in ((x, 2), (y, 2)):
                res.refused[sp] = f"RotaryEmbedding: rotates within heads; {WHOLE_HEADS}"
            return res
        d = self._head_size(node, ctx)
        j = np.arange(ctx.shape(x)[2])
        res.relate((x, 2), (y, 2), (np.concatenate([j, j]), np.concatenate([j, (j // d) * d])))
        return res

    @staticmethod
    def _head_size(node, ctx) -> int:
        n = int(attr(node, "num_heads", 0) or 0)
        width = ctx.shape(node.input[0])[-1]
        if n:
            return width // n
        rot = int(attr(node, "rotary_embedding_dim", 0) or 0)
        if rot:
            raise Opaque("RotaryEmbedding with a partial rotary dim and no num_heads")
        return 2 * ctx.shape(node.input[2])[-1]  # head size = rotary dim = 2 x cos_cache columns

    def rewrite(self, node, rctx):
        view = rctx.view
        x = node.inputs[0].name
        shp = view.shape(x)
        if len(shp) != 3 or not int(node.attrs.get("num_heads", 0) or 0):
            return
        d = shp[-1] // int(node.attrs["num_heads"])
        node.attrs["num_heads"] = int(rctx.size(x, 2) // d)


# --- SimplifiedLayerNormalization --------------------------------------------------------------

@register
class SimplifiedLayerNorm(LayerNorm):
    """RMSNorm (ONNX Runtime registers it in the default domain): x / sqrt(mean(x^2) + eps) * scale
    over the axes from ``axis`` on. Like LayerNormalization: normalized over (the oracle computes it
    over the kept channels), its scale sliced with the channels; the optional inv_std_var output
    has size 1 on those axes."""
    op_types = ("SimplifiedLayerNormalization",)
    opts_out = PER_CHANNEL_PARAMS

    def relate(self, node, ctx):
        res = super().relate(node, ctx)
        if len(node.output) > 1 and node.output[1]:
            res.claims += [(node.output[1], a) for a in ctx.live_axes(node.output[1])]
        return res
