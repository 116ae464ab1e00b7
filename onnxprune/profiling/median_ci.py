"""Latency as a measurement with an error bar: repeat until the median is known well enough.

Timings on a shared machine are noisy and skewed (a run is only ever slowed down), so a fixed
number of repetitions is either wasteful on a quiet machine or meaningless on a busy one. Here a
measurement runs until the distribution-free 95% confidence interval of the median (from order
statistics: the number of samples below the true median is Binomial(n, 1/2)) is within
``rel_halfwidth`` of the median, or until a time cap, and reports that interval either way.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class MedianCI:
    """A median in ms with its 95% confidence interval [lo_ms, hi_ms] over ``n`` samples."""
    median_ms: float
    lo_ms: float
    hi_ms: float
    n: int
    converged: bool  # the interval met the requested width before the time cap

    @property
    def rel_halfwidth(self) -> float:
        """Half the interval's width relative to the median (0.02 = +-2%)."""
        return 0.5 * (self.hi_ms - self.lo_ms) / self.median_ms if self.median_ms > 0 else math.inf


def median_ci(samples_ms, confidence_z: float = Z95) -> tuple[float, float, float]:
    """Median and its order-statistic confidence interval (normal approximation of the binomial)."""
    a = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = a.size
    if n == 0:
        raise ValueError("no samples")
    half = confidence_z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)))
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)))
    return float(np.median(a)), float(a[lo]), float(a[hi])


def summarize(samples_ms, rel_halfwidth: float = 0.02) -> MedianCI:
    """The samples' median and CI; ``converged`` when the CI is within ``rel_halfwidth`` (>= 5 samples)."""
    med, lo, hi = median_ci(samples_ms)
    n = len(samples_ms)
    half = 0.5 * (hi - lo) / med if med > 0 else math.inf
    return MedianCI(med, lo, hi, n, n >= 5 and half <= rel_halfwidth)


def measure_until_stable(run_once_ms: Callable[[], float], *, rel_halfwidth: float = 0.02,
                         time_cap_s: float = 2.0, min_runs: int = 7, max_runs: int = 1000,
                         check_every: int = 4) -> MedianCI:
    """Call ``run_once_ms`` (returns one sample in ms) until the median's 95% CI half-width is within
    ``rel_halfwidth`` of the median, ``time_cap_s`` is spent, or ``max_runs`` is reached; at least
    ``min_runs`` samples are always taken."""
    samples: list[float] = []
    t0 = time.perf_counter()
    while len(samples) < max_runs:
        samples.append(float(run_once_ms()))
        n = len(samples)
        if n < min_runs or n % check_every:
            continue
        if summarize(samples, rel_halfwidth).converged or time.perf_counter() - t0 > time_cap_s:
            break
    return summarize(samples, rel_halfwidth)
