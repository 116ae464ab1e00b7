#!/usr/bin/env python
"""Export the fixture models to ONNX with both torch exporters and verify them.

Examples:
    python models/export.py --all --small --out models/onnx        # committed fixtures + manifest
    python models/export.py resnet50 --full --out models/onnx/full  # full size, on demand
    python models/export.py --list

Every model is exported twice:
    <out>/<name>.dynamo.onnx   torch.onnx.export(..., dynamo=True)   (torch.export based)
    <out>/<name>.ts.onnx       torch.onnx.export(..., dynamo=False)  (TorchScript based)
Each file is checked with onnx.checker (full_check) and run in onnxruntime on a random input
with a batch size (and sequence length) different from the one used for export; outputs are
compared to torch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from arch import REGISTRY, InputSpec, Spec  # noqa: E402

OPSET = 18
EXPORTERS = ("dynamo", "ts")
# concrete values substituted for symbolic dims in the manifest and for the ORT check
MANIFEST_DIMS = {"batch": 1, "seq": 16}
CHECK_DIMS = {"batch": 3, "seq": 11}

_NP_DTYPE = {torch.float32: "float32", torch.int64: "int64", torch.int32: "int32", torch.bool: "bool"}


def make_inputs(specs: list[InputSpec], dims: dict[str, int] | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        shape = list(s.shape)
        for ax, dn in s.dynamic.items():
            if dims and dn in dims:
                shape[ax] = dims[dn]
        if s.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=g, dtype=s.dtype))
        elif s.name == "attention_mask":
            m = torch.ones(shape, dtype=s.dtype)
            if shape[-1] > 2:  # pad the tail of every other sequence
                m[::2, -(shape[-1] // 3):] = 0
            out.append(m)
        else:
            out.append(torch.randint(0, s.high or 2, shape, generator=g, dtype=s.dtype))
    return out


@contextlib.contextmanager
def keep_batchnorm():
    """Drop onnxscript's Conv/ConvTranspose/Gemm+BatchNormalization fusion rules while optimizing.

    The dynamo exporter's default optimizer (onnxscript.optimizer) folds BN into the preceding
    Conv/Gemm; the fixtures want the BN nodes to stay so BN-based pruning criteria can be tested.
    """
    import onnxscript.rewriter as rw
    from onnxscript.rewriter.rules.common import _fuse_batchnorm

    saved = rw._DEFAULT_REWRITE_RULES
    drop = set(id(r) for r in _fuse_batchnorm.rules.rules)
    rw._DEFAULT_REWRITE_RULES = tuple(r for r in saved if id(r) not in drop)
    try:
        yield
    finally:
        rw._DEFAULT_REWRITE_RULES = saved


def export_dynamo(model, args, specs, path: Path, external_data=False, fold_bn=False):
    dims: dict[str, torch.export.Dim] = {}
    dyn = []
    for s in specs:
        d = {}
        for ax, dn in s.dynamic.items():
            if dn not in dims:
                dims[dn] = torch.export.Dim(dn, min=1, max=s.max[dn]) if dn in s.max else torch.export.Dim(dn)
            d[ax] = dims[dn]
        dyn.append(d)
    prog = torch.onnx.export(model, tuple(args), dynamo=True, opset_version=OPSET,
                             input_names=[s.name for s in specs], output_names=["output"],
                             dynamic_shapes=tuple(dyn), optimize=False)
    if fold_bn:
        prog.optimize()
    else:
        with keep_batchnorm():
            prog.optimize()
    if path.exists():
        path.unlink()
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    prog.save(str(path), external_data=external_data)


def export_ts(model, args, specs, path: Path):
    dyn = {s.name: dict(s.dynamic) for s in specs}
    dyn["output"] = {0: "batch"}  # every fixture's output is (batch, ...) with static trailing dims
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # TrainingMode.PRESERVE (model is in eval mode) skips the eval peephole pass that would
        # fuse BatchNormalization into Conv; BN nodes stay in the graph with eval semantics.
        torch.onnx.export(model, tuple(args), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[s.name for s in specs], output_names=["output"],
                          dynamic_axes=dyn, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=True)


def graph_inputs(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in m.graph.initializer}
    return [i for i in m.graph.input if i.name not in inits]


def verify(path: Path, model, spec: Spec, full: bool) -> dict:
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    specs = spec.inputs(full)
    names = [i.name for i in graph_inputs(m)]
    assert names == [s.name for s in specs], (names, [s.name for s in specs])
    for inp, s in zip(graph_inputs(m), specs):
        for ax in s.dynamic:
            assert inp.type.tensor_type.shape.dim[ax].dim_param, f"{path.name}: {inp.name} dim {ax} not symbolic"
    out_dims = m.graph.output[0].type.tensor_type.shape.dim
    # trailing dims are static, except where the TorchScript exporter cannot infer them (YOLO's
    # view(n, no, -1) with a dynamic batch): a real export artifact the tool has to take as it is
    assert out_dims[0].dim_param, f"{path.name}: output dims {out_dims}"
    assert spec.name == "yolo" or all(d.dim_value for d in out_dims[1:]), f"{path.name}: output dims {out_dims}"
    x = make_inputs(specs, CHECK_DIMS, seed=1)
    with torch.no_grad():
        ref = model(*x).numpy()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {s.name: t.numpy() for s, t in zip(specs, x)})[0]
    assert got.shape == ref.shape, (got.shape, ref.shape)
    diff = float(np.abs(got - ref).max())
    tol = 1e-3 * max(1.0, float(np.abs(ref).max()))
    assert diff <= tol, f"{path.name}: max abs diff {diff} > {tol}"
    ops = Counter(n.op_type for n in m.graph.node)
    # input sensitivity: spread of the output across the batch relative to its magnitude
    sens = float(ref.std(0).mean() / (np.abs(ref).mean() + 1e-12))
    assert sens > 1e-2, f"{path.name}: output barely depends on the input (sensitivity {sens:.2e})"
    return {"diff": diff, "ops": ops, "nodes": len(m.graph.node), "sens": sens}


def manifest_entry(path: Path, spec: Spec, exporter: str, name: str) -> dict:
    m = onnx.load(str(path), load_external_data=False)
    shapes, dtypes = {}, {}
    for inp in graph_inputs(m):
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            if d.dim_param:
                dims.append(MANIFEST_DIMS[d.dim_param] if d.dim_param in MANIFEST_DIMS else _dim_value_for(d.dim_param, spec, inp.name))
            else:
                dims.append(d.dim_value)
        shapes[inp.name] = dims
        dtypes[inp.name] = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
    return {"name": name, "file": path.resolve().relative_to(REPO).as_posix(), "arch": spec.arch,
            "exporter": exporter, "input_shapes": shapes, "input_dtypes": dtypes, "kind": spec.kind}


def _dim_value_for(dim_param: str, spec: Spec, input_name: str) -> int:
    # exporters may rename symbolic dims (e.g. dynamo: "batch" stays, TS: our names); fall back by position
    s = next(s for s in spec.small_inputs if s.name == input_name)
    for ax, dn in s.dynamic.items():
        if dn == dim_param:
            return MANIFEST_DIMS[dn]
    raise KeyError(f"unknown symbolic dim {dim_param!r} on {input_name}")


def run_one(spec: Spec, exporter: str, out: Path, full: bool, suffix: str = "", **kw) -> tuple[Path, dict]:
    model = spec.build(full)
    specs = spec.inputs(full)
    args = make_inputs(specs, seed=0)
    path = out / f"{spec.name}{suffix}.{exporter}.onnx"
    t0 = time.time()
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        if exporter == "dynamo":
            export_dynamo(model, args, specs, path, **kw)
        else:
            export_ts(model, args, specs, path)
    dt = time.time() - t0
    info = verify(path, model, spec, full)
    size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        size += data.stat().st_size
    ops = info["ops"]
    keyops = ", ".join(f"{k}:{ops[k]}" for k in sorted(ops, key=lambda k: -ops[k])[:8])
    print(f"{path.name:40s} {size / 1e6:6.2f} MB  nodes={info['nodes']:4d} BN={ops.get('BatchNormalization', 0):3d} "
          f"maxdiff={info['diff']:.1e} sens={info['sens']:.2f} {dt:5.1f}s  [{keyops}]", flush=True)
    return path, info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="models to export (see --list)")
    p.add_argument("--all", action="store_true", help="export every registered model")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="small committed fixtures (default)")
    size.add_argument("--full", action="store_true", help="full-size models")
    p.add_argument("--out", type=Path, default=None, help="output dir (default models/onnx or models/onnx/full)")
    p.add_argument("--exporter", choices=("dynamo", "ts", "both"), default="both")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest to update (default: models/fixtures.json for --small, none for --full)")
    p.add_argument("--no-manifest", action="store_true")
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)

    if a.list:
        for n, s in REGISTRY.items():
            print(f"{n:16s} {s.kind:12s} {s.arch}")
        return 0
    names = list(REGISTRY) if a.all else a.names
    if not names:
        p.error("give model names or --all")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        p.error(f"unknown models {unknown}; known: {list(REGISTRY)}")
    full = a.full
    out = a.out or (HERE / "onnx" / "full" if full else HERE / "onnx")
    out.mkdir(parents=True, exist_ok=True)
    manifest = None if (a.no_manifest or (full and a.manifest is None)) else (a.manifest or HERE / "fixtures.json")
    exporters = EXPORTERS if a.exporter == "both" else (a.exporter,)

    entries = []
    for n in names:
        spec = REGISTRY[n]
        for e in exporters:
            path, _ = run_one(spec, e, out, full)
            entries.append(manifest_entry(path, spec, e, f"{n}.{e}"))
        if n == "resnet18" and not full and "dynamo" in exporters:
            # extra fixtures: external-data save path, and the dynamo exporter's default BN folding
            path, _ = run_one(spec, "dynamo", out, full, suffix="_extdata", external_data=True)
            entries.append(manifest_entry(path, spec, "dynamo", "resnet18_extdata.dynamo"))
            path, _ = run_one(spec, "dynamo", out, full, suffix="_bnfold", fold_bn=True)
            entries.append(manifest_entry(path, spec, "dynamo", "resnet18_bnfold.dynamo"))

    if manifest is not None:
        old = json.loads(manifest.read_text()) if manifest.exists() else []
        new_names = {e["name"] for e in entries}
        merged = [e for e in old if e["name"] not in new_names and (REPO / e["file"]).exists()] + entries
        order = {n: i for i, n in enumerate(REGISTRY)}
        merged.sort(key=lambda e: (order.get(e["name"].split(".")[0].split("_")[0], 99), e["name"]))
        manifest.write_text("[\n" + ",\n".join(" " + json.dumps(e) for e in merged) + "\n]\n")
        print(f"manifest: {manifest} ({len(merged)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
