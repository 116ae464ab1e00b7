"""Models larger than memory, or than one protobuf (2 GB): weights that stay in external data files.

Convention inside the tool: a tensor with ``data_location == EXTERNAL`` whose ``location`` is an
*absolute* path refers to bytes in a file on disk (the input's ``.data`` file, or a scratch file this
run wrote). Such a model proto holds no weight bytes, so copying and serializing it is cheap. It is
never handed to ONNX Runtime or the checker as it is (both want locations relative to the model's
folder): :func:`on_disk` writes it into a scratch folder beside hard links to its data files, and
ORT (``InferenceSession(path)``) and ``onnx.checker.check_model(path)`` get that path.

- :func:`read_tensor`: a tensor's values; a read-only numpy memmap over the data file for an
  external tensor (slices are read, nothing is loaded whole).
- :class:`DataFile`: an append-only external data file; ``add`` writes one array and returns the
  tensor proto that refers to it (the rewrite streams sliced weights into one, tensor by tensor).
- :func:`write_model_streamed`: save with every large tensor in one ``.data`` file, copied from its
  source file range by range (never all in memory).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import OnnxPruneError

# A model with more initializer bytes than this (or with external data) runs in external-data mode.
LARGE_MODEL_BYTES = 256 * 2**20
# External tensors up to this many elements (shape values, biases of tiny layers) are read into the
# proto: shape inference and constant folding need their values, and they cost nothing.
INLINE_MAX_ELEMS = 1024
# Tensors written to an external file start at a multiple of this (ORT maps page-aligned data).
ALIGN = 4096
# Tensors of at least this many bytes are written to the external file (as onnx.save does).
EXTERNAL_MIN_BYTES = 1024
COPY_CHUNK = 64 * 2**20

_scratch: list[Path] = []


def scratch_dir() -> Path:
    """This process's scratch folder (removed at exit); under $ONNXPRUNE_TMP if set."""
    if not _scratch:
        base = os.environ.get("ONNXPRUNE_TMP") or None
        _scratch.append(Path(tempfile.mkdtemp(prefix="onnxprune-", dir=base)))
        atexit.register(shutil.rmtree, str(_scratch[0]), True)
    return _scratch[0]


def model_tensors(model: onnx.ModelProto):
    """The main graph's initializers and Constant-like tensor attributes (those that may hold external data)."""
    yield from model.graph.initializer
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def is_external(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL


def external_info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def has_external(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in model_tensors(model))


def tensor_elems(t: TensorProto) -> int:
    """Number of elements of a tensor, from its dims (no data read)."""
    n = 1
    for d in t.dims:
        n *= d
    return n


def np_dtype(t: TensorProto) -> np.dtype | None:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    except Exception:  # noqa: BLE001 -- types numpy lacks
        return None


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes of a tensor's data, without reading it: the external length, the raw bytes, or
    elements x item size."""
    if is_external(t):
        info = external_info(t)
        if "length" in info:
            return int(info["length"])
    if t.raw_data:
        return len(t.raw_data)
    dt = np_dtype(t)
    return tensor_elems(t) * (dt.itemsize if dt is not None else 4)


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in model_tensors(model))


def external_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in model_tensors(model) if is_external(t))


def model_file_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model as written: the proto and its external data."""
    return model.ByteSize() + external_bytes(model)


def needs_spill(model: onnx.ModelProto) -> bool:
    """Whether `model` holds its weights in memory and more of them than LARGE_MODEL_BYTES (it then
    runs in external-data mode, its large tensors moved to a scratch data file)."""
    return not has_external(model) and initializer_bytes(model) > LARGE_MODEL_BYTES


def light_model(m: onnx.ModelProto, max_elems: int = INLINE_MAX_ELEMS) -> tuple[onnx.ModelProto, list]:
    """A copy of `m` without its large initializers' data: each (and every external one) becomes a
    graph input of the same type and shape. Returns (light model, the moved initializers'
    TensorProtos, not copied)."""
    g = m.graph
    big = [t for t in g.initializer if tensor_elems(t) > max_elems or is_external(t)]
    light = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, f, getattr(m, f))
    light.opset_import.extend(m.opset_import)
    light.functions.extend(m.functions)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    big_names = {t.name for t in big}
    lg.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big
                    if t.name not in {i.name for i in g.input})
    lg.initializer.extend(t for t in g.initializer if t.name not in big_names)
    lg.sparse_initializer.extend(g.sparse_initializer)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    return light, big


def _span(t: TensorProto) -> tuple[Path, int, int]:
    info = external_info(t)
    return Path(info["location"]), int(info.get("offset", 0)), tensor_nbytes(t)


def read_tensor(t: TensorProto) -> np.ndarray:
    """The values of `t`: a read-only memmap over its data file for an external tensor (absolute
    location, see the module doc), else numpy_helper.to_array."""
    if not is_external(t):
        return numpy_helper.to_array(t)
    path, offset, length = _span(t)
    dt = np_dtype(t)
    shape = tuple(t.dims)
    if dt is None or dt.itemsize * tensor_elems(t) != length or t.data_type in (
            TensorProto.BFLOAT16, TensorProto.STRING) or dt.kind not in "fiub":
        return numpy_helper.to_array(_inlined(t))  # packed/odd types: read and decode in memory
    if length == 0:
        return np.zeros(shape, dt)
    return np.memmap(path, dtype=dt, mode="r", offset=offset, shape=shape)


def read_bytes(t: TensorProto) -> bytes:
    path, offset, length = _span(t)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OnnxPruneError(f"external data of '{t.name}' is cut short in {path.name} "
                             f"({len(data)} of {length} bytes)")
    return data


def _inlined(t: TensorProto) -> TensorProto:
    c = TensorProto()
    c.CopyFrom(t)
    c.raw_data = read_bytes(t)
    del c.external_data[:]
    c.data_location = TensorProto.DEFAULT
    return c


def inline(t: TensorProto) -> None:
    """Read an external tensor's bytes into the proto (in place)."""
    t.CopyFrom(_inlined(t))


def reference_external(model: onnx.ModelProto, base: Path) -> None:
    """In place: every external tensor's location becomes the absolute path of its file under
    `base` (checked to exist and to hold its bytes); tensors of at most INLINE_MAX_ELEMS elements are
    read into the proto."""
    base = Path(base).resolve()
    for t in model_tensors(model):
        if not is_external(t):
            continue
        info = external_info(t)
        path = base / info.get("location", "")
        end = int(info.get("offset", 0)) + tensor_nbytes(t)
        if not path.is_file() or path.stat().st_size < end:
            raise OnnxPruneError(f"cannot read external data: '{t.name}' needs bytes up to {end} of "
                                 f"{path.name}, which is {'shorter' if path.is_file() else 'missing'}")
        _set_location(t, str(path), int(info.get("offset", 0)), tensor_nbytes(t))
        if tensor_elems(t) <= INLINE_MAX_ELEMS:
            inline(t)


def _set_location(t: TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(f)


class DataFile:
    """An append-only external data file: ``add`` writes one array (page-aligned) and returns the
    tensor proto that refers to it by the file's absolute path."""

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            fd, path = tempfile.mkstemp(prefix="weights-", suffix=".data", dir=str(scratch_dir()))
            os.close(fd)
        self.path = Path(path).resolve()
        self._f = open(self.path, "wb")
        self.size = 0

    def _pad(self) -> int:
        pad = -self.size % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self.size += pad
        return self.size

    def add(self, arr: np.ndarray, name: str) -> TensorProto:
        arr = np.asarray(arr)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        t = numpy_helper.from_array(np.zeros((0,), arr.dtype), name)  # the type, without copying data
        del t.dims[:]
        t.dims.extend(arr.shape)
        offset = self._pad()
        self._f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
        self._f.flush()
        self.size += arr.nbytes
        _set_location(t, str(self.path), offset, arr.nbytes)
        return t

    def add_tensor(self, t: TensorProto) -> None:
        """Move a tensor's bytes (external elsewhere or in the proto) into this file; `t` is changed
        in place to refer to them."""
        offset = self._pad()
        if is_external(t):
            path, src_off, length = _span(t)
            _copy_range(path, src_off, length, self._f)
        else:
            data = t.raw_data if t.raw_data else numpy_helper.to_array(t).tobytes()
            length = len(data)
            self._f.write(data)
        self._f.flush()
        self.size += length
        _set_location(t, str(self.path), offset, length)

    def close(self) -> None:
        self._f.close()


def _copy_range(path: Path, offset: int, length: int, out) -> None:
    """Copy bytes [offset, offset + length) of `path` to the open file `out`, chunk by chunk (the
    page cache holds them, never this process's heap for more than a chunk)."""
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, COPY_CHUNK))
            if not chunk:
                raise OnnxPruneError(f"external data file {path.name} is cut short")
            out.write(chunk)
            left -= len(chunk)


def spill_large(model: onnx.ModelProto, data: DataFile) -> int:
    """In place: every in-memory tensor of more than INLINE_MAX_ELEMS elements moves to `data` (as
    in a loaded model with external data, only small tensors stay in the proto). Returns the count."""
    n = 0
    for t in model_tensors(model):
        if not is_external(t) and tensor_elems(t) > INLINE_MAX_ELEMS and t.data_type != TensorProto.STRING:
            data.add_tensor(t)
            n += 1
    return n


def externalized(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when it is small or already refers to its data files; else a copy whose large
    tensors are in a scratch data file (in-memory models over LARGE_MODEL_BYTES)."""
    if not needs_spill(model):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    data = DataFile()
    spill_large(m, data)
    data.close()
    return m


def portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model the API returns: where its external data is small (<= LARGE_MODEL_BYTES), a copy
    with every tensor read into the proto, a plain ModelProto as for a model without external data
    (onnx.checker, SerializeToString and ORT take it as it is). A large one is returned as it is:
    save it with onnxprune.save, which writes OUT and OUT.data."""
    if not has_external(model) or external_bytes(model) > LARGE_MODEL_BYTES:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in model_tensors(m):
        if is_external(t):
            inline(t)
    return m


def _link(src: Path, dst: Path) -> None:
    """Hard link (ORT then maps the very file); a symbolic link across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(src, dst)


@contextmanager
def on_disk(model: onnx.ModelProto):
    """A path to `model` as ONNX Runtime and the checker read it: the proto (locations relative)
    written into a fresh scratch folder beside links to its data files. Removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=str(scratch_dir())))
    try:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        names: dict[str, str] = {}
        for t in model_tensors(m):
            if is_external(t):
                info = external_info(t)
                src = info["location"]
                if src not in names:
                    names[src] = f"d{len(names)}.data"
                    _link(Path(src), folder / names[src])
                _set_location(t, names[src], int(info.get("offset", 0)), tensor_nbytes(t))
        path = folder / "model.onnx"
        onnx.save_model(m, str(path))
        del m
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_model_streamed(model: onnx.ModelProto, model_path: str | os.PathLike, data_path: str | os.PathLike,
                         location: str) -> None:
    """Write `model` to `model_path` with every tensor of at least EXTERNAL_MIN_BYTES in `data_path`,
    one tensor at a time; the model records `location` (the data file's final name) for them."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    data = DataFile(data_path)
    try:
        for t in model_tensors(m):
            if is_external(t) or tensor_nbytes(t) >= EXTERNAL_MIN_BYTES:
                data.add_tensor(t)
                info = external_info(t)
                _set_location(t, location, int(info["offset"]), int(info["length"]))
    finally:
        data.close()
    onnx.save_model(m, str(model_path))
