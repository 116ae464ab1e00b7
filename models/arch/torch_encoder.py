"""A ViT built from torch's own nn.TransformerEncoder (nn.MultiheadAttention inside), as users
write it: the exporters lower nn.MultiheadAttention differently from hand-written attention
(TorchScript: packed in_proj split as (3, E) and picked with Gather, heads merged with the batch as
bsz * num_heads computed at run time; dynamo: scaled_dot_product_attention, with shape vectors
sliced from INT64_MIN). Patch embedding Conv -> tokens, pre-LN or post-LN encoder layers (ReLU
MLP), mean pooling, Linear head.
"""
from __future__ import annotations

import torch.nn as nn


class TorchEncoderViT(nn.Module):
    def __init__(self, img=224, patch=16, dim=192, depth=12, heads=3, mlp=768, num_classes=1000, norm_first=True):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        # clones of one layer start equal; make the layers differ (as trained ones do)
        for i, lyr in enumerate(self.encoder.layers):
            for p in lyr.parameters():
                nn.init.normal_(p, std=0.02 * (i + 1)) if p.dim() > 1 else nn.init.normal_(p, std=0.01)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # B, N, C
        return self.head(self.norm(self.encoder(t)).mean(1))


def torch_encoder_vit(**kw) -> TorchEncoderViT:
    return TorchEncoderViT(**kw)
