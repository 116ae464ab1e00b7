"""Write models: atomically, with external data when protobuf cannot hold them, with the user's
model fields and interface (initializers listed as inputs) as the input had them."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from onnxprune.errors import InternalError, OnnxPruneError, first_line
from onnxprune.model.external import has_external, write_model_streamed
from onnxprune.model.load import LOAD_CHECK, all_tensors, check_not_input_file
from onnxprune.model.runtime import ort_session

PROTOBUF_LIMIT = 1_800_000_000  # bytes; larger models are written with external data


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """Fail before any work when `path` cannot be written: a folder, a missing or unwritable folder.
    Probed by creating (and removing) a file next to it, as the real write will."""
    p = Path(path)
    if p.is_dir():
        raise OnnxPruneError(f"{what} is a directory: {p}")
    folder = p.resolve().parent
    if not folder.is_dir():
        raise OnnxPruneError(f"{what} folder does not exist: {folder}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=str(folder))
    except OSError as e:
        raise OnnxPruneError(f"{what} {p}: cannot write in {folder} ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(probe)


class StagedOutputs:
    """All-or-nothing outputs: every file is first written to a temp file in its final folder, and
    ``commit`` renames them all into place. Leaving the ``with`` block without a commit (an error, a
    signal) removes the temp files, so no output of a failed run is left behind."""

    def __init__(self):
        self._pairs: list[tuple[Path, Path]] = []  # (temp file, final path)
        self._folders: list[Path] = []

    def stage(self, final: str | os.PathLike) -> Path:
        """A fresh temp path for `final` (same folder and suffix: matplotlib picks the format by suffix)."""
        final = Path(final)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=str(final.parent))
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output should be as readable as any file
        self._pairs.append((Path(tmp), final))
        return Path(tmp)

    def stage_folder(self, final: str | os.PathLike) -> Path:
        """A fresh temp folder next to `final` (removed on commit or discard), for outputs written as
        several files that must keep their final names relative to each other."""
        final = Path(final)
        folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=str(final.parent)))
        self._folders.append(folder)
        return folder

    def adopt(self, tmp: str | os.PathLike, final: str | os.PathLike) -> None:
        """Register a temp file written elsewhere (a model's external data) to be renamed to `final`."""
        self._pairs.append((Path(tmp), Path(final)))

    def commit(self) -> None:
        for tmp, final in self._pairs:
            os.replace(tmp, final)
        self._pairs = []
        self._remove_folders()

    def discard(self) -> None:
        for tmp, _ in self._pairs:
            if tmp.exists():
                tmp.unlink()
        self._pairs = []
        self._remove_folders()

    def _remove_folders(self) -> None:
        for f in self._folders:
            shutil.rmtree(f, ignore_errors=True)
        self._folders = []

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def stage_model(model: onnx.ModelProto, path: str | os.PathLike, outputs: StagedOutputs, *,
                input_path: str | os.PathLike | None = None) -> Path:
    """Write `model` to a temp file of `outputs` (renamed to `path` on commit); returns the temp path.
    Models over ~1.8 GB are written with external data (``<name>.data``) as protobuf cannot hold them."""
    p = Path(path)
    if input_path is not None:
        check_not_input_file(p, input_path, "output path")
        check_not_input_file(p.parent / (p.name + ".data"), input_path, "output's external data file")
    if p.exists() and p.is_dir():
        raise OnnxPruneError(f"output path is a directory: {p}")
    if not p.parent.exists():
        raise OnnxPruneError(f"output folder does not exist: {p.parent}")
    if has_external(model):
        return _stage_streamed(model, p, outputs)
    big = model.ByteSize() > PROTOBUF_LIMIT if _safe_bytesize(model) else True
    tmp = outputs.stage(p)
    if big:
        tmp_data = p.parent / f".{p.name}.data.tmp"
        outputs.adopt(tmp_data, p.parent / (p.name + ".data"))
        _save_with_external_data(model, str(tmp), tmp_data, p.parent / (p.name + ".data"))
    else:
        onnx.save_model(model, str(tmp))
    return tmp


def _stage_streamed(model: onnx.ModelProto, p: Path, outputs: StagedOutputs) -> Path:
    """A model whose weights are in data files (model/external.py): written into a temp folder next
    to `p` as ``<name>`` and ``<name>.data`` (streamed, one tensor at a time), checked there by
    onnx.checker on the path, and renamed into place with the other outputs."""
    if (p.parent / (p.name + ".data")).is_dir():
        raise OnnxPruneError(f"output's external data path is a directory: {p.parent / (p.name + '.data')}")
    folder = outputs.stage_folder(p)
    tmp, data = folder / p.name, folder / (p.name + ".data")
    write_model_streamed(model, tmp, data, data.name)
    try:
        onnx.checker.check_model(str(tmp))
    except Exception as e:  # noqa: BLE001 -- the checker's own types
        if not _runtime_op_only(e, tmp):
            raise InternalError(f"internal error: the written model fails the ONNX checker: {first_line(e)}") from None
    outputs.adopt(data, p.parent / data.name)
    outputs.adopt(tmp, p)
    return tmp


def _runtime_op_only(err: Exception, path: Path) -> bool:
    """The checker stops at an op it does not know that ONNX Runtime registers in the default domain
    (SimplifiedLayerNormalization in ORT GenAI decoders), and ONNX Runtime loads the written file."""
    if not first_line(err).startswith("No Op registered for"):
        return False
    try:
        ort_session(path, LOAD_CHECK)
        return True
    except Exception:  # noqa: BLE001 -- ORT's own types
        return False


def staged_bytes(tmp: str | os.PathLike) -> int:
    """Size of a staged model: its file, and its data file where it was written with one (_stage_streamed)."""
    tmp = Path(tmp)
    data = tmp.parent / (tmp.name + ".data")
    return os.path.getsize(tmp) + (os.path.getsize(data) if data.exists() else 0)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None) -> None:
    """Write atomically: a temp file in the same folder, renamed into place, so a failure leaves nothing."""
    with StagedOutputs() as outputs:
        stage_model(model, path, outputs, input_path=input_path)
        outputs.commit()


def _save_with_external_data(model: onnx.ModelProto, tmp: str, tmp_data: Path, data: Path) -> None:
    """Write `model` to `tmp` with its tensors in `tmp_data` (renamed to `data`, the name the model
    records, when the outputs are committed)."""
    onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=tmp_data.name, size_threshold=1024)
    # the location stored in the model must be the final name
    m2 = onnx.load(tmp, load_external_data=False)
    for t in all_tensors(m2):
        for e in t.external_data:
            if e.key == "location":
                e.value = data.name
    onnx.save_model(m2, tmp)


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
