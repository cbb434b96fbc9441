"""iBOT (Zhou et al., ICLR 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer").

DINO (methods/zoo/dino.py) plus masked image modelling with the EMA teacher as the online tokenizer.
The student sees every crop, its global crops with a block-wise mask: the masked patches' embeddings
are replaced by a learnt mask token (backbones/ `mask=`). The teacher sees the same global crops
unmasked. Two losses, as bytedance/ibot main_ibot.py iBOTLoss computes them:
- [CLS]: DINO's cross-entropy between the teacher's centred, sharpened [CLS] distribution and the
  student's, over every pair of different crops (dino.dino_loss, reused);
- patches: on each global crop, the cross-entropy between the teacher's patch distribution (centred by
  its own centre, its own temperature) and the masked student's at the same position, averaged over the
  masked patches of each image (an image with none masked adds 0), then over images and crops.
The patch logits come from the head's shared last layer (`shared_head`, the published recipe) or a
second weight-normalised layer of `patch_out_dim` prototypes (student and teacher alike; the reference's
default of a shared teacher head beside a separate student one is not offered). The [CLS] role is the
ViT's class token, as in the reference (whatever the backbone's pooling; the transfer reads the pooled
features). Local crops are projected at their class token only: the reference's MultiCropWrapper also
projects their patch tokens and discards them (the same loss at fewer FLOPs).

Masks are drawn per sample in the data path (a view's field, `masks` (G, N) bool), as the reference's
ImageFolderMask does: each global crop draws a prediction ratio (one of `pred_ratio`, each widened by
its `pred_ratio_var`: [0, 0.3] +- [0, 0.2] masks half the crops, with 10-50% of their patches) and a
BEiT-style block mask of that area (`pred_shape=block`) or a random subset (`rand`).

Reused from DINO: its views, temperature schedule (a second one for the patches), centring (the patch
centre is the mean over images of each image's mean patch logit), frozen last layer (both layers), EMA
teacher and its momentum rule.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from budgetssl.backbones.backbone import Backbone, without_drop_path
from budgetssl.data.info import DataInfo
from budgetssl.data.sampler import seeded
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import MultiView
from budgetssl.methods.base import Method
from budgetssl.methods.distributed import mean_over_ranks
from budgetssl.methods.ema import EmaTeacher
from budgetssl.methods.heads import DINOHead, WeightNormLinear
from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.dino import DINO, DINOConfig, dino_loss, local_size, teacher_temp_at

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

SHAPES = ("block", "rand")


@dataclass
class IBOTConfig(DINOConfig):
    """Values in configs/method/ibot.yaml (cited there); DINO's fields are DINOConfig's."""

    patch_out_dim: int = MISSING  # patch prototypes; equal to out_dim with shared_head
    shared_head: bool = MISSING  # true: patches share the [CLS] head's last layer
    pred_ratio: list[float] = MISSING  # candidate masking ratios, one drawn per global crop
    pred_ratio_var: list[float] = MISSING  # each ratio drawn uniformly in ratio +- var (0: exact)
    pred_aspect_ratio: tuple[float, float] = MISSING  # a block's aspect-ratio range (log-uniform)
    pred_shape: str = MISSING  # block | rand
    warmup_teacher_patch_temp: float = MISSING
    teacher_patch_temp: float = MISSING  # warmed up over warmup_teacher_temp_fraction, as the [CLS]'s
    center_momentum2: float = MISSING  # the patch centre's momentum
    lambda1: float = MISSING  # weight of the [CLS] loss
    lambda2: float = MISSING  # weight of the patch loss


def block_mask(h: int, w: int, ratio: float, aspect: tuple[float, float], rng: random.Random) -> torch.Tensor:
    """A BEiT-style block mask of about `ratio` of an (h, w) grid, (h, w) bool: bytedance/ibot
    loader.py ImageFolderMask.__getitem__ (pred_shape 'block'), written out with `rng` for `random`."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    high, count = ratio * h * w, 0
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    while count < high:
        most = high - count
        delta = 0
        for _ in range(10):
            low = (min(h, w) // 3) ** 2
            area = rng.uniform(low, most)
            a = math.exp(rng.uniform(*log_aspect))
            bh, bw = int(round(math.sqrt(area * a))), int(round(math.sqrt(area / a)))
            if bw < w and bh < h:
                top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                new = bh * bw - int(mask[top : top + bh, left : left + bw].sum())
                if 0 < new <= most:
                    mask[top : top + bh, left : left + bw] = True
                    delta += new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


@dataclass(frozen=True)
class Masking:
    """Draws each global crop's mask (ImageFolderMask.get_pred_ratio then the mask), from one torch
    draw per sample (so the data path's torch seeding makes it reproducible)."""

    grid: int
    crops: int
    ratios: tuple[float, ...]
    ratio_vars: tuple[float, ...]
    aspect: tuple[float, float]
    shape: str

    def ratio(self, rng: random.Random) -> float:
        drawn = [
            rng.uniform(r - v, r + v) if v > 0 else r
            for r, v in zip(self.ratios, self.ratio_vars, strict=True)
        ]
        return rng.choice(drawn)

    def mask(self, rng: random.Random) -> torch.Tensor:
        ratio, n = self.ratio(rng), self.grid * self.grid
        if self.shape == "block":
            return block_mask(self.grid, self.grid, ratio, self.aspect, rng).flatten()
        hidden = torch.zeros(n, dtype=torch.bool)
        order = list(range(n))
        rng.shuffle(order)
        hidden[order[: int(ratio * n)]] = True
        return hidden

    def __call__(self) -> torch.Tensor:
        rng = random.Random(int(torch.randint(0, 2**62, ())))
        return torch.stack([self.mask(rng) for _ in range(self.crops)])


class MaskedMultiView(MultiView):
    """DINO's crops and, as a field, the global crops' masks {"masks": (G, N) bool}."""

    def __init__(self, groups: dict[str, list], masking: Masking) -> None:
        super().__init__(groups)
        self.masking = masking

    def fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"masks": self.masking()}

    def batch_fields(self, batch: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
        return {"masks": torch.stack([seeded(seed, self.masking) for seed in seeds])}


class IBOTHead(DINOHead):
    """iBOT's head (models/head.py iBOTHead): DINO's head on one vector; on tokens (B, T, D), prefix
    first, the class token's logits through the last layer and the patches' through `last2` (the same
    layer when shared)."""

    def __init__(self, in_dim: int, cfg: IBOTConfig, prefix: int) -> None:
        super().__init__(
            in_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, norm_last_layer=cfg.norm_last_layer
        )
        self.prefix = prefix
        self.last2 = (
            None
            if cfg.shared_head
            else WeightNormLinear(cfg.bottleneck_dim, cfg.patch_out_dim, fixed_gain=cfg.norm_last_layer)
        )

    def forward(self, x: torch.Tensor) -> Any:
        if x.dim() == 2:
            return super().forward(x)
        z = F.normalize(self.mlp(x), dim=-1)
        patch_layer = self.last if self.last2 is None else self.last2
        return self.last(z[:, 0]), patch_layer(z[:, self.prefix :])

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (..., D) through the MLP and the patch prototypes (DINOv2's gathered patches)."""
        return (self.last if self.last2 is None else self.last2)(F.normalize(self.mlp(x), dim=-1))

    def last_layers(self) -> list[nn.Module]:
        return [self.last] + ([self.last2] if self.last2 is not None else [])


def ibot_patch_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    masks: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float | torch.Tensor,
) -> torch.Tensor:
    """main_ibot.py iBOTLoss, its patch term: per global crop (B, N, K) logits and (B, N) masks, the
    cross-entropy at each masked position, averaged per image over its masked patches (clamped at 1),
    then over images, then over crops."""
    total = 0.0
    for s, t, m in zip(student, teacher, masks, strict=True):
        q = F.softmax((t - center) / teacher_temp, dim=-1).detach()
        ce = (-q * F.log_softmax(s / student_temp, dim=-1)).sum(dim=-1)
        m = m.to(ce.dtype)
        total = total + ((ce * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()
    return total / len(student)


def ibot_loss(
    student_cls: list[torch.Tensor],
    student_patch: list[torch.Tensor],
    teacher_cls: list[torch.Tensor],
    teacher_patch: list[torch.Tensor],
    masks: list[torch.Tensor],
    centers: tuple[torch.Tensor, torch.Tensor],
    student_temp: float,
    temps: tuple[float | torch.Tensor, float | torch.Tensor],
    lambdas: tuple[float, float] = (1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, [CLS] term, patch term): lambda1 * DINO's loss on the [CLS] logits (every crop, global
    first) + lambda2 * the patch loss on the global crops."""
    cls = lambdas[0] * dino_loss(student_cls, teacher_cls, centers[0], student_temp, temps[0])
    patch = lambdas[1] * ibot_patch_loss(
        student_patch, teacher_patch, masks, centers[1], student_temp, temps[1]
    )
    return cls + patch, cls, patch


@METHODS.register("ibot")
class IBOT(DINO):
    config_class = IBOTConfig
    forward_only = ("teacher",)

    def __init__(self, cfg: IBOTConfig, backbone: Backbone, data: DataInfo) -> None:
        Method.__init__(self, cfg, backbone, data)  # DINO's parts, but iBOT's head and a mask token
        self.head = IBOTHead(backbone.num_features, cfg, backbone.num_prefix_tokens)
        # models/vision_transformer.py: masked_embed = nn.Parameter(torch.zeros(1, embed_dim)), 2-d so
        # utils.get_params_groups decays it; it lives here, the backbone stays a plain timm model.
        self.mask_token = nn.Parameter(torch.zeros(1, backbone.num_features))
        self.teacher = EmaTeacher.of({"backbone": backbone, "head": self.head}, cfg)
        without_drop_path(self.teacher.parts["backbone"])  # main_ibot.py builds the teacher without it
        self.grid = data.image_size // backbone.patch_size
        self.local_size = local_size(cfg, data.image_size, backbone.patch_size)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, self.patch_dim))
        self.register_buffer("teacher_temp", torch.tensor(cfg.warmup_teacher_temp, dtype=torch.float64))
        self.register_buffer(
            "teacher_patch_temp", torch.tensor(cfg.warmup_teacher_patch_temp, dtype=torch.float64)
        )

    @property
    def patch_dim(self) -> int:
        return self.cfg.out_dim if self.cfg.shared_head else self.cfg.patch_out_dim

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if run.backbone.family != "vit":
            raise ConfigError(
                f"method 'ibot' masks patch tokens and needs a ViT backbone, but backbone "
                f"'{run.backbone.name}' is a {run.backbone.family}; pick backbone=vit_base (or another vit_*)"
            )
        DINO.check(run)
        if cfg.shared_head and cfg.patch_out_dim != cfg.out_dim:
            raise ConfigError(
                f"method.shared_head=true projects patches with the [CLS] head's last layer, so "
                f"method.patch_out_dim={cfg.patch_out_dim} must equal method.out_dim={cfg.out_dim}; "
                "set them equal or method.shared_head=false"
            )
        if len(cfg.pred_ratio) < 1 or len(cfg.pred_ratio) != len(cfg.pred_ratio_var):
            raise ConfigError(
                f"method.pred_ratio {list(cfg.pred_ratio)} and method.pred_ratio_var "
                f"{list(cfg.pred_ratio_var)} must be non-empty lists of one length "
                "(one variance per ratio, 0 for exact)"
            )
        for r, v in zip(cfg.pred_ratio, cfg.pred_ratio_var, strict=True):
            if not (0 <= v <= r and r + v < 1):
                raise ConfigError(
                    f"method.pred_ratio {r} +- method.pred_ratio_var {v} must stay in [0, 1) with "
                    "var <= ratio (the reference's [0, 0.3] +- [0, 0.2] masks 10-50% of half the crops)"
                )
        lo, hi = cfg.pred_aspect_ratio
        if not 0 < lo <= hi:
            raise ConfigError(
                f"method.pred_aspect_ratio must be [min, max] with 0 < min <= max, got {[lo, hi]}"
            )
        if cfg.pred_shape not in SHAPES:
            raise ConfigError(f"method.pred_shape must be one of {', '.join(SHAPES)}, got {cfg.pred_shape!r}")
        for name in ("warmup_teacher_patch_temp", "teacher_patch_temp"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"method.{name} must be > 0, got {getattr(cfg, name)}")
        if not 0 <= cfg.center_momentum2 <= 1:
            raise ConfigError(f"method.center_momentum2 must be in [0, 1], got {cfg.center_momentum2}")
        if cfg.lambda1 < 0 or cfg.lambda2 < 0 or cfg.lambda1 + cfg.lambda2 == 0:
            raise ConfigError(
                f"method.lambda1={cfg.lambda1} and method.lambda2={cfg.lambda2} must be >= 0, not both 0"
            )

    def masking(self) -> Masking:
        cfg = self.cfg
        return Masking(
            self.grid,
            cfg.global_crops,
            tuple(cfg.pred_ratio),
            tuple(cfg.pred_ratio_var),
            tuple(cfg.pred_aspect_ratio),  # type: ignore[arg-type]
            cfg.pred_shape,
        )

    def views(self) -> MaskedMultiView:
        return MaskedMultiView(super().views().groups(), self.masking())

    def on_step_start(self, clock: Clock) -> dict[str, float]:
        logs = super().on_step_start(clock)
        cfg = self.cfg
        temp = teacher_temp_at(
            Clock.of(clock).warm,
            cfg.warmup_teacher_patch_temp,
            cfg.teacher_patch_temp,
            cfg.warmup_teacher_temp_fraction,
        )
        self.teacher_patch_temp.fill_(temp)
        return {**logs, "teacher_patch_temp": temp}

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        global_crops = batch["global"].transpose(0, 1)  # (G, B, C, H, W)
        crops = global_crops.shape[0]
        x = global_crops.flatten(0, 1)
        masks = batch["masks"].transpose(0, 1).flatten(0, 1)  # (G B, N)
        tokens = self.backbone(x, readout="tokens", mask=masks, mask_token=self.mask_token)
        s_cls, s_patch = self.head(tokens)
        student_cls = list(s_cls.chunk(crops))
        if "local" in batch:
            local_crops = batch["local"].transpose(0, 1)
            local_tokens = self.backbone(local_crops.flatten(0, 1), readout="tokens")
            student_cls += self.head(local_tokens[:, 0]).chunk(local_crops.shape[0])
        t_cls, t_patch = self.teacher(x, readout="tokens")
        loss, cls, patch = ibot_loss(
            student_cls,
            list(s_patch.chunk(crops)),
            list(t_cls.chunk(crops)),
            list(t_patch.chunk(crops)),
            list(masks.chunk(crops)),
            (self.center, self.center2),
            self.cfg.student_temp,
            (self.teacher_temp, self.teacher_patch_temp),  # tensors: no wait for the device
            (self.cfg.lambda1, self.cfg.lambda2),
        )
        self.update_centers(t_cls, t_patch)
        return StepOutput(loss, {"cls_loss": cls.detach(), "patch_loss": patch.detach()})

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled features (what the transfer reads), the class token's bottleneck and both sides'
        [CLS] logits as the loss compares them (the teacher's centred, over the current temperature)."""
        cls = self.backbone(images, readout="tokens")[:, 0]
        bottleneck = self.head.mlp(cls)
        student = self.head.last(F.normalize(bottleneck, dim=-1))
        t_cls, _ = self.teacher(images, readout="tokens")
        return {
            "features": self.backbone(images),
            "embedding": bottleneck,
            "teacher_logits": (t_cls - self.center) / self.teacher_temp.to(images.dtype),
            "student_logits": student / self.cfg.student_temp,
        }

    def on_after_backward(self, clock: Clock) -> None:
        """Both last layers frozen at the start (main_ibot.py utils.cancel_gradients_last_layer drops
        every parameter named last_layer*)."""
        if Clock.of(clock).warm < self.cfg.freeze_last_layer_fraction:
            for layer in self.head.last_layers():
                for p in layer.parameters():
                    p.grad = None

    @torch.no_grad()
    def update_centers(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        """main_ibot.py iBOTLoss.update_center: the batch means over every rank (mean_over_ranks)."""
        cfg = self.cfg
        cls_center = mean_over_ranks(teacher_cls.mean(dim=0, keepdim=True))
        self.center.mul_(cfg.center_momentum).add_(cls_center, alpha=1 - cfg.center_momentum)
        patch_center = mean_over_ranks(teacher_patch.mean(dim=1).mean(dim=0, keepdim=True).unsqueeze(1))
        self.center2.mul_(cfg.center_momentum2).add_(patch_center, alpha=1 - cfg.center_momentum2)
