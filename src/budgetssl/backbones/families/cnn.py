"""Convolutional networks (timm ResNets and the like): the last stage's feature map."""

from __future__ import annotations

from typing import Any

import torch

from budgetssl.backbones.backbone import Backbone
from budgetssl.backbones.registry import FAMILIES
from budgetssl.config.schema import BackboneConfig
from budgetssl.errors import ConfigError


@FAMILIES.register("cnn")
class CNNBackbone(Backbone):
    family = "cnn"

    @staticmethod
    def check(cfg: BackboneConfig, image_size: int) -> None:
        if cfg.patch_size is not None:
            raise ConfigError(
                f"backbone.patch_size applies to ViTs only; '{cfg.name}' is a CNN: remove backbone.patch_size"
            )

    @staticmethod
    def timm_kwargs(cfg: BackboneConfig, image_size: int) -> dict[str, Any]:
        return dict(cfg.kwargs)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)
