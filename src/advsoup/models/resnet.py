"""ResNets from timm (BasicBlock), narrow enough for 28x28 inputs on a CPU."""
from __future__ import annotations

import timm
from timm.models.resnet import BasicBlock, ResNet

from ..config import ModelConfig


def create_resnet(model: ModelConfig) -> ResNet:
    r = model.resnet
    return ResNet(block=BasicBlock, layers=tuple(r.layers), num_classes=model.num_classes,
                  in_chans=model.in_chans, stem_width=r.stem_width, base_width=r.base_width,
                  channels=tuple(r.channels))


def create_resnet50(num_classes: int = 1000) -> ResNet:
    """timm's ResNet-50 (AdvProp's ImageNet-scale baseline), randomly initialised (nothing is downloaded)."""
    return timm.create_model("resnet50", pretrained=False, num_classes=num_classes)
