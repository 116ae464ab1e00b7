"""Text models trained on the docstrings of Python's standard library (offline, reproducible).

Corpus (`extract_corpus`, run once on the dev machine, written to corpus.jsonl.gz so the GPU
machine trains on the same text): every module, class and function docstring (ast, then
inspect.cleandoc) of the .py files under sysconfig's stdlib path, skipping site-packages and test
folders; docstrings shorter than 20 characters dropped, exact duplicates dropped.

Tokenizer: UTF-8 bytes. id = byte + 4; 0 = [PAD], 1 = [CLS], 2 = [SEP], 3 = [MASK]; vocab 260.

Models:
    MiniLMEncoder   BERT/MiniLM-shaped encoder (post-LN, 6 layers, hidden 384, 12 heads, MLP 1536,
                    GELU, learned positions up to 512) trained by masked-language modelling.
                    ONNX: input_ids, attention_mask [batch, seq] int64 -> last_hidden_state
                    [batch, seq, 384], sentence_embedding [batch, 384] (mean over unmasked tokens).
    ByteCNN         docstring -> top-level stdlib package (10 classes): byte embedding, four
                    Conv1d-BN-ReLU layers, global max pool, two Linear layers.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import inspect
import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.jsonl.gz"

PAD, CLS, SEP, MASK = 0, 1, 2, 3
N_SPECIAL = 4
VOCAB = 256 + N_SPECIAL
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
MIN_DOC_CHARS = 20


# ----------------------------------------------------------------------------------- corpus
def _docstrings(tree: ast.Module, module: str):
    """(qualname, kind, docstring) for the module and every class / function in it."""
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield module, "module", doc
    stack = [(tree, module)]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                q = f"{prefix}.{child.name}"
                d = ast.get_docstring(child, clean=True)
                if d:
                    yield q, "class" if isinstance(child, ast.ClassDef) else "function", d
                stack.append((child, q))


def iter_stdlib_files(root: Path):
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        yield p, rel


def extract_corpus(root: Path | None = None) -> list[dict]:
    """Docstring records {pkg, is_package, module, qualname, kind, doc}, in a fixed order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for path, rel in iter_stdlib_files(root):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # lib2to3 test data and the like
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        for qual, kind, doc in _docstrings(tree, module):
            doc = inspect.cleandoc(doc)
            if len(doc) < MIN_DOC_CHARS or doc in seen:
                continue
            seen.add(doc)
            out.append({"pkg": parts[0], "is_package": len(rel.parts) > 1, "module": module,
                        "qualname": qual, "kind": kind, "doc": doc})
    return out


def write_corpus(path: Path = CORPUS, root: Path | None = None) -> dict:
    recs = extract_corpus(root)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: byte-identical re-runs
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode())
    return {"records": len(recs), "chars": sum(len(r["doc"]) for r in recs),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def read_corpus(path: Path = CORPUS) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def doc_split(rec: dict, val_percent: int = 5) -> str:
    """'train' | 'val' by a hash of the qualified name: stable across machines and Python versions."""
    h = int(hashlib.md5(rec["qualname"].encode()).hexdigest()[:8], 16)
    return "val" if h % 100 < val_percent else "train"


# -------------------------------------------------------------------------------- tokenizer
def encode(text: str, max_len: int) -> list[int]:
    """[CLS] bytes... [SEP], truncated to max_len ids."""
    ids = [b + N_SPECIAL for b in text.encode("utf-8")[:max_len - 2]]
    return [CLS] + ids + [SEP]


def encode_batch(texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [n, max_len], right-padded with [PAD]."""
    ids = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, t in enumerate(texts):
        e = encode(t, max_len)
        ids[i, :len(e)] = e
    return ids, (ids != PAD).astype(np.int64)


def mlm_windows(docs: list[str], max_len: int) -> list[str]:
    """Docstrings cut into pieces of at most max_len - 2 bytes (at line breaks where possible)."""
    out, cap = [], max_len - 2
    for d in docs:
        b = d.encode("utf-8")
        while b:
            cut = len(b) if len(b) <= cap else (b.rfind(b"\n", cap // 2, cap) + 1 or cap)
            piece = b[:cut].decode("utf-8", errors="ignore").strip()
            if len(piece) >= MIN_DOC_CHARS:
                out.append(piece)
            b = b[cut:]
    return out


def mask_tokens(ids: torch.Tensor, g: torch.Generator, p: float = 0.15):
    """BERT masking: 15% of the real (non-special) tokens are targets; of those 80% -> [MASK],
    10% -> a random byte, 10% unchanged. Returns (inputs, labels with -100 where not a target)."""
    real = ids >= N_SPECIAL
    target = (torch.rand(ids.shape, generator=g, device=ids.device) < p) & real
    labels = torch.where(target, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=g, device=ids.device)
    inputs = ids.clone()
    inputs[target & (r < 0.8)] = MASK
    rnd = target & (r >= 0.8) & (r < 0.9)
    inputs[rnd] = torch.randint(N_SPECIAL, VOCAB, ids.shape, generator=g, device=ids.device)[rnd]
    return inputs, labels


# ------------------------------------------------------------------------------ MiniLM-ish
class SelfAttention(nn.Module):
    """BERT self-attention with separate q/k/v Linear layers and an additive mask.

    Written out (matmul, softmax) so the ONNX graph shows the heads; `fast=True` uses
    F.scaled_dot_product_attention instead (training only: the same function).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.fast = False

    def _split(self, x):
        b, s, _ = x.shape
        return x.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, add_mask):
        b, s, c = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if self.fast:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=add_mask.to(q.dtype))
        else:
            att = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5) + add_mask
            y = att.softmax(dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, s, c))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, dropout: float):
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, add_mask):
        x = self.norm1(x + self.drop(self.attn(x, add_mask)))
        return self.norm2(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))


class MiniLMEncoder(nn.Module):
    """Token + position embeddings -> LayerNorm -> post-LN transformer layers (BERT / MiniLM)."""

    def __init__(self, vocab=VOCAB, dim=384, layers=6, heads=12, mlp=1536, max_pos=512, dropout=0.1):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_pos, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, mlp, dropout) for _ in range(layers))
        self.apply(_bert_init)

    def set_fast_attention(self, on: bool):
        for layer in self.layers:
            layer.attn.fast = on

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.norm(self.tok(input_ids) + self.pos(pos)[None]))
        add_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, add_mask)
        return x


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class EncoderWithPooling(nn.Module):
    """The exported graph: (input_ids, attention_mask) -> (last_hidden_state, sentence_embedding)."""

    def __init__(self, encoder: MiniLMEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids, attention_mask)
        return h, mean_pool(h, attention_mask)


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> decoder tied to the token embedding."""

    def __init__(self, encoder: MiniLMEncoder):
        super().__init__()
        dim = encoder.tok.embedding_dim
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.bias = nn.Parameter(torch.zeros(encoder.tok.num_embeddings))
        self.apply(_bert_init)

    def forward(self, h, tok_weight):
        return self.norm(F.gelu(self.dense(h))) @ tok_weight.t() + self.bias


def _bert_init(m):
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------- ByteCNN
CLS_LEN = 256
N_CLASSES = 10


def conv_bn_relu1d(cin, cout, k):
    return nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm1d(cout),
                         nn.ReLU(inplace=True))


class ByteCNN(nn.Module):
    def __init__(self, emb=48, widths=(128, 128, 256, 256), hidden=128, n_classes=N_CLASSES, dropout=0.2):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, emb)
        self.block1 = nn.Sequential(conv_bn_relu1d(emb, widths[0], 5), conv_bn_relu1d(widths[0], widths[1], 5),
                                    nn.MaxPool1d(2))
        self.block2 = nn.Sequential(conv_bn_relu1d(widths[1], widths[2], 3),
                                    conv_bn_relu1d(widths[2], widths[3], 3))
        self.fc1 = nn.Linear(widths[3], hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, input_ids):
        x = self.emb(input_ids).transpose(1, 2)  # (B, emb, L)
        x = self.block2(self.block1(x)).amax(dim=2)  # global max pool over positions
        return self.fc2(self.drop(F.relu(self.fc1(x))))


def class_dataset(recs: list[dict], n_classes: int = N_CLASSES):
    """(texts, labels, class names): docstrings of the n_classes stdlib packages (folders) with the
    most docstrings; label = the package."""
    from collections import Counter

    counts = Counter(r["pkg"] for r in recs if r["is_package"])
    names = sorted(p for p, _ in counts.most_common(n_classes))
    index = {p: i for i, p in enumerate(names)}
    keep = [r for r in recs if r["is_package"] and r["pkg"] in index]
    return [r["doc"] for r in keep], np.array([index[r["pkg"]] for r in keep], dtype=np.int64), names


def class_splits(labels: np.ndarray, seed: int = 0):
    """Stratified train 60% / calib 15% / test 25% (the digits splits' proportions)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=0.25, stratify=labels, random_state=seed)
    train, calib = train_test_split(rest, test_size=0.2, stratify=labels[rest], random_state=seed)
    return train, calib, test


def mlm_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    print(json.dumps(write_corpus(), indent=1))
    print(math.nan if False else "written", CORPUS)
