"""EfficientNet-B0-style (Tan & Le 2019): MBConv with SE (SiLU / Sigmoid gate), SiLU everywhere."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .common import make_divisible


def conv_bn_silu(cin, cout, k, s=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SE(nn.Module):
    def __init__(self, c, squeeze):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, expand, se_ratio=0.25):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers.append(conv_bn_silu(cin, hidden, 1))
        layers.append(conv_bn_silu(hidden, hidden, k, stride, groups=hidden))
        layers.append(SE(hidden, max(1, int(cin * se_ratio))))
        layers.append(conv_bn_silu(hidden, cout, 1, act=False))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y  # stochastic depth is identity in eval


class EfficientNet(nn.Module):
    # expand, kernel, stride, out, repeats
    CFG_B0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]

    def __init__(self, num_classes=1000, width=1.0, depth=1.0, head=1280, dropout=0.2):
        super().__init__()
        cin = make_divisible(32 * width)
        feats = [conv_bn_silu(3, cin, 3, 2)]
        for e, k, s, o, r in self.CFG_B0:
            cout = make_divisible(o * width)
            for i in range(int(math.ceil(r * depth))):
                feats.append(MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        head = make_divisible(head * width) if width < 1 else head
        feats.append(conv_bn_silu(cin, head, 1))
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_b0(width=1.0, depth=1.0, num_classes=1000):
    return EfficientNet(num_classes, width, depth)
