#!/usr/bin/env python
"""Train the four nets of nets.py on scikit-learn's `load_digits` and export them to ONNX.

    pip install torch==2.13.0 scikit-learn onnxscript
    python models/digits/train.py                 # all four models
    python models/digits/train.py resnet vit      # a subset (manifest entries of others are kept)
    python models/digits/train.py --export-only   # re-export from the saved <name>.pt

Data: the 1,797 real 8x8 digits, scaled to [0, 1] (/16), upsampled to 1x32x32 (bilinear,
align_corners=False), normalized with the fixed MEAN / STD below (computed once on the train
split). Fixed stratified split (random_state=0): train 1077 / calib 270 / test 450 (60/15/25%).
`load_splits()` rebuilds all three splits exactly; data.npz holds calib and test.

Training is seeded and deterministic on CPU (torch.use_deterministic_algorithms, 2 threads):
AdamW, linear warm-up + cosine decay, label smoothing 0.1, light random-affine augmentation
(rotation, scale, translation) on the train split only.

Outputs, next to this file, per model <name>:
    <name>.pt            state_dict (load with nets.build(name).load_state_dict(...))
    <name>.ts.onnx       torch.onnx.export(dynamo=False), opset 17, BatchNormalization kept
    <name>.dynamo.onnx   torch.onnx.export(dynamo=True),  opset 18, BatchNormalization kept
and data.npz (calib_x, calib_y, test_x, test_y) and manifest.json.
Both ONNX files: input "input" [batch, 1, 32, 32] (symbolic batch), output "logits" [batch, 10];
checked with onnx.checker and against torch with onnxruntime on the whole test split.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Idle OpenMP threads sleep instead of spinning: much less slowdown on a shared, busy 2-core box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nets  # noqa: E402

MEAN, STD = 0.3062, 0.3238  # of the [0,1]-scaled, upsampled train split
SPLIT_SEED = 0
INPUT_NAME, OUTPUT_NAME = "input", "logits"
TS_OPSET = 17
DYNAMO_OPSET = 18  # the dynamo exporter's minimum supported opset

# per-model hyper-parameters (epochs sized to stay well under 2 minutes on 2 CPU cores)
HPARAMS = {
    "resnet": dict(epochs=20, lr=3e-3, wd=5e-4, batch=64),
    "mobilenetv2": dict(epochs=30, lr=3e-3, wd=5e-4, batch=64),
    "convnext": dict(epochs=30, lr=2e-3, wd=0.05, batch=64),
    "vit": dict(epochs=40, lr=1e-3, wd=0.05, batch=64),
}


# ------------------------------------------------------------------------------------- data
def _raw():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x = F.interpolate(x, size=(nets.IMAGE_SIZE, nets.IMAGE_SIZE), mode="bilinear",
                      align_corners=False).clamp_(0.0, 1.0)
    return x, torch.from_numpy(d.target.astype(np.int64))


def split_indices(y: np.ndarray):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.25, stratify=y, random_state=SPLIT_SEED)
    train, calib = train_test_split(rest, test_size=0.2, stratify=y[rest], random_state=SPLIT_SEED)
    return train, calib, test


def normalize(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - MEAN) / STD


def load_splits(normalized: bool = True):
    """{'train'|'calib'|'test': (x float32 N,1,32,32, y int64 N)}; x normalized unless asked."""
    x, y = _raw()
    if normalized:
        x = normalize(x)
    tr, ca, te = split_indices(y.numpy())
    return {k: (x[i].contiguous(), y[i].contiguous()) for k, i in
            (("train", tr), ("calib", ca), ("test", te))}


def augment(x01: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random affine on [0,1] images: rotation +-12 deg, scale 0.9-1.1, shift +-3 px."""
    n = x01.shape[0]
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12)
    sc = 1 + (torch.rand(n, generator=g) * 2 - 1) * 0.1
    sh = (torch.rand(n, 2, generator=g) * 2 - 1) * (3 / 16)  # normalized coords: 16 px = 1.0
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, sh[:, 0]], 1),
                         torch.stack([sin, cos, sh[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------------- training
def set_determinism(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


@torch.no_grad()
def accuracy(model, x, y, batch=256) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return (pred == y).float().mean().item()


def train(name: str, data, seed: int = 0):
    hp = HPARAMS[name]
    set_determinism(seed)
    model = nets.build(name)
    (xtr01, ytr) = data["train01"]
    xte, yte = data["test"]
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n
             and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n
                                                               and "cls_token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp["wd"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"])
    steps_per_epoch = math.ceil(len(xtr01) / hp["batch"])
    total = hp["epochs"] * steps_per_epoch
    warm = steps_per_epoch * 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    epoch_s = []
    for ep in range(hp["epochs"]):
        te = time.perf_counter()
        model.train()
        perm = torch.randperm(len(xtr01), generator=g)
        tot_loss = 0.0
        for i in range(0, len(perm), hp["batch"]):
            b = perm[i:i + hp["batch"]]
            if len(b) < 2:  # BatchNorm needs > 1 sample
                continue
            xb = normalize(augment(xtr01[b], g))
            loss = F.cross_entropy(model(xb), ytr[b], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(b)
        epoch_s.append(time.perf_counter() - te)
        if ep % 5 == 4 or ep == hp["epochs"] - 1:
            print(f"  [{name}] epoch {ep + 1:3d}/{hp['epochs']}  loss {tot_loss / len(perm):.4f}  "
                  f"test acc {accuracy(model, xte, yte):.4f}  ({time.perf_counter() - t0:.1f}s)",
                  flush=True)
    train_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    model.eval()
    return model, {"train_seconds": round(train_s, 1), "train_cpu_seconds": round(cpu_s, 1),
                   "epoch_seconds_min": round(min(epoch_s), 2),
                   "epoch_seconds_median": round(float(np.median(epoch_s)), 2)}


# ----------------------------------------------------------------------------------- export
@contextlib.contextmanager
def keep_batchnorm():
    """Drop onnxscript's Conv/Gemm + BatchNormalization fusion rules while optimizing.

    The dynamo exporter's default optimization pass (onnxscript.optimizer) folds eval-mode BN
    into the preceding Conv; we want the BatchNormalization nodes in the graph (BN-based pruning
    criteria), as in the TorchScript export.
    """
    import onnxscript.rewriter as rw
    from onnxscript.rewriter.rules.common import _fuse_batchnorm

    saved = rw._DEFAULT_REWRITE_RULES
    drop = {id(r) for r in _fuse_batchnorm.rules.rules}
    rw._DEFAULT_REWRITE_RULES = tuple(r for r in saved if id(r) not in drop)
    try:
        yield
    finally:
        rw._DEFAULT_REWRITE_RULES = saved


def export_ts(model, x, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # TrainingMode.PRESERVE with the model in eval mode: BN is exported with eval semantics,
        # but the EVAL-only peephole pass that fuses BatchNormalization into Conv is skipped.
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=TS_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)


def export_dynamo(model, x, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=DYNAMO_OPSET,
                                 input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 dynamic_shapes=({0: torch.export.Dim("batch")},),
                                 optimize=False, verbose=False)
    with keep_batchnorm():
        prog.optimize()
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            p.unlink()
    prog.save(str(path), external_data=False)


def ort_predict(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: x})[0]


def verify(path: Path, model, n_bn: int, xte: torch.Tensor, yte: torch.Tensor) -> dict:
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    assert [i.name for i in inputs] == [INPUT_NAME], [i.name for i in inputs]
    dims = inputs[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value, f"{path.name}: batch dim not symbolic"
    assert [d.dim_value for d in dims[1:]] == [1, 32, 32]
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops.get("BatchNormalization", 0) == n_bn, (path.name, ops.get("BatchNormalization"), n_bn)
    assert not m.functions, f"{path.name}: has local functions"
    with torch.no_grad():
        ref = model(xte).numpy()
    out = ort_predict(path, xte.numpy())
    diff = float(np.abs(out - ref).max())
    assert diff < 1e-3, (path.name, diff)
    # also a batch of 1 and an odd batch size
    for bs in (1, 7):
        o = ort_predict(path, xte[:bs].numpy())
        assert np.abs(o - ref[:bs]).max() < 1e-3
    acc = float((out.argmax(1) == yte.numpy()).mean())
    return {"file": path.name, "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "nodes": len(m.graph.node), "batchnorm_nodes": ops.get("BatchNormalization", 0),
            "max_abs_diff_vs_torch": diff, "ort_test_acc": acc, "bytes": path.stat().st_size}


# ------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=list(nets.MODELS))
    ap.add_argument("--export-only", action="store_true", help="load <name>.pt instead of training")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    splits = load_splits(normalized=True)
    raw01 = load_splits(normalized=False)
    data = {"train01": raw01["train"], "test": splits["test"]}
    xca, yca = splits["calib"]
    xte, yte = splits["test"]
    np.savez_compressed(HERE / "data.npz", calib_x=xca.numpy(), calib_y=yca.numpy(),
                        test_x=xte.numpy(), test_y=yte.numpy())

    man_path = HERE / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {}
    manifest.setdefault("_data", {})
    manifest["_data"].update({
        "file": "data.npz", "source": "sklearn.datasets.load_digits",
        "preprocess": f"x/16 -> bilinear 8x8->32x32 (align_corners=False) -> (x-{MEAN})/{STD}",
        "mean": MEAN, "std": STD, "split": "stratified, random_state=0: train 60% / calib 15% / test 25%",
        "n_train": len(splits["train"][1]), "n_calib": len(yca), "n_test": len(yte)})
    for name in args.models:
        print(f"== {name}", flush=True)
        pt = HERE / f"{name}.pt"
        if args.export_only:
            model = nets.build(name)
            model.load_state_dict(torch.load(pt, weights_only=True))
            model.eval()
            timing = manifest.get(name, {}).get("timing")
        else:
            model, timing = train(name, data, seed=args.seed)
            torch.save(model.state_dict(), pt)
        torch_acc = accuracy(model, xte, yte)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        entry = {"torch_test_acc": torch_acc, "timing": timing, "weights": pt.name,
                 "params": sum(p.numel() for p in model.parameters()),
                 "input_name": INPUT_NAME, "input_shape": ["batch", 1, 32, 32],
                 "output_name": OUTPUT_NAME, "hparams": HPARAMS[name], "seed": args.seed,
                 "onnx": {}}
        example = xte[:2]
        for kind, fn in (("ts", export_ts), ("dynamo", export_dynamo)):
            path = HERE / f"{name}.{kind}.onnx"
            t0 = time.perf_counter()
            fn(model, example, path)
            entry["onnx"][kind] = verify(path, model, n_bn, xte, yte)
            entry["onnx"][kind]["export_seconds"] = round(time.perf_counter() - t0, 2)
        entry["test_acc"] = entry["onnx"]["ts"]["ort_test_acc"]
        tr = (f"{timing['train_seconds']}s wall / {timing['train_cpu_seconds']}s cpu, "
              f"epoch min {timing['epoch_seconds_min']}s" if timing else "n/a")
        print(f"  [{name}] torch acc {torch_acc:.4f}  ORT ts {entry['onnx']['ts']['ort_test_acc']:.4f}  "
              f"dynamo {entry['onnx']['dynamo']['ort_test_acc']:.4f}  train {tr}  "
              f"max|diff| ts {entry['onnx']['ts']['max_abs_diff_vs_torch']:.1e} "
              f"dynamo {entry['onnx']['dynamo']['max_abs_diff_vs_torch']:.1e}", flush=True)
        manifest[name] = entry
    man_path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
