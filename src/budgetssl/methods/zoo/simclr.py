"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two views per image, a projection MLP, and the NT-Xent loss with every other view of the (global,
cross-rank) batch as a negative. On ViTs the projector is the MoCo v3 study's (Chen, Xie & He 2021):
3 layers, batch norm after every one, the last without affine parameters; on ResNets SimCLR's own
(configs/method/resnet/simclr.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from budgetssl.backbones.backbone import Backbone
from budgetssl.data.info import DataInfo
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import CropConfig, MultiView, ssl_crop
from budgetssl.methods.base import Method
from budgetssl.methods.distributed import gather, rank_and_size
from budgetssl.methods.heads import before_last_norm, mlp
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class SimCLRConfig(CropConfig):
    """Values in configs/method/simclr.yaml (cited there); the crop's fields are CropConfig's."""

    temperature: float = MISSING
    proj_hidden_dim: int = MISSING
    proj_dim: int = MISSING
    proj_layers: int = MISSING  # linear layers of the projector
    proj_last_bn: bool = MISSING  # batch norm (no affine) on the projector's output
    color_strength: float = MISSING  # SimCLR's colour-distortion strength s: jitter (0.8s, 0.8s, 0.8s, 0.2s)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over both views: each view's positive is its twin, negatives every other view of the
    batch gathered across ranks. Anchors are this rank's views; the loss is their mean."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    rank, _ = rank_and_size()
    n = z1.shape[0]
    candidates = torch.cat([gather(z1), gather(z2)])  # (2nW, d): all first views, then all second
    total = candidates.shape[0] // 2
    anchors = torch.cat([z1, z2])
    logits = anchors @ candidates.T / temperature
    own = rank * n + torch.arange(n, device=z1.device)
    self_index = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


@METHODS.register("simclr")
class SimCLR(Method):
    config_class = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.projector = mlp(
            backbone.num_features,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            layers=cfg.proj_layers,
            last_bn=cfg.proj_last_bn,
            last_bias=False,
        )

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if cfg.temperature <= 0:
            raise ConfigError(f"method.temperature must be > 0, got {cfg.temperature}")
        if cfg.color_strength < 0:
            raise ConfigError(f"method.color_strength must be >= 0, got {cfg.color_strength}")
        if cfg.proj_layers < 1:
            raise ConfigError(f"method.proj_layers must be >= 1, got {cfg.proj_layers}")

    def views(self) -> MultiView:
        s = self.cfg.color_strength
        crop = ssl_crop(
            self.data,
            self.data.image_size,
            self.cfg.crop_scale,
            jitter=(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5)),
            blur_p=0.5,
            interpolation=self.cfg.interpolation,
        )
        return MultiView({"views": [crop, crop]})

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views = batch["views"]  # (B, 2, C, H, W): both views through the backbone together
        b = views.shape[0]
        z = self.projector(self.backbone(views.transpose(0, 1).flatten(0, 1)))
        loss = nt_xent(z[:b], z[b:], self.cfg.temperature)
        return StepOutput(loss)

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled features and the projector's output before its final batch norm."""
        features = self.backbone(images)
        return {"features": features, "embedding": before_last_norm(self.projector, features)}
