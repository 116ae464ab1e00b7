#!/usr/bin/env python
"""Peak memory and wall time of `onnxprune prune` on large models (issue #15).

Every case builds its model on demand in --workdir (never committed), then runs

    python -m onnxprune prune IN OUT --ratio 0.3 --no-latency [--heads] --report R -q

in a child process under /usr/bin/time -v (peak RSS: the largest of the tool and the processes it
starts) while /proc is polled for the peak total RSS of the whole process tree. The pruned model is
then loaded and run once in ONNX Runtime in a fresh process. Target (issue #15): peak RSS <= 1.5 x
model size + 1 GB.

Cases:
  bert-base     BERT-base (hidden 768, 12 layers, 12 heads, FFN 3072), TorchScript export, one file
  mlp-2.5g      a 2.5 GiB MLP built with onnx.helper straight into external data (no protobuf can hold it)
  llama-100m    models/llama.py --config 100m, fp32 external data, --ratio 0.3 and --heads
  llama-1b      models/llama.py --config 1b (1.1B parameters, 4.4 GB), fp32 external data
  llama-1b-fp16 the same in fp16

    python benchmarks/scale.py --cases bert-base,mlp-2.5g --out benchmarks/results/scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GB = 1e9


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (from /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
            total += int(m.group(1)) * 1024 if m else 0
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def measured_run(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under /usr/bin/time -v; returns exit code, wall time, peak RSS (time's maximum
    resident set size, and the polled peak of the process tree's total)."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        peak = [0]

        def poll():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss(proc.pid))
                time.sleep(0.1)
        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rc = proc.wait()
        th.join()
    wall = time.time() - t0
    text = log.read_text()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"rc": rc, "wall_s": round(wall, 1), "peak_rss_bytes": int(m.group(1)) * 1024 if m else None,
            "peak_tree_rss_bytes": peak[0], "log_tail": text.strip().splitlines()[-30:] if rc else None}


def model_bytes(path: Path) -> int:
    data = path.parent / (path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def remove_model(path: Path) -> None:
    for p in (path, path.parent / (path.name + ".data")):
        if p.exists():
            p.unlink()


# --- model builders -----------------------------------------------------------------------------

def build_bert_base(path: Path) -> None:
    code = f"""
import sys, torch
sys.path.insert(0, {str(REPO / 'models')!r})
from arch.bert import bert
torch.manual_seed(0)
m = bert(vocab=30522, hidden=768, layers=12, heads=12, ffn=3072, max_pos=512).eval()
ids = torch.randint(0, 30522, (1, 128)); mask = torch.ones(1, 128, dtype=torch.int64)
dyn = {{"input_ids": {{0: "batch", 1: "seq"}}, "attention_mask": {{0: "batch", 1: "seq"}}}}
torch.onnx.export(m, (ids, mask), {str(path)!r}, input_names=["input_ids", "attention_mask"],
                  output_names=["logits"], dynamic_axes=dyn, opset_version=17, dynamo=False)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def build_mlp(path: Path, gib: float = 2.5, d: int = 4096, h: int = 16384, dtype: str = "float32") -> None:
    """Layers of MatMul(d->h) + bias + Relu + MatMul(h->d), weights written one at a time into
    PATH.data: the model never exists as one protobuf (it could not: it is over 2 GB)."""
    code = f"""
import numpy as np, onnx
from onnx import TensorProto, helper
d, h, gib, dt = {d}, {h}, {gib}, np.dtype({dtype!r})
elem = TensorProto.FLOAT16 if dt == np.float16 else TensorProto.FLOAT
per_layer = (2 * d * h + h) * dt.itemsize
layers = max(1, round(gib * 2**30 / per_layer))
data_name = {path.name!r} + ".data"
rng = np.random.default_rng(0)
nodes, inits, x, off = [], [], "x", 0
with open({str(path)!r} + ".data", "wb") as f:
    def add(name, shape, scale):
        global off
        pad = -off % 4096
        f.write(b"\\0" * pad); off += pad
        a = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(dt)
        f.write(a.tobytes())
        tp = onnx.TensorProto(); tp.name = name; tp.data_type = elem; tp.dims.extend(shape)
        tp.data_location = TensorProto.EXTERNAL
        for k, v in (("location", data_name), ("offset", str(off)), ("length", str(a.nbytes))):
            e = tp.external_data.add(); e.key, e.value = k, v
        off += a.nbytes
        inits.append(tp)
    for i in range(layers):
        add(f"w1_{{i}}", [d, h], d ** -0.5); add(f"b1_{{i}}", [h], 0.1); add(f"w2_{{i}}", [h, d], h ** -0.5)
        nodes += [helper.make_node("MatMul", [x, f"w1_{{i}}"], [f"m{{i}}"], name=f"fc1_{{i}}"),
                  helper.make_node("Add", [f"m{{i}}", f"b1_{{i}}"], [f"a{{i}}"], name=f"add_{{i}}"),
                  helper.make_node("Relu", [f"a{{i}}"], [f"r{{i}}"], name=f"relu_{{i}}"),
                  helper.make_node("MatMul", [f"r{{i}}", f"w2_{{i}}"], [f"y{{i}}"], name=f"fc2_{{i}}")]
        x = f"y{{i}}"
g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, ["N", d])],
                      [helper.make_tensor_value_info(x, elem, ["N", d])], inits)
onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), {str(path)!r})
print(layers, "layers", off / 2**30, "GiB")
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def build_llama(path: Path, config: str, dtype: str = "float32") -> None:
    subprocess.run([sys.executable, "-m", "models.llama", "--config", config, "--dtype", dtype, "--exporter",
                    "dynamo", "--external-data", "--out", str(path), "--no-check"], check=True, cwd=REPO)


CASES = {
    "bert-base": (lambda p: build_bert_base(p), [[]]),
    "mlp-2.5g": (lambda p: build_mlp(p), [[]]),
    "llama-100m": (lambda p: build_llama(p, "100m"), [[], ["--heads"]]),
    "llama-1b": (lambda p: build_llama(p, "1b"), [[], ["--heads"]]),
    "llama-1b-fp16": (lambda p: build_llama(p, "1b", "float16"), [[]]),
}


# --- one case -----------------------------------------------------------------------------------

RUN_CHECK = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feeds = {}
for i in s.get_inputs():
    # decoders: past_seq + seq = total_seq (attention_mask); other symbolic dims 8, the batch 1
    named = {"batch": 1, "seq": 8, "past_seq": 8, "total_seq": 16}
    shape = [d if isinstance(d, int) else named.get(d, 1 if k == 0 else 8) for k, d in enumerate(i.shape)]
    if "int" in i.type:
        feeds[i.name] = np.ones(shape, np.int64 if "64" in i.type else np.int32)
    else:
        feeds[i.name] = np.zeros(shape, np.float16 if "16" in i.type else np.float32)
out = s.run(None, feeds)
print("ok", [o.shape for o in out][:2])
"""


def prune_case(src: Path, work: Path, name: str, flags: list[str], ratio: float) -> dict:
    out = work / f"{name}.pruned.onnx"
    report = work / f"{name}.report.json"
    cmd = [sys.executable, "-m", "onnxprune", "prune", str(src), str(out), "--ratio", str(ratio), "--no-latency",
           *flags, "--report", str(report), "-q"]
    rec = {"flags": ["--ratio", str(ratio), "--no-latency", *flags], "load_before": load()}
    rec.update(measured_run(cmd, work / f"{name}.log"))
    rec["load_after"] = load()
    if rec["rc"] == 0:
        r = json.loads(report.read_text())
        v = r.get("verification", {})
        rec.update(verified=bool(v.get("passed")), max_abs_diff=v.get("max_abs_diff"), tolerance=v.get("tolerance"),
                   pruned_bytes=model_bytes(out), timings_s=r.get("timings_s"),
                   params=[r.get("baseline", {}).get("params"), r.get("pruned", {}).get("params")])
        chk = subprocess.run([sys.executable, "-c", RUN_CHECK, str(out)], capture_output=True, text=True, cwd=REPO)
        rec["runs_in_ort"] = chk.returncode == 0 and chk.stdout.startswith("ok")
        if not rec["runs_in_ort"]:
            rec["ort_error"] = (chk.stderr or chk.stdout).strip().splitlines()[-1:]
    remove_model(out)
    return rec


def run_case(case: str, work: Path, ratio: float, keep: bool) -> dict:
    build, variants = CASES[case]
    src = work / f"{case}.onnx"
    if not src.exists():
        t0 = time.time()
        build(src)
        print(f"{case}: built in {time.time() - t0:.0f}s", flush=True)
    size = model_bytes(src)
    res = {"case": case, "model_bytes": size, "target_rss_bytes": int(1.5 * size + GB), "runs": []}
    for flags in variants:
        name = case + "".join(f.replace("--", "_") for f in flags)
        rec = prune_case(src, work, name, flags, ratio)
        rec["within_target"] = rec.get("peak_rss_bytes") is not None and rec["peak_rss_bytes"] <= res["target_rss_bytes"]
        res["runs"].append(rec)
        print(f"{case} {' '.join(flags) or '(mlp)'}: rc {rec['rc']}, peak RSS {(rec['peak_rss_bytes'] or 0) / GB:.2f} GB "
              f"(tree {rec['peak_tree_rss_bytes'] / GB:.2f} GB, target {res['target_rss_bytes'] / GB:.2f} GB), "
              f"{rec['wall_s']}s, verified {rec.get('verified')}, runs {rec.get('runs_in_ort')}, load {rec['load_before']}",
              flush=True)
    if not keep:
        remove_model(src)
    return res


def table(results: dict) -> str:
    """The README table of a results file."""
    rows = ["| model | size | flags | params kept | peak RSS | target | wall | verified, runs in ORT |",
            "|---|---|---|---|---|---|---|---|"]
    for case, res in results.items():
        for run in res["runs"]:
            flags = " ".join(f for f in run["flags"] if f not in ("--no-latency",))
            params = run.get("params") or [None, None]
            kept = f"{params[1] / params[0]:.3f} of {params[0] / 1e6:.1f}M" if params[0] else "-"
            rows.append(f"| {case} | {res['model_bytes'] / GB:.2f} GB | `{flags}` | {kept} | "
                        f"{(run['peak_rss_bytes'] or 0) / GB:.2f} GB | {res['target_rss_bytes'] / GB:.2f} GB | "
                        f"{run['wall_s']:.0f} s | {'yes' if run.get('verified') else 'no'}, "
                        f"{'yes' if run.get('runs_in_ort') else 'no'} |")
    return "\n".join(rows)


ORT_FP16_SESSION = """
import sys, resource, numpy as np, onnxruntime as ort
so = ort.SessionOptions()
if sys.argv[2] == "off":
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
for _ in range(2):
    s.run(None, {"x": np.ones((1, 2048), np.float16)})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def ort_fp16_session(work: Path) -> dict:
    """Peak RSS of one ONNX Runtime CPU session (load and two runs) of a 512 MiB fp16 MLP in external
    data, graph optimizations on and off: what any session of an fp16 model costs, whatever the tool."""
    src = work / "mlp-fp16.onnx"
    build_mlp(src, gib=0.5, d=2048, h=8192, dtype="float16")
    size = model_bytes(src)
    res = {"model_bytes": size, "load": load()}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", ORT_FP16_SESSION, str(src), mode], capture_output=True, text=True,
                             check=True)
        res[f"optimizations_{mode}_peak_rss_bytes"] = int(out.stdout.split()[-1])
    remove_model(src)
    print(f"fp16 session: model {size / GB:.2f} GB, peak RSS optimizations on "
          f"{res['optimizations_on_peak_rss_bytes'] / GB:.2f} GB, off {res['optimizations_off_peak_rss_bytes'] / GB:.2f} GB")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="bert-base,mlp-2.5g", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune-scale"))
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--keep", action="store_true", help="keep the built models in --workdir")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    p.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    p.add_argument("--ort-fp16-session", action="store_true",
                   help="also measure one ORT session of a 512 MiB fp16 MLP (optimizations on / off)")
    a = p.parse_args(argv)
    if a.table:
        print(table(json.loads(a.out.read_text())))
        return 0
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {', '.join(bad)}; known: {', '.join(CASES)}")
    a.workdir.mkdir(parents=True, exist_ok=True)
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    for case in cases:
        results[case] = run_case(case, a.workdir, a.ratio, a.keep)
        results[case]["cpu_count"] = os.cpu_count()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1) + "\n")  # after every case
    if a.ort_fp16_session:
        results["ort-fp16-session"] = ort_fp16_session(a.workdir)
        a.out.write_text(json.dumps(results, indent=1) + "\n")
    if not a.keep and a.workdir.exists() and not any(a.workdir.glob("*.onnx*")):
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
