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
