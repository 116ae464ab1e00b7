"""Llama-style decoders with a KV cache (issue #15): export with models/llama.py, prune MLP neurons
(--ratio) and whole KV-head groups (--heads), verify against the mask oracle, record sizes, MACs,
wall time and peak RSS.

    python benchmarks/decoder.py                                     # 100m, both exporters, fp32, mlp + heads
    python benchmarks/decoder.py --configs tiny --exporters ts --modes heads
    python benchmarks/decoder.py --dtypes float16 --force
    python benchmarks/decoder.py --configs 1b --exporters dynamo --export-only   # time the 1b export alone

Models are exported on demand to models/onnx/full/ (gitignored; never committed) as
llama_<config>.<exporter>.<dtype>.onnx. Each case runs the CLI in a child process under
``/usr/bin/time -v`` (peak RSS of the child), at the default decoder input sizes (batch 1, seq 16,
past 8, attention mask 24):

    mlp:    onnxprune IN OUT --ratio R --report R.json
    heads:  onnxprune IN OUT --ratio R --heads --report R.json     (MLP neurons and KV-head groups)
    budget: onnxprune IN OUT --budget B --heads --report R.json    (latency budget; the cache shrinks
            with its heads: candidates are timed on the kept cache slices)

Writes benchmarks/results/decoder.json after every case (a rerun skips cases already there unless
--force), with the machine's load average before and after each case: the machine is shared, so
wall times and latencies move with the load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "models" / "onnx" / "full"
RESULTS = ROOT / "benchmarks" / "results" / "decoder.json"


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; wall seconds, peak RSS (MB), exit code, last stderr lines."""
    load0 = os.getloadavg()
    t0 = time.time()
    wrapped = (["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []) + cmd
    p = subprocess.run(wrapped, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    log.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return {"command": " ".join(cmd), "rc": p.returncode, "wall_s": round(wall, 1),
            "peak_rss_mb": round(int(m.group(1)) / 1024, 1) if m else None,
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
            "stdout": p.stdout.strip().splitlines()[-12:],
            "stderr_tail": [ln for ln in p.stderr.splitlines() if not ln.startswith("\t")][-3:]}


def size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def ensure_model(config: str, exporter: str, dtype: str, external: bool, check: bool = True) -> tuple[Path, dict | None]:
    path = FULL / f"llama_{config}.{exporter}.{dtype}{'.ext' if external else ''}.onnx"
    if path.exists():
        return path, None
    FULL.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "models.llama", "--config", config, "--exporter", exporter, "--dtype", dtype,
           "--out", str(path)]
    if external:
        cmd.append("--external-data")
    if not check:
        cmd.append("--no-check")  # the export alone (the check loads the whole model in ONNX Runtime)
    res = timed(cmd, FULL / f"{path.name}.export.log")
    if res["rc"] != 0:
        raise SystemExit(f"export failed: {res['stderr_tail']}")
    return path, res


def run_case(model: Path, mode: str, ratio: float, work: Path, budget: str = "0.85x") -> dict:
    out = work / f"{model.stem}.{mode}.pruned.onnx"
    report = work / f"{model.stem}.{mode}.report.json"
    what = ["--budget", budget] if mode == "budget" else ["--ratio", str(ratio)]
    cmd = [sys.executable, "-m", "onnxprune", str(model), str(out), *what, "--report", str(report)]
    if mode in ("heads", "budget"):
        cmd.append("--heads")
    res = timed(cmd, work / f"{model.stem}.{mode}.log")
    if res["rc"] == 0:
        rep = json.loads(report.read_text())
        b, p = rep["baseline"], rep["pruned"]
        res.update(
            baseline={k: b.get(k) for k in ("macs", "params", "file_bytes", "latency_ms")},
            pruned={k: p.get(k) for k in ("macs", "params", "file_bytes", "latency_ms")},
            macs_ratio=round(p["macs"] / b["macs"], 4), params_ratio=round(p["params"] / b["params"], 4),
            verification={k: rep["verification"].get(k) for k in ("passed", "max_abs_diff", "tolerance")},
            groups=[{"name": g["name"], "kind": g["kind"], "channels": g["channels"], "kept": g["kept"]}
                    for g in rep["groups"] if g["kept"] < g["channels"]],
            timings_s=rep.get("timings_s"), input_shapes=rep.get("settings", {}).get("input_shapes"),
            budget={k: rep["budget"].get(k) for k in ("spec", "budget", "baseline", "predicted", "measured", "met")}
            if rep.get("budget") else None)
        res["kv_heads"] = sorted({(g["channels"], g["kept"]) for g in res["groups"] if g["kind"] == "heads"})
        res["file_bytes_in"] = size(model)
        res["peak_rss_over_model"] = round(res["peak_rss_mb"] * 2 ** 20 / size(model), 2) if res["peak_rss_mb"] else None
    for p in (out, out.with_name(out.name + ".data")):
        if p.exists():
            p.unlink()
    return res


def export_only(a, results: dict) -> int:
    exports = results.setdefault("exports", {})
    for config in a.configs:
        for exporter in a.exporters:
            for dtype in a.dtypes:
                key = f"{config}.{exporter}.{dtype}"
                path = FULL / f"llama_{key}.onnx"
                for p in (path, path.with_name(path.name + ".data")):
                    if p.exists():
                        p.unlink()
                model, res = ensure_model(config, exporter, dtype, a.external_data, check=False)
                res["bytes"] = size(model)
                res["peak_rss_over_model"] = round(res["peak_rss_mb"] * 2 ** 20 / res["bytes"], 3)
                exports[key] = res
                a.out.write_text(json.dumps(results, indent=1) + "\n")
                print(f"{key}: {res['bytes'] / 1e9:.2f} GB in {res['wall_s']} s, peak RSS {res['peak_rss_mb']} MB, "
                      f"load {res['load_before'][0]}", flush=True)
                for p in (model, model.with_name(model.name + ".data")):
                    p.unlink()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["100m"])
    ap.add_argument("--exporters", nargs="+", default=["ts", "dynamo"])
    ap.add_argument("--dtypes", nargs="+", default=["float32"])
    ap.add_argument("--modes", nargs="+", default=["mlp", "heads"], choices=["mlp", "heads", "budget"])
    ap.add_argument("--budget", default="0.85x", help="latency budget of the budget mode")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--external-data", action="store_true",
                    help="export with the weights in a .data file (always for models over 2 GB)")
    ap.add_argument("--export-only", action="store_true",
                    help="only export (timed: wall, peak RSS, load) into the JSON's 'exports'; the file is removed after")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    results.setdefault("machine", {"cpus": os.cpu_count(), "platform": platform.platform(),
                                   "python": platform.python_version()})
    cases = results.setdefault("cases", {})
    if a.export_only:
        return export_only(a, results)
    work = FULL / "pruned"
    work.mkdir(parents=True, exist_ok=True)
    for config in a.configs:
        for exporter in a.exporters:
            for dtype in a.dtypes:
                for mode in a.modes:
                    what = f"b{a.budget}" if mode == "budget" else f"r{a.ratio}"
                    key = f"{config}.{exporter}.{dtype}{'.ext' if a.external_data else ''}.{mode}.{what}"
                    if key in cases and not a.force:
                        print(f"{key}: done before, skipped")
                        continue
                    model, export = ensure_model(config, exporter, dtype, a.external_data)
                    res = run_case(model, mode, a.ratio, work, a.budget)
                    if export is not None:
                        res["export"] = export
                    cases[key] = res
                    a.out.write_text(json.dumps(results, indent=1) + "\n")
                    ver = res.get("verification", {})
                    print(f"{key}: rc={res['rc']} MACs x{res.get('macs_ratio')} params x{res.get('params_ratio')} "
                          f"kv {res.get('kv_heads')} verified={ver.get('passed')} diff={ver.get('max_abs_diff')} "
                          f"wall {res['wall_s']}s peak RSS {res['peak_rss_mb']} MB load {res['load_before'][0]}",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
