"""Read and check ONNX models: external data, validation, custom ops, and the fixes ONNX Runtime
needs on legal ONNX (sanitized); which paths are the input's files (never to be overwritten)."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from onnxprune.errors import OnnxPruneError, first_line
from onnxprune.model.external import (DataFile, has_external, light_model, model_tensors, needs_spill,
                                      reference_external, spill_large)
from onnxprune.model.runtime import SessionPurpose, ort_session

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
# how validate_model asks ONNX Runtime whether it loads a model the checker objects to: as written, quietly
LOAD_CHECK = SessionPurpose(optimize=False, log_severity=4)


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file; every failure becomes one clear line. Its external data stays on disk (the
    tensors refer to the files by absolute path, see model/external.py); a model without external
    data but over LARGE_MODEL_BYTES has its large tensors moved to a scratch data file."""
    p = Path(path)
    if not p.exists():
        raise OnnxPruneError(f"input file not found: {p}")
    if p.is_dir():
        raise OnnxPruneError(f"input path is a directory, not an ONNX file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise OnnxPruneError(f"{p} is not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'parse error'})") from None
    if not model.graph.node and not model.graph.output:
        raise OnnxPruneError(f"{p} is not an ONNX model (empty or not a ModelProto)")
    _load_external(model, p.parent)
    model = sanitized(model)
    if needs_spill(model):
        data = DataFile()
        spill_large(model, data)
        data.close()
        compact = onnx.ModelProto()  # protobuf keeps cleared bytes in the message's arena until it goes
        compact.CopyFrom(model)
        return compact
    return model


def _load_external(model: onnx.ModelProto, base: Path) -> None:
    missing = []
    for t in all_tensors(model):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is None or not (base / loc).exists():
                missing.append(loc or "?")
    if missing:
        raise OnnxPruneError(
            f"external data file(s) missing next to the model: {', '.join(sorted(set(missing)))} (expected in {base})")
    reference_external(model, base)


def all_tensors(model: onnx.ModelProto):
    """The main graph's initializers and Constant-like tensor attributes (those that may hold external data)."""
    return model_tensors(model)


def validate_model(model: onnx.ModelProto, name: str = "model", full: bool = False,
                   path: str | os.PathLike | None = None) -> str | None:
    """Raise if the model is broken; return a note if only the (strict) checker objects but ONNX
    Runtime loads it, as exporters in the wild often leave e.g. output shapes out. `full` adds the
    checker's type and shape inference (as slow as the plain check on large models). A model with
    external data is checked on its file `path` (the checker reads no weights then), or without
    its external tensors' bytes where it has no file."""
    try:
        if has_external(model):
            onnx.checker.check_model(str(path) if path else light_model(model)[0], full_check=full)
        else:
            onnx.checker.check_model(model, full_check=full)
        return None
    except Exception as e:
        first = first_line(e)
    if not custom_ops(model):
        try:
            ort_session(model, LOAD_CHECK)
            return f"the ONNX checker objects ({first}) but ONNX Runtime loads the model"
        except Exception as e:
            # ONNX Runtime's reason is usually the precise one (the checker stops at its first complaint)
            raise OnnxPruneError(f"{name} is not a valid model: ONNX Runtime cannot load it ({first_line(e)}); "
                                 f"the ONNX checker says {first}") from None
    raise OnnxPruneError(f"{name} is not a valid model: the ONNX checker says {first}")


def custom_ops(model: onnx.ModelProto) -> list[str]:
    # a call of a model-local function is not a custom op: ONNX Runtime runs its body
    local = {(f.domain, f.name) for f in model.functions}
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node
                   if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local})


def opset_version(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 1


def sanitized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, or a fixed copy where it has legal ONNX that ONNX Runtime mishandles: trailing
    empty optional outputs (BatchNormalization(..., ["y", "", ""]) crashes ORT) and duplicate node
    names (ORT refuses the model). Neither is part of the model's interface."""
    if not _needs_sanitizing(model.graph):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    sanitize_graph(m.graph, set())
    return m


def subgraphs(g: onnx.GraphProto):
    """The graphs held by the attributes of `g`'s nodes (If branches, Loop/Scan bodies), one level down."""
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield a.g
            elif a.type == onnx.AttributeProto.GRAPHS:
                yield from a.graphs


def _needs_sanitizing(g: onnx.GraphProto, seen: set | None = None) -> bool:
    seen = set() if seen is None else seen
    for n in g.node:
        if n.output and not n.output[-1]:
            return True
        if n.name:
            if n.name in seen:
                return True
            seen.add(n.name)
    return any(_needs_sanitizing(sg, seen) for sg in subgraphs(g))


def sanitize_graph(g: onnx.GraphProto, names: set[str]) -> None:
    """In place; `names` holds node names already used (across subgraphs too, so renames stay unique)."""
    dups = []
    for n in g.node:
        while n.output and not n.output[-1]:
            n.output.pop()
        if n.name:
            if n.name in names:
                dups.append(n)
            else:
                names.add(n.name)
    for n in dups:  # later duplicates get a suffix; the first keeps its name
        k = 1
        while f"{n.name}_{k}" in names:
            k += 1
        n.name = f"{n.name}_{k}"
        names.add(n.name)
    for sg in subgraphs(g):
        sanitize_graph(sg, names)


def input_files(input_path: str | os.PathLike) -> list[Path]:
    """The model file and every external-data file it references (all must stay untouched)."""
    src = Path(input_path)
    files = [src]
    try:
        m = onnx.load(str(src), load_external_data=False)
    except Exception:
        return files
    for t in all_tensors(m):
        for e in t.external_data:
            if e.key == "location":
                f = src.parent / e.value
                if f not in files:
                    files.append(f)
    return files


def check_not_input_file(path: str | os.PathLike, input_path: str | os.PathLike, what: str) -> None:
    """Refuse to write `path` when it is the input model or one of its external-data files."""
    for f in input_files(input_path):
        if same_path(Path(path), f):
            kind = "the input model" if f == Path(input_path) else f"the input's external data file {f.name}"
            raise OnnxPruneError(f"{what} is {kind}: refusing to overwrite it")


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """Fail before any work when a side output (report, JSON) cannot be written where asked."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise OnnxPruneError(f"{what} is a directory: {p}")
    if not p.resolve().parent.is_dir():
        raise OnnxPruneError(f"{what} folder does not exist: {p.resolve().parent}")


def same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through links); False where either cannot be resolved."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
