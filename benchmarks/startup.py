"""Start-up time of the command line (issue #14 item 14: `onnxprune --help` <= 0.3 s).

    python benchmarks/startup.py [--repeats 15]

Times, as fresh processes (median and min of --repeats runs, wall clock): the bare interpreter
(`python -c pass`, the floor no tool can go below), `python -m onnxprune --help`, an argument error
(`onnxprune prune in.onnx out.onnx` with no ratio: exit 2 once the model-free checks ran), and
`import onnxprune.api` (what a command pays once it runs). Also lists the heavy modules that
`--help` loaded (should be none). Writes benchmarks/results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import ROOT

HEAVY = ("onnx", "onnxruntime", "numpy", "onnx_graphsurgeon", "networkx", "ml_dtypes")


def wall_times(cmd: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def heavy_modules_after_help() -> list[str]:
    code = ("import sys\nfrom onnxprune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    line = next(l for l in r.stdout.splitlines() if l.startswith("HEAVY:"))
    return [m for m in line[len("HEAVY:"):].split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    py = sys.executable
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "onnxprune --help": [py, "-m", "onnxprune", "--help"],
        "onnxprune argument error (no ratio)": [py, "-m", "onnxprune", "prune", "models/onnx/resnet18.ts.onnx",
                                                "/tmp/startup_never_written.onnx"],
        "import onnxprune.api": [py, "-c", "import onnxprune.api"],
    }
    results = {}
    for name, cmd in cases.items():
        ts = wall_times(cmd, args.repeats)
        results[name] = dict(median_s=round(statistics.median(ts), 4), min_s=round(min(ts), 4), repeats=len(ts))
        print(f"{name:<40} median {results[name]['median_s']:.3f} s   min {results[name]['min_s']:.3f} s")
    heavy = heavy_modules_after_help()
    print(f"heavy modules loaded by --help: {', '.join(heavy) or 'none'}")
    out = ROOT / "benchmarks" / "results" / "startup.json"
    out.write_text(json.dumps(dict(results=results, heavy_modules_after_help=heavy, python=sys.version.split()[0]),
                              indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
