"""Convolutional networks (timm ResNets and the like): the last stage's feature map."""

from __future__ import annotations

from typing import Any

import torch

from budgetssl.backbones.backbone import LEVELS, Backbone
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

    @staticmethod
    def _no_keep(keep: torch.Tensor | None) -> None:
        if keep is not None:
            raise ConfigError("a CNN cannot encode a subset of patches; masking needs a ViT backbone")

    def _pooled(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        self._no_keep(keep)
        return self.model(x)

    def _map(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        self._no_keep(keep)
        return self.model.forward_features(x)

    def _levels(self, x: torch.Tensor, keep: torch.Tensor | None) -> list[torch.Tensor]:
        """The last LEVELS stages' outputs: a feature pyramid from stride 4 (ResNets) to 32."""
        self._no_keep(keep)
        return self.model.forward_intermediates(x, intermediates_only=True)[-LEVELS:]

    def _tokens(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self._map(x, keep).flatten(2).transpose(1, 2)
