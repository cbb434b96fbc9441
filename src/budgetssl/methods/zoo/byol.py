"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent").

An online network (backbone, projector, predictor) regresses the projection of a target network that
trails it by EMA; the momentum rises from `base_momentum` to 1 on a cosine over the budget (an
annealed value: engine/schedule.py). The loss
is symmetric: each view's prediction regresses the other view's target. On ViTs the projector and
predictor are the MoCo v3 study's (3 and 2 layers, batch norm after every one); on ResNets BYOL's own
(configs/method/resnet/byol.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from budgetssl.backbones.backbone import Backbone, without_drop_path
from budgetssl.data.info import DataInfo
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import CropConfig, MultiView, asymmetric_pair
from budgetssl.methods.base import Method
from budgetssl.methods.ema import EmaTeacher, TeacherConfig, check_teacher_config
from budgetssl.methods.heads import before_last_norm, mlp
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class BYOLConfig(TeacherConfig, CropConfig):
    """Values in configs/method/byol.yaml (cited there); the momentum's fields are TeacherConfig's, the
    crop's CropConfig's."""

    proj_hidden_dim: int = MISSING
    proj_dim: int = MISSING
    proj_layers: int = MISSING  # linear layers of the projector
    pred_hidden_dim: int = MISSING
    pred_layers: int = MISSING  # linear layers of the predictor
    last_bn: bool = MISSING  # batch norm (no affine) on the projector's and the predictor's outputs


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z) per pair, averaged: the normalised MSE of BYOL. The target gets no gradient."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetrised: view 1's prediction against view 2's target, and the reverse."""
    return regression_loss(p1, z2) + regression_loss(p2, z1)


@METHODS.register("byol")
class BYOL(Method):
    config_class = BYOLConfig
    forward_only = ("teacher",)

    def __init__(self, cfg: BYOLConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.projector = mlp(
            backbone.num_features,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            layers=cfg.proj_layers,
            last_bn=cfg.last_bn,
            last_bias=False,
        )
        self.predictor = mlp(
            cfg.proj_dim,
            cfg.pred_hidden_dim,
            cfg.proj_dim,
            layers=cfg.pred_layers,
            last_bn=cfg.last_bn,
            last_bias=False,
        )
        self.teacher = EmaTeacher.of({"backbone": backbone, "projector": self.projector}, cfg)
        without_drop_path(self.teacher.parts["backbone"])  # the target network runs without stochastic depth

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        check_teacher_config(cfg)
        if min(cfg.proj_layers, cfg.pred_layers) < 1:
            raise ConfigError("method.proj_layers and method.pred_layers must be >= 1")

    def views(self) -> MultiView:
        return asymmetric_pair(self.data, self.cfg)

    def on_step_start(self, clock: Clock) -> dict[str, float]:
        return {"momentum": self.teacher.schedule(Clock.of(clock).anneal)}

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views = batch["views"]
        b = views.shape[0]
        x = views.transpose(0, 1).flatten(0, 1)
        p = self.predictor(self.projector(self.backbone(x)))
        z = self.teacher(x)
        return StepOutput(byol_loss(p[:b], p[b:], z[:b], z[b:]))

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The online network's pooled features and its projector's output before the final batch norm
        (the norm hides the decline: the issue's investigation)."""
        features = self.backbone(images)
        return {"features": features, "embedding": before_last_norm(self.projector, features)}

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        self.teacher.update({"backbone": self.backbone, "projector": self.projector})
        return {}
