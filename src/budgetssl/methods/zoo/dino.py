"""DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Multi-crop: `global_crops` views at the dataset's resolution and `local_crops` smaller ones. The
student sees every crop, the EMA teacher the global ones; the student matches the teacher's centred,
sharpened distribution on every pair of different crops. The teacher temperature warms up linearly
and the momentum rises on a cosine, both over the fraction of budget spent. The head's last layer is
frozen for the first `freeze_last_layer_fraction` of the budget (the reference's freeze_last_layer
epochs over its epochs): its gradients are dropped before clipping and the update, as the reference's
utils.cancel_gradients_last_layer does. On a step's clock (engine/schedule.py) the temperature's warm-up
and the freeze read `warm`, the momentum (and the recipe's weight decay, 0.04 -> 0.4) `anneal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from budgetssl.backbones.backbone import Backbone, without_drop_path
from budgetssl.config.schema import Interpolation
from budgetssl.data.info import DataInfo
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import MultiView, ssl_crop
from budgetssl.methods.base import Method
from budgetssl.methods.distributed import mean_over_ranks
from budgetssl.methods.ema import EmaTeacher, TeacherConfig, check_teacher_config
from budgetssl.methods.heads import DINOHead
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

REFERENCE_LOCAL_RATIO = 96 / 224  # the reference's local crop side over its global crop side


@dataclass
class DINOConfig(TeacherConfig):
    """Values in configs/method/dino.yaml (the reference's, cited there); the momentum's fields are
    TeacherConfig's."""

    global_crops: int = MISSING
    local_crops: int = MISSING
    local_crop_size: int | None = MISSING  # null: 96/224 of the image size, rounded to the patch size
    global_crop_scale: tuple[float, float] = MISSING
    local_crop_scale: tuple[float, float] = MISSING
    out_dim: int = MISSING
    hidden_dim: int = MISSING
    bottleneck_dim: int = MISSING
    norm_last_layer: bool = MISSING  # true: the last layer's weight-norm gain is fixed at 1
    freeze_last_layer_fraction: float = MISSING  # the last layer gets no update before this fraction
    student_temp: float = MISSING
    warmup_teacher_temp: float = MISSING
    teacher_temp: float = MISSING
    warmup_teacher_temp_fraction: float = MISSING
    center_momentum: float = MISSING
    interpolation: Interpolation = MISSING  # resampling of the crops: bicubic (main_dino.py) | bilinear


def local_size(cfg: DINOConfig, image_size: int, patch_size: int | None) -> int:
    if cfg.local_crop_size is not None:
        return cfg.local_crop_size
    step = patch_size or 1
    return max(step, round(image_size * REFERENCE_LOCAL_RATIO / step) * step)


def teacher_temp_at(fraction: float, warmup: float, final: float, warmup_fraction: float) -> float:
    """Linear warm-up of the teacher temperature, then constant (`fraction`: a step's clock.warm)."""
    if warmup_fraction <= 0 or fraction >= warmup_fraction:
        return final
    return warmup + (final - warmup) * fraction / warmup_fraction


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float | torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher and the student, over all pairs of
    different crops (teacher crop i is student crop i: the global crops come first)."""
    targets = [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher]
    logs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, terms = 0.0, 0
    for i, q in enumerate(targets):
        for j, log_p in enumerate(logs):
            if i != j:
                total = total + (-q * log_p).sum(dim=-1).mean()
                terms += 1
    return total / terms


@METHODS.register("dino")
class DINO(Method):
    config_class = DINOConfig
    forward_only = ("teacher",)

    def __init__(self, cfg: DINOConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.head = DINOHead(
            backbone.num_features,
            cfg.out_dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            norm_last_layer=cfg.norm_last_layer,
        )
        self.teacher = EmaTeacher.of({"backbone": backbone, "head": self.head}, cfg)
        without_drop_path(self.teacher.parts["backbone"])  # main_dino.py builds the teacher without it
        self.local_size = local_size(cfg, data.image_size, getattr(backbone, "patch_size", None))
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("teacher_temp", torch.tensor(cfg.warmup_teacher_temp, dtype=torch.float64))

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if cfg.global_crops < 1:
            raise ConfigError(
                f"method.global_crops must be >= 1 (the teacher sees only global crops), "
                f"got {cfg.global_crops}"
            )
        if cfg.global_crops + cfg.local_crops < 2:
            raise ConfigError(
                "DINO needs at least two crops: raise method.global_crops or method.local_crops"
            )
        if cfg.local_crops < 0:
            raise ConfigError(f"method.local_crops must be >= 0, got {cfg.local_crops}")
        size = local_size(cfg, run.dataset.image_size, run.backbone.patch_size)
        if not 0 < size <= run.dataset.image_size:
            raise ConfigError(
                f"method.local_crop_size={size} must be in (0, dataset.image_size={run.dataset.image_size}]"
            )
        if run.backbone.patch_size and size % run.backbone.patch_size:
            raise ConfigError(
                f"method.local_crop_size={size} is not a multiple of "
                f"backbone.patch_size={run.backbone.patch_size}"
            )
        for name in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(cfg, name)
            if not 0 < lo <= hi <= 1:
                raise ConfigError(
                    f"method.{name} must be [min, max] with 0 < min <= max <= 1, got {[lo, hi]}"
                )
        for name in ("student_temp", "warmup_teacher_temp", "teacher_temp"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"method.{name} must be > 0, got {getattr(cfg, name)}")
        for name in ("warmup_teacher_temp_fraction", "freeze_last_layer_fraction"):
            if not 0 <= getattr(cfg, name) <= 1:
                raise ConfigError(f"method.{name} must be in [0, 1], got {getattr(cfg, name)}")
        if not 0 <= cfg.center_momentum <= 1:
            raise ConfigError(f"method.center_momentum must be in [0, 1], got {cfg.center_momentum}")
        check_teacher_config(cfg)

    def views(self) -> MultiView:
        cfg, size = self.cfg, self.data.image_size
        blur = [1.0, 0.1] + [0.5] * max(cfg.global_crops - 2, 0)
        solarize = [0.0, 0.2] + [0.0] * max(cfg.global_crops - 2, 0)
        resample = cfg.interpolation
        globals_ = [
            ssl_crop(
                self.data,
                size,
                cfg.global_crop_scale,
                blur_p=blur[i],
                solarize_p=solarize[i],
                interpolation=resample,
            )
            for i in range(cfg.global_crops)
        ]
        local = ssl_crop(self.data, self.local_size, cfg.local_crop_scale, blur_p=0.5, interpolation=resample)
        return MultiView({"global": globals_, "local": [local] * cfg.local_crops})

    def on_step_start(self, clock: Clock) -> dict[str, float]:
        cfg, clock = self.cfg, Clock.of(clock)
        temp = teacher_temp_at(
            clock.warm, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_fraction
        )
        self.teacher_temp.fill_(temp)
        return {"teacher_temp": temp, "momentum": self.teacher.schedule(clock.anneal)}

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        student = []
        global_crops = batch["global"].transpose(0, 1)  # (G, B, C, H, W)
        x = global_crops.flatten(0, 1)
        student += self.head(self.backbone(x)).chunk(global_crops.shape[0])
        if "local" in batch:
            local_crops = batch["local"].transpose(0, 1)
            student += self.head(self.backbone(local_crops.flatten(0, 1))).chunk(local_crops.shape[0])
        t = self.teacher(x)
        loss = dino_loss(
            student,
            list(t.chunk(global_crops.shape[0])),
            self.center,
            self.cfg.student_temp,
            self.teacher_temp,  # a tensor: no wait for the device to read it
        )
        self.update_center(t)
        return StepOutput(loss)

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student's pooled features, its head's bottleneck (before the L2 norm and the prototypes),
        and both sides' logits on the same images as the loss compares them: the teacher's centred and
        over the current teacher temperature, the student's over its temperature."""
        features = self.backbone(images)
        bottleneck = self.head.mlp(features)
        student = self.head.last(F.normalize(bottleneck, dim=-1))
        teacher = (self.teacher(images) - self.center) / self.teacher_temp.to(images.dtype)
        return {
            "features": features,
            "embedding": bottleneck,
            "teacher_logits": teacher,
            "student_logits": student / self.cfg.student_temp,
        }

    def on_after_backward(self, clock: Clock) -> None:
        """Drop the last layer's gradients while it is frozen (main_dino.py: cancel_gradients_last_layer
        after backward, before the optimizer step); an optimizer skips a parameter without a gradient,
        so it gets neither an update nor weight decay."""
        if Clock.of(clock).warm < self.cfg.freeze_last_layer_fraction:
            for p in self.head.last.parameters():
                p.grad = None

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = mean_over_ranks(teacher_out.mean(dim=0, keepdim=True))
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        self.teacher.update({"backbone": self.backbone, "head": self.head})
        return {}
