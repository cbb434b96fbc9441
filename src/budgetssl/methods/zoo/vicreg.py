"""VICReg (Bardes, Ponce & LeCun, ICLR 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning").

Two views per image through one backbone and one expander (an MLP, no output norm), and a loss of three
terms on the expander's outputs: invariance (the mean squared distance between the two views'
embeddings), variance (a hinge keeping every dimension's standard deviation over the batch at 1 or more)
and covariance (the squared off-diagonal covariances, pushed to 0). No negatives, no teacher, no
predictor, no stop-gradient. Written from facebookresearch/vicreg main_vicreg.py (VICReg.forward,
Projector) and augmentations.py (TrainTransform).

Across ranks the authors gather the embeddings (FullGatherLayer, whose backward all-reduces) and compute
the variance and covariance of the whole batch on every rank. Here each rank sums its own share of the
global statistics (methods/distributed.sum_over_ranks, with gradients): the same loss and gradients
(tests/test_distributed_losses.py), and a step's FLOPs stay those of one process on the global batch,
as the meter's contract needs, where gathering would have every rank compute the whole (d, d) covariance
(2 N d^2 FLOPs per view, each rank).
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
from budgetssl.methods.augment import CropConfig, MultiView, asymmetric_pair
from budgetssl.methods.base import Method
from budgetssl.methods.distributed import rank_and_size, sum_over_ranks
from budgetssl.methods.heads import mlp
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

# main_vicreg.py VICReg.forward: std = sqrt(var + 0.0001), hinged at 1 (relu(1 - std)). Constants of the
# loss's definition (the paper's epsilon and gamma, Sec. 3.1), not recipe values.
VARIANCE_EPS = 1e-4
STD_TARGET = 1.0


@dataclass
class VICRegConfig(CropConfig):
    """Values in configs/method/vicreg.yaml (cited there); the crop's fields are CropConfig's."""

    sim_coeff: float = MISSING  # lambda, the invariance term's weight (main_vicreg.py --sim-coeff)
    std_coeff: float = MISSING  # mu, the variance term's weight (--std-coeff)
    cov_coeff: float = MISSING  # nu, the covariance term's weight (--cov-coeff)
    proj_hidden_dim: int = MISSING  # the expander's hidden width (--mlp "8192-8192-8192")
    proj_dim: int = MISSING  # the expander's output width, the d of the loss (--mlp's last)
    proj_layers: int = MISSING  # linear layers of the expander (--mlp's count)


def global_covariance(z: torch.Tensor) -> torch.Tensor:
    """The (d, d) unbiased covariance of `z` (n, d) over the global batch, centred on the global mean:
    each rank sums its share (with gradients), so every rank holds the whole batch's statistic."""
    _, world = rank_and_size()
    total = z.shape[0] * world
    centred = z - sum_over_ranks(z.sum(dim=0)) / total
    return sum_over_ranks(centred.T @ centred) / (total - 1)


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance, variance, covariance) as main_vicreg.py VICReg.forward computes them: the MSE of this
    rank's pairs (DDP's average over ranks makes it the global batch's), the mean over both views and
    dimensions of relu(1 - std), and each view's squared off-diagonal covariances summed over d."""
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    d = z1.shape[1]
    for z in (z1, z2):
        cov = global_covariance(z)
        var = torch.diagonal(cov)  # the per-dimension unbiased variance, as z.var(dim=0)
        std = torch.sqrt(var + VARIANCE_EPS)
        variance = variance + F.relu(STD_TARGET - std).mean() / 2
        covariance = covariance + (cov.pow(2).sum() - var.pow(2).sum()) / d
    return invariance, variance, covariance


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float, std_coeff: float, cov_coeff: float
) -> torch.Tensor:
    """lambda * invariance + mu * variance + nu * covariance (the paper's Eq. 6)."""
    invariance, variance, covariance = vicreg_terms(z1, z2)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


@METHODS.register("vicreg")
class VICReg(Method):
    config_class = VICRegConfig

    def __init__(self, cfg: VICRegConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        # main_vicreg.py Projector: Linear-BN-ReLU blocks, then a Linear without bias and no output norm.
        # Its hidden Linears carry a bias, which the batch norm after each cancels: dropped here (heads.mlp).
        self.projector = mlp(
            backbone.num_features,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            layers=cfg.proj_layers,
            last_bias=False,
        )

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            if getattr(cfg, name) < 0:
                raise ConfigError(
                    f"method.{name} must be >= 0, got {getattr(cfg, name)}: it weighs a term of the loss "
                    "(VICReg's own: sim_coeff=25 std_coeff=25 cov_coeff=1)"
                )
        if cfg.std_coeff == 0 and cfg.cov_coeff == 0:
            raise ConfigError(
                "method.std_coeff and method.cov_coeff are both 0: the invariance term alone collapses "
                "every image to one embedding; give the variance term a weight, e.g. method.std_coeff=25"
            )
        if cfg.proj_layers < 1:
            raise ConfigError(f"method.proj_layers must be >= 1, got {cfg.proj_layers}")
        if run.train.batch_size < 2:
            raise ConfigError(
                f"VICReg's variance and covariance are statistics over the batch: train.batch_size must be "
                f">= 2, got {run.train.batch_size}"
            )

    def views(self) -> MultiView:
        """augmentations.py TrainTransform: two views of one crop-and-jitter recipe (ssl_crop's defaults:
        jitter 0.4/0.4/0.2/0.1 with p 0.8, greyscale 0.2), blur 1.0 on the first and 0.1 plus
        solarisation 0.2 on the second (BYOL's asymmetry)."""
        return asymmetric_pair(self.data, self.cfg)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views = batch["views"]  # (B, 2, C, H, W)
        # Each view through the network on its own, as VICReg.forward does: every batch norm (the
        # expander's, a ResNet's) normalises one view's batch, not the two views mixed.
        z1, z2 = (self.projector(self.backbone(views[:, i])) for i in range(2))
        invariance, variance, covariance = vicreg_terms(z1, z2)
        cfg = self.cfg
        loss = cfg.sim_coeff * invariance + cfg.std_coeff * variance + cfg.cov_coeff * covariance
        logs = {
            "invariance": invariance.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
        }
        return StepOutput(loss, logs)

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled features and the expander's output, which the loss reads (it ends in no norm)."""
        features = self.backbone(images)
        return {"features": features, "embedding": self.projector(features)}
