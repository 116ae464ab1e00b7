"""Shared helpers: deterministic init and non-trivial normalization statistics."""
from __future__ import annotations

import torch
import torch.nn as nn


def randomize_norms(model: nn.Module, seed: int = 0, calib: list[torch.Tensor] | None = None) -> nn.Module:
    """Give every BatchNorm / LayerNorm / GroupNorm non-trivial, seeded parameters and running stats.

    Channel scales (gamma) are spread over ~1.5 orders of magnitude (10% negative) so that a pruning
    importance score actually differs between channels.  When `calib` inputs are given, BN running
    statistics are first calibrated on them (cumulative average over a forward pass with BN in
    train mode) and then perturbed per channel; without calibration a deep randomly initialised
    net's eval-mode output would be dominated by BN biases and barely depend on the input, which
    would make a pruning-vs-mask oracle meaningless.
    """
    g = torch.Generator().manual_seed(seed + 12345)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            if m.affine:
                m.weight.copy_(torch.empty(c).uniform_(0.05, 1.5, generator=g)
                               * torch.where(torch.rand(c, generator=g) < 0.1, -1.0, 1.0))
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.empty_like(m.weight).uniform_(0.2, 1.5, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        if calib is not None and bns:
            model.eval()
            saved = []
            for m in bns:
                saved.append(m.momentum)
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average
                m.train()
            model(*calib)
            for m, mom in zip(bns, saved):
                m.momentum = mom
        for m in bns:
            c = m.num_features
            if calib is not None:
                std = m.running_var.clamp_min(1e-6).sqrt()
                m.running_mean.add_(torch.randn(c, generator=g) * 0.1 * std)
                m.running_var.mul_(torch.empty(c).uniform_(0.7, 1.4, generator=g))
            else:
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.empty(c).uniform_(0.5, 2.0, generator=g))
    return model.eval()


def channels(c: float, width: float, divisor: int = 4, min_value: int = 4) -> int:
    """Scale a channel count by `width` and round to a multiple of `divisor`."""
    v = max(min_value, int(c * width + divisor / 2) // divisor * divisor)
    if v < 0.9 * c * width:
        v += divisor
    return int(v)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v
