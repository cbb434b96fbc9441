"""DINOv2 (Oquab et al., 2023, TMLR, "DINOv2: Learning Robust Visual Features without Supervision").

iBOT (methods/zoo/ibot.py) as facebookresearch/dinov2 dinov2/train/ssl_meta_arch.py trains it, with:
- the KoLeo regulariser (dinov2/loss/koleo_loss.py) on the student backbone's class tokens, per global crop;
- batch-level masks (dinov2/data/collate.py collate_data_and_cast): exactly int(2B * mask_probability) of
  the 2B global crops are masked, the i-th with a ratio drawn in the i-th of equal slices of
  `mask_ratio`, by dinov2/data/masking.py MaskingGenerator, then shuffled over the batch;
- heads on the masked patches only: their tokens gathered into a buffer of the batch's `upperbound`
  (the sum of each masked crop's largest possible count, fixed by the batch size), so a step costs the
  same whatever the draw, as in the reference;
- the teacher's targets centred by the Sinkhorn-Knopp normalisation (`centering: sinkhorn_knopp`,
  dino_clstoken_loss.py / ibot_patch_loss.py sinkhorn_knopp_teacher, its sums over every rank) or by
  DINO's softmax centre (`centering`), one teacher temperature for both.
The values of the [CLS] and patch losses equal iBOT's (dino.dino_loss's pairs of different crops, the
per-image mean over masked patches), reused here with the targets precomputed.

The masks are drawn in forward (the reference draws them in its collate), on the host with numpy and a
`random.Random` seeded by the run's torch seed, whose state is part of the state_dict (extra state), so a
resumed run draws the uninterrupted run's masks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from budgetssl.backbones.backbone import Backbone, without_drop_path
from budgetssl.data.info import DataInfo
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.base import Method
from budgetssl.methods.distributed import mean_over_ranks, sum_over_ranks
from budgetssl.methods.ema import EmaTeacher
from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.dino import DINO, DINOConfig, local_size
from budgetssl.methods.zoo.ibot import IBOTHead

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

CENTERINGS = ("sinkhorn_knopp", "centering")


@dataclass
class DINOv2Config(DINOConfig):
    """Values in configs/method/dinov2.yaml (cited there); DINO's fields are DINOConfig's (the
    teacher temperature serves both losses)."""

    shared_head: bool = MISSING  # true: patches share the [CLS] head (ibot.separate_head false)
    patch_out_dim: int = MISSING  # the separate patch head's prototypes (read with shared_head false)
    mask_probability: float = MISSING  # share of the global crops masked
    mask_ratio: tuple[float, float] = MISSING  # the masked crops' ratios span [min, max]
    mask_min_patches: int = MISSING  # a block's smallest area, in patches
    mask_max_block: float = MISSING  # a block's largest area, as a share of the patches
    mask_aspect: float = MISSING  # a block's aspect ratio in [this, 1 / this] (log-uniform)
    centering: str = MISSING  # sinkhorn_knopp | centering
    sinkhorn_iterations: int = MISSING
    dino_weight: float = MISSING
    ibot_weight: float = MISSING
    koleo_weight: float = MISSING


class MaskingGenerator:
    """dinov2/data/masking.py MaskingGenerator, written with `rng` for `random` (numpy masks, as there:
    drawn on the host without a torch op, so a step on the device never waits to read them)."""

    def __init__(self, grid: int, min_patches: int, max_patches: float, aspect: float) -> None:
        self.grid, self.min_patches, self.max_patches = grid, min_patches, max_patches
        self.log_aspect = (math.log(aspect), math.log(1 / aspect))

    def _mask(self, mask: np.ndarray, most: float, rng: random.Random) -> int:
        delta = 0
        for _ in range(10):
            area = rng.uniform(self.min_patches, most)
            a = math.exp(rng.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(area * a))), int(round(math.sqrt(area / a)))
            if w < self.grid and h < self.grid:
                top, left = rng.randint(0, self.grid - h), rng.randint(0, self.grid - w)
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= most:
                    mask[top : top + h, left : left + w] = True
                    delta += new
                if delta > 0:
                    break
        return delta

    def __call__(self, count: int, rng: random.Random) -> np.ndarray:
        mask = np.zeros((self.grid, self.grid), dtype=bool)
        done = 0
        while done < count:
            delta = self._mask(mask, min(count - done, self.max_patches), rng)
            if delta == 0:
                break
            done += delta
        return mask


def batch_masks(
    crops: int,
    generator: MaskingGenerator,
    ratio: tuple[float, float],
    probability: float,
    rng: random.Random,
) -> tuple[np.ndarray, int]:
    """collate_data_and_cast's masks: ((crops, N) bool, upperbound)."""
    n = generator.grid**2
    masked = int(crops * probability)
    edges = np.linspace(ratio[0], ratio[1], masked + 1, dtype=np.float32).tolist()  # torch.linspace's float32
    masks, upperbound = [], 0
    for i in range(masked):
        masks.append(generator(int(n * rng.uniform(edges[i], edges[i + 1])), rng))
        upperbound += int(n * edges[i + 1])
    masks += [generator(0, rng) for _ in range(masked, crops)]
    rng.shuffle(masks)
    return np.stack(masks).reshape(crops, -1), upperbound


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, temp: float | torch.Tensor, iterations: int, count=None
) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp as dinov2's sinkhorn_knopp_teacher: (M, K) logits -> (M, K) assignments whose
    rows sum to 1 and whose prototypes share the global batch equally; every sum runs over all ranks
    (sum_over_ranks, as the reference's dist.all_reduce). `count`: the global number of rows (the
    masked patches of every rank, for the patch loss); by default M times the world size."""
    # the reference's teacher_output.float(): half precision up to float32 (float64 kept, as in tests)
    q = torch.exp(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temp).t()  # (K, M)
    rows = q.shape[1]
    total = sum_over_ranks(torch.tensor(float(rows), device=q.device)) if count is None else count
    k = q.shape[0]
    q = q / sum_over_ranks(q.sum())
    for _ in range(iterations):
        q = q / sum_over_ranks(q.sum(dim=1, keepdim=True)) / k
        q = q / q.sum(dim=0, keepdim=True) / total
    return (q * total).t()


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """dinov2/loss/koleo_loss.py: minus the mean log distance of each L2-normalised row to its nearest
    neighbour in the batch (Sablayrolles et al. 2019)."""
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-1)
        nearest = dots.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest], p=2, eps=eps) + eps).mean()


def cross_entropy_pairs(
    student: list[torch.Tensor], targets: list[torch.Tensor], student_temp: float
) -> torch.Tensor:
    """DINO's loss on precomputed targets: the mean over pairs of different crops (teacher crop i is
    student crop i) of the batch-mean cross-entropy; ssl_meta_arch.py's global and local terms over
    (n_global_crops_loss_terms + n_local_crops_loss_terms) sum to this."""
    total, terms = 0.0, 0
    logs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    for i, q in enumerate(targets):
        for j, log_p in enumerate(logs):
            if i != j:
                total = total + (-q * log_p).sum(dim=-1).mean()
                terms += 1
    return total / terms


def masked_patch_loss(
    student: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, images: int, student_temp: float
) -> torch.Tensor:
    """ibot_patch_loss.py forward_masked: the masked patches' cross-entropies weighted 1 / (their image's
    masked count), summed, over the number of images (global crops)."""
    ce = (-targets * F.log_softmax(student / student_temp, dim=-1)).sum(dim=-1)
    return (ce * weights).sum() / images


class DINOv2Teacher(EmaTeacher):
    """The EMA teacher's step as ssl_meta_arch.py get_teacher_output runs it (one call, so the meter books
    it under the teacher): class tokens through the head, the masked patches gathered into the
    `upperbound` buffer and through the (patch) head."""

    @torch.no_grad()
    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None, upperbound: int = 0):  # type: ignore[override]
        backbone, head = self.parts["backbone"], self.parts["head"]
        if index is None:
            return head(backbone(x, readout="tokens")[:, 0])
        tokens = backbone(x, readout="tokens")
        return head(tokens[:, 0]), head.patch_logits(gathered(tokens[:, head.prefix :], index, upperbound))


def gathered(patches: torch.Tensor, index: torch.Tensor, upperbound: int) -> torch.Tensor:
    """The masked patch tokens (flat `index` into (B N)) in a zero buffer of `upperbound` rows."""
    flat = patches.flatten(0, 1)
    buffer = flat.new_zeros(upperbound, flat.shape[-1])
    return torch.cat([torch.index_select(flat, 0, index), buffer[index.shape[0] :]])


@METHODS.register("dinov2")
class DINOv2(DINO):
    config_class = DINOv2Config
    forward_only = ("teacher",)

    def __init__(self, cfg: DINOv2Config, backbone: Backbone, data: DataInfo) -> None:
        Method.__init__(self, cfg, backbone, data)
        self.head = IBOTHead(backbone.num_features, cfg, backbone.num_prefix_tokens)
        # dinov2/models/vision_transformer.py: mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, backbone.num_features))
        self.teacher = DINOv2Teacher.of({"backbone": backbone, "head": self.head}, cfg)
        without_drop_path(self.teacher.parts["backbone"])  # the teacher is built without drop path
        self.grid = data.image_size // backbone.patch_size
        self.local_size = local_size(cfg, data.image_size, backbone.patch_size)
        # the masks' generator: host-side, seeded by the run's torch seed; its state travels in the
        # state_dict (get_extra_state), so a resumed run draws the masks the uninterrupted run draws
        self.rng = random.Random(torch.initial_seed())
        self.masker = MaskingGenerator(
            self.grid, cfg.mask_min_patches, cfg.mask_max_block * self.grid**2, cfg.mask_aspect
        )
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer(
            "center2", torch.zeros(1, 1, cfg.out_dim if cfg.shared_head else cfg.patch_out_dim)
        )
        self.register_buffer("teacher_temp", torch.tensor(cfg.warmup_teacher_temp, dtype=torch.float64))
        self.frozen: list[tuple[nn.Parameter, torch.Tensor]] = []  # the last layers' values kept this step

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if run.backbone.family != "vit":
            raise ConfigError(
                f"method 'dinov2' masks patch tokens and needs a ViT backbone, but backbone "
                f"'{run.backbone.name}' is a {run.backbone.family}; pick backbone=vit_base (or another vit_*)"
            )
        DINO.check(run)
        if cfg.global_crops != 2:
            raise ConfigError(
                f"method.global_crops={cfg.global_crops}: DINOv2 takes 2 global crops (ssl_meta_arch.py "
                "asserts n_global_crops == 2); set method.global_crops=2"
            )
        lo, hi = cfg.mask_ratio
        if not 0 < lo <= hi <= 1 or not 0 < cfg.mask_probability <= 1:
            raise ConfigError(
                f"method.mask_ratio must be [min, max] with 0 < min <= max <= 1 and method.mask_probability "
                f"in (0, 1] (the reference's [0.1, 0.5] and 0.5), got {[lo, hi]} and {cfg.mask_probability}"
            )
        if not 0 < cfg.mask_aspect <= 1 or cfg.mask_min_patches < 1 or not 0 < cfg.mask_max_block <= 1:
            raise ConfigError(
                "method.mask_aspect must be in (0, 1], method.mask_min_patches >= 1 "
                "and method.mask_max_block "
                f"in (0, 1] (0.3, 4 and 0.5 in the reference), got {cfg.mask_aspect}, "
                f"{cfg.mask_min_patches}, {cfg.mask_max_block}"
            )
        if cfg.centering not in CENTERINGS:
            raise ConfigError(
                f"method.centering must be one of {', '.join(CENTERINGS)}, got {cfg.centering!r}"
            )
        if cfg.sinkhorn_iterations < 1:
            raise ConfigError(f"method.sinkhorn_iterations must be >= 1, got {cfg.sinkhorn_iterations}")
        weights = (cfg.dino_weight, cfg.ibot_weight, cfg.koleo_weight)
        if min(weights) < 0 or cfg.dino_weight + cfg.ibot_weight == 0:
            raise ConfigError(
                "method.dino_weight, method.ibot_weight and method.koleo_weight must be >= 0, the first two "
                f"not both 0; got {list(weights)}"
            )

    def get_extra_state(self) -> tuple:
        """The mask generator's state (ints and a float or None: loadable with weights_only=True)."""
        return self.rng.getstate()

    def set_extra_state(self, state: tuple) -> None:
        version, internal, gauss_next = state
        self.rng.setstate((version, tuple(internal), gauss_next))

    def draw_masks(self, crops: int) -> tuple[np.ndarray, int]:
        return batch_masks(
            crops, self.masker, tuple(self.cfg.mask_ratio), self.cfg.mask_probability, self.rng
        )

    def targets(self, logits: torch.Tensor, center: torch.Tensor, count=None) -> torch.Tensor:
        """The teacher's targets: Sinkhorn-Knopp over the global batch, or softmax around `center`."""
        if self.cfg.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, self.teacher_temp, self.cfg.sinkhorn_iterations, count)
        return F.softmax((logits - center) / self.teacher_temp, dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        cfg = self.cfg
        global_crops = batch["global"].transpose(0, 1)  # (2, B, C, H, W)
        x = global_crops.flatten(0, 1)
        crops = x.shape[0]
        drawn, upperbound = self.draw_masks(crops)
        per_image = 1 / np.maximum(drawn.sum(-1, keepdims=True), 1.0)
        weights = torch.as_tensor(
            np.broadcast_to(per_image, drawn.shape)[drawn], dtype=x.dtype, device=x.device
        )
        index = torch.as_tensor(np.flatnonzero(drawn), device=x.device)
        masks = torch.as_tensor(drawn, device=x.device)
        n_masked = int(drawn.sum())

        t_cls, t_patch = self.teacher(x, index=index, upperbound=upperbound)
        t_patch = t_patch[:n_masked]
        cls_targets = self.targets(t_cls, self.center).chunk(2)
        count = sum_over_ranks(
            torch.tensor(float(n_masked), device=x.device)
        )  # the reference's n_masked_patches
        patch_targets = self.targets(t_patch, self.center2[0], count)

        tokens = self.backbone(x, readout="tokens", mask=masks, mask_token=self.mask_token)
        cls_tokens = tokens[:, 0]
        student_cls = list(self.head(cls_tokens).chunk(2))
        if "local" in batch:
            local_crops = batch["local"].transpose(0, 1)
            local_tokens = self.backbone(local_crops.flatten(0, 1), readout="tokens")
            student_cls += self.head(local_tokens[:, 0]).chunk(local_crops.shape[0])
        s_patch = self.head.patch_logits(gathered(tokens[:, self.head.prefix :], index, upperbound))[
            :n_masked
        ]

        dino = cross_entropy_pairs(student_cls, list(cls_targets), cfg.student_temp)
        ibot = masked_patch_loss(s_patch, patch_targets, weights, crops, cfg.student_temp)
        koleo = sum(koleo_loss(c) for c in cls_tokens.chunk(2))
        loss = cfg.dino_weight * dino + cfg.ibot_weight * ibot + cfg.koleo_weight * koleo
        if cfg.centering == "centering":
            self.update_centers(t_cls, t_patch if n_masked else None)
        return StepOutput(
            loss, {"dino_loss": dino.detach(), "ibot_loss": ibot.detach(), "koleo_loss": koleo.detach()}
        )

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled features, the class token's bottleneck, and both sides' [CLS] logits (the teacher's
        centred by the softmax centre, over the current temperature: its Sinkhorn-Knopp targets are a
        batch normalisation, not logits)."""
        cls = self.backbone(images, readout="tokens")[:, 0]
        bottleneck = self.head.mlp(cls)
        student = self.head.last(F.normalize(bottleneck, dim=-1))
        teacher = self.teacher(images)
        return {
            "features": self.backbone(images),
            "embedding": bottleneck,
            "teacher_logits": (teacher - self.center) / self.teacher_temp.to(images.dtype),
            "student_logits": student / self.cfg.student_temp,
        }

    def on_after_backward(self, clock: Clock) -> None:
        """The last layers frozen at the start as dinov2/train/train.py freezes them: last_layer_lr 0 on
        their param group, so the optimizer still takes their gradients (AdamW's moments and step count,
        the clipped norm) but they do not move; here their values are kept and put back after the step
        (what lr 0 leaves them; DINO's cancel_gradients_last_layer would drop the gradients instead)."""
        self.frozen = []
        if Clock.of(clock).warm < self.cfg.freeze_last_layer_fraction:
            self.frozen = [
                (p, p.detach().clone()) for layer in self.head.last_layers() for p in layer.parameters()
            ]

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        with torch.no_grad():
            for p, kept in self.frozen:
                p.copy_(kept)
        self.frozen = []
        return super().on_step_end(clock)

    @torch.no_grad()
    def update_centers(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor | None) -> None:
        """dino_clstoken_loss.py and ibot_patch_loss.py update_center: batch means over every rank (the
        patch centre: over the masked patches; none masked, none moved)."""
        m = self.cfg.center_momentum
        self.center.mul_(m).add_(mean_over_ranks(teacher_cls.mean(dim=0, keepdim=True)), alpha=1 - m)
        if teacher_patch is None:
            return
        self.center2.mul_(m).add_(
            mean_over_ranks(teacher_patch.mean(dim=0, keepdim=True)).unsqueeze(0), alpha=1 - m
        )
