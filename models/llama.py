"""Llama-style decoder with a KV cache, and its ONNX exporters (issue #15).

    python -m models.llama --config tiny|100m|1b --exporter ts|dynamo --dtype float32|float16 --out PATH
                           [--external-data] [--low-memory] [--no-check]
    python -m models.llama --fixture --exporter ts|dynamo   # committed models/onnx/llama_tiny.*.onnx

Architecture (the Hugging Face ``LlamaForCausalLM`` eager path, written in plain torch): token
embedding; per layer RMSNorm -> grouped-query attention (q/k/v/o Linear without bias, rotary
position embedding on q and k, ``repeat_kv`` as Unsqueeze/Expand/Reshape, causal + padding mask,
softmax) -> residual; RMSNorm -> SwiGLU MLP (``down(silu(gate(x)) * up(x))``) -> residual; final
RMSNorm and an untied ``lm_head``.

Graph inputs and outputs (the names ONNX Runtime GenAI uses):

    input_ids                    (batch, seq)                                   int64
    attention_mask               (batch, total_seq)   total_seq = past_seq + seq int64, 1 = token
    position_ids                 (batch, seq)                                   int64
    past_key_values.{i}.key      (batch, num_key_value_heads, past_seq, head_dim)
    past_key_values.{i}.value    (batch, num_key_value_heads, past_seq, head_dim)
    -> logits                    (batch, seq, vocab)
    -> present.{i}.key / .value  (batch, num_key_value_heads, total_seq, head_dim)

``past_seq`` may be 0 (the first step of generation). Weights are seeded random values, a pure
function of (config, tensor name): ``init_tensor``; the low-memory path (``--low-memory``, the
default for ``1b``) builds the module on the meta device, exports the graph with the dynamo
exporter and writes every initializer into the external-data file one tensor at a time from
``init_tensor``, so the 4.4 GB fp32 model never exists in memory as a whole.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

OPSET = 18


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h
        return self.num_hidden_layers * layer + 2 * self.vocab_size * h + h


CONFIGS = {
    # committed fixtures: 2 layers, 4 query heads sharing 2 KV heads (group of 2), head_dim 16
    "tiny": LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2),
    # ~100M parameters: 12 query heads over 4 KV heads (group of 3), head_dim 64
    "100m": LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                        num_attention_heads=12, num_key_value_heads=4),
    # TinyLlama-1.1B shape: 32 query heads over 4 KV heads (group of 8), head_dim 64
    "1b": LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4),
}


def init_tensor(cfg: LlamaConfig, name: str, shape, dtype=torch.float32) -> torch.Tensor:
    """The seeded value of parameter ``name``: the same whichever way the model is built.

    Norm weights are 1 + 0.2 * N(0, 1) (so norms do not scale every channel alike), the embedding
    N(0, 1), Linear weights N(0, 1) / sqrt(in_features) (activations keep their scale through the
    random layers, so the logits depend on the tokens)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) ^ (cfg.hidden_size << 8))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    if name.endswith("norm.weight"):
        x = 1.0 + 0.2 * x
    elif not name.endswith("embed_tokens.weight"):
        x = x / math.sqrt(shape[-1])
    return x.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """cos/sin of shape (batch, 1, seq, head_dim) for the given positions (HF default rope)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=position_ids.device) / head_dim))
    freqs = position_ids[:, :, None].to(torch.float32) * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def repeat_kv(x, n_rep: int):
    """(batch, kv_heads, seq, d) -> (batch, kv_heads * n_rep, seq, d): each KV head serves n_rep query heads."""
    if n_rep == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_attention_heads * d, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_key_value_heads * d, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_key_value_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_attention_heads * d, h, bias=False)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        cfg = self.cfg
        b, s, _ = x.shape
        d = cfg.head_dim
        q = self.q_proj(x).view(b, s, cfg.num_attention_heads, d).transpose(1, 2)
        k = self.k_proj(x).view(b, s, cfg.num_key_value_heads, d).transpose(1, 2)
        v = self.v_proj(x).view(b, s, cfg.num_key_value_heads, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        n_rep = cfg.num_attention_heads // cfg.num_key_value_heads
        scores = torch.matmul(q, repeat_kv(k, n_rep).transpose(2, 3)) / math.sqrt(d)
        scores = scores + mask
        probs = torch.softmax(scores.to(torch.float32), dim=-1).to(q.dtype)
        out = torch.matmul(probs, repeat_kv(v, n_rep)).transpose(1, 2).reshape(b, s, cfg.num_attention_heads * d)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), past/present
    ordered layer by layer as key, value."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        x = self.model.embed_tokens(input_ids)
        s, t = input_ids.shape[1], attention_mask.shape[1]
        q_pos = torch.arange(s, device=input_ids.device)[:, None] + (t - s)
        k_pos = torch.arange(t, device=input_ids.device)[None, :]
        allowed = (k_pos <= q_pos)[None, None] & (attention_mask[:, None, None, :] > 0)
        # python scalars, not tensors: constants the exporter writes itself (a meta build has no data)
        mask = torch.where(allowed, 0.0, torch.finfo(x.dtype).min).to(x.dtype)
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        present = []
        for i, layer in enumerate(self.model.layers):
            x, k, v = layer(x, cos, sin, mask, past[2 * i], past[2 * i + 1])
            present += [k, v]
        return (self.lm_head(self.model.norm(x)), *present)


def build(cfg: LlamaConfig, dtype=torch.float32, device="cpu") -> LlamaForCausalLM:
    """The model with its seeded weights (on ``device="meta"``: shapes only, no memory)."""
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    if device != "meta":
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(init_tensor(cfg, name, p.shape))
    return model.to(dtype).eval()


# --- inputs ------------------------------------------------------------------------------------

def io_names(cfg: LlamaConfig) -> tuple[list[str], list[str]]:
    past, present = [], []
    for i in range(cfg.num_hidden_layers):
        past += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present += [f"present.{i}.key", f"present.{i}.value"]
    return ["input_ids", "attention_mask", "position_ids"] + past, ["logits"] + present


def make_feeds(cfg: LlamaConfig, batch: int, seq: int, past: int, dtype=np.float32, seed: int = 0,
               kv_heads: int | None = None) -> dict[str, np.ndarray]:
    """Random numpy feeds: tokens, a mask padding the first token of every other row, positions
    past .. past + seq - 1 and a random past cache of ``past`` positions."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, cfg.vocab_size, (batch, seq), dtype=np.int64)}
    mask = np.ones((batch, past + seq), np.int64)
    if past + seq > 2:
        mask[1::2, 0] = 0
    feeds["attention_mask"] = mask
    feeds["position_ids"] = np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1))
    kv = cfg.num_key_value_heads if kv_heads is None else kv_heads
    for name in io_names(cfg)[0][3:]:
        feeds[name] = rng.standard_normal((batch, kv, past, cfg.head_dim)).astype(dtype)
    return feeds


def _torch_args(cfg, feeds, dtype, device="cpu"):
    names = io_names(cfg)[0]
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device=device, dtype=dtype if n.startswith("past") else None)
                 for n in names)


# --- exporters ---------------------------------------------------------------------------------

def _dynamic_axes(cfg):
    ins, outs = io_names(cfg)
    ax = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total_seq"},
          "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    for n in ins[3:]:
        ax[n] = {0: "batch", 2: "past_seq"}
    for n in outs[1:]:
        ax[n] = {0: "batch", 2: "total_seq"}
    return ax


def export_ts(model, cfg, args, path: Path, external_data: bool):
    ins, outs = io_names(cfg)
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=OPSET, input_names=ins,
                          output_names=outs, dynamic_axes=_dynamic_axes(cfg), do_constant_folding=True)
    if external_data:
        _to_external_data(path)


def _to_external_data(path: Path):
    import onnx
    m = onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def _dynamo_shapes(cfg):
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=1, max=4096)
    past = torch.export.Dim("past_seq", min=0, max=8192)
    # total_seq = past_seq + seq: torch.export cannot declare a sum of two dims; AUTO infers it
    shapes = [{0: batch, 1: seq}, {0: batch, 1: torch.export.Dim.AUTO}, {0: batch, 1: seq}]
    # forward(input_ids, attention_mask, position_ids, *past): the var-args are one nested entry
    return (*shapes, tuple({0: batch, 2: past} for _ in range(2 * cfg.num_hidden_layers)))


def export_dynamo(model, cfg, args, path: Path, external_data: bool, lazy_dtype=None):
    """dynamo export; with ``lazy_dtype`` the model is on the meta device and every initializer is
    filled from ``init_tensor`` while it is written (one tensor in memory at a time)."""
    import onnx_ir as ir
    ins, outs = io_names(cfg)
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, args, dynamo=True, opset_version=OPSET, input_names=ins,
                                 output_names=outs, dynamic_shapes=_dynamo_shapes(cfg), optimize=lazy_dtype is None)
    if lazy_dtype is not None:
        _fill_lazily(prog.model, cfg, lazy_dtype)
        prog.optimize()
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            p.unlink()
    if lazy_dtype is not None:
        ir.save(prog.model, str(path), external_data=path.name + ".data")
    else:
        prog.save(str(path), external_data=external_data)
    _rename_dims(path)


def _fill_lazily(model, cfg, dtype):
    """Give every initializer of the meta-device export a LazyTensor computing ``init_tensor``; a
    Transpose of a weight (Linear as MatMul) becomes a lazily transposed initializer, so the
    optimizer has no weight to fold (folding would hold every folded weight in memory)."""
    import onnx_ir as ir
    params = dict(build(cfg, dtype, device="meta").named_parameters())
    ir_dtype = ir.DataType.FLOAT16 if dtype == torch.float16 else ir.DataType.FLOAT

    def lazy(name, shape, transpose):
        def make():
            t = init_tensor(cfg, name, shape, dtype)
            return ir.tensor((t.T if transpose else t).contiguous().numpy())
        out_shape = shape[::-1] if transpose else shape
        return ir.LazyTensor(make, dtype=ir_dtype, shape=ir.Shape(out_shape), name=name)

    for node in list(model.graph):
        src = node.inputs[0] if node.op_type == "Transpose" and node.inputs else None
        if src is None or src.name not in params or list(node.attributes["perm"].as_ints()) != [1, 0]:
            continue
        shape = tuple(params[src.name].shape)
        value = ir.Value(name=src.name + ".T", shape=ir.Shape(shape[::-1]), type=ir.TensorType(ir_dtype),
                         const_value=lazy(src.name, shape, True))
        model.graph.register_initializer(value)
        node.outputs[0].replace_all_uses_with(value)
        model.graph.remove(node, safe=True)
        if not src.uses():
            model.graph.initializers.pop(src.name)
    for name, value in model.graph.initializers.items():
        if name in params:
            value.const_value = lazy(name, tuple(params[name].shape), False)
        elif not name.endswith(".T"):
            raise RuntimeError(f"initializer {name!r} is not a parameter; cannot fill it lazily")


def _rename_dims(path: Path):
    """Name the dynamo export's inferred dims as the TorchScript export does (``total_seq``)."""
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    total = None
    for vi in m.graph.input:
        if vi.name == "attention_mask":
            total = vi.type.tensor_type.shape.dim[1].dim_param
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param in (total, "past_seq + seq"):
                d.dim_param = "total_seq"
    onnx.save(m, str(path))


def export(config: str | LlamaConfig, exporter: str, dtype: str, out: Path, external_data: bool = False,
           low_memory: bool | None = None, check: bool = True) -> dict:
    """Export one decoder; returns a summary (sizes, time, check diff). ``low_memory`` (default: on
    for configs over 2 GB): meta-device build + streamed initializers, dynamo only."""
    cfg = CONFIGS[config] if isinstance(config, str) else config
    tdtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    big = cfg.num_parameters() * tdtype.itemsize > 2 ** 31 - 1
    low_memory = big if low_memory is None else low_memory
    if low_memory and exporter != "dynamo":
        raise ValueError("the low-memory path (default for models over 2 GB) needs --exporter dynamo: "
                         "the TorchScript exporter needs the weights in memory")
    external_data = external_data or big or low_memory
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    feeds = make_feeds(cfg, batch=2, seq=3, past=4, dtype=np.float32)
    t0 = time.time()
    if low_memory:
        model = build(cfg, tdtype, device="meta")
        export_dynamo(model, cfg, _torch_args(cfg, feeds, tdtype, "meta"), out, True, lazy_dtype=tdtype)
        model = None
    else:
        model = build(cfg, tdtype)
        args = _torch_args(cfg, feeds, tdtype)
        (export_ts if exporter == "ts" else export_dynamo)(model, cfg, args, out, external_data)
    info = {"config": asdict(cfg), "parameters": cfg.num_parameters(), "exporter": exporter, "dtype": dtype,
            "file": str(out), "export_s": round(time.time() - t0, 2), "bytes": _size(out)}
    if check:
        info.update(check_export(out, cfg, model, tdtype))
    return info


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def check_export(path: Path, cfg: LlamaConfig, model=None, tdtype=torch.float32) -> dict:
    """onnx.checker on the path, then ONNX Runtime at other sizes than the export's (batch 3, seq 2,
    past 5; and past 0) against torch where the torch model is in memory."""
    import onnx
    import onnxruntime as ort
    onnx.checker.check_model(str(path))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    res = {}
    np_dtype = np.float16 if tdtype == torch.float16 else np.float32
    for past in (5, 0):
        feeds = make_feeds(cfg, batch=3, seq=2, past=past, dtype=np_dtype, seed=past + 1)
        got = sess.run(None, feeds)
        ins, outs = io_names(cfg)
        assert got[1].shape == (3, cfg.num_key_value_heads, past + 2, cfg.head_dim), got[1].shape
        if model is not None:
            with torch.no_grad():
                ref = model(*_torch_args(cfg, feeds, tdtype))
            diff = max(float(np.abs(g.astype(np.float32) - r.float().numpy()).max()) for g, r in zip(got, ref))
            scale = float(np.abs(ref[0].float().numpy()).max())
            tol = (1e-3 if tdtype == torch.float32 else 2e-2) * max(1.0, scale)
            assert diff <= tol, f"{path}: ONNX Runtime vs torch max |diff| {diff} > {tol}"
            res[f"max_diff_past{past}"] = diff
    return res


FIXTURE_SIZES = {"batch": 1, "seq": 4, "past_seq": 6}  # test sizes written to models/fixtures.json


def register_fixture(path: Path, exporter: str, manifest: Path | None = None) -> dict:
    """Add (or replace) the entry of a committed tiny decoder in models/fixtures.json (kind decoder)."""
    import json
    root = Path(__file__).resolve().parent.parent
    manifest = manifest or root / "models" / "fixtures.json"
    cfg, b, s, p = CONFIGS["tiny"], FIXTURE_SIZES["batch"], FIXTURE_SIZES["seq"], FIXTURE_SIZES["past_seq"]
    feeds = make_feeds(cfg, b, s, p)
    entry = {"name": f"{path.name[:-len('.onnx')]}", "file": path.resolve().relative_to(root).as_posix(),
             "arch": "Llama-style decoder (GQA, RoPE, SwiGLU, KV cache)", "exporter": exporter,
             "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
             "input_dtypes": {k: v.dtype.name for k, v in feeds.items()}, "kind": "decoder"}
    old = json.loads(manifest.read_text()) if manifest.exists() else []
    merged = [e for e in old if e["name"] != entry["name"]] + [entry]
    manifest.write_text("[\n" + ",\n".join(" " + json.dumps(e) for e in merged) + "\n]\n")
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.llama", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--exporter", choices=("ts", "dynamo"), default="dynamo")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--out", type=Path, help="output .onnx path (required unless --fixture)")
    p.add_argument("--fixture", action="store_true",
                   help="write the committed fixture models/onnx/llama_tiny.EXPORTER.onnx and register it in models/fixtures.json")
    p.add_argument("--external-data", action="store_true", help="weights in OUT.data (always for models over 2 GB)")
    p.add_argument("--low-memory", action="store_true", default=None,
                   help="meta-device build, initializers streamed to the .data file (default for models over 2 GB)")
    p.add_argument("--no-check", action="store_true", help="skip the onnx.checker / ONNX Runtime check")
    a = p.parse_args(argv)
    if a.fixture:
        a.out = Path(__file__).resolve().parent / "onnx" / f"llama_tiny.{a.exporter}.onnx"
        a.config, a.dtype = "tiny", "float32"
    elif a.out is None:
        p.error("--out is required")
    try:
        info = export(a.config, a.exporter, a.dtype, a.out, a.external_data, a.low_memory, not a.no_check)
    except ValueError as e:
        p.error(str(e))  # exit 2
    diffs = " ".join(f"{k}={v:.2e}" for k, v in info.items() if k.startswith("max_diff"))
    print(f"{a.out}: {a.config} {a.exporter} {a.dtype}, {info['parameters'] / 1e6:.1f}M parameters, "
          f"{info['bytes'] / 1e6:.1f} MB, exported in {info['export_s']:.1f}s {diffs}".rstrip())
    if a.fixture:
        register_fixture(a.out, a.exporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
