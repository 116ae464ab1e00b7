#!/usr/bin/env python
"""ORT GenAI decoders (issue 15): prune the ~100M-parameter int4 (MatMulNBits) decoder of
models/genai_decoder.py with the CLI, and measure why K is pruned in whole quantization blocks.

    python benchmarks/genai.py                      # 100m int4: --ratio 0.3, --ratio 0.3 --heads; requantize
    python benchmarks/genai.py --config tiny        # the same on the tiny config (seconds)

1. ``prune``: ``onnxprune prune IN OUT --ratio 0.3 [--heads] --no-latency`` under ``/usr/bin/time -v``
   (peak RSS, wall time); the report's verification; the pruned model run in ONNX Runtime on a
   prompt with a KV cache of the new head count (its present shapes checked).
2. ``requantize``: the alternative to whole-block K pruning. Every MatMulNBits is dequantized into a
   float MatMul (the same weights), MLP neurons are pruned one by one on that model (verified against
   its mask oracle), and the result is re-quantized with the same block size (MatMulNBitsQuantizer,
   block 32). Its outputs are compared with the masked original (removed neurons zeroed, original
   int4 weights): max |diff| against the oracle's tolerance (1e-4 x output scale). As a control, the
   unpruned dequantized model re-quantized the same way.

The model is generated on demand into models/onnx/full/ (never committed). Results:
benchmarks/results/genai.json (with the load averages: the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import FULL, ROOT, load_avg

RESULTS = ROOT / "benchmarks" / "results" / "genai.json"
sys.path.insert(0, str(ROOT / "models"))


def ensure_model(config: str) -> Path:
    path = FULL / f"genai_{config}.int4.onnx"
    if not path.exists():
        print(f"building {path.name} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "models" / "genai_decoder.py"), "--config", config, "--int4",
                        "--out", str(path)], check=True, stderr=subprocess.DEVNULL)
    return path


def input_shapes(cfg, past: int = 3, seq: int = 4) -> dict[str, list[int]]:
    import genai_decoder as gd

    return {k: list(v.shape) for k, v in gd.feeds(cfg, past=past, seq=seq).items()}


def shape_flag(shapes: dict[str, list[int]]) -> str:
    return ",".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())


def timed_cli(args: list[str]) -> dict:
    """Run the CLI under /usr/bin/time -v: exit code, wall seconds, peak RSS (MB), last stderr lines."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "onnxprune", *args], capture_output=True,
                       text=True, env=env)
    wall = time.perf_counter() - t
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("\t")]
    return dict(rc=p.returncode, wall_s=round(wall, 2), peak_rss_mb=round(int(rss.group(1)) / 1024, 1) if rss else None,
                stderr_tail=lines[-12:])


def run_pruned(path: Path, cfg) -> dict:
    """The pruned model on a prompt of 4 tokens after 3 cached ones, with caches of its own head count."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    import genai_decoder as gd

    m = onnx.load(str(path), load_external_data=False)
    gqa = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in m.graph.node
           if n.op_type == "GroupQueryAttention"]
    kv = [g["kv_num_heads"] for g in gqa]
    feeds = gd.feeds(cfg, past=3, seq=4)
    for i, k in enumerate(kv):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.ascontiguousarray(feeds[f"past_key_values.{i}.{kind}"][:, :k])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    present_ok = all(outs[f"present.{i}.key"].shape == (1, k, 7, cfg.head_size) for i, k in enumerate(kv))
    return dict(num_heads=[g["num_heads"] for g in gqa], kv_num_heads=kv, present_shapes_match=bool(present_ok),
                logits_finite=bool(np.isfinite(outs["logits"]).all()))


def prune_case(model: Path, cfg, name: str, flags: list[str], out_dir: Path) -> dict:
    out, rep = out_dir / f"{model.stem}.{name}.onnx", out_dir / f"{model.stem}.{name}.json"
    r = timed_cli(["prune", str(model), str(out), *flags, "--input-shape", shape_flag(input_shapes(cfg)),
                   "--no-latency", "-q", "--report", str(rep)])
    case = dict(case=name, flags=flags, load_avg=load_avg(), **r)
    if r["rc"] == 0:
        report = json.loads(rep.read_text())
        v = report["verification"]
        case.update(verified=v["passed"], max_abs_diff=v["max_abs_diff"], tolerance=v["tolerance"],
                    params=[report["baseline"]["params"], report["pruned"]["params"]],
                    file_bytes=[report["baseline"]["file_bytes"], report["pruned"]["file_bytes"]],
                    macs=[report["baseline"]["macs"], report["pruned"]["macs"]],
                    groups_pruned={k: sum(1 for g in report["groups"] if g["kind"] == k and g["kept"] < g["channels"])
                                   for k in ("channels", "heads", "embed")},
                    run=run_pruned(out, cfg))
    print(json.dumps({k: case[k] for k in case if k != "stderr_tail"}), file=sys.stderr)
    return case


def dequantized_model(model):
    """Every MatMulNBits -> MatMul with its dequantized [K, N] weight (the same function, in float)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from onnxprune.analysis.graph import build_view
    from onnxprune.analysis.rules.genai import dequantize_nbits

    view = build_view(model, {})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, inits = [], []
    for n in out.graph.node:
        if n.op_type != "MatMulNBits":
            nodes.append(n)
            continue
        w = n.input[1] + "_dequantized"
        inits.append(numpy_helper.from_array(dequantize_nbits(n, view).astype(np.float32), w))
        nodes.append(helper.make_node("MatMul", [n.input[0], w], list(n.output), name=n.name + "_dq"))
    used = {i for n in nodes for i in n.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + inits)
    return out


def requantize_case(model_path: Path, cfg, ratio: float) -> dict:
    """Neuron-level MLP pruning by dequantize -> slice -> re-quantize (block 32), against the oracle."""
    import onnx

    import genai_decoder as gd
    from onnxprune import analyze_model, prune, save
    from onnxprune.analysis.graph import random_feeds
    from onnxprune.verify.oracle import compare_models, masked_model

    shapes = input_shapes(cfg)
    fp = dequantized_model(onnx.load(str(model_path)))
    fp_path = FULL / f"{model_path.stem}.dequantized.onnx"  # a file: large weights go to external data
    onnx.save_model(fp, str(fp_path), save_as_external_data=True, location=fp_path.name + ".data")
    t = time.perf_counter()
    res = prune(str(fp_path), ratio=ratio, input_shapes=shapes, latency=False)
    feeds = [random_feeds(res.analysis.view, seed=s) for s in range(3)]
    a = analyze_model(str(fp_path), input_shapes=shapes)  # the same groups, alive while we compare
    assert [g.size for g in a.groups] == [g.size for g in res.analysis.groups]
    ref = masked_model(a, res.kept)
    sliced = FULL / f"{model_path.stem}.dequantized.pruned.onnx"
    save(res.model, sliced)
    requant = gd.quantize_int4(onnx.load(str(sliced)))
    cmp = compare_models(ref, requant, feeds, rel_tol=1e-4)
    control = compare_models(onnx.load(str(fp_path)), gd.quantize_int4(onnx.load(str(fp_path))), feeds, rel_tol=1e-4)
    neurons = [(g.channels, g.kept) for g in res.report.groups if g.kind == "channels" and g.kept < g.channels]
    out = dict(ratio=ratio, mlp_neurons=neurons[:1], sliced_float_verified=res.report.verification["passed"],
               requantized_max_abs_diff=cmp.max_abs_diff, tolerance=cmp.tolerance,
               requantized_over_tolerance=round(cmp.max_abs_diff / cmp.tolerance, 1),
               control_unpruned_requantized_max_abs_diff=control.max_abs_diff,
               control_over_tolerance=round(control.max_abs_diff / control.tolerance, 2),
               seconds=round(time.perf_counter() - t, 1), load_avg=load_avg())
    print(json.dumps(out), file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="100m", help="models/genai_decoder.py config (default 100m)")
    ap.add_argument("--cases", default="ratio,heads,requantize", help="comma-separated: ratio, heads, requantize")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    import genai_decoder as gd

    cfg = gd.CONFIGS[args.config]
    model = ensure_model(args.config)
    FULL.mkdir(parents=True, exist_ok=True)
    cases = args.cases.split(",")
    result = dict(model=f"models/genai_decoder.py --config {args.config} --int4", file_bytes=model.stat().st_size,
                  input_shapes="input_ids 1x4, attention_mask 1x7, past 1xKVx3xD", cases=[])
    if "ratio" in cases:
        result["cases"].append(prune_case(model, cfg, "ratio0.3", ["--ratio", "0.3"], FULL))
    if "heads" in cases:
        result["cases"].append(prune_case(model, cfg, "ratio0.3-heads", ["--ratio", "0.3", "--heads"], FULL))
    if "requantize" in cases:
        tiny = ROOT / "models" / "onnx" / "genai_tiny.int4.onnx"
        result["requantize"] = [dict(model="genai_tiny.int4", **requantize_case(tiny, gd.CONFIGS["tiny"], 0.3))]
        if args.config != "tiny":
            result["requantize"].append(dict(model=model.name, **requantize_case(model, cfg, 0.3)))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
