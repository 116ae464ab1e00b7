"""Registry entries: small (committed fixture) and full-size configurations of every model."""
from __future__ import annotations

from . import Spec, image, register
from .mobilenetv2 import mobilenetv2
from .resnet import resnet18, resnet50, resnet56

register(Spec("resnet18", "ResNet-18", "cnn",
              small=lambda: resnet18(width=0.1875, num_classes=10),
              full=lambda: resnet18(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("mobilenetv2", "MobileNetV2", "cnn",
              small=lambda: mobilenetv2(width=0.35, num_classes=10, last_channel=256),
              full=lambda: mobilenetv2(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("resnet50", "ResNet-50", "cnn",
              small=lambda: resnet50(width=0.125, num_classes=10),
              full=lambda: resnet50(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("resnet56", "CIFAR ResNet-56", "cnn",
              small=lambda: resnet56(width=0.5, num_classes=10),
              full=lambda: resnet56(),
              small_inputs=image(32), full_inputs=image(32)))

from .convnext import convnext_tiny  # noqa: E402
from .densenet import densenet121  # noqa: E402
from .efficientnet import efficientnet_b0  # noqa: E402
from .mobilenetv3 import mobilenetv3_small  # noqa: E402
from .shufflenetv2 import shufflenetv2  # noqa: E402
from .unet import unet  # noqa: E402
from .vgg import vgg16_bn  # noqa: E402

register(Spec("vgg16", "VGG-16-BN", "cnn",
              small=lambda: vgg16_bn(width=0.125, num_classes=10, hidden=128, pool=2),
              full=lambda: vgg16_bn(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("mobilenetv3", "MobileNetV3-small", "cnn",
              small=lambda: mobilenetv3_small(width=0.5, num_classes=10, last_channel=128),
              full=lambda: mobilenetv3_small(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("efficientnet", "EfficientNet-B0", "cnn",
              small=lambda: efficientnet_b0(width=0.25, num_classes=10),
              full=lambda: efficientnet_b0(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("convnext", "ConvNeXt-T", "cnn",
              small=lambda: convnext_tiny(num_classes=10, depths=(1, 1, 3, 1), dims=(16, 32, 64, 128)),
              full=lambda: convnext_tiny(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("densenet", "DenseNet-121", "cnn",
              small=lambda: densenet121(num_classes=10, growth=8, blocks=(2, 4, 6, 4), init_features=16),
              full=lambda: densenet121(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("shufflenetv2", "ShuffleNetV2-1.0x", "cnn",
              small=lambda: shufflenetv2(stage_out=(16, 24, 48, 96, 256), repeats=(4, 8, 4), num_classes=10),
              full=lambda: shufflenetv2(),
              small_inputs=image(64), full_inputs=image(224)))

register(Spec("unet", "U-Net", "cnn",
              small=lambda: unet(base=8, num_classes=2),
              full=lambda: unet(base=64, num_classes=2),
              small_inputs=image(64), full_inputs=image(224)))

from .yolo import yolo  # noqa: E402

register(Spec("yolo", "YOLOv8n-style detector", "cnn",
              small=lambda: yolo(width=8, nc=10, depth=(1, 1, 1, 1)),
              full=lambda: yolo(width=16, nc=80),
              small_inputs=image(64), full_inputs=image(640)))

# ---- transformers -------------------------------------------------------------------------------
import torch  # noqa: E402

from . import InputSpec  # noqa: E402
from .bert import bert  # noqa: E402
from .vit import vit  # noqa: E402

register(Spec("vit", "ViT (DeiT-Tiny)", "transformer",
              small=lambda: vit(img=32, patch=4, dim=64, depth=2, heads=4, mlp=128, num_classes=10),
              full=lambda: vit(),
              small_inputs=image(32), full_inputs=image(224)))


def _bert_inputs(vocab, max_pos, seq):
    dyn = {0: "batch", 1: "seq"}
    return [InputSpec("input_ids", (2, seq), torch.int64, dict(dyn), high=vocab, max={"seq": max_pos}),
            InputSpec("attention_mask", (2, seq), torch.int64, dict(dyn), high=2, max={"seq": max_pos})]


register(Spec("bert", "BERT-mini", "transformer",
              small=lambda: bert(vocab=1000, hidden=64, layers=2, heads=4, ffn=256, max_pos=128),
              full=lambda: bert(),
              small_inputs=_bert_inputs(1000, 128, 16), full_inputs=_bert_inputs(30522, 512, 128)))

from .torch_encoder import torch_encoder_vit  # noqa: E402

register(Spec("torchvit", "ViT from nn.TransformerEncoder", "transformer",
              small=lambda: torch_encoder_vit(img=32, patch=4, dim=32, depth=2, heads=4, mlp=64, num_classes=10),
              full=lambda: torch_encoder_vit(),
              small_inputs=image(32), full_inputs=image(224)))
