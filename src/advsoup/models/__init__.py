"""Model construction: a timm network of the configured family plus an adapter."""
from __future__ import annotations

from ..config import ModelConfig
from .adapters import AdaptedModel
from .resnet import create_resnet
from .vit import create_vit

FAMILIES = {"vit": create_vit, "resnet": create_resnet}


def build_model(model: ModelConfig, family: str, adapter: str) -> AdaptedModel:
    """The timm network of ``family`` sized by ``model``, with ``adapter`` added."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family '{family}'; choose one of {sorted(FAMILIES)}")
    return AdaptedModel(FAMILIES[family](model), adapter, model.mean, model.std)
