"""Write models: atomically, with external data when protobuf cannot hold them, with the user's
model fields and interface (initializers listed as inputs) as the input had them."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from onnxprune.errors import OnnxPruneError
from onnxprune.model.load import all_tensors, check_not_input_file

PROTOBUF_LIMIT = 1_800_000_000  # bytes; larger models are written with external data


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None) -> None:
    """Write atomically: a temp file in the same folder, renamed into place, so a failure leaves nothing.

    Models over ~1.8 GB are written with external data (``<name>.data``) as protobuf cannot hold them.
    """
    p = Path(path)
    if input_path is not None:
        check_not_input_file(p, input_path, "output path")
        check_not_input_file(p.parent / (p.name + ".data"), input_path, "output's external data file")
    if p.exists() and p.is_dir():
        raise OnnxPruneError(f"output path is a directory: {p}")
    if not p.parent.exists():
        raise OnnxPruneError(f"output folder does not exist: {p.parent}")
    big = model.ByteSize() > PROTOBUF_LIMIT if _safe_bytesize(model) else True
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written model should be as readable as any file
    tmp_data = p.parent / f".{p.name}.data.tmp" if big else None
    try:
        if tmp_data is not None:
            _save_with_external_data(model, tmp, tmp_data, p.parent / (p.name + ".data"))
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, p)
    except BaseException:
        for f in (tmp, tmp_data):
            if f and os.path.exists(f):
                os.unlink(f)
        raise


def _save_with_external_data(model: onnx.ModelProto, tmp: str, tmp_data: Path, data: Path) -> None:
    """Write `model` to `tmp` with its tensors in `tmp_data`, renamed to `data` (the name the model records)."""
    onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=tmp_data.name, size_threshold=1024)
    # the location stored in the model must be the final name
    m2 = onnx.load(tmp, load_external_data=False)
    for t in all_tensors(m2):
        for e in t.external_data:
            if e.key == "location":
                e.value = data.name
    onnx.save_model(m2, tmp)
    os.replace(tmp_data, data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _safe_bytesize(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:
        return False


def copy_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """graphsurgeon drops some ModelProto fields; restore them so the output stays the user's model."""
    dst.ir_version = max(src.ir_version, 4) if src.ir_version else dst.ir_version
    dst.producer_name = src.producer_name
    dst.producer_version = src.producer_version
    dst.domain = src.domain
    dst.model_version = src.model_version
    dst.doc_string = src.doc_string
    dst.graph.name = src.graph.name
    dst.graph.doc_string = src.graph.doc_string
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    extra = [o for o in dst.opset_import if o.domain not in {s.domain for s in src.opset_import}]
    del dst.opset_import[:]
    dst.opset_import.extend(list(src.opset_import) + extra)  # + domains that inlined function bodies use
    if src.functions and not dst.functions:  # only functions still called (normalize inlines them)
        called = {(n.domain, n.op_type) for n in dst.graph.node}
        if any((f.domain, f.name) in called for f in src.functions):
            dst.functions.extend(src.functions)


def initializers_as_inputs(original: onnx.ModelProto, written: onnx.ModelProto) -> onnx.ModelProto:
    """Where the original listed initializers as graph inputs (torch keep_initializers_as_inputs=True,
    IR < 4), list the written model's surviving ones again, in the original order, with their new
    (pruned) shapes: normalize strips them for analysis, but they are part of the model's interface."""
    orig_inits = {t.name for t in original.graph.initializer}
    if not any(i.name in orig_inits for i in original.graph.input):
        return written
    inits = {t.name: t for t in written.graph.initializer}
    have = {i.name: i for i in written.graph.input}
    new = []
    for i in original.graph.input:
        if i.name in have:
            new.append(have.pop(i.name))
        elif i.name in orig_inits and i.name in inits:
            t = inits[i.name]
            new.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    new.extend(have.values())  # inputs the original did not have (none expected)
    m = onnx.ModelProto()
    m.CopyFrom(written)
    del m.graph.input[:]
    m.graph.input.extend(new)
    return m
