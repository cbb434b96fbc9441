"""Supervised softmax classification on labels: the study's supervised baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from budgetssl.backbones.backbone import Backbone
from budgetssl.config.schema import MethodConfig
from budgetssl.data.info import DataInfo
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import random_crop_flip
from budgetssl.methods.base import Method
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class SupervisedConfig(MethodConfig):
    label_smoothing: float = 0.1
    crop_scale_min: float = 0.35


class LabelledView:
    """One augmented view of the image plus its label."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"image": self.transform(sample["image"]), "label": torch.tensor(sample["label"])}


@METHODS.register("supervised")
class Supervised(Method):
    config_class = SupervisedConfig
    needs = frozenset({"label"})

    def __init__(self, cfg: SupervisedConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.head = nn.Linear(backbone.num_features, data.num_classes)

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if not 0 <= cfg.label_smoothing < 1:
            raise ConfigError(f"method.label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
        if not 0 < cfg.crop_scale_min <= 1:
            raise ConfigError(f"method.crop_scale_min must be in (0, 1], got {cfg.crop_scale_min}")

    def views(self) -> LabelledView:
        scale = (self.cfg.crop_scale_min, 1.0)
        return LabelledView(random_crop_flip(self.data, self.data.image_size, scale))

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        logits = self.head(self.backbone(batch["image"]))
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.cfg.label_smoothing)
        accuracy = (logits.argmax(dim=1) == batch["label"]).float().mean()
        return StepOutput(loss, {"accuracy": float(accuracy)})
