"""MoCo v3 (Chen, Xie & He, 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

BYOL's architecture with a contrastive loss (facebookresearch/moco-v3 moco/builder.py MoCo_ViT): a base
encoder (backbone + 3-layer projector) and a predictor (2 layers) on one side, a momentum encoder
(backbone + projector, an EMA of the base's) on the other. Each view's query q = predictor(projector(
backbone(x))) is contrasted with the momentum encoder's keys k of the other view: InfoNCE over the keys of
the whole (cross-rank) batch, the positive being the same image's key, scaled by 2 tau, symmetrised.

Fidelity to the reference:
- Each view runs through the encoders separately (builder.py MoCo.forward: base_encoder(x1),
  base_encoder(x2)), so the heads' batch norms normalise each view over its own (global: the engine syncs
  batch norm across ranks, as main_moco.py's SyncBatchNorm does) batch, not over both views together.
- The ViT is the reference's VisionTransformerMoCo (vits.py), with `vit_init`: a fixed 2-D sin-cos
  position embedding (not trained), q, k and v initialised xavier-uniform each on its own, every other
  linear xavier-uniform with zero bias, the class token N(0, 1e-6) and the patch projection xavier-uniform;
  with `stop_grad_conv1` (--stop-grad-conv1, the paper's Sec. 4.2 "random patch projection" fix for
  training instability) the patch projection stays at that random init: it gets no gradient, so no update
  and no weight decay, and its backward pass is not run (nor metered). The heads keep torch's default init,
  as builder.py builds them after the encoder's init.
- The EMA: the reference updates the momentum encoder with the step's momentum at the start of its
  forward (builder.py MoCo.forward, `_update_momentum_encoder(m)` before the keys), here at the end of the
  step before (on_step_end, as BYOL and DINO): the keys of step i are computed by the same teacher in both,
  its update i-1 -> i using here the momentum of step i-1's clock where the reference uses step i's
  (the reference's first update, at step 0, copies the base onto itself; tests/test_mocov3.py runs both
  orders side by side). The momentum's cosine from `base_momentum` to 1 (main_moco.py
  adjust_moco_momentum, --moco-m-cos) starts by `momentum_rule` (methods/ema.py).
- The momentum encoder averages parameters only (`_update_momentum_encoder`) and keeps its own batch-norm
  statistics; here they are copied from the base (methods/ema.py). The encoders run in training mode, on
  batch statistics, so the loss does not read them; only an eval-mode teacher would.
- Keys are gathered across ranks (methods/distributed.gather) with gradients where the reference's
  concat_all_gather has none: the keys come from the forward-only momentum encoder, so no gradient
  reaches them in the step, and the loss function alone has the single-process gradient in both inputs
  (tests/test_distributed_losses.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from budgetssl.backbones.backbone import Backbone, without_drop_path
from budgetssl.data.info import DataInfo
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import CropConfig, MultiView, asymmetric_pair
from budgetssl.methods.base import Method
from budgetssl.methods.distributed import gather, rank_and_size
from budgetssl.methods.ema import EmaTeacher, TeacherConfig, check_teacher_config
from budgetssl.methods.heads import before_last_norm, mlp
from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.mae import sincos_pos_embed as mae_sincos

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class MoCoV3Config(TeacherConfig, CropConfig):
    """Values in configs/method/mocov3.yaml (cited there); the momentum's fields are TeacherConfig's, the
    crop's CropConfig's."""

    temperature: float = MISSING  # tau of the softmax (main_moco.py --moco-t)
    proj_hidden_dim: int = MISSING  # hidden width of the projector (--moco-mlp-dim)
    proj_dim: int = MISSING  # output width of the projector and the predictor (--moco-dim)
    proj_layers: int = MISSING  # linear layers of the projector (builder.py MoCo_ViT: 3)
    pred_hidden_dim: int = MISSING  # hidden width of the predictor (--moco-mlp-dim)
    pred_layers: int = MISSING  # linear layers of the predictor (MoCo_ViT: 2)
    last_bn: bool = MISSING  # batch norm (no affine) on the projector's and the predictor's outputs
    vit_init: bool = MISSING  # vits.py VisionTransformerMoCo's init and fixed sin-cos position embedding
    stop_grad_conv1: bool = MISSING  # the patch projection frozen at its random init (--stop-grad-conv1)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """moco/builder.py MoCo.contrastive_loss: this rank's queries (N, d) against every rank's keys, both
    L2-normalised, logits q k^T / tau, the positive of query i the key of the same image (index
    N * rank + i), cross-entropy averaged over the queries and scaled by 2 tau (the reference's
    normalisation, which makes the gradient's scale independent of tau)."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    keys = gather(k)
    logits = q @ keys.T / temperature
    rank, _ = rank_and_size()
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
    return F.cross_entropy(logits, labels) * (2 * temperature)


def mocov3_loss(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetrised (builder.py MoCo.forward): view 1's queries against view 2's keys, plus the reverse."""
    return contrastive_loss(q1, k2, temperature) + contrastive_loss(q2, k1, temperature)


def sincos_pos_embed(grid: int, dim: int, prefix: int) -> torch.Tensor:
    """vits.py build_2d_sincos_position_embedding, (prefix + grid^2, dim): for token t of the row-major
    grid, [sin(a w), cos(a w), sin(b w), cos(b w)] with a = t // grid, b = t % grid (the reference's
    `meshgrid(grid_w, grid_h)` names them w and h, but on the ViT's row-major tokens a is the row) and
    w = 1 / 10000^(j / (dim / 4)); prefix (class) tokens get zeros. MAE's embedding with its two halves
    swapped (tests/test_mocov3.py)."""
    if dim % 4:
        raise ConfigError(
            f"method.vit_init's 2-D sin-cos position embedding needs a ViT width divisible by 4, got {dim}; "
            "set method.vit_init=false or pick another backbone"
        )
    mae = mae_sincos(grid, dim, prefix)  # [sin(b w), cos(b w), sin(a w), cos(a w)]
    return torch.cat([mae[:, dim // 2 :], mae[:, : dim // 2]], dim=1)


def init_moco_vit(backbone: Backbone, grid: int) -> None:
    """VisionTransformerMoCo.__init__ (vits.py) on the timm ViT: the fixed sin-cos position embedding
    (no gradient), each linear xavier-uniform with zero bias (the fused qkv as three matrices: bound
    sqrt(6 / (out / 3 + in))), the class token N(0, 1e-6), the patch projection xavier-uniform as a
    linear layer (fan-in 3 p^2) with zero bias."""
    vit = backbone.model
    pos = vit.pos_embed
    prefix = pos.shape[1] - grid * grid
    with torch.no_grad():
        pos.copy_(sincos_pos_embed(grid, pos.shape[2], prefix).unsqueeze(0))
        for name, m in vit.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:
                    bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if getattr(vit, "cls_token", None) is not None:
            nn.init.normal_(vit.cls_token, std=1e-6)
        proj = vit.patch_embed.proj
        bound = math.sqrt(6.0 / (proj.weight[0].numel() + proj.weight.shape[0]))
        nn.init.uniform_(proj.weight, -bound, bound)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
    pos.requires_grad_(False)


@METHODS.register("mocov3")
class MoCoV3(Method):
    config_class = MoCoV3Config
    forward_only = ("teacher",)

    def __init__(self, cfg: MoCoV3Config, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        # Both act on a ViT (check() refuses them on other backbones).
        if cfg.vit_init:
            init_moco_vit(backbone, data.image_size // backbone.patch_size)
        if cfg.stop_grad_conv1:  # vits.py: patch_embed.proj's weight and bias requires_grad = False
            backbone.model.patch_embed.proj.requires_grad_(False)
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
        # builder.py: the momentum encoder starts as a copy of the base encoder (backbone + projector)
        self.teacher = EmaTeacher.of({"backbone": backbone, "projector": self.projector}, cfg)
        without_drop_path(self.teacher.parts["backbone"])

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        check_teacher_config(cfg)
        if cfg.temperature <= 0:
            raise ConfigError(
                f"method.temperature must be > 0 (the reference's is 0.2), got {cfg.temperature}"
            )
        if min(cfg.proj_layers, cfg.pred_layers) < 1:
            raise ConfigError(
                f"method.proj_layers and method.pred_layers must be >= 1 (the reference's are 3 and 2), "
                f"got {cfg.proj_layers} and {cfg.pred_layers}"
            )
        if run.backbone.family != "vit" and (cfg.vit_init or cfg.stop_grad_conv1):
            raise ConfigError(
                f"method.vit_init and method.stop_grad_conv1 act on a ViT's position embedding and patch "
                f"projection, but backbone '{run.backbone.name}' is a {run.backbone.family}; set "
                "method.vit_init=false method.stop_grad_conv1=false, or pick a vit_* backbone"
            )

    def views(self) -> MultiView:
        """main_moco.py augmentation1 and augmentation2 (BYOL's): blur always on the first view, blur 0.1
        and solarisation 0.2 on the second; colour jitter (0.4, 0.4, 0.2, 0.1) at 0.8, greyscale 0.2."""
        return asymmetric_pair(self.data, self.cfg)

    def on_step_start(self, clock: Clock) -> dict[str, float]:
        return {"momentum": self.teacher.schedule(Clock.of(clock).anneal)}

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        views = batch["views"]  # (B, 2, C, H, W); each view on its own, as the reference runs them
        x1, x2 = views[:, 0], views[:, 1]
        q1, q2 = self.query(x1), self.query(x2)
        k1, k2 = self.teacher(x1), self.teacher(x2)
        return StepOutput(mocov3_loss(q1, q2, k1, k2, self.cfg.temperature))

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base encoder's pooled features and its projector's output before the final batch norm."""
        features = self.backbone(images)
        return {"features": features, "embedding": before_last_norm(self.projector, features)}

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        self.teacher.update({"backbone": self.backbone, "projector": self.projector})
        return {}
