"""The mask oracle's rounding-aware tolerance (issue #14, class 4): how far exact prunes of a deep,
ill-conditioned conv stack move from the masked original (against the old fixed 1e-4 x output scale
and against the probed rounding floor), how far a planted wrong channel moves (against the
tolerance), and what the probe costs.

    python benchmarks/oracle_tolerance.py     (prints the figures; no options)

Uses tests/test_oracle_tolerance.py's fixture and the committed ResNet-18 / ViT / ResNet-50 fixtures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

if __name__ == "__main__":  # --help answers before the heavy imports below
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

import onnx  # noqa: E402
from test_oracle_tolerance import SHAPE, deep_tanh_stack, planted  # noqa: E402

from onnxprune import prune  # noqa: E402
from onnxprune.analysis.graph import random_feeds  # noqa: E402
from onnxprune.transform.rewrite import rewrite  # noqa: E402
from onnxprune.verify.oracle import compare_models, masked_model  # noqa: E402
from onnxprune.verify.rounding import accumulations  # noqa: E402


def ratios(m):
    for r in (0.1, 0.3, 0.5, 0.7, 0.9):
        v = prune(m, ratio=r, latency=False, input_shapes=SHAPE).report.verification
        print(f"deep ratio {r}: diff {v['max_abs_diff']:.2e} = {v['max_abs_diff'] / (1e-4 * v['output_scale']):.2f} x old tol, "
              f"{v['max_abs_diff'] / max(v['rounding_floor'], 1e-30):.2f} x floor, tol {v['tolerance']:.2e} passed {v['passed']}")


def planted_and_cost(name, model, shapes):
    res = prune(model, ratio=0.3, latency=False, input_shapes=shapes)
    a = res.analysis
    feeds = [random_feeds(a.view, seed=s) for s in range(3)]
    ref, pruned, bad = masked_model(a, res.kept), rewrite(a, res.kept), rewrite(a, planted(a, res.kept))
    t = time.perf_counter()
    fixed = compare_models(ref, pruned, feeds)
    t_fixed = time.perf_counter() - t
    t = time.perf_counter()
    right = compare_models(ref, pruned, feeds, rounding=accumulations(a))
    t_probe = time.perf_counter() - t
    wrong = compare_models(ref, bad, feeds, rounding=accumulations(a))
    print(f"{name}: exact diff {right.max_abs_diff:.2e} tol {right.tolerance:.2e} (fixed {fixed.tolerance:.2e}) "
          f"floor {right.rounding_floor:.2e}; planted diff {wrong.max_abs_diff:.2e} = "
          f"{wrong.max_abs_diff / wrong.tolerance:.0f} x tol; compare {t_fixed:.2f}s -> {t_probe:.2f}s")


if __name__ == "__main__":
    deep = deep_tanh_stack()
    ratios(deep)
    planted_and_cost("deep", deep, SHAPE)
    for name in ("resnet18.ts", "vit.ts", "resnet50.ts"):
        planted_and_cost(name, onnx.load(ROOT / "models" / "onnx" / f"{name}.onnx"), None)
