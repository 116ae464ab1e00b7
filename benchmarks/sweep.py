"""Robustness sweep (issue #14): every committed fixture (and with --exports every on-demand full-size
export) x five prune settings, each run as the `onnxprune` command in a subprocess with a timeout.
What counts is how each run ends: 0 (written and verified), 2 (refused with one line), 1 (internal
error: a bug), a signal death (a native crash: a bug) or a timeout.

    nice -n 19 python benchmarks/sweep.py                      # committed fixtures
    nice -n 19 python benchmarks/sweep.py --exports            # + full-size exports (torch)
    python benchmarks/sweep.py --models resnet18 --settings ratio0.3,vbp-lstsq   # a subset
    python benchmarks/sweep.py --merge a.json b.json            # combine results files, print the tables

Settings: --ratio 0.3, --ratio 0.7, --macs 50%, --budget 0.7x --latency-model macs, and
--scorer vbp --compensate lstsq --macs 50% with generated calibration (random samples shaped and
typed like the model's inputs, in a .npz named like them). Runs other than the latency budget pass
--no-latency: the sweep checks outcomes and verification, not speed. Writes
benchmarks/results/sweep.json and prints a markdown table.

The results file is rewritten after every run and `--resume` skips the (model, setting) pairs it
already holds, so an interrupted sweep keeps what it measured and a later call completes it; runs
of the committed fixtures and of the exports are merged in one file this way. Exports are made one
at a time, just before their runs (a failed export is recorded, not fatal).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FULL, ROOT, ensure_full_model

SETTINGS = {
    "ratio0.3": ["--ratio", "0.3", "--no-latency"],
    "ratio0.7": ["--ratio", "0.7", "--no-latency"],
    "macs50%": ["--macs", "50%", "--no-latency"],
    "budget0.7x": ["--budget", "0.7x", "--latency-model", "macs"],
    "vbp-lstsq": ["--scorer", "vbp", "--compensate", "lstsq", "--macs", "50%", "--no-latency"],
}
SAMPLES = 16  # calibration samples per generated set
OTHER_DIM = 16  # symbolic non-batch dims of generated calibration (the CLI's default for non-spatial dims)


def committed_fixtures() -> list[Path]:
    return sorted((ROOT / "models" / "onnx").glob("*.onnx")) + sorted((ROOT / "models" / "digits").glob("*.onnx"))


def export_names() -> list[str]:
    """Every architecture registered in models/export.py (its --list; torch is imported there only)."""
    names = subprocess.run([sys.executable, str(ROOT / "models" / "export.py"), "--list"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    return [line.split()[0] for line in names if line.strip()]


def export_targets() -> list[Path]:
    """Paths of the full-size exports, every registered architecture x both exporters (made on demand)."""
    return [FULL / f"{name}.{exporter}.onnx" for name in export_names() for exporter in ("ts", "dynamo")]


def ensure_export(path: Path) -> str | None:
    """Export `path` (models/onnx/full/<name>.<exporter>.onnx) if missing; the failure, if any."""
    name, exporter = path.name[:-len(".onnx")].rsplit(".", 1)
    try:
        ensure_full_model(name, exporter)
    except subprocess.CalledProcessError as e:
        return f"export failed (exit {e.returncode})"
    return None


def input_dims(vi) -> tuple[list[int], list[bool]]:
    """Concrete dims for a graph input `vi` (an onnx.ValueInfoProto: batch 1, other symbolic dims OTHER_DIM), and
    which were symbolic."""
    dims, symbolic = [], []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        fixed = d.HasField("dim_value") and d.dim_value > 0
        dims.append(d.dim_value if fixed else (1 if i == 0 else OTHER_DIM))
        symbolic.append(not fixed)
    return dims, symbolic


def _cache_length(name: str) -> bool:
    """A KV-cache length dim (past*, total*, or a written sum such as 'past_seq + seq')."""
    n = name.strip().lower()
    return n.startswith("past") or n.startswith("total") or "+" in n


def calibration_for(model_path: Path, folder: Path) -> tuple[Path, list[str]]:
    """A .npz of random samples named like the model's inputs, and the --input-shape flags that fix
    its symbolic non-batch dims (so analysis and calibration agree on them)."""
    import numpy as np  # here, not at the top: --help stays fast
    import onnx
    from onnxprune.model.shapes import graph_input_shapes
    m = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    rng = np.random.default_rng(0)
    arrays, shapes = {}, []
    tool = graph_input_shapes(m)  # the CLI's own defaults: a KV cache's past/total lengths agree
    for vi in [i for i in m.graph.input if i.name not in inits]:
        dims, symbolic = input_dims(vi)
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if k and symbolic[k] and _cache_length(d.dim_param) and vi.name in tool:
                dims[k] = tool[vi.name][k]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type or 1)
        shape = [SAMPLES] + dims[1:]
        if np.dtype(dtype).kind == "f":
            arrays[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif np.dtype(dtype).kind == "b" or "mask" in vi.name:
            arrays[vi.name] = np.ones(shape, dtype=dtype)
        else:  # token ids and the like: 0/1 is valid for any vocabulary
            arrays[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
        if any(symbolic[1:]):
            shapes += ["--input-shape", f"{vi.name}={'x'.join(str(d) for d in dims)}"]
    path = folder / f"{model_path.stem}.calib.npz"
    np.savez(path, **arrays)
    return path, shapes


def run_one(model: Path, setting: str, folder: Path, timeout_s: float) -> dict:
    out, rep = folder / f"{model.stem}.{setting}.onnx", folder / f"{model.stem}.{setting}.json"
    args = list(SETTINGS[setting])
    if setting == "vbp-lstsq":
        calib, shapes = calibration_for(model, folder)
        args += ["--calib", str(calib)] + shapes
    cmd = [sys.executable, "-m", "onnxprune", str(model), str(out), "--report", str(rep), "-q"] + args
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    wall = time.perf_counter() - t0
    res = dict(model=_label(model), setting=setting, exit=rc, wall_s=round(wall, 1), command=" ".join(cmd[1:]),
               loadavg_1min=round(os.getloadavg()[0], 2))  # wall times (and timeouts) depend on the load
    if rc is not None and rc < 0:
        res["signal"] = signal.Signals(-rc).name
    lines = [l for l in err.splitlines() if l.startswith("onnxprune:")]
    if lines:
        res["message"] = lines[-1]
    if rc == 0 and rep.exists():
        report = json.loads(rep.read_text())
        v = report.get("verification") or {}
        res["verified"] = v.get("passed")
        res["max_abs_diff"], res["tolerance"] = v.get("max_abs_diff"), v.get("tolerance")
        res["macs_ratio"] = _ratio(report, "macs")
        if report.get("budget"):
            res["budget_met"] = report["budget"]["met"]
    for f in (out, rep, Path(str(out) + ".data")):
        if f.exists():
            f.unlink()
    return res


def _label(model: Path) -> str:
    try:
        return str(model.relative_to(ROOT / "models"))
    except ValueError:
        return str(model)


def _ratio(report: dict, key: str) -> float | None:
    b, p = (report.get("baseline") or {}).get(key), (report.get("pruned") or {}).get(key)
    return round(p / b, 3) if b and p is not None else None


def cell(r: dict) -> str:
    if r.get("export_failed"):
        return "export failed"
    if r["exit"] is None:
        return "timeout"
    if r.get("signal"):
        return f"**{r['signal']}**"
    if r["exit"] == 0:
        return f"0 {'verified' if r.get('verified') else 'unverified'} ({r.get('macs_ratio')})"
    return f"**{r['exit']}**" if r["exit"] != 2 else "2"


def markdown(results: list[dict], settings: list[str]) -> str:
    models = list(dict.fromkeys(r["model"] for r in results))
    by = {(r["model"], r["setting"]): r for r in results}
    lines = ["| model | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(cell(by[m, s]) if (m, s) in by else "" for s in settings) + " |")
    return "\n".join(lines)


def summary(results: list[dict]) -> dict:
    return dict(runs=len(results), exit0=sum(r["exit"] == 0 for r in results),
                verified=sum(bool(r.get("verified")) for r in results),
                exit2=sum(r["exit"] == 2 for r in results), exit1=sum(r["exit"] == 1 for r in results),
                signal=sum(bool(r.get("signal")) for r in results),
                timeout=sum(r["exit"] is None and not r.get("export_failed") for r in results),
                export_failed=sum(bool(r.get("export_failed")) for r in results))


def load_previous(path: Path) -> list[dict]:
    """The runs a previous (possibly interrupted) sweep wrote to `path`, if any."""
    if not path.exists():
        return []
    return json.loads(path.read_text()).get("results", [])


def write_results(path: Path, results: list[dict]) -> None:
    """Rewrite the results file (atomically: a kill mid-write keeps the previous version)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(summary=summary(results), settings=SETTINGS, results=results), indent=1) + "\n")
    tmp.replace(path)


def log_run(r: dict) -> None:
    print(f"{r['model']:<40} {r['setting']:<11} exit {r['exit']} {r.get('signal', '')} {r['wall_s']:>6.1f}s "
          f"{'verified' if r.get('verified') else ''} {r.get('message', '')}", file=sys.stderr, flush=True)


def sweep(models: list[Path], settings: list[str], out: Path, results: list[dict], timeout_s: float) -> None:
    """Run every missing (model, setting) pair, appending to `results` and rewriting `out` after each."""
    done = {(r["model"], r["setting"]) for r in results}
    with tempfile.TemporaryDirectory(prefix="onnxprune_sweep_") as tmp:
        for model in models:
            todo = [s for s in settings if (_label(model), s) not in done]
            failure = ensure_export(model) if todo and model.is_relative_to(FULL) else None
            for s in todo:
                if failure:
                    r = dict(model=_label(model), setting=s, exit=None, wall_s=0.0, export_failed=failure)
                else:
                    r = run_one(model, s, Path(tmp), timeout_s)
                results.append(r)
                write_results(out, results)
                log_run(r)


def merged(files: list[str]) -> list[dict]:
    """The runs of several results files, one per (model, setting): a later file's run replaces an
    earlier one's."""
    by: dict[tuple[str, str], dict] = {}
    for f in files:
        for r in load_previous(Path(f)):
            by[r["model"], r["setting"]] = r
    return list(by.values())


def refusal_kinds(results: list[dict]) -> dict[str, int]:
    """Exit-2 messages with their numbers taken out, and how many runs ended with each."""
    kinds: dict[str, int] = {}
    for r in results:
        if r["exit"] == 2:
            k = re.sub(r"\d+(\.\d+)?( ?(ms|[KMG]))?", "N", r.get("message", ""))
            kinds[k] = kinds.get(k, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exports", action="store_true", help=f"also full-size exports (torch; kept in {FULL})")
    ap.add_argument("--only-exports", action="store_true", help="the full-size exports without the fixtures")
    ap.add_argument("--models", default=None, help="comma-separated substrings: only models whose path has one")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help="comma-separated subset of " + ", ".join(SETTINGS).replace("%", "%%"))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default 600)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in --out and do only the missing ones")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="run nothing: combine these results files into --out and print the tables")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.json"))
    args = ap.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        sys.exit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    out = Path(args.out)
    keys = args.models.split(",") if args.models else None
    if args.merge:
        results = merged(args.merge)
    else:
        models = ([] if args.only_exports else committed_fixtures()) + (
            export_targets() if args.exports or args.only_exports else [])
        models = [m for m in models if not keys or any(k in str(m) for k in keys)]
        results = load_previous(out) if args.resume else []
        sweep(models, settings, out, results, args.timeout)
    write_results(out, results)
    if keys:  # the tables of the models asked for
        results = [r for r in results if any(k in r["model"] for k in keys)]
    print(markdown(results, settings))
    print()
    print(" ".join(f"{k}={v}" for k, v in summary(results).items()))
    for r in results:
        if r["exit"] != 0:
            print(f"- {r['model']} {r['setting']}: exit {r['exit']} {r.get('signal', '')} "
                  f"{r.get('message', r.get('export_failed', ''))}")
    print()
    for kind, n in refusal_kinds(results).items():
        print(f"- {n} x {kind}")


if __name__ == "__main__":
    main()
