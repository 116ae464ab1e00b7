"""VGG-16 with BatchNorm (Simonyan & Zisserman 2015): conv stack, AdaptiveAvgPool, Flatten -> Linear classifier."""
from __future__ import annotations

import torch.nn as nn

from .common import channels

CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg=CFG16, num_classes=1000, width=1.0, hidden=4096, pool=7, dropout=0.5):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = channels(v, width)
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        # Flatten -> Linear: the first Linear's input dim is C * pool * pool (channel-major)
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(cin * pool * pool, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


def vgg16_bn(width=1.0, num_classes=1000, hidden=4096, pool=7):
    return VGG(CFG16, num_classes, width, hidden, pool)
