"""A YOLOv8n-style detector, written from the published architecture: C2f blocks (channel Split +
Concat of bottleneck outputs), SPPF (repeated MaxPool + Concat), an FPN/PAN neck (nearest Upsample +
Concat skips, strided convs back down) and a decoupled Detect head whose box branch goes through DFL
(softmax over 16 distance bins, then a fixed 16->1 conv). The exported graph ends in Reshape/Concat/
Split/Transpose of the head outputs: the groups there are frozen, everything before them prunes."""
from __future__ import annotations

import torch
import torch.nn as nn


class ConvBNSiLU(nn.Module):
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2 = ConvBNSiLU(c, c, 3), ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBNSiLU(c1, 2 * self.c)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        self.cv1, self.cv2 = ConvBNSiLU(c1, c1 // 2), ConvBNSiLU(c1 // 2 * 4, c2)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class DFL(nn.Module):
    """Expected value of a softmax over `bins` distance bins: a fixed conv with weights 0..bins-1."""

    def __init__(self, bins=16):
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float).view(1, bins, 1, 1)

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    def __init__(self, nc, ch, bins=16):
        super().__init__()
        self.nc, self.bins, self.no = nc, bins, nc + 4 * bins
        c2, c3 = max(16, ch[0] // 4, 4 * bins), max(ch[0], min(nc, 100))
        self.box = nn.ModuleList(nn.Sequential(ConvBNSiLU(c, c2, 3), ConvBNSiLU(c2, c2, 3), nn.Conv2d(c2, 4 * bins, 1))
                                 for c in ch)
        self.cls = nn.ModuleList(nn.Sequential(ConvBNSiLU(c, c3, 3), ConvBNSiLU(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                 for c in ch)
        self.dfl = DFL(bins)

    def forward(self, xs):
        n = xs[0].shape[0]
        outs = [torch.cat((b(x), c(x)), 1).view(n, self.no, -1) for x, b, c in zip(xs, self.box, self.cls)]
        box, cls = torch.cat(outs, 2).split((4 * self.bins, self.nc), 1)
        return torch.cat((self.dfl(box), cls.sigmoid()), 1)


class YOLO(nn.Module):
    def __init__(self, width=16, nc=80, depth=(1, 2, 2, 1)):
        super().__init__()
        w = width
        self.stem = nn.Sequential(ConvBNSiLU(3, w, 3, 2), ConvBNSiLU(w, 2 * w, 3, 2), C2f(2 * w, 2 * w, depth[0], True))
        self.p3 = nn.Sequential(ConvBNSiLU(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w, depth[1], True))
        self.p4 = nn.Sequential(ConvBNSiLU(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w, depth[2], True))
        self.p5 = nn.Sequential(ConvBNSiLU(8 * w, 16 * w, 3, 2), C2f(16 * w, 16 * w, depth[3], True),
                                SPPF(16 * w, 16 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4, self.td3 = C2f(24 * w, 8 * w), C2f(12 * w, 4 * w)
        self.down3, self.bu4 = ConvBNSiLU(4 * w, 4 * w, 3, 2), C2f(12 * w, 8 * w)
        self.down4, self.bu5 = ConvBNSiLU(8 * w, 8 * w, 3, 2), C2f(24 * w, 16 * w)
        self.detect = Detect(nc, (4 * w, 8 * w, 16 * w))

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        t4 = self.td4(torch.cat((self.up(p5), p4), 1))
        t3 = self.td3(torch.cat((self.up(t4), p3), 1))
        b4 = self.bu4(torch.cat((self.down3(t3), t4), 1))
        b5 = self.bu5(torch.cat((self.down4(b4), p5), 1))
        return self.detect([t3, b4, b5])


def yolo(width=16, nc=80, depth=(1, 2, 2, 1)) -> YOLO:
    return YOLO(width, nc, depth)
