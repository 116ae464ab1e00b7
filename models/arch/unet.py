"""U-Net-style encoder/decoder (Ronneberger et al. 2015) with BN.

Decoder levels alternate the upsampling method: ConvTranspose2d (levels 4->3 and 2->1),
nn.Upsample(bilinear) + 1x1 conv (3->2) and F.interpolate(nearest) + 1x1 conv (1->0).
Skip connections are torch.cat; the head is a 1x1 conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    def __init__(self, cin, cskip, cout, mode):
        super().__init__()
        self.mode = mode
        if mode == "convtranspose":
            self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        elif mode == "upsample":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cin // 2, 1))
        else:  # "interpolate"
            self.up = nn.Conv2d(cin, cin // 2, 1)
        self.conv = DoubleConv(cin // 2 + cskip, cout)

    def forward(self, x, skip):
        if self.mode == "interpolate":
            x = self.up(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        else:
            x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    MODES = ("convtranspose", "upsample", "convtranspose", "interpolate")

    def __init__(self, in_ch=3, num_classes=2, base=64):
        super().__init__()
        c = [base * m for m in (1, 2, 4, 8, 16)]
        self.inc = DoubleConv(in_ch, c[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(c[i], c[i + 1])) for i in range(4))
        self.ups = nn.ModuleList(Up(c[4 - i], c[3 - i], c[3 - i], m) for i, m in enumerate(self.MODES))
        self.outc = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for d in self.downs:
            skips.append(d(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def unet(base=64, num_classes=2, in_ch=3):
    return UNet(in_ch, num_classes, base)
