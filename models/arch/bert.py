"""BERT-style encoder (BERT-mini shape by default: 4 layers, hidden 256, 4 heads, FFN 1024).

Inputs: input_ids (batch, seq) int64 and attention_mask (batch, seq) int64 (1 = token, 0 = pad).
Token + position embeddings -> LayerNorm; post-LN encoder layers (separate q/k/v Linear, additive
mask (1 - mask)[:, None, None, :] * -10000, softmax, GELU FFN); pooler (Linear + Tanh on token 0)
and a classifier Linear.  Output: logits (batch, num_labels).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x):
        B, S, _ = x.shape
        return x.view(B, S, self.heads, self.head_dim).permute(0, 2, 1, 3)  # B, h, S, d

    def forward(self, x, ext_mask):
        B, S, H = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / (self.head_dim ** 0.5) + ext_mask
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(B, S, H)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.fc1 = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, ext_mask):
        x = self.ln1(x + self.attn(x, ext_mask))
        return self.ln2(x + self.fc2(self.act(self.fc1(x))))


class BertEncoder(nn.Module):
    def __init__(self, vocab=30522, hidden=256, layers=4, heads=4, ffn=1024, max_pos=512, num_labels=2):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0), persistent=False)
        self.emb_ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_labels)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Embedding):
                    m.weight.normal_(0, 0.5)

    def forward(self, input_ids, attention_mask):
        S = input_ids.shape[1]
        pos = self.position_ids[:, :S]
        x = self.emb_ln(self.word_embeddings(input_ids) + self.position_embeddings(pos))
        ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, ext)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)


def bert(vocab=30522, hidden=256, layers=4, heads=4, ffn=1024, max_pos=512, num_labels=2):
    return BertEncoder(vocab, hidden, layers, heads, ffn, max_pos, num_labels)
