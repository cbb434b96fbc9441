"""Vision Transformers (timm VisionTransformer): patch tokens reshaped into a feature map."""

from __future__ import annotations

from typing import Any

import torch

from budgetssl.backbones.backbone import Backbone
from budgetssl.backbones.registry import FAMILIES
from budgetssl.config.schema import BackboneConfig
from budgetssl.errors import ConfigError


@FAMILIES.register("vit")
class ViTBackbone(Backbone):
    family = "vit"

    def __init__(self, model, timm_name: str, timm_kwargs: dict[str, Any]) -> None:
        super().__init__(model, timm_name, timm_kwargs)
        self.patch_size: int = model.patch_embed.patch_size[0]
        self.num_prefix_tokens: int = model.num_prefix_tokens

    @staticmethod
    def check(cfg: BackboneConfig, image_size: int) -> None:
        if cfg.patch_size is None or cfg.patch_size < 1:
            raise ConfigError(
                f"backbone '{cfg.name}' is a ViT: set backbone.patch_size to a positive integer"
            )
        if image_size % cfg.patch_size:
            raise ConfigError(
                f"dataset.image_size={image_size} is not a multiple of backbone.patch_size={cfg.patch_size}; "
                f"change one of them"
            )

    @staticmethod
    def timm_kwargs(cfg: BackboneConfig, image_size: int) -> dict[str, Any]:
        return {**cfg.kwargs, "img_size": image_size, "patch_size": cfg.patch_size}

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)[:, self.num_prefix_tokens :]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
