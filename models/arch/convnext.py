"""ConvNeXt-T-style (Liu et al. 2022).

Block: 7x7 depthwise conv -> permute to NHWC -> LayerNorm(C) -> Linear(C, 4C) (MatMul) -> GELU ->
Linear(4C, C) -> layer-scale gamma Mul -> permute back -> residual Add.
Stem / downsampling layers use a channels-first LayerNorm written with mean/var over dim 1.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (ConvNeXt's channels_first LayerNorm)."""

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block(nn.Module):
    def __init__(self, dim, layer_scale=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x)
        y = y.permute(0, 2, 3, 1)  # NCHW -> NHWC
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = self.gamma * y
        y = y.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return x + y


class ConvNeXt(nn.Module):
    def __init__(self, num_classes=1000, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)))
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(LayerNorm2d(dims[i], eps=1e-6),
                                                        nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList(nn.Sequential(*[Block(d) for _ in range(n)]) for d, n in zip(dims, depths))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        # fixtures: replace the 1e-6 layer-scale init with seeded values of O(0.1..1) so that the
        # residual branches (and hence their channel pruning) actually influence the output
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, Block):
                    m.gamma.uniform_(0.1, 1.0)

    def forward(self, x):
        for ds, st in zip(self.downsample_layers, self.stages):
            x = st(ds(x))
        x = self.norm(x.mean([-2, -1]))  # global average pool, then LayerNorm
        return self.head(x)


def convnext_tiny(num_classes=1000, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
    return ConvNeXt(num_classes, depths, dims)
