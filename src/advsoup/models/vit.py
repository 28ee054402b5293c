"""Vision Transformers from timm: a model by name, or the general class sized by the config (the demo preset)."""
from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer

from ..config import ModelConfig
from .timm_name import create_named


def create_vit(model: ModelConfig) -> VisionTransformer:
    v = model.vit
    if v.name:
        # class_token/global_pool: every adapter needs timm's class-token ViT (the paper's token adapter, its head)
        return create_named(v.name, "model.vit.name", VisionTransformer, v.pretrained, v.kwargs,
                            img_size=model.img_size, in_chans=model.in_chans, num_classes=model.num_classes,
                            drop_path_rate=v.drop_path_rate)
    return VisionTransformer(
        img_size=model.img_size, patch_size=v.patch_size, in_chans=model.in_chans,
        num_classes=model.num_classes, embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads,
        mlp_ratio=v.mlp_ratio, drop_path_rate=v.drop_path_rate, class_token=True, global_pool="token")


def create_vit_b16(num_classes: int = 1000) -> VisionTransformer:
    """The paper's ViT-B16 (224 px), randomly initialised (no weights are downloaded)."""
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=num_classes)
