"""ResNets from timm: a model by name (resnet50, ...), or the preset with BasicBlock or Bottleneck."""
from __future__ import annotations

import timm
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..config import ModelConfig
from .timm_name import create_named

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def create_resnet(model: ModelConfig) -> ResNet:
    r = model.resnet
    if r.name:
        return create_named(r.name, "model.resnet.name", ResNet, r.pretrained, r.kwargs,
                            in_chans=model.in_chans, num_classes=model.num_classes)
    return ResNet(block=BLOCKS[r.block], layers=tuple(r.layers), num_classes=model.num_classes,
                  in_chans=model.in_chans, stem_width=r.stem_width, base_width=r.base_width,
                  channels=tuple(r.channels))


def create_resnet50(num_classes: int = 1000) -> ResNet:
    """timm's ResNet-50 (AdvProp's ImageNet-scale baseline), randomly initialised (nothing is downloaded)."""
    return timm.create_model("resnet50", pretrained=False, num_classes=num_classes)
