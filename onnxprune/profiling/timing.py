"""Honest ONNX Runtime latency: models timed side by side in one process, without disturbing each other.

What goes wrong otherwise (design notes, "Measuring latency honestly"): on the 2-core dev machine two
sessions in one process, timed one after the other, disagreed by up to 2x on the *same* model,
because the idle intra-op threads of one session spin and steal the cores of the other. So every
session here

* has ``session.intra_op.allow_spinning`` and ``session.inter_op.allow_spinning`` set to "0",
* runs with a fixed intra-op thread count (default ``os.cpu_count()``) and sequential execution,
* uses full graph optimizations (what a deployment would use),
* and never falls back silently: an unavailable provider is an error, not a CPU measurement.

:func:`measure_latencies` creates all sessions up front, warms each up, then times repetitions in
which every model runs once, rotating the order each repetition (for two models: alternating), so
drift (thermal, other load) hits all models alike. Reported numbers are medians.

Each timed run of a model that follows a run of another model is preceded by one untimed run of
the same model (:func:`timed_run`): the other model's run evicts its weights from the caches, and
timed cold a small pruned model measured 12-15% slower than it runs alone and repeated, which is how
it is deployed (ViT-Tiny pruned to a quarter: alone 0.254 of the unpruned, alternated cold 0.293,
alternated re-warmed 0.267). The op-level latency model is fitted on models timed alone.

Also here: the parsers for user-facing latency text (``--budget 11ms`` / ``0.6x``, and the output
of a user's own ``--latency-cmd``).
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.errors import OnnxPruneError, first_line
from onnxprune.model.runtime import SessionPurpose, ort_session
from onnxprune.profiling.median_ci import summarize

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_ALIASES = {"trt": "tensorrt", "gpu": "cuda"}


class LatencyError(OnnxPruneError, ValueError):
    """A latency request that cannot be honoured as asked (provider missing, bad feeds, bad text)."""


@dataclass
class LatencyStats:
    """Per-model timing of ``session.run`` in milliseconds over ``n`` timed runs."""
    median_ms: float
    mean_ms: float
    p10_ms: float
    p90_ms: float
    std_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms) -> "LatencyStats":
        a = np.asarray(samples_ms, dtype=np.float64)
        return cls(median_ms=float(np.median(a)), mean_ms=float(a.mean()),
                   p10_ms=float(np.percentile(a, 10)), p90_ms=float(np.percentile(a, 90)),
                   std_ms=float(a.std()), n=int(a.size))


def resolve_providers(provider: str) -> list[str]:
    """ORT provider list for a short name (cpu, cuda, tensorrt) or an exact provider name.

    The requested provider must be available; the ones after it in the list (CUDA, then CPU for
    TensorRT) are the fallbacks ORT uses for nodes the first one can't run.
    """
    available = ort.get_available_providers()
    key = provider.strip()
    key = _ALIASES.get(key.lower(), key.lower())
    if key in PROVIDERS:
        wanted = PROVIDERS[key]
    else:
        exact = [p for p in available if p.lower() == provider.strip().lower()]
        if not exact:
            raise LatencyError(f"unknown execution provider {provider!r}: use one of "
                               f"{', '.join(PROVIDERS)} or an available provider ({', '.join(available)})")
        wanted = [exact[0]] + (["CPUExecutionProvider"] if exact[0] != "CPUExecutionProvider" else [])
    if wanted[0] not in available:
        raise LatencyError(f"execution provider {wanted[0]} ({provider!r}) is not available in this onnxruntime "
                           f"build (available: {', '.join(available)}); pass --provider cpu to time on the CPU "
                           "instead (a latency budget met there does not carry over to another provider)")
    return [p for p in wanted if p in available]


def make_session(model: bytes | str | os.PathLike | onnx.ModelProto, provider: str = "cpu",
                 threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession set up for fair timing (``SessionPurpose(timing=True)``, model/runtime.py).

    ``model`` is serialized bytes, a path, or a ModelProto. Raises :class:`LatencyError` if the
    provider is not available, or if ORT quietly put the session on another provider (it does so
    when e.g. the CUDA libraries fail to load): a CPU number labelled "cuda" would mislead.
    """
    if threads is not None and int(threads) < 1:
        raise LatencyError(f"threads must be >= 1, got {threads}")
    providers = resolve_providers(provider)
    try:
        sess = ort_session(model, SessionPurpose(timing=True, threads=threads), providers=providers)
    except Exception as e:  # ORT's own exception types: a model it cannot load is bad input here
        raise LatencyError(f"ONNX Runtime cannot load the model: {first_line(e)}") from None
    got = sess.get_providers()
    if not got or got[0] != providers[0]:
        raise LatencyError(f"onnxruntime did not start {providers[0]} (session runs on {', '.join(got)}); "
                           "check the provider's libraries")
    return sess


def _session_feed(sess: ort.InferenceSession, feed: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in feed]
    if missing:
        raise LatencyError(f"model {k}: no feed for input(s) {', '.join(missing)}")
    return {i.name: fit_feed(feed[i.name], i.shape) for i in sess.get_inputs()}


def fit_feed(arr: np.ndarray, declared) -> np.ndarray:
    """A feed made for the original model, cut to a pruned model's smaller static dims (a KV cache
    with fewer heads: the leading slices; for timing, which slices does not matter)."""
    if not hasattr(arr, "shape") or len(declared) != arr.ndim:
        return arr
    cut = tuple(slice(0, d) if isinstance(d, int) and 0 < d < n else slice(None) for d, n in zip(declared, arr.shape))
    return arr[cut] if any(c.stop is not None for c in cut) else arr


def measure_latencies(models: list, feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]], *,
                      provider: str = "cpu", threads: int | None = None, warmup: int = 5,
                      repeats: int | None = None, min_time_s: float = 1.0, max_repeats: int = 200,
                      time_budget_s: float | None = 10.0, rel_halfwidth: float | None = None) -> list[LatencyStats]:
    """Time several models side by side in one process; stats come back in the order given.

    ``feeds``: one input dict for all models, or one per model (extra entries are ignored).
    Each model is run ``warmup`` times first. With ``repeats=None`` the number of timed rounds is
    adaptive: enough rounds to fill ``min_time_s`` (estimated from the warm-up), at least 50 and
    at most ``max_repeats``. Every round runs each model once, the order rotated by one each round.
    ``time_budget_s`` bounds the whole call (warm-up included): rounds stop when it is spent, but
    at least 3 rounds are always timed (with fewer, a median means little) -- so a model slower
    than a third of the budget overruns it. ``None`` disables the bound.
    ``rel_halfwidth``: also stop (after at least 8 rounds) once every model's median has a 95%
    confidence interval within that fraction of it: a quiet machine needs few rounds, a busy one
    gets the rounds the bounds allow.

    Each sample is ``time.perf_counter()`` around one ``session.run`` with numpy inputs: on GPU
    providers that includes the host<->device copies, i.e. the latency a numpy caller sees.
    """
    if not models:
        return []
    if isinstance(feeds, dict):
        feeds = [feeds] * len(models)
    if len(feeds) != len(models):
        raise LatencyError(f"got {len(feeds)} feed dicts for {len(models)} models")
    if warmup < 0 or (repeats is not None and repeats < 1):
        raise LatencyError("warmup must be >= 0 and repeats >= 1")

    t_start = time.perf_counter()
    sessions = [make_session(m, provider, threads) for m in models]
    run_feeds = [_session_feed(s, f, k) for k, (s, f) in enumerate(zip(sessions, feeds))]
    m = len(sessions)

    def over_budget() -> bool:
        return time_budget_s is not None and time.perf_counter() - t_start > time_budget_s

    # Warm-up (first runs allocate arenas, pick kernels): rotated too; the later rounds estimate
    # how long one round takes. At least one warm-up run per model even if the budget is tight.
    round_times = []
    for r in range(max(warmup, 1)):
        t0 = time.perf_counter()
        for j in range(m):
            k = (r + j) % m
            try:
                sessions[k].run(None, run_feeds[k])
            except Exception as e:
                raise LatencyError(f"ONNX Runtime cannot run the model: {first_line(e)}") from None
        round_times.append(time.perf_counter() - t0)
        if r >= 1 and over_budget():
            break
    t_round = float(np.median(round_times[1:] if len(round_times) > 1 else round_times))
    t_round *= 2 if m > 1 else 1  # timed rounds re-warm each model (timed_run)

    if repeats is None:
        n_rounds = min(max(math.ceil(min_time_s / max(t_round, 1e-9)), 50), max_repeats)
        if time_budget_s is not None:
            left = time_budget_s - (time.perf_counter() - t_start)
            n_rounds = min(n_rounds, max(3, int(left / max(t_round, 1e-9))))
    else:
        n_rounds = int(repeats)

    samples: list[list[float]] = [[] for _ in range(m)]
    for r in range(n_rounds):
        for j in range(m):
            k = (r + j) % m
            samples[k].append(timed_run(sessions[k], run_feeds[k], rewarm=m > 1))
        if r >= 2 and over_budget():
            break
        if rel_halfwidth and r >= 7 and r % 4 == 3 and all(
                summarize(np.array(x) * 1e3, rel_halfwidth).converged for x in samples):
            break
    return [LatencyStats.from_samples(np.array(s) * 1e3) for s in samples]


def timed_run(sess: ort.InferenceSession, feed: dict[str, np.ndarray], rewarm: bool) -> float:
    """Seconds of one ``sess.run``; with ``rewarm``, after one untimed run that brings the model's
    weights back into the caches another model's run evicted (module docstring)."""
    if rewarm:
        sess.run(None, feed)
    t0 = time.perf_counter()
    sess.run(None, feed)
    return time.perf_counter() - t0


# --- text ------------------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TO_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_KEYED = re.compile(rf"\blatency_(ms|us|s)\s*[:=]\s*({_NUM})", re.IGNORECASE)


def _finite_positive(x: float, what: str, text: str) -> float:
    if not (math.isfinite(x) and x > 0):
        raise LatencyError(f"{what} must be a positive finite number, got {text!r}")
    return x


def parse_latency_output(text: str) -> float:
    """Latency in ms from the output of a user's latency command.

    Format: a line ``latency_ms: 3.21`` (also ``latency_us: 3210`` or ``latency_s: 0.00321``;
    ``=`` works instead of ``:``, keys are case-insensitive, other text on the line or on other
    lines is ignored). If several such lines are printed, the last one counts. Without any, the
    last non-empty line must be a bare number, read as milliseconds. Raises :class:`LatencyError`
    (a ValueError) otherwise, or if the latency is not a positive finite number.
    """
    matches = list(_KEYED.finditer(text))
    if matches:
        unit, num = matches[-1].group(1).lower(), matches[-1].group(2)
        return _finite_positive(float(num) * _TO_MS[unit], "latency", matches[-1].group(0))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and re.fullmatch(_NUM, lines[-1]):
        return _finite_positive(float(lines[-1]), "latency", lines[-1])
    tail = lines[-1] if lines else ""
    raise LatencyError("latency command output has no 'latency_ms: <number>' (or latency_us / latency_s) line "
                       f"and its last line is not a bare number of ms (last line: {tail[:80]!r})")


@dataclass
class Budget:
    """A latency target: ``kind='abs'`` with ``value`` in ms, or ``kind='rel'`` with ``value`` a
    fraction of the unpruned model's latency (0 < value <= 1)."""
    kind: str
    value: float

    def to_ms(self, baseline_ms: float) -> float:
        return self.value if self.kind == "abs" else self.value * baseline_ms


_BUDGET = re.compile(rf"\s*({_NUM})\s*(ms|us|µs|s|x|%)\s*", re.IGNORECASE)


def parse_budget(text: str) -> Budget:
    """Parse a latency budget: absolute ``11ms``, ``900us``, ``0.011s`` (stored in ms) or relative
    to the unpruned model ``0.6x``, ``60%``. A unit is required: a bare ``11`` is ambiguous.
    Raises :class:`LatencyError` (a ValueError) with the accepted forms on bad text."""
    m = _BUDGET.fullmatch(str(text))
    if not m:
        raise LatencyError(f"bad latency budget {text!r}: expected a number with a unit, e.g. 11ms, 900us, "
                         "0.011s (absolute) or 0.6x, 60% (of the unpruned model's latency)")
    num, unit = float(m.group(1)), m.group(2).lower()
    if unit in ("x", "%"):
        frac = num / 100.0 if unit == "%" else num
        if not (math.isfinite(frac) and 0 < frac <= 1):
            raise LatencyError(f"bad latency budget {text!r}: a relative budget must be in (0, 1]x, i.e. (0, 100]%")
        return Budget("rel", frac)
    ms = num * _TO_MS[unit]
    if not (math.isfinite(ms) and ms > 0):
        raise LatencyError(f"bad latency budget {text!r}: must be a positive time")
    return Budget("abs", ms)
