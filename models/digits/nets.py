"""Four small plain-torch classifiers for 1x32x32 grayscale images (10 classes).

Written for the `load_digits` fixtures in this folder (see train.py). The widths are chosen so
that structured pruning of 10-50% of the MACs is meaningful (32-256 channels), while a model
still trains on two CPU cores in well under two minutes.

    resnet       basic blocks (conv-BN-ReLU-conv-BN + identity / 1x1-conv-BN projection shortcut)
    mobilenetv2  inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project; BN, ReLU6)
    convnext     7x7 depthwise conv -> NHWC -> LayerNorm -> Linear/GELU/Linear -> layer scale
                 -> NCHW -> residual add; LayerNorm + 2x2 stride-2 conv downsampling
    vit          patch-embedding conv, class token, learned position embedding, pre-norm
                 transformer blocks (Linear qkv, reshape/permute/softmax attention, GELU MLP)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/, for arch/
from arch.convnext import Block as ConvNeXtBlock  # noqa: E402  (the fixtures' block)
from arch.vit import Mlp  # noqa: E402  (fc1 -> GELU -> fc2, the same module as the fixtures')

NUM_CLASSES = 10
IN_CHANNELS = 1
IMAGE_SIZE = 32


# ----------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-14-ish: conv/2 + maxpool/2 stem, 3 stages x 2 basic blocks, widths 32/64/128.

    Stage resolutions 8x8 / 4x4 / 2x2 (the digits are 8x8 originals upsampled to 32x32).
    """

    def __init__(self, widths=(32, 64, 128), blocks=(2, 2, 2), num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(IN_CHANNELS, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# ------------------------------------------------------------------------------ MobileNetV2
def conv_bn_relu6(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1))
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expand t, channels c, repeats n, first stride s), as in the paper, shortened for 32x32
    CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 1), (6, 64, 2, 2), (6, 96, 2, 1))

    def __init__(self, cfg=CFG, stem=32, last=256, num_classes=NUM_CLASSES, dropout=0.1):
        super().__init__()
        feats = [conv_bn_relu6(IN_CHANNELS, stem, 3, 2)]
        cin = stem
        for t, c, n, s in cfg:
            for j in range(n):
                feats.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        feats.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


# --------------------------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (permute -> LayerNorm -> permute)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt-style: 2x2/2 patchify stem, 3 stages (32/64/128, 2 blocks each)."""

    def __init__(self, dims=(32, 64, 128), depths=(2, 2, 2), num_classes=NUM_CLASSES):
        super().__init__()
        self.downsample = nn.ModuleList([nn.Sequential(
            nn.Conv2d(IN_CHANNELS, dims[0], 2, 2), LayerNorm2d(dims[0], eps=1e-6))])
        for i in range(1, len(dims)):
            self.downsample.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6),
                                                 nn.Conv2d(dims[i - 1], dims[i], 2, 2)))
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(d, layer_scale=0.1) for _ in range(n)])
                                    for d, n in zip(dims, depths))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        x = x.mean(dim=(2, 3))  # global average pool
        return self.head(self.norm(x))


# -------------------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT-style: 4x4 patches (8x8 = 64 tokens) + class token, dim 64, 4 heads, depth 4."""

    def __init__(self, dim=64, depth=4, heads=4, patch=4, mlp_ratio=2, num_classes=NUM_CLASSES):
        super().__init__()
        n_patches = (IMAGE_SIZE // patch) ** 2
        self.patch_embed = nn.Conv2d(IN_CHANNELS, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


MODELS = {
    "resnet": ResNet,
    "mobilenetv2": MobileNetV2,
    "convnext": ConvNeXt,
    "vit": ViT,
}


def build(name: str) -> nn.Module:
    return MODELS[name]()
