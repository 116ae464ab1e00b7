"""Calibration data and streaming activation statistics.

Loading (``load_calib``): a ``.npz`` (arrays named like the model inputs; for a single-input model
one array of any name, or ``FILE.npz:KEY`` to pick one), a ``.npy`` (memory-mapped, single-input
models), a folder of images (``--preprocess`` size/mean/std/layout/scale; PGM/PPM are read
without extra packages, PNG/JPEG/BMP/WebP need Pillow), in-memory arrays, or a list of feed dicts.
Every source becomes a :class:`CalibSet`: a re-iterable sequence of batches that are read or
decoded only when iterated, so a pass over the data never holds more than one batch.

Statistics (``activation_stats``): one ONNX Runtime pass over the calibration batches with the
requested activation tensors exposed as extra graph outputs; per-position count, mean and M2 along
the channel axis are merged batch by batch (Chan et al.'s parallel form of Welford's update), so
memory is bounded by one batch of exposed activations whatever the number of samples.
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper

from onnxprune.errors import OnnxPruneError, first_line
from onnxprune.model.runtime import SessionPurpose, ort_session

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm"}
DEFAULT_BATCH = 32
ACT_BUDGET_BYTES = 512 << 20  # exposed activations per ORT run; batches are split to stay under it


# ---------------------------------------------------------------------------------- input specs
@dataclass
class InputSpec:
    name: str
    dims: list  # int for static dims, None for symbolic
    dtype: np.dtype

    def describe(self) -> str:
        return "(" + ", ".join("N" if d is None and i == 0 else ("?" if d is None else str(d))
                               for i, d in enumerate(self.dims)) + ")"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        out.append(InputSpec(i.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type or 1))))
    return out


# ------------------------------------------------------------------------------------ CalibSet
class CalibSet:
    """Batches of model inputs. ``sources`` maps input name -> an array-like indexed by sample
    (numpy array, memory map, or any object with ``__len__`` and slice ``__getitem__``)."""

    def __init__(self, sources: dict[str, object], batch_size: int = DEFAULT_BATCH, limit: int | None = None,
                 dtypes: dict[str, np.dtype] | None = None, description: str = "arrays",
                 fixed_batch: bool = False):
        if not sources:
            raise OnnxPruneError("calibration data is empty")
        lens = {k: len(v) for k, v in sources.items()}
        n = min(lens.values())
        if len(set(lens.values())) > 1:
            raise OnnxPruneError(f"calibration arrays have different sample counts: {lens}")
        if limit is not None:
            n = min(n, int(limit))
        if n <= 0:
            raise OnnxPruneError("calibration data has no samples")
        batch_size = max(1, int(batch_size))
        if fixed_batch and n % batch_size:
            # a static batch dim cannot take a partial last batch: leave the remainder out, and say so
            if n < batch_size:
                raise OnnxPruneError(f"the model's batch size is fixed at {batch_size}; calibration has only "
                                     f"{n} samples")
            description += f" (last {n % batch_size} samples left out: the model's batch is fixed at {batch_size})"
            n -= n % batch_size
        self.sources, self.n, self.batch_size = sources, n, batch_size
        self.dtypes = dtypes or {}
        self.description = description
        self.notes: list[str] = []  # what the user should know about how the arrays were matched

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, self.n, self.batch_size):
            j = min(self.n, i + self.batch_size)
            feeds = {}
            for k, src in self.sources.items():
                a = np.asarray(src[i:j])
                dt = self.dtypes.get(k)
                if dt is not None and dt.kind in "iub" and a.dtype != dt:
                    _check_integral(a, dt, k)
                feeds[k] = np.ascontiguousarray(a.astype(dt, copy=False) if dt is not None else a)
            yield check_finite(feeds, f"samples {i}..{j - 1}")

    def __repr__(self):
        return f"CalibSet({self.description}: {self.n} samples in {len(self)} batches of {self.batch_size})"


def _check_integral(a: np.ndarray, dt: np.dtype, name: str) -> None:
    """An integer input (uint8 images, token ids) fed from other data: refuse what a cast would change
    (0..1 floats into a uint8 image input would all become 0 or 1)."""
    if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        raise OnnxPruneError(f"calibration data for input '{name}' has fractional values, but the input is {dt}: "
                             "give integer data (for uint8 images: raw 0..255 pixels)")
    if dt.kind in "iu" and a.size:
        info = np.iinfo(dt)
        if a.min() < info.min or a.max() > info.max:
            raise OnnxPruneError(f"calibration data for input '{name}' has values in [{a.min()}, {a.max()}], "
                                 f"outside the range of its type {dt}")


class FeedList:
    """A fixed list of feed dicts (already batched by the caller)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = list(feeds)
        self.n = sum(len(next(iter(f.values()))) for f in self.feeds if f)
        self.description = "feed dicts"

    def __len__(self):
        return len(self.feeds)

    def __iter__(self):
        for i, f in enumerate(self.feeds):
            yield check_finite(f, f"feed dict {i}")


class GeneratedSet:
    """Batches made on demand by ``make(i) -> feeds`` (e.g. random data for memory benchmarks)."""

    def __init__(self, make: Callable[[int], dict[str, np.ndarray]], n_batches: int, description="generated"):
        self.make, self.n_batches, self.description = make, n_batches, description

    def __len__(self):
        return self.n_batches

    def __iter__(self):
        for i in range(self.n_batches):
            yield check_finite(self.make(i), f"batch {i}")


def check_finite(feeds: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """NaN/Inf in calibration data would turn means, variances and refits (and so the written model's
    biases) into NaN without any error: refuse it."""
    for k, a in feeds.items():
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise OnnxPruneError(f"calibration data for input '{k}' has NaN or Inf values ({where})")
    return feeds


# ---------------------------------------------------------------------------------- loading
def parse_preprocess(items) -> dict:
    """``["size=224", "mean=0.485,0.456,0.406", ...]`` (or one string with items separated by
    ';' or spaces) -> dict. Keys: size (H or HxW), mean, std (one value or one per channel),
    layout (NCHW|NHWC), scale (multiplies raw 0..255 pixels first; '1/255' allowed)."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = [items]
    out = {}
    for it in items:
        for part in str(it).replace(";", " ").split():
            key, eq, val = part.partition("=")
            key = key.strip().lower()
            if not eq or key not in ("size", "mean", "std", "layout", "scale"):
                raise OnnxPruneError(f"bad --preprocess '{part}': expected size=HxW, mean=a,b,c, std=a,b,c, "
                                     "layout=NCHW|NHWC or scale=1/255")
            try:
                if key == "size":
                    hw = [int(v) for v in val.lower().split("x")]
                    out[key] = (hw[0], hw[-1])
                elif key in ("mean", "std"):
                    out[key] = [float(v) for v in val.replace(":", ",").replace("/", ",").split(",") if v]
                elif key == "scale":
                    num, _, den = val.partition("/")
                    out[key] = float(num) / (float(den) if den else 1.0)
                else:
                    if val.upper() not in ("NCHW", "NHWC"):
                        raise ValueError
                    out[key] = val.upper()
            except (ValueError, IndexError, ZeroDivisionError):
                raise OnnxPruneError(f"bad --preprocess '{part}'") from None
    return out


def load_calib(calib, model: onnx.ModelProto, *, batch_size: int | None = None, limit: int | None = None,
               preprocess=None):
    """Turn ``calib`` (path, array, dict of arrays, list of feed dicts, CalibSet) into batches that
    match the model's inputs. Raises OnnxPruneError with one clear line on any mismatch."""
    if calib is None:
        return None
    if isinstance(calib, (CalibSet, FeedList, GeneratedSet)):
        return calib
    specs = input_specs(model)
    if isinstance(calib, (list, tuple)) and calib and all(isinstance(f, dict) for f in calib):
        _check_feed_names(calib[0], specs)
        return FeedList(calib)
    if isinstance(calib, (list, tuple)):
        raise OnnxPruneError("calibration data as a list must be a list of feed dicts {input name: batch array}; "
                             "give one array (or a dict of arrays) holding all samples instead")
    if not isinstance(calib, (str, os.PathLike, dict, np.ndarray)) and hasattr(calib, "__array__"):
        calib = np.asarray(calib)  # torch tensors and other array-likes
    if isinstance(calib, np.ndarray):
        calib = {"": calib}
    if isinstance(calib, dict):
        arrays, desc = dict(calib), "arrays"
    else:
        arrays, desc, preprocess = _read_path(str(calib), specs, parse_preprocess(preprocess))
    sources = _match_inputs(arrays, specs, desc)
    bs, fixed = _batch_size(specs, batch_size)
    calib_set = CalibSet(sources, batch_size=bs, limit=limit, dtypes={s.name: s.dtype for s in specs},
                         description=desc, fixed_batch=fixed)
    calib_set.notes = match_notes(list(arrays.keys()), [s.name for s in specs])
    return calib_set


def match_notes(keys: list[str], names: list[str]) -> list[str]:
    """Calibration arrays named like no model input: used as the only input's data, or ignored."""
    unmatched = [k for k in keys if k and k not in names]
    if not unmatched:
        return []
    if len(names) == 1 and len(keys) == 1:
        return [f"calibration array '{unmatched[0]}' is named like no model input: used for the only input "
                f"'{names[0]}'"]
    return [f"calibration array(s) {', '.join(repr(k) for k in unmatched)} match no model input: ignored"]


def _batch_size(specs, requested) -> tuple[int, bool]:
    fixed = {s.dims[0] for s in specs if s.dims and s.dims[0] is not None}
    if fixed:
        return fixed.pop(), True  # the model's batch dim is static: feed exactly that many samples per run
    return requested or DEFAULT_BATCH, False


def _check_feed_names(feeds, specs):
    want = {s.name for s in specs}
    if set(feeds) != want:
        raise OnnxPruneError(f"calibration feeds have inputs {sorted(feeds)}, the model has {sorted(want)}")


def _read_path(path: str, specs, pre):
    key = None
    p = Path(path)
    if not p.exists() and ":" in path:
        base, _, key = path.rpartition(":")
        p = Path(base)
    if not p.exists():
        raise OnnxPruneError(f"calibration data not found: {path}")
    if p.is_dir():
        if key:
            raise OnnxPruneError("':KEY' selects an array of a .npz file, not of a folder")
        return _image_folder(p, specs, pre), f"images in {p}", pre
    if pre:
        raise OnnxPruneError("--preprocess applies to a folder of images, not to .npy/.npz arrays")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(str(p), mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise OnnxPruneError(f"cannot read {p} as a .npy array ({type(e).__name__})") from None
        return {"": arr}, str(p), pre
    if suffix == ".npz":
        try:
            z = np.load(str(p), allow_pickle=False)
        except Exception as e:
            raise OnnxPruneError(f"cannot read {p} as a .npz archive ({type(e).__name__})") from None
        names = list(z.files)
        if key is not None:
            if key not in names:
                raise OnnxPruneError(f"{p} has no array '{key}' (it has: {', '.join(names)})")
            return {"": z[key]}, f"{p}:{key}", pre
        return _LazyNpz(z), str(p), pre
    raise OnnxPruneError(f"calibration data must be a .npz or .npy file or a folder of images, got {p.name}")


class _LazyNpz(dict):
    """Names of a .npz; arrays are read only for the names that are used."""

    def __init__(self, z):
        super().__init__({k: None for k in z.files})
        self._z = z

    def __getitem__(self, k):
        return self._z[k]

    def items(self):
        return [(k, self[k]) for k in self.keys()]


def _match_inputs(arrays: dict, specs: list[InputSpec], desc: str) -> dict[str, object]:
    names = [s.name for s in specs]
    keys = list(arrays.keys())
    if len(specs) == 1:
        s = specs[0]
        if s.name in keys:
            chosen = s.name
        elif len(keys) == 1:
            chosen = keys[0]
        else:
            raise OnnxPruneError(
                f"calibration data {desc} has arrays {', '.join(keys)} but none is named like the model input "
                f"'{s.name}' (name it so, keep a single array, or pick one with FILE.npz:KEY)")
        out = {s.name: arrays[chosen]}
    else:
        if keys == [""]:
            raise OnnxPruneError(f"one unnamed array can calibrate only a single-input model; this model has inputs "
                                 f"{', '.join(repr(n) for n in names)}: use a .npz with arrays named like them")
        missing = [n for n in names if n not in keys]
        if missing:
            raise OnnxPruneError(f"calibration data {desc} lacks array(s) for model input(s) "
                                 f"{', '.join(repr(m) for m in missing)} (it has: {', '.join(keys) or 'none'})")
        out = {n: arrays[n] for n in names}
    for s in specs:
        a = out[s.name]
        shape = tuple(a.shape)
        ok = len(shape) == len(s.dims) and all(d is None or d == v for d, v in zip(s.dims[1:], shape[1:]))
        if not ok:
            raise OnnxPruneError(f"calibration array for input '{s.name}' has shape {shape}; the model expects "
                                 f"{s.describe()} (samples first)")
        kind = np.dtype(a.dtype).kind
        if s.dtype.kind == "f" and kind not in "fiub":
            raise OnnxPruneError(f"calibration array for input '{s.name}' has dtype {a.dtype}, expected numbers")
        if s.dtype.kind == "f" and kind in "iub" and np.dtype(a.dtype).itemsize > 1:
            # wider integers for a float input are labels or token ids, not samples (uint8 pixels pass)
            raise OnnxPruneError(f"calibration array for input '{s.name}' is {a.dtype} but the input is {s.dtype}: "
                                 "give float samples (or pick the right array with FILE.npz:KEY)")
    return out


# ------------------------------------------------------------------------------------- images
class _ImageFolder:
    """Decodes images lazily, one slice (batch) at a time."""

    def __init__(self, files, spec: InputSpec, pre: dict):
        self.files = files
        dims = spec.dims
        layout = pre.get("layout")
        if layout is None:
            layout = "NHWC" if (len(dims) == 4 and dims[-1] in (1, 3) and dims[1] not in (1, 3)) else "NCHW"
        self.layout = layout
        c_axis, hw_axes = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
        self.channels = dims[c_axis] if dims[c_axis] is not None else 3
        if self.channels not in (1, 3):
            raise OnnxPruneError(f"image calibration needs a 1- or 3-channel input, model input has {self.channels}")
        size = pre.get("size")
        if size is None:
            h, w = dims[hw_axes[0]], dims[hw_axes[1]]
            if h is None or w is None:
                raise OnnxPruneError("the model's image size is symbolic: give --preprocess size=HxW")
            size = (h, w)
        self.size = size
        self.dtype = spec.dtype
        if spec.dtype.kind in "iu":  # the model takes raw pixels (tf2onnx uint8 inputs): feed them as they are
            given = [k for k in ("scale", "mean", "std") if k in pre]
            if given:
                raise OnnxPruneError(f"input '{spec.name}' is {spec.dtype}: it takes raw pixels, so --preprocess "
                                     f"{'/'.join(given)} cannot apply (the model normalizes them itself)")
        self.scale = pre.get("scale", 1.0 / 255.0 if spec.dtype.kind == "f" else 1.0)
        self.mean = np.asarray(pre.get("mean", [0.0]), np.float32)
        self.std = np.asarray(pre.get("std", [1.0]), np.float32)
        for k, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, self.channels):
                raise OnnxPruneError(f"--preprocess {k} has {len(v)} values, the input has {self.channels} channels")
        if (self.std == 0).any():
            raise OnnxPruneError("--preprocess std must not be 0")

    def __len__(self):
        return len(self.files)

    @property
    def shape(self):
        h, w = self.size
        c = self.channels
        return (len(self.files), c, h, w) if self.layout == "NCHW" else (len(self.files), h, w, c)

    def __getitem__(self, sl):
        imgs = [self._load(f) for f in self.files[sl]]
        x = np.stack(imgs).astype(np.float32) * self.scale  # N, H, W, C
        x = (x - self.mean) / self.std
        if self.dtype.kind in "iu":
            x = np.clip(np.round(x), 0, 255)
        x = x.astype(self.dtype if self.dtype.kind in "iuf" else np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if self.layout == "NCHW" else x)

    def _load(self, f: Path) -> np.ndarray:
        if f.suffix.lower() in (".pgm", ".ppm", ".pnm"):
            img = read_pnm(f)
            img = _to_channels(img, self.channels)
            if img.shape[:2] != tuple(self.size):
                img = _resize_nearest(img, self.size)
            return img
        try:
            from PIL import Image
        except ImportError:
            raise OnnxPruneError(f"reading {f.suffix} images needs Pillow (pip install Pillow); "
                                 "PGM/PPM images and .npy/.npz arrays work without it") from None
        try:
            with Image.open(f) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32)
        except OSError as e:  # PIL.UnidentifiedImageError and truncated files are OSErrors
            raise OnnxPruneError(f"cannot read calibration image {f}: {type(e).__name__}") from None
        return arr[..., None] if arr.ndim == 2 else arr


def _image_folder(p: Path, specs, pre):
    if len(specs) != 1:
        raise OnnxPruneError("a folder of images can calibrate only a single-input model")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise OnnxPruneError(f"no images in {p} (looked for {', '.join(sorted(IMAGE_EXTS))})")
    if len(specs[0].dims) != 4:
        raise OnnxPruneError(f"image calibration needs a rank-4 image input, '{specs[0].name}' has rank "
                             f"{len(specs[0].dims)}")
    return {specs[0].name: _ImageFolder(files, specs[0], pre)}


def read_pnm(path) -> np.ndarray:
    """Binary PGM (P5) / PPM (P6), 8 or 16 bit -> (H, W, C) float32 in 0..255."""
    data = Path(path).read_bytes()
    tokens, pos = [], 0
    while len(tokens) < 4:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            while pos < len(data) and data[pos:pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        tokens.append(data[start:pos])
    pos += 1  # the single whitespace after maxval
    magic = tokens[0]
    if magic not in (b"P5", b"P6"):
        raise OnnxPruneError(f"{path}: only binary PGM (P5) / PPM (P6) images are read without Pillow")
    w, h, maxval = int(tokens[1]), int(tokens[2]), int(tokens[3])
    c = 1 if magic == b"P5" else 3
    dt = np.dtype(">u2") if maxval > 255 else np.uint8
    arr = np.frombuffer(data, dtype=dt, count=w * h * c, offset=pos).reshape(h, w, c).astype(np.float32)
    return arr * (255.0 / maxval)


def _to_channels(img, c):
    if img.shape[2] == c:
        return img
    if c == 1:
        return (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.repeat(img, 3, axis=2)


def _resize_nearest(img, size):
    h, w = img.shape[:2]
    ys = (np.arange(size[0]) * h / size[0]).astype(int)
    xs = (np.arange(size[1]) * w / size[1]).astype(int)
    return img[ys][:, xs]


# ----------------------------------------------------------------------- activation statistics
# Co-moment matrices (for --compensate lstsq) only for spaces this wide: C x C float64 each; wider
# spaces (e.g. a Flatten of 512x7x7 features) fall back to mean compensation.
COV_MAX_POSITIONS = 4096


@dataclass
class SpaceStats:
    """Per-position statistics of one space (tensor, axis): every other axis is a sample axis."""
    n: float          # values seen per position
    mean: np.ndarray  # float64, one per position along the axis
    m2: np.ndarray    # sum of squared deviations from the mean
    c2: np.ndarray | None = None  # optional co-moment matrix sum (x-mean)(x-mean)^T (for lstsq)
    # optional per-position sums over the batch axis only (shape: the tensor without axis 0), for
    # per-position compensation; pos_note says why they are missing once they were asked for
    pos_sum: np.ndarray | None = None
    pos_n: float = 0.0
    pos_note: str | None = None

    @property
    def positions_done(self) -> bool:
        return self.pos_sum is not None or self.pos_note is not None

    @property
    def pos_mean(self) -> np.ndarray | None:
        return None if self.pos_sum is None else self.pos_sum / max(self.pos_n, 1.0)

    @property
    def cov(self) -> np.ndarray:
        return self.c2 / max(self.n, 1.0)

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.n, 1.0)

    def merge(self, other: "SpaceStats") -> "SpaceStats":
        """Chan et al.: combine two partial (n, mean, M2) summaries exactly."""
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / n)
        c2 = None
        if self.c2 is not None and other.c2 is not None:
            c2 = self.c2 + other.c2 + np.outer(delta, delta) * (self.n * other.n / n)
        pos_sum, pos_note = None, self.pos_note or other.pos_note
        if self.pos_sum is not None and other.pos_sum is not None:
            if self.pos_sum.shape == other.pos_sum.shape:
                pos_sum = self.pos_sum + other.pos_sum
            else:
                pos_note = "its shape varies across calibration batches"
        return SpaceStats(n, mean, m2, c2, pos_sum, self.pos_n + other.pos_n, pos_note if pos_sum is None else None)

    def pooled(self, index_map: np.ndarray, size: int) -> "ChannelStats":
        """Pool positions that map to the same canonical channel (block maps: flatten, multipliers)."""
        cnt = np.bincount(index_map, minlength=size).astype(np.float64)
        s = np.bincount(index_map, weights=self.mean, minlength=size)
        safe = np.where(cnt > 0, cnt, 1.0)
        mean = s / safe
        dev = self.mean - mean[index_map]
        m2 = np.bincount(index_map, weights=self.m2 + self.n * dev * dev, minlength=size)
        n = self.n * cnt
        return ChannelStats(n, mean, m2)


@dataclass
class ChannelStats:
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @property
    def var(self) -> np.ndarray:
        return self.m2 / np.where(self.n > 0, self.n, 1.0)


def batch_stats(x: np.ndarray, axis: int, cov: bool = False, batch: int | None = None) -> SpaceStats:
    """Mean and M2 per position of `axis` over every other axis of one batch (two-pass in the batch,
    float64 sums, one float32 temporary of the batch's size); with ``cov`` also the co-moment matrix;
    with ``batch`` (the number of samples in this batch) also sums over the batch axis only, per
    position of every other axis (a tensor whose axis 0 is not the batch gets a pos_note instead)."""
    pos_sum, pos_n, pos_note = None, 0.0, None
    if batch is not None:
        if axis == 0 or x.ndim < 1 or x.shape[0] != batch:
            pos_note = f"its axis 0 is not the batch (shape {list(x.shape)}, batch {batch})"
        else:
            pos_sum, pos_n = x.sum(axis=0, dtype=np.float64), float(batch)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis)
    n = float(x.size // x.shape[axis]) if x.shape[axis] else 0.0
    mean = x.sum(axis=axes, dtype=np.float64) / max(n, 1.0)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    d = np.subtract(x, mean.reshape(shape).astype(x.dtype, copy=False))
    c2 = None
    if cov and x.shape[axis] <= COV_MAX_POSITIONS:
        rows = np.moveaxis(d, axis, -1).reshape(-1, x.shape[axis])
        c2 = (rows.T @ rows).astype(np.float64)  # float32 product (BLAS), summed per batch in float64
        del rows
    np.square(d, out=d)
    m2 = d.sum(axis=axes, dtype=np.float64)
    return SpaceStats(n, mean, m2, c2, pos_sum, pos_n, pos_note)


def activation_stats(view, calib: Iterable[dict[str, np.ndarray]], spaces: list[tuple[str, int]], *,
                     budget_bytes: int = ACT_BUDGET_BYTES, provider: str = "cpu",
                     cov: bool = False, positions: bool = False) -> dict[tuple[str, int], SpaceStats]:
    """One streaming pass: run the (normalized) model with `spaces`' tensors as extra outputs and merge
    per-position statistics batch by batch. Never keeps more than one batch of activations.
    ``positions``: also per-position means over the batch axis (see batch_stats)."""
    spaces = sorted(set(spaces))
    tensors = sorted({t for t, _ in spaces})
    if not tensors:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(view.model)
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(t))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    # no memory arena: it keeps its high-water mark; without it memory is returned per run
    sess = ort_session(m, SessionPurpose(arena=False), providers=providers, what="model for calibration")
    # bytes of exposed activations per sample (shapes measured at the analysis batch size)
    batch0 = max(1, next((s[0] for s in view.input_shapes.values() if s), 1))
    per_sample = sum(int(np.prod(view.shape(t) or (1,))) * 4 for t in tensors) / batch0
    max_rows = max(1, int(budget_bytes // max(per_sample, 1)))
    fixed_batch = _fixed_batch(view.model)
    stats: dict[tuple[str, int], SpaceStats] = {}
    by_tensor: dict[str, list[int]] = {}
    for t, a in spaces:
        by_tensor.setdefault(t, []).append(a)
    seen = 0
    for feeds in calib:
        n = len(next(iter(feeds.values())))
        step = n if fixed_batch else min(n, max_rows)
        for i in range(0, n, step):
            sub = feeds if step == n else {k: v[i:i + step] for k, v in feeds.items()}
            try:
                outs = sess.run(tensors, sub)
            except Exception as e:
                raise OnnxPruneError(f"ONNX Runtime failed on calibration batch {seen}: "
                                     f"{first_line(e)}") from None
            for t, x in zip(tensors, outs):
                x = np.asarray(x)
                for a in by_tensor[t]:
                    b = batch_stats(x, a, cov=cov, batch=len(next(iter(sub.values()))) if positions else None)
                    stats[(t, a)] = stats[(t, a)].merge(b) if (t, a) in stats else b
            del outs
            seen += 1
    if not stats:
        raise OnnxPruneError("calibration data produced no batches")
    return stats


def _fixed_batch(model) -> bool:
    return any(s.dims and s.dims[0] is not None for s in input_specs(model))


def activation_spaces(analysis, groups=None) -> list[tuple[str, int]]:
    """Activation (non-weight) spaces where some node sums channels (Conv/Gemm/MatMul inputs),
    restricted to the given groups (default: every prunable group)."""
    view = analysis.view
    gids = {g.id for g in (groups if groups is not None else analysis.prunable_groups)}
    out = set()
    for k, res in analysis.node_results.items():
        for (t, a) in res.mixes:
            if t in view.consts or t in view.inputs:
                continue
            g = analysis.space_group.get((t, a))
            if g is not None and g in gids:
                out.add((t, a))
    return sorted(out)


def cached_stats(ctx, spaces, cov: bool = False, positions: bool = False) -> dict[tuple[str, int], SpaceStats]:
    """Statistics for `spaces` through ``ctx.cache['act_stats']``: computed once, in one pass, for all
    spaces not cached yet (scorers and compensation share them). ``cov``: with co-moment matrices;
    ``positions``: with per-position means."""
    cache = ctx.cache.setdefault("act_stats", {})
    missing = [s for s in spaces if s not in cache
               or (cov and cache[s].c2 is None and len(cache[s].mean) <= COV_MAX_POSITIONS)
               or (positions and not cache[s].positions_done)]
    if missing:
        if not ctx.calib:
            raise OnnxPruneError("calibration data is needed here: pass --calib FILE")
        # a recomputed space keeps what its cached statistics already had
        cov = cov or any(s in cache and cache[s].c2 is not None for s in missing)
        positions = positions or any(s in cache and cache[s].positions_done for s in missing)
        cache.update(activation_stats(ctx.analysis.view, ctx.calib, missing, cov=cov, positions=positions))
    return {s: cache[s] for s in spaces}


COMPENSATE_CHOICES = ("mean", "lstsq", "none")


def resolve_compensate(compensate: str | None, scorer: str, has_calib: bool) -> str:
    """Default: 'mean' for vbp, 'none' otherwise; 'mean' needs calibration data."""
    if compensate is None:
        return "mean" if scorer == "vbp" else "none"
    if compensate not in COMPENSATE_CHOICES:
        raise OnnxPruneError(f"unknown --compensate '{compensate}' (choose from {', '.join(COMPENSATE_CHOICES)})")
    if compensate != "none" and not has_calib:
        raise OnnxPruneError(f"--compensate {compensate} needs calibration data: pass --calib FILE")
    return compensate
