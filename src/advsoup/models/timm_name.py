"""A timm model by name (``vit_base_patch16_224``, ``resnet50``, ...), checked to be of the run's family."""
from __future__ import annotations

from typing import Any, Dict

import timm
from torch import nn


def create_named(name: str, key: str, cls: type, pretrained: bool, kwargs: Dict[str, Any],
                 **common: Any) -> nn.Module:
    """timm.create_model(name, ...); ``key`` is the config key that named it, for the errors."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"{key}: timm has no model '{name}'; e.g. {close}")
    try:
        net = timm.create_model(name, pretrained=pretrained, **{**common, **dict(kwargs)})
    except TypeError as exc:
        raise ValueError(f"{key}: timm cannot build '{name}' ({exc}): name a model of the run's family, "
                         f"and check the kwargs beside the name ({dict(kwargs)})") from None
    if not isinstance(net, cls):
        raise ValueError(f"{key}: '{name}' is a {type(net).__name__}, not a timm {cls.__name__}: "
                         f"name a model of the run's family")
    return net
