"""Vision Transformers from timm: the general class sized by the config."""
from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer

from ..config import ModelConfig


def create_vit(model: ModelConfig) -> VisionTransformer:
    v = model.vit
    return VisionTransformer(
        img_size=model.img_size, patch_size=v.patch_size, in_chans=model.in_chans,
        num_classes=model.num_classes, embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads,
        mlp_ratio=v.mlp_ratio, drop_path_rate=v.drop_path_rate, class_token=True, global_pool="token")


def create_vit_b16(num_classes: int = 1000) -> VisionTransformer:
    """The paper's ViT-B16 (224 px), randomly initialised (no weights are downloaded)."""
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_classes)
