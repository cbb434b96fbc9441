"""Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Two asymmetric views per image (BYOL's), one backbone and a wide projector (8192-8192-8192) shared by
both, and a loss on the cross-correlation of the two views' embeddings, each standardised over the batch:
its diagonal pulled to 1 (invariance), its off-diagonal to 0 (redundancy reduction, weighted by lambd).
No negatives, no predictor, no teacher: every module trains. Written from the official code,
facebookresearch/barlowtwins main.py (BarlowTwins, LARS, adjust_learning_rate, Transform).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from omegaconf import MISSING

from budgetssl.backbones.backbone import Backbone
from budgetssl.config.schema import NoWeightDecay
from budgetssl.data.info import DataInfo
from budgetssl.engine.recipe import param_groups
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import CropConfig, MultiView, asymmetric_pair
from budgetssl.methods.base import Method
from budgetssl.methods.distributed import rank_and_size, sum_over_ranks
from budgetssl.methods.heads import mlp
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

# nn.BatchNorm1d's default eps: the reference standardises each embedding with
# `nn.BatchNorm1d(sizes[-1], affine=False)` (main.py BarlowTwins.bn), so (z - mean) / sqrt(var + eps).
BN_EPS = 1e-5


@dataclass
class BarlowTwinsConfig(CropConfig):
    """Values in configs/method/barlowtwins.yaml and resnet/barlowtwins.yaml (cited there); the crop's
    fields are CropConfig's."""

    lambd: float = MISSING  # weight of the off-diagonal (redundancy) term; main.py --lambd
    proj_hidden_dim: int = MISSING  # main.py --projector 8192-8192-8192: the hidden widths
    proj_dim: int = MISSING  # ... and the last: the cross-correlation is proj_dim x proj_dim
    proj_layers: int = MISSING  # linear layers of the projector (3 in main.py's default)
    # lr of biases and norm parameters (every 1-d parameter) relative to the weights': main.py's
    # --learning-rate-biases / --learning-rate-weights = 0.0048 / 0.2 on ResNet-50; 1 keeps one lr.
    bias_lr_scale: float = MISSING


def standardise(z: torch.Tensor, total: int) -> torch.Tensor:
    """Each dimension of `z` (n, d) to zero mean and unit variance over the global batch of `total`
    samples, as the reference's `BatchNorm1d(affine=False)` does in training mode once DDP's
    SyncBatchNorm makes its statistics global (biased variance, eps inside the root). The statistics
    are sums over ranks with gradients, as SyncBatchNorm's backward carries them."""
    mean = sum_over_ranks(z.sum(0)) / total
    var = sum_over_ranks((z - mean).pow(2).sum(0)) / total
    return (z - mean) / torch.sqrt(var + BN_EPS)


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened (main.py off_diagonal)."""
    n, m = c.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got {n} x {m}")
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def without_autocast(device: torch.device) -> AbstractContextManager:
    """Autocast off for what runs inside, where it is on (a meta tensor's device has no autocast)."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The (d, d) cross-correlation of two views' embeddings (n, d) over the global batch:
    standardise each, then bn(z1).T @ bn(z2) / N summed over ranks (main.py BarlowTwins.forward's
    `c.div_(batch_size); all_reduce(c)`). Here `sum_over_ranks` carries the sum's gradient to every
    rank, so a step equals one process's on the whole batch (methods/distributed.py says how the
    reference's plain all_reduce differs: its gradients are 1/world of these, which LARS's trust ratio
    absorbs for the weights but not for the unadapted biases and norms). Runs in float32 at least,
    where the reference's ran in fp16 under torch.cuda.amp: in bf16 the diagonal's entries near 1 would
    be rounded to 2^-8, the size of what the invariance term measures."""
    _, size = rank_and_size()
    total = z1.shape[0] * size  # the engine hands every rank the same share of the global batch
    with without_autocast(z1.device):
        wide = torch.promote_types(z1.dtype, torch.float32)  # float32 at least (float64 stays)
        a, b = standardise(z1.to(wide), total), standardise(z2.to(wide), total)
        return sum_over_ranks(a.T @ b / total)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 on the global cross-correlation C (Eq. 1;
    main.py BarlowTwins.forward)."""
    c = cross_correlation(z1, z2)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


@METHODS.register("barlowtwins")
class BarlowTwins(Method):
    config_class = BarlowTwinsConfig

    def __init__(self, cfg: BarlowTwinsConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        # main.py: Linear (no bias) - BatchNorm1d - ReLU blocks, then a Linear without bias and no norm.
        self.projector = mlp(
            backbone.num_features,
            cfg.proj_hidden_dim,
            cfg.proj_dim,
            layers=cfg.proj_layers,
            last_bn=False,
            last_bias=False,
        )

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if cfg.lambd < 0:
            raise ConfigError(
                f"method.lambd (the off-diagonal weight) must be >= 0, e.g. 0.0051; got {cfg.lambd}"
            )
        if cfg.proj_layers < 1:
            raise ConfigError(
                f"method.proj_layers must be >= 1, e.g. method.proj_layers=3; got {cfg.proj_layers}"
            )
        if min(cfg.proj_hidden_dim, cfg.proj_dim) < 1:
            raise ConfigError("method.proj_hidden_dim and method.proj_dim must be >= 1, e.g. 8192")
        if cfg.bias_lr_scale <= 0:
            raise ConfigError(
                f"method.bias_lr_scale (the biases' and norms' lr relative to the weights') must be > 0, "
                f"e.g. 1 (one lr) or 0.024 (the reference's 0.0048 / 0.2); got {cfg.bias_lr_scale}"
            )
        if cfg.bias_lr_scale != 1 and list(run.train.no_weight_decay) != [NoWeightDecay.biases_norms]:
            raise ConfigError(
                "method.bias_lr_scale != 1 gives the 1-d parameters (biases, norms) their own lr, and that "
                "group is the one without weight decay, as in the reference's LARS: set "
                "train.no_weight_decay=[biases_norms] or method.bias_lr_scale=1"
            )
        if run.train.batch_size < 2:
            raise ConfigError(
                "Barlow Twins standardises each embedding dimension over the batch: train.batch_size must be "
                f">= 2 (the reference's is 2048); got {run.train.batch_size}"
            )

    def views(self) -> MultiView:
        """main.py Transform: BYOL's asymmetric pair (blur 1.0 / 0.1, solarisation 0 / 0.2, colour
        jitter 0.4/0.4/0.2/0.1 at p 0.8, greyscale 0.2): ssl_crop's defaults."""
        return asymmetric_pair(self.data, self.cfg)

    def param_groups(self, weight_decay: float) -> list[dict] | None:
        """The reference's two LARS groups when the biases get their own lr: every 1-d parameter
        (biases, norms) without weight decay at `bias_lr_scale` of the lr, the rest decayed (main.py:
        param_biases / param_weights by `param.ndim == 1`). With one lr, the recipe's own grouping."""
        if self.cfg.bias_lr_scale == 1:
            return None
        groups = param_groups(self, weight_decay, [NoWeightDecay.biases_norms])
        return [g if g["decay"] else {**g, "lr_scale": self.cfg.bias_lr_scale} for g in groups]

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views = batch["views"]  # (B, 2, C, H, W)
        # Each view through the backbone and the projector on its own, as main.py does: their batch
        # norms (the projector's, a ResNet's) take each view's statistics, not the pair's.
        z1 = self.projector(self.backbone(views[:, 0]))
        z2 = self.projector(self.backbone(views[:, 1]))
        return StepOutput(barlow_twins_loss(z1, z2, self.cfg.lambd))

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled features and the projector's output (it ends without a batch norm; the loss's
        standardisation is not part of it)."""
        features = self.backbone(images)
        return {"features": features, "embedding": self.projector(features)}
