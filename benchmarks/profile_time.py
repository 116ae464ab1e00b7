"""Latency-table time on ResNet-50 at 224x224: building the table from scratch, and a cached re-run
of the whole budget command (issue #3). Targets: table <= 10 min, cached command <= 60 s, on the
2-core machine.

    python benchmarks/profile_time.py                       # exports ResNet-50 (needs torch) if missing
    python benchmarks/profile_time.py --model path.onnx --input-shape x=1x3x224x224
    python benchmarks/profile_time.py --skip-build          # only the cached run (table already in --cache-dir)

Both are timed as whole commands in a fresh process (wall clock, python start-up included):
1. `onnxprune profile IN --no-cache --cache-dir DIR --json T.json`  (builds and stores the table)
2. `onnxprune IN OUT --budget 0.6x --cache-dir DIR --report R.json`  (must find the table in DIR),
   and the same with `--scorer sp-lamp`.
DIR is a fresh folder under /tmp unless --cache-dir is given, so step 1 never sees an old table.
Prints a table and writes benchmarks/results/profile_time.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, ensure_full_model


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess, list[float], list[float]]:
    la0 = list(os.getloadavg())
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"command failed with exit code {p.returncode}")
    return wall, p, la0, list(os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--exporter", default="ts", choices=["ts", "dynamo"])
    ap.add_argument("--input-shape", action="append", default=[])
    ap.add_argument("--budget", default="0.6x")
    ap.add_argument("--cache-dir", default=None, help="table cache to use (default: a fresh temporary folder)")
    ap.add_argument("--skip-build", action="store_true", help="do not rebuild the table (it must be cached)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "profile_time.json"))
    args = ap.parse_args()

    model = Path(args.model) if args.model else ensure_full_model("resnet50", args.exporter)
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="onnxprune-cache-"))
    work = Path(tempfile.mkdtemp(prefix="onnxprune-profile-time-"))
    exe = [sys.executable, "-m", "onnxprune.cli"]
    shape_args = [a for s in args.input_shape for a in ("--input-shape", s)]
    rows = []

    if not args.skip_build:
        tj = work / "table.json"
        wall, p, la0, la1 = timed(exe + ["profile", str(model), "--no-cache", "--cache-dir", str(cache),
                                         "--json", str(tj), "-q"] + shape_args)
        t = json.loads(tj.read_text())
        rows.append(dict(step="build latency table (no cache)", command="onnxprune profile IN --no-cache",
                         wall_s=wall, table_build_s=t["build_s"], groups=len(t["group_sizes"]),
                         baseline_ms=t["baseline_ms"], loadavg_start=la0, loadavg_end=la1,
                         target_s=600, met=wall <= 600))
        print(p.stdout.splitlines()[0] if p.stdout else "", flush=True)

    for scorer in (None, "sp-lamp"):
        rj = work / f"report.{scorer or 'default'}.json"
        cmd = exe + [str(model), str(work / "pruned.onnx"), "--budget", args.budget, "--cache-dir", str(cache),
                     "--report", str(rj), "-q"] + (["--scorer", scorer] if scorer else []) + shape_args
        wall, p, la0, la1 = timed(cmd)
        r = json.loads(rj.read_text())
        b = r["budget"]
        if not b.get("table_cached"):
            raise SystemExit(f"the budget run did not find the table in {cache}: not a cached run")
        rows.append(dict(step=f"cached budget run ({'--scorer ' + scorer if scorer else 'default scorer'})",
                         command=f"onnxprune IN OUT --budget {args.budget}" + (f" --scorer {scorer}" if scorer else ""),
                         wall_s=wall, stage_s=r.get("timings_s"), loop_tries=len(b["iterations"]),
                         measured_over_budget=b["measured"] / b["budget"],
                         report_latency_ratio=(r["pruned"]["latency_ms"] / r["baseline"]["latency_ms"]
                                               if r["pruned"].get("latency_ms") else None),
                         loadavg_start=la0, loadavg_end=la1, target_s=60, met=wall <= 60))

    print(f"\nmodel {model.name}  inputs {args.input_shape or 'default (1x3x224x224)'}  cpus {os.cpu_count()}")
    print(f"{'step':<44} {'wall s':>8} {'target s':>8} {'met':>4}  load (1 min) start/end")
    for r in rows:
        print(f"{r['step']:<44} {r['wall_s']:>8.1f} {r['target_s']:>8} {'yes' if r['met'] else 'NO':>4}  "
              f"{r['loadavg_start'][0]:.2f}/{r['loadavg_end'][0]:.2f}")
        if r.get("stage_s"):
            print("    stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in r["stage_s"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        benchmark="latency table build time and cached budget run, ResNet-50", model=model.name,
        command="python benchmarks/profile_time.py " + " ".join(sys.argv[1:]),
        machine=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
        onnxruntime=__import__("onnxruntime").__version__, rows=rows), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
