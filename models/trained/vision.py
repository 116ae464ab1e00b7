"""Larger trained digit classifiers: the four families of models/digits/nets.py at a higher input
resolution, so that one image takes >= 5 ms in ONNX Runtime on a 2-core CPU.

Data: scikit-learn's 1,797 real 8x8 digits, scaled to [0, 1], upsampled bilinearly straight from
8x8 to 1xSxS (S per model, below), normalized with models/digits' fixed MEAN / STD (the train
split's mean is the same at every S; its std is 0.3253 at S = 160 and 224 against 0.3238 at 32). The
splits are exactly models/digits' (its `split_indices`: train 1077 / calib 270 / test 450), so no
data is committed: `load_splits()` rebuilds them from sklearn.

Architectures (classes of models/digits/nets.py, widths / depths / strides changed by
constructor arguments or the small subclasses below):

    resnet       224x224  nets.ResNet, widths 32/64/128, 2 blocks per stage, stem conv/2 without
                          the max-pool (stages at 112/56/28)
    mobilenetv2  160x160  nets.MobileNetV2, digits CFG, stem stride 1, head 384
    convnext     160x160  nets.ConvNeXt as in digits (2x2/2 stem, dims 32/64/128, depths 2/2/2)
    vit          160x160  nets.ViT, patch 8 (400 tokens + class token), dim 96, depth 6, 4 heads
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
DIGITS = HERE.parent / "digits"
sys.path.insert(0, str(DIGITS))

import nets  # noqa: E402  (models/digits/nets.py)


def _load_digits_train():
    """models/digits/train.py under its own module name (this folder has a train.py too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_train", DIGITS / "train.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["digits_train"] = mod
    spec.loader.exec_module(mod)
    return mod


# splits, augment, normalize, the two exporters
digits_train = sys.modules.get("digits_train") or _load_digits_train()

NAMES = ("resnet", "mobilenetv2", "convnext", "vit")


class ResNetHR(nets.ResNet):
    """nets.ResNet without the stem's max-pool (stage resolutions S/2, S/4, S/8)."""

    def __init__(self, widths, blocks):
        super().__init__(widths=widths, blocks=blocks)
        self.stem = self.stem[:3]


class MobileNetV2HR(nets.MobileNetV2):
    """nets.MobileNetV2 with a stem of stride `stem_stride`."""

    def __init__(self, cfg=nets.MobileNetV2.CFG, stem_stride=2, **kw):
        super().__init__(cfg=cfg, **kw)
        self.features[0] = nets.conv_bn_relu6(nets.IN_CHANNELS, self.features[0][0].out_channels,
                                              3, stem_stride)


class ConvNeXtHR(nets.ConvNeXt):
    """nets.ConvNeXt with a 4x4 stride-4 patchify stem (a 2x2 stem at 128x128 is far too slow)."""

    def __init__(self, dims, depths, stem=4):
        super().__init__(dims=dims, depths=depths)
        self.downsample[0] = nn.Sequential(nn.Conv2d(nets.IN_CHANNELS, dims[0], stem, stem),
                                           nets.LayerNorm2d(dims[0], eps=1e-6))


class ViTHR(nets.ViT):
    """nets.ViT with its position embedding sized for image_size (nets.ViT assumes 32x32)."""

    def __init__(self, image_size, patch=8, dim=96, **kw):
        super().__init__(dim=dim, patch=patch, **kw)
        n_patches = (image_size // patch) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)


# name -> (input size S, constructor). One image at batch 1 takes 5-20 ms in ORT CPU (2 threads)
# on the 2-core dev machine; resolution, not width, buys the time (every ONNX file stays < 4 MB).
CONFIGS = {
    "resnet": (224, lambda: ResNetHR(widths=(32, 64, 128), blocks=(2, 2, 2))),
    "mobilenetv2": (160, lambda: MobileNetV2HR(stem_stride=1, last=384)),
    "convnext": (160, lambda: ConvNeXtHR(dims=(32, 64, 128), depths=(2, 2, 2), stem=2)),
    "vit": (160, lambda: ViTHR(image_size=160, patch=8, dim=96, depth=6, heads=4, mlp_ratio=2)),
}

# epochs sized for a GPU (each model trains in well under a minute on an H200)
HPARAMS = {
    "resnet": dict(epochs=40, lr=3e-3, wd=5e-4, batch=64),
    "mobilenetv2": dict(epochs=50, lr=3e-3, wd=5e-4, batch=64),
    "convnext": dict(epochs=60, lr=2e-3, wd=0.05, batch=64),
    "vit": dict(epochs=120, lr=1e-3, wd=0.05, batch=64),
}


def image_size(name: str) -> int:
    return CONFIGS[name][0]


def build(name: str) -> nn.Module:
    return CONFIGS[name][1]()


def upsampled_digits(size: int):
    """(x01 float32 N,1,size,size in [0,1], y int64 N): the 8x8 digits upsampled bilinearly."""
    from sklearn.datasets import load_digits
    import numpy as np

    d = load_digits()
    x = torch.from_numpy(d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x, torch.from_numpy(d.target.astype(np.int64))


def load_splits(size: int, normalized: bool = True):
    """{'train'|'calib'|'test': (x N,1,S,S, y N)}: models/digits' splits at resolution `size`."""
    x, y = upsampled_digits(size)
    if normalized:
        x = digits_train.normalize(x)
    tr, ca, te = digits_train.split_indices(y.numpy())
    return {k: (x[i].contiguous(), y[i].contiguous()) for k, i in
            (("train", tr), ("calib", ca), ("test", te))}


# ----------------------------------------------------------------- evaluation data, no sklearn
EVAL_FILE = HERE / "digits8_eval.npz"


def write_eval_file(path: Path = EVAL_FILE) -> None:
    """The calib and test splits' 8x8 originals (uint8, 0..16) and labels: 16 KB, committed, so
    that benchmarks rebuild the exact evaluation inputs at any size without scikit-learn."""
    from sklearn.datasets import load_digits
    import numpy as np

    d = load_digits()
    _, ca, te = digits_train.split_indices(d.target)
    x8 = d.data.reshape(-1, 8, 8).astype(np.uint8)
    np.savez_compressed(path, calib_x8=x8[ca], calib_y=d.target[ca].astype(np.int64),
                        test_x8=x8[te], test_y=d.target[te].astype(np.int64))


def load_eval(size: int, path: Path = EVAL_FILE) -> dict:
    """{'calib'|'test': (x float32 N,1,S,S normalized, y int64 N)} as numpy arrays: the same
    values as load_splits(size) gives for those splits (checked by export.py)."""
    import numpy as np

    d = np.load(path)
    out = {}
    for k in ("calib", "test"):
        x = torch.from_numpy(d[f"{k}_x8"].astype(np.float32) / 16.0)[:, None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        out[k] = (digits_train.normalize(x).numpy(), d[f"{k}_y"])
    return out


def write_npz(name: str, out: Path) -> None:
    """An .npz for `onnxprune --calib`: 'input' = the calib split at the model's size, plus
    calib_x, calib_y, test_x, test_y."""
    import numpy as np

    ev = load_eval(image_size(name))
    np.savez(out, input=ev["calib"][0], calib_x=ev["calib"][0], calib_y=ev["calib"][1],
             test_x=ev["test"][0], test_y=ev["test"][1])


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the evaluation data of one model as .npz")
    ap.add_argument("model", choices=NAMES)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    write_npz(a.model, a.out)
    print(f"wrote {a.out} (input = calib split at {image_size(a.model)}x{image_size(a.model)})")
