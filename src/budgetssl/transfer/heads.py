"""Segmentation heads on a backbone's feature map, and the model the engine fine-tunes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import nn

from budgetssl.backbones.backbone import Backbone
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError


class LinearHead(nn.Module):
    """A 1x1 convolution on the feature map: the cheap linear probe of dense features."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.classify = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.norm(features))


HEADS = {"linear": LinearHead}


class Segmenter(nn.Module):
    """Backbone feature map -> head -> logits upsampled to the input; a task for the engine."""

    def __init__(
        self,
        backbone: Backbone,
        head: str,
        num_classes: int,
        ignore_index: int,
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"unknown transfer.head '{head}'; valid choices: {', '.join(HEADS)}")
        self.backbone = backbone
        self.head = HEADS[head](backbone.num_features, num_classes)
        self.ignore_index = ignore_index
        self.backbone_lr_scale = backbone_lr_scale

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay off for norms and biases (timm's rule); the backbone at a scaled learning rate."""
        groups = []
        for module, scale in ((self.backbone, self.backbone_lr_scale), (self.head, 1.0)):
            for group in param_groups_weight_decay(module, weight_decay):
                if group["params"]:
                    groups.append({**group, "lr_scale": scale})
        return groups

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        out = self.head(self.backbone.feature_map(image))
        return F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        loss = F.cross_entropy(self.logits(batch["image"]), batch["mask"], ignore_index=self.ignore_index)
        return StepOutput(loss)
