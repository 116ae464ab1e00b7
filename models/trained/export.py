#!/usr/bin/env python
"""Export the weights written by train.py to ONNX, verify, measure, and write manifest.json.

    python models/trained/export.py --weights DIR [vision] [textcls] [mlm] [--dynamo-mlm]
    python models/trained/export.py --weights DIR --measure-only       # latency/MACs again

Vision (per net <name>): <name>.ts.onnx (TorchScript exporter, opset 17, BN kept) and
<name>.dynamo.onnx (dynamo exporter, opset 18, BN kept): input "input" [batch, 1, S, S] -> "logits"
[batch, 10] (models/digits/train.py's exporters). Data: vision.load_splits(S) (no files).
Text classifier: textcls.ts.onnx / textcls.dynamo.onnx, "input_ids" [batch, 256] int64 ->
"logits" [batch, 10]; textcls_data.npz: calib_input_ids, calib_y, test_input_ids, test_y.
MLM encoder: minilm.ts.onnx (gitignored, ~45 MB): input_ids, attention_mask [batch, seq] int64 ->
last_hidden_state [batch, seq, 384], sentence_embedding [batch, 384].

Every file: onnx.checker (full), symbolic batch (and seq), ONNX Runtime vs torch (max |diff|), at
several batch sizes; accuracy from the ORT outputs. MACs / params: onnxprune's analytic counts at
batch 1. Latency: onnxprune.profiling.timing.measure_latencies, CPU, 2 threads, batch 1, median,
all the ts files of one family side by side; the machine's load average is recorded with it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import text  # noqa: E402
import train  # noqa: E402
import vision  # noqa: E402

MANIFEST = HERE / "manifest.json"
DATA_NOTE = ("models/digits splits (train 1077 / calib 270 / test 450), 8x8 -> {size}x{size} bilinear, "
             "(x - 0.3062) / 0.3238; calib/test: vision.load_eval({size}) from digits8_eval.npz (no sklearn), "
             "or `python models/trained/vision.py {name} OUT.npz` for --calib; train: vision.load_splits({size})")
TOL = 1e-3


def ort_run(path: Path, feed: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feed)


def check_graph(path: Path, inputs: list[str], fixed_dims: dict[str, list[int]], symbolic: dict[str, list[int]]) -> dict:
    """onnx.checker, input names, symbolic dims where asked, fixed dims elsewhere, no functions."""
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    got = [i for i in m.graph.input if i.name not in inits]
    assert [i.name for i in got] == inputs, (path.name, [i.name for i in got])
    for i in got:
        dims = i.type.tensor_type.shape.dim
        for a in symbolic.get(i.name, [0]):
            assert dims[a].dim_param and not dims[a].dim_value, f"{path.name}: {i.name} dim {a} not symbolic"
        if i.name in fixed_dims:
            assert [d.dim_value for d in dims[1:]] == fixed_dims[i.name], (path.name, i.name)
    assert not m.functions, f"{path.name}: has local functions"
    ops = Counter(n.op_type for n in m.graph.node)
    return {"file": path.name, "bytes": path.stat().st_size, "nodes": len(m.graph.node),
            "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "batchnorm_nodes": ops.get("BatchNormalization", 0)}


def analytic_costs(path: Path, shapes: dict) -> dict:
    from onnxprune.api import analyze_model
    from onnxprune.profiling.cost import total_macs, total_params

    a = analyze_model(str(path), input_shapes=shapes)
    return {"macs": total_macs(a.view), "params": total_params(a.view), "shapes": shapes}


def latencies(paths: list[Path], feeds: list[dict]) -> list[dict]:
    from onnxprune.profiling.timing import measure_latencies

    load = os.getloadavg()
    stats = measure_latencies([str(p) for p in paths], feeds, provider="cpu", threads=2,
                              min_time_s=3.0, max_repeats=400, time_budget_s=60.0)
    return [{"median_ms": round(s.median_ms, 3), "p10_ms": round(s.p10_ms, 3), "p90_ms": round(s.p90_ms, 3),
             "n": s.n, "threads": 2, "batch": 1, "provider": "cpu",
             "loadavg_1_5_15_before": [round(x, 2) for x in load]} for s in stats]


def export_pair(model, example, base: Path, ts_fn, dynamo_fn) -> dict[str, Path]:
    paths = {"ts": base.with_suffix(".ts.onnx"), "dynamo": base.with_suffix(".dynamo.onnx")}
    ts_fn(model, example, paths["ts"])
    dynamo_fn(model, example, paths["dynamo"])
    return paths


# ----------------------------------------------------------------------------------- vision
def export_vision(weights: Path, manifest: dict):
    dt = vision.digits_train
    saved = torch.load(weights / "vision.pt", weights_only=False)
    for name in vision.NAMES:
        if name not in saved:
            print(f"  [{name}] no weights in {weights / 'vision.pt'}: skipped", flush=True)
            continue
        entry = saved[name]
        size = entry["image_size"]
        model = vision.build(name)
        model.load_state_dict(entry["state_dict"])
        model.eval()
        splits = vision.load_splits(size)
        xte, yte = splits["test"]
        # the committed 8x8 file must give the benchmarks exactly these inputs
        assert np.array_equal(vision.load_eval(size)["test"][0], xte.numpy()), "digits8_eval.npz is stale"
        with torch.no_grad():
            ref = torch.cat([model(xte[i:i + 64]) for i in range(0, len(xte), 64)]).numpy()
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        rec = {"family": "digits-hr", "image_size": size, "input_name": "input",
               "input_shape": ["batch", 1, size, size], "output_name": "logits", "classes": 10,
               "torch_test_acc": float((ref.argmax(1) == yte.numpy()).mean()),
               "training": {**entry["metrics"], "hparams": entry["hparams"], "seed": entry["seed"]},
               "data": DATA_NOTE.format(size=size, name=name),
               "onnx": {}}
        for kind, path in export_pair(model, xte[:2], HERE / name, dt.export_ts, dt.export_dynamo).items():
            info = check_graph(path, ["input"], {"input": [1, size, size]}, {})
            assert info["batchnorm_nodes"] == n_bn, (path.name, info["batchnorm_nodes"], n_bn)
            out = ort_run(path, {"input": xte.numpy()})[0]
            for bs in (1, 7):
                assert np.abs(ort_run(path, {"input": xte[:bs].numpy()})[0] - ref[:bs]).max() < TOL
            info["max_abs_diff_vs_torch"] = float(np.abs(out - ref).max())
            assert info["max_abs_diff_vs_torch"] < TOL, (path.name, info["max_abs_diff_vs_torch"])
            info["ort_test_acc"] = float((out.argmax(1) == yte.numpy()).mean())
            rec["onnx"][kind] = info
        rec["test_acc"] = rec["onnx"]["ts"]["ort_test_acc"]
        rec.update(analytic_costs(HERE / f"{name}.ts.onnx", {"input": [1, 1, size, size]}))
        manifest[name] = rec
        print(f"  [{name}] {size}x{size} test acc {rec['test_acc']:.4f} params {rec['params']} "
              f"MACs {rec['macs'] / 1e6:.1f}M ts {rec['onnx']['ts']['bytes'] / 1e6:.2f} MB "
              f"max|diff| {rec['onnx']['ts']['max_abs_diff_vs_torch']:.1e}", flush=True)


def measure_vision(manifest: dict):
    names = [n for n in vision.NAMES if n in manifest]
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal((1, 1, manifest[n]["image_size"], manifest[n]["image_size"]),
                                           dtype=np.float32)} for n in names]
    for n, lat in zip(names, latencies([HERE / f"{n}.ts.onnx" for n in names], feeds)):
        manifest[n]["latency"] = lat
        print(f"  [{n}] latency median {lat['median_ms']:.2f} ms (p10 {lat['p10_ms']:.2f}, p90 {lat['p90_ms']:.2f})")


# ---------------------------------------------------------------------------------- textcls
def export_textcls_fn(dynamo: bool):
    def fn(model, example, path: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not dynamo:
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                                  input_names=["input_ids"], output_names=["logits"],
                                  dynamic_axes={"input_ids": {0: "batch"}, "logits": {0: "batch"}},
                                  training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
                return
            prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=18,
                                     input_names=["input_ids"], output_names=["logits"],
                                     dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=False)
        with vision.digits_train.keep_batchnorm():
            prog.optimize()
        prog.save(str(path), external_data=False)
    return fn


def export_textcls(weights: Path, manifest: dict):
    entry = torch.load(weights / "textcls.pt", weights_only=False)["textcls"]
    model = text.ByteCNN()
    model.load_state_dict(entry["state_dict"])
    model.eval()
    texts, labels, names = text.class_dataset(text.read_corpus())
    assert names == entry["classes"], (names, entry["classes"])
    _, ca, te = text.class_splits(labels)
    ids, _ = text.encode_batch(texts, text.CLS_LEN)
    np.savez_compressed(HERE / "textcls_data.npz", calib_input_ids=ids[ca], calib_y=labels[ca],
                        test_input_ids=ids[te], test_y=labels[te])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids[te])).numpy()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    rec = {"family": "stdlib-docstrings", "input_name": "input_ids", "input_shape": ["batch", text.CLS_LEN],
           "input_dtype": "int64", "output_name": "logits", "classes": names,
           "task": "top-level stdlib package of a docstring (UTF-8 bytes, id = byte + 4, [CLS] .. [SEP], 0-padded)",
           "torch_test_acc": float((ref.argmax(1) == labels[te]).mean()),
           "training": {**entry["metrics"], "hparams": entry["hparams"], "seed": entry["seed"]},
           "data": {"file": "textcls_data.npz", "n_calib": int(len(ca)), "n_test": int(len(te)),
                    "n_train": int(len(labels) - len(ca) - len(te)),
                    "split": "stratified, random_state=0: train 60% / calib 15% / test 25%"},
           "onnx": {}}
    example = torch.from_numpy(ids[te[:2]])
    paths = export_pair(model, example, HERE / "textcls", export_textcls_fn(False), export_textcls_fn(True))
    for kind, path in paths.items():
        info = check_graph(path, ["input_ids"], {"input_ids": [text.CLS_LEN]}, {})
        assert info["batchnorm_nodes"] == n_bn, (path.name, info["batchnorm_nodes"], n_bn)
        out = ort_run(path, {"input_ids": ids[te]})[0]
        info["max_abs_diff_vs_torch"] = float(np.abs(out - ref).max())
        assert info["max_abs_diff_vs_torch"] < TOL, (path.name, info["max_abs_diff_vs_torch"])
        assert np.abs(ort_run(path, {"input_ids": ids[te[:1]]})[0] - ref[:1]).max() < TOL
        info["ort_test_acc"] = float((out.argmax(1) == labels[te]).mean())
        rec["onnx"][kind] = info
    rec["test_acc"] = rec["onnx"]["ts"]["ort_test_acc"]
    rec.update(analytic_costs(paths["ts"], {"input_ids": [1, text.CLS_LEN]}))
    manifest["textcls"] = rec
    print(f"  [textcls] test acc {rec['test_acc']:.4f} params {rec['params']} MACs {rec['macs'] / 1e6:.1f}M "
          f"ts {rec['onnx']['ts']['bytes'] / 1e6:.2f} MB", flush=True)


# -------------------------------------------------------------------------------------- mlm
def load_mlm(weights: Path):
    shards = [torch.load(weights / f"mlm_{k}.pt", weights_only=False) for k in range(len(train.MLM_SHARDS))]
    enc = text.MiniLMEncoder()
    sd = {}
    for s in shards:
        sd.update(s["encoder_part"])
    enc.load_state_dict(sd)
    head = text.MLMHead(enc)
    head.load_state_dict(shards[0]["head"])
    return enc.eval(), head.eval(), shards[0]


def export_mlm(weights: Path, manifest: dict, dynamo: bool):
    enc, head, s0 = load_mlm(weights)
    wrapped = text.EncoderWithPooling(enc).eval()
    recs = text.read_corpus()
    val = [r["doc"] for r in recs if text.doc_split(r) == "val"]
    ids, mask = text.encode_batch(text.mlm_windows(val, s0["hparams"]["max_len"]), s0["hparams"]["max_len"])
    # the same masked-token accuracy as on the training machine, here in fp32 on CPU (first 512 windows)
    train.DEV = torch.device("cpu")
    acc, vloss = train.mlm_eval(enc, head, torch.from_numpy(ids[:512]))
    path = HERE / "minilm.ts.onnx"
    example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, example, str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state", "sentence_embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "last_hidden_state": {0: "batch", 1: "seq"}, "sentence_embedding": {0: "batch"}},
                          do_constant_folding=True)
    info = check_graph(path, ["input_ids", "attention_mask"], {}, {"input_ids": [0, 1], "attention_mask": [0, 1]})
    diffs = []
    for bs, seq in ((16, 128), (3, 37), (1, 9)):  # padded rows included: the mask matters
        i, m = ids[:bs, :seq].copy(), mask[:bs, :seq].copy()
        with torch.no_grad():
            h, e = wrapped(torch.from_numpy(i), torch.from_numpy(m))
        oh, oe = ort_run(path, {"input_ids": i, "attention_mask": m})
        diffs.append(max(float(np.abs(oh - h.numpy()).max()), float(np.abs(oe - e.numpy()).max())))
    info["max_abs_diff_vs_torch"] = max(diffs)
    assert info["max_abs_diff_vs_torch"] < TOL, info
    rec = {"family": "stdlib-docstrings MLM", "inputs": {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]},
           "input_dtype": "int64", "outputs": {"last_hidden_state": ["batch", "seq", 384], "sentence_embedding": ["batch", 384]},
           "shape": "6 layers, hidden 384, 12 heads, MLP 1536, post-LN, vocab 260 (bytes + 4 specials), 512 positions",
           "tokenizer": "text.encode_batch: UTF-8 bytes, id = byte + 4, [CLS]=1 .. [SEP]=2, [PAD]=0, [MASK]=3",
           "val_masked_acc_cpu_fp32_first512": round(acc, 4), "val_loss_cpu_fp32_first512": round(vloss, 4),
           "training": {**s0["metrics"], "hparams": s0["hparams"]}, "onnx": {"ts": info},
           "regenerate": "python models/trained/export.py --weights DIR mlm (DIR from train.py mlm)"}
    if dynamo:
        rec["onnx"]["dynamo"] = export_mlm_dynamo(wrapped, example, ids, mask)
    rec.update(analytic_costs(path, {"input_ids": [1, 128], "attention_mask": [1, 128]}))
    manifest["minilm"] = rec
    print(f"  [minilm] val masked acc {acc:.4f} params {rec['params']} MACs@128 {rec['macs'] / 1e6:.1f}M "
          f"{info['bytes'] / 1e6:.1f} MB max|diff| {info['max_abs_diff_vs_torch']:.1e}", flush=True)


def export_mlm_dynamo(wrapped, example, ids, mask) -> dict:
    path = HERE / "minilm.dynamo.onnx"
    b, s = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(wrapped, example, dynamo=True, opset_version=18,
                                 input_names=["input_ids", "attention_mask"],
                                 output_names=["last_hidden_state", "sentence_embedding"],
                                 dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    prog.save(str(path), external_data=False)
    info = check_graph(path, ["input_ids", "attention_mask"], {}, {"input_ids": [0, 1], "attention_mask": [0, 1]})
    i, m = ids[:3, :37].copy(), mask[:3, :37].copy()
    with torch.no_grad():
        h, _ = wrapped(torch.from_numpy(i), torch.from_numpy(m))
    info["max_abs_diff_vs_torch"] = float(np.abs(ort_run(path, {"input_ids": i, "attention_mask": m})[0] - h.numpy()).max())
    assert info["max_abs_diff_vs_torch"] < TOL, info
    return info


def measure_text(manifest: dict):
    todo = [(k, p) for k, p in (("textcls", HERE / "textcls.ts.onnx"), ("minilm", HERE / "minilm.ts.onnx"))
            if k in manifest and p.exists()]
    if not todo:
        return
    d = np.load(HERE / "textcls_data.npz") if (HERE / "textcls_data.npz").exists() else None
    feeds = []
    for k, _ in todo:
        if k == "textcls":
            feeds.append({"input_ids": d["test_input_ids"][:1]})
        else:
            ids, mask = text.encode_batch(["Return the number of items in a container." * 3], 128)
            feeds.append({"input_ids": ids, "attention_mask": mask})
    for (k, _), lat in zip(todo, latencies([p for _, p in todo], feeds)):
        lat["seq"] = 128 if k == "minilm" else text.CLS_LEN
        manifest[k]["latency"] = lat
        print(f"  [{k}] latency median {lat['median_ms']:.2f} ms (p10 {lat['p10_ms']:.2f}, p90 {lat['p90_ms']:.2f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["vision", "textcls", "mlm"])
    ap.add_argument("--weights", type=Path, default=HERE / "weights")
    ap.add_argument("--measure-only", action="store_true")
    ap.add_argument("--dynamo-mlm", action="store_true", help="also minilm.dynamo.onnx")
    args = ap.parse_args()
    torch.set_num_threads(2)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    if not args.measure_only:
        if "vision" in args.what:
            export_vision(args.weights, manifest)
        if "textcls" in args.what:
            export_textcls(args.weights, manifest)
        if "mlm" in args.what:
            export_mlm(args.weights, manifest, args.dynamo_mlm)
        MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    if "vision" in args.what:
        measure_vision(manifest)
    if "textcls" in args.what or "mlm" in args.what:
        measure_text(manifest)
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
