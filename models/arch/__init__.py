"""Fixture architectures for onnxprune, written in plain torch (no torchvision).

`REGISTRY` maps a fixture name to a `Spec` describing how to build the small (committed) and
full-size model and what inputs it takes.  `build(name, full)` returns a seeded, eval-mode model
whose normalization layers carry non-trivial statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .common import randomize_norms


@dataclass
class InputSpec:
    name: str
    shape: tuple[int, ...]               # example shape used for export (batch = 2)
    dtype: torch.dtype = torch.float32
    dynamic: dict[int, str] = field(default_factory=lambda: {0: "batch"})
    high: int | None = None              # for integer inputs: values in [0, high)
    max: dict[str, int] = field(default_factory=dict)  # upper bounds for symbolic dims (dynamo)


@dataclass
class Spec:
    name: str
    arch: str
    kind: str                                   # "cnn" | "transformer"
    small: Callable[[], nn.Module]
    full: Callable[[], nn.Module]
    small_inputs: list[InputSpec]
    full_inputs: list[InputSpec]
    seed: int = 0

    def build(self, full: bool = False) -> nn.Module:
        torch.manual_seed(self.seed)
        m = (self.full if full else self.small)()
        calib = calibration_inputs(self.inputs(full), self.seed)
        randomize_norms(m, self.seed, calib)
        return m.eval()

    def inputs(self, full: bool = False) -> list[InputSpec]:
        return self.full_inputs if full else self.small_inputs


REGISTRY: dict[str, Spec] = {}


def calibration_inputs(specs: list[InputSpec], seed: int = 0, batch: int = 8) -> list[torch.Tensor]:
    """Random inputs for calibrating BN statistics (separate generator from the export inputs)."""
    g = torch.Generator().manual_seed(seed + 999)
    out = []
    for s in specs:
        shape = (batch, *s.shape[1:])
        if s.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g, dtype=s.dtype))
        elif s.name == "attention_mask":
            out.append(torch.ones(shape, dtype=s.dtype))
        else:
            out.append(torch.randint(0, s.high or 2, shape, generator=g, dtype=s.dtype))
    return out


def register(spec: Spec) -> Spec:
    REGISTRY[spec.name] = spec
    return spec


def image(res: int, ch: int = 3, name: str = "input") -> list[InputSpec]:
    return [InputSpec(name, (2, ch, res, res))]


def build(name: str, full: bool = False) -> nn.Module:
    return REGISTRY[name].build(full)


from . import zoo  # noqa: E402,F401  (populates REGISTRY)
