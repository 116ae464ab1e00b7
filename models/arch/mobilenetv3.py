"""MobileNetV3-small (Howard et al. 2019): SE blocks (GAP->Conv->ReLU->Conv->Hardsigmoid->Mul), HardSwish."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import make_divisible


class DecomposedHardswish(nn.Module):
    """hardswish written by hand; exports as Add / Clip / Mul / Div instead of HardSwish."""

    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * s


def _act(kind):
    return {"RE": nn.ReLU, "HS": nn.Hardswish, "HSD": DecomposedHardswish}[kind]()


def conv_bn_act(cin, cout, k, s=1, groups=1, act="RE"):
    layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class InvertedResidualSE(nn.Module):
    def __init__(self, cin, k, exp, cout, se, act, stride):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers = []
        if exp != cin:
            layers.append(conv_bn_act(cin, exp, 1, act=act))
        layers.append(conv_bn_act(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, make_divisible(exp // 4, 8)))
        layers.append(conv_bn_act(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3Small(nn.Module):
    # kernel, expanded, out, SE, activation, stride
    CFG = [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
           (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
           (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
           (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]
    DECOMPOSED_BLOCK = 4  # this block's hardswish is written out as x * relu6(x + 3) / 6

    def __init__(self, num_classes=1000, width=1.0, last_channel=1024, dropout=0.2):
        super().__init__()
        cin = make_divisible(16 * width)
        feats = [conv_bn_act(3, cin, 3, 2, act="HS")]
        for i, (k, e, o, se, act, s) in enumerate(self.CFG):
            if i == self.DECOMPOSED_BLOCK and act == "HS":
                act = "HSD"
            cout = make_divisible(o * width)
            feats.append(InvertedResidualSE(cin, k, make_divisible(e * width), cout, se, act, s))
            cin = cout
        last_conv = 6 * cin
        feats.append(conv_bn_act(cin, last_conv, 1, act="HS"))
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_conv, last_channel), nn.Hardswish(), nn.Dropout(dropout),
                                        nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenetv3_small(width=1.0, num_classes=1000, last_channel=1024):
    return MobileNetV3Small(num_classes, width, last_channel)
