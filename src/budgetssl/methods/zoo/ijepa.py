"""I-JEPA (Assran et al., CVPR 2023, "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture"), after facebookresearch/ijepa.

From one crop of an image the step draws `num_targets` target blocks and one context block with the
targets removed (src/masks/multiblock.py MaskCollator). The context encoder (the backbone) runs on the
context tokens only, as MAE's encoder does (Backbone `keep`); the target encoder (the EMA teacher, forward
only) runs on the whole image and its patch tokens are layer-normed without affine parameters
(src/train.py forward_target: F.layer_norm); a narrow ViT predictor reads the context tokens plus one mask
token per target position, with fixed 2-D sin-cos positions, and regresses the target tokens under a
smooth L1 loss (forward_context, loss_fn). The loss is per token, so it reads no cross-rank statistic:
the official code all-reduces only the loss value for its log (AllReduce in loss_fn), and the engine's
gradient all-reduce already averages what each rank's mean gives, so there is no distributed entry.

The masks, and where they differ from the official collator. MaskCollator draws, per batch and from a
generator seeded by the iteration, one target block size (scale and aspect ratio from one uniform, as
_sample_block_size does) and one square context block size; per image it places `num_targets` target
blocks and the context block at random, removes the targets from the context (allow_overlap=False), and
truncates every image's context to the batch's smallest (`collated_masks_enc`: the first min_keep_enc
indices). Its token counts so change from batch to batch, and with them the step's FLOPs. The meter prices
a step by its batch's shapes (meter/step_meter.py) and counts on meta tensors, so here every count is
fixed by the config and the grid, and the masks are drawn on the device from the run's seeded generator
(as MAE draws its own), with no value read back:
- the sizes are drawn per step by the official rule (one uniform for the targets' scale and aspect, one
  for the context's scale), the locations per image; each target block keeps its first `target_tokens`
  tokens in row-major order, the smallest area the size rule can draw on this grid (the official's own
  truncation, `cm[:min_keep_pred]`, taken to the smallest size the rule draws rather than the batch's);
- the context keeps `context_tokens = int(context_keep * patches)` (the official keeps the batch's
  smallest context; configs/method/ijepa.yaml says how context_keep was measured), the first in row-major
  order among the context block's tokens outside every target block (the whole block, as the official's
  mask_complement clears it, not only its kept tokens). Where an image has fewer, it is filled
  from the context block's tokens inside targets, in the order the official relaxes its constraint when
  it finds no valid context (constrain_mask: the last target block's constraint dropped first).
At ViT-B/16 and 224 (14 x 14 patches) the targets keep 30 tokens each (the rule draws 30 to 40) and the
context 54 (the official's batch of 128 keeps 45 to 64); at the demo's 4 x 4 patches the rule draws target
blocks of 1 to 4 patches, so each keeps 1, and the context keeps 4 of a 3 x 3 block.

The encoder and the predictor start as src/helper.py init_model leaves them: every linear (and the patch
projection) truncated-normal with std 0.02 and zero bias, layer norms at one and zero (init_model's
init_weights re-draws the linears after the models' fix_init_weight, so no depth rescaling survives), the
mask token truncated-normal 0.02, both position embeddings the fixed 2-D sin-cos one (requires_grad=False,
so not trained and not decayed). The official ViT has no class token; a timm backbone with one (the
harness's vit_base) keeps it in both encoders, and the predictor and the loss read patch tokens only.

The target encoder's momentum rises from `base_momentum` to 1 linearly over the budget (src/train.py
momentum_scheduler), not on the cosine of BYOL and DINO. Its start follows `method.momentum_rule`
(methods/ema.py): the budget-aware bound holds for the linear ramp as for the cosine, since
sum_i (1 - m_i) = (1 - m0) N / 2 for both.

The monitors (Method.monitor_outputs) read the base's default: the context encoder's pooled features of
the whole image, what the transfer reads; I-JEPA has no embedding besides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from timm.models.vision_transformer import Block
from torch import nn

from budgetssl.backbones.backbone import Backbone, without_drop_path
from budgetssl.data.info import DataInfo
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import CropConfig, SingleView, random_crop_flip
from budgetssl.methods.base import Method
from budgetssl.methods.ema import EmaTeacher, TeacherConfig, check_teacher_config
from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.mae import sincos_pos_embed

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class IJEPAConfig(TeacherConfig, CropConfig):
    """Values in configs/method/ijepa.yaml (cited there); the momentum's fields are TeacherConfig's, the
    crop's CropConfig's."""

    num_targets: int = MISSING  # target blocks per image (mask.num_pred_masks)
    target_scale_min: float = MISSING  # a target block's share of the patches (mask.pred_mask_scale)
    target_scale_max: float = MISSING
    target_aspect_min: float = MISSING  # a target block's height / width (mask.aspect_ratio)
    target_aspect_max: float = MISSING
    context_scale_min: float = MISSING  # the square context block's share (mask.enc_mask_scale)
    context_scale_max: float = MISSING
    context_keep: float = MISSING  # context tokens kept per image, a share of the patches (module docstring)
    predictor_dim: int = MISSING  # the predictor's width (meta.pred_emb_dim)
    predictor_depth: int = MISSING  # its blocks (meta.pred_depth)


# src/models/vision_transformer.py builds its ViTs and the predictor with LayerNorm(eps=1e-6).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)
INIT_STD = 0.02  # src/helper.py init_model init_weights; VisionTransformerPredictor init_std


def block_size(
    u: torch.Tensor, grid: int, scale: tuple[float, float], aspect: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskCollator._sample_block_size on a tensor of uniforms `u`: one uniform sets both the block's
    scale and its aspect ratio; height and width rounded (half to even, as Python's round), then kept
    below the grid's side. In float64, so the integer parts are Python's."""
    u = u.to(torch.float64)
    keep = torch.floor(grid * grid * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    h = torch.round(torch.sqrt(keep * ratio)).clamp(max=grid - 1)
    w = torch.round(torch.sqrt(keep / ratio)).clamp(max=grid - 1)
    return h.long(), w.long()


def smallest_block(grid: int, scale: tuple[float, float], aspect: tuple[float, float]) -> int:
    """The smallest area `block_size` draws on this grid (over a fine sweep of its uniform: its height
    and width are step functions of it)."""
    h, w = block_size(torch.linspace(0, 1, 100_001, dtype=torch.float64), grid, scale, aspect)
    return int((h * w).min())


def place_blocks(h: torch.Tensor, w: torch.Tensor, shape: tuple[int, ...], grid: int) -> torch.Tensor:
    """Blocks of height `h` and width `w` (broadcast) at uniform top-left corners, one per entry of
    `shape`, as (*shape, grid * grid) membership (the top row uniform in [0, grid - h), the left column in
    [0, grid - w), as MaskCollator._sample_block_mask's torch.randint)."""
    device = h.device
    top = (torch.rand(shape, device=device) * (grid - h)).floor().long()
    left = (torch.rand(shape, device=device) * (grid - w)).floor().long()
    pos = torch.arange(grid * grid, device=device)
    row, col = pos // grid, pos % grid
    top, left, h, w = (t.unsqueeze(-1) for t in torch.broadcast_tensors(top, left, h, w))
    return (row >= top) & (row < top + h) & (col >= left) & (col < left + w)


def first_tokens(rank: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` positions of smallest `rank` (rank = priority * N + position, so ties go to the
    earlier position), ascending by position: a fixed number of indices with no value read back."""
    tokens = rank.shape[-1]
    chosen = rank.sort(dim=-1).values[..., :count] % tokens
    return chosen.sort(dim=-1).values


@dataclass(frozen=True)
class MultiBlock:
    """I-JEPA's multi-block masks at fixed counts (module docstring): `draw(batch, device)` gives the
    context's indices (B, context_tokens) and the targets' (num_targets, B, target_tokens)."""

    grid: int
    num_targets: int
    target_scale: tuple[float, float]
    target_aspect: tuple[float, float]
    context_scale: tuple[float, float]
    context_keep: float
    # The fixed counts, worked out once on the host when the masks are made (a step reads no value back).
    target_tokens: int = field(init=False)
    context_tokens: int = field(init=False)
    smallest_context_block: int = field(init=False)

    def __post_init__(self) -> None:
        counts = {
            "target_tokens": smallest_block(self.grid, self.target_scale, self.target_aspect),
            "context_tokens": int(self.context_keep * self.grid * self.grid),
            "smallest_context_block": smallest_block(self.grid, self.context_scale, (1.0, 1.0)),
        }
        for name, value in counts.items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, cfg: IJEPAConfig, grid: int) -> MultiBlock:
        return cls(
            grid,
            cfg.num_targets,
            (cfg.target_scale_min, cfg.target_scale_max),
            (cfg.target_aspect_min, cfg.target_aspect_max),
            (cfg.context_scale_min, cfg.context_scale_max),
            cfg.context_keep,
        )

    def draw(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        n, j = self.grid * self.grid, self.num_targets
        u = torch.rand(2, device=device)  # the step's two sizes: targets' first, context's second
        th, tw = block_size(u[0], self.grid, self.target_scale, self.target_aspect)
        ch, cw = block_size(u[1], self.grid, self.context_scale, (1.0, 1.0))
        targets = place_blocks(th, tw, (batch, j), self.grid)  # (B, J, N)
        context = place_blocks(ch, cw, (batch,), self.grid)  # (B, N)
        pos = torch.arange(n, device=device)
        target_idx = first_tokens(torch.where(targets, pos, n + pos), self.target_tokens)
        # A context token's priority: 0 outside every target; J - (first target it is in) inside one (the
        # official drops the last block's constraint first); J + 1 outside the context block.
        block = torch.arange(j, device=device).view(1, j, 1)
        first_target = torch.where(targets, block, j).amin(dim=1)  # (B, N), j where in none
        priority = torch.where(first_target < j, j - first_target, 0)
        priority = torch.where(context, priority, j + 1)
        context_idx = first_tokens(priority * n + pos, self.context_tokens)
        return context_idx, target_idx.transpose(0, 1).contiguous()


def select(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D) at idx (B, K) -> (B, K, D) (src/masks/utils.py apply_masks, one mask)."""
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def ijepa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """src/train.py loss_fn: smooth L1 (beta 1) averaged over every predicted token and channel; the
    target gets no gradient."""
    return F.smooth_l1_loss(pred, target.detach())


def init_weights(module: nn.Module) -> None:
    """src/helper.py init_model's init_weights (and the models' _init_weights for the patch projection):
    truncated-normal linears and convolutions with zero bias, unit layer norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_encoder(backbone: Backbone, grid: int) -> None:
    """The context encoder as src/models/vision_transformer.py and src/helper.py start it: the fixed
    sin-cos position embedding (zeros at a timm class token the official lacks), not trained, and
    init_weights on every linear, the patch projection and the norms."""
    vit = backbone.model
    pos = vit.pos_embed
    prefix = pos.shape[1] - grid * grid  # 0 where the ViT keeps its class token out of the embedding
    with torch.no_grad():
        pos.copy_(sincos_pos_embed(grid, pos.shape[2], prefix).unsqueeze(0))
    pos.requires_grad_(False)
    init_weights(vit)


class Predictor(nn.Module):
    """src/models/vision_transformer.py VisionTransformerPredictor: the context tokens embedded to the
    predictor's width with their positions; for each target block, mask tokens at its positions appended;
    `depth` blocks, a norm, and the mask tokens' outputs projected back to the encoder's width."""

    def __init__(self, encoder_dim: int, dim: int, depth: int, heads: int, grid: int) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_pos_embed(grid, dim, 0).unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)]
        )
        self.norm = LayerNorm(dim)
        self.proj = nn.Linear(dim, encoder_dim)
        init_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD)

    def forward(
        self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor
    ) -> torch.Tensor:
        """context (B, Kc, D) at context_idx (B, Kc); target_idx (J, B, Kt) -> (J * B, Kt, D), block-major
        as the official's x.repeat(len(masks), 1, 1)."""
        j, b, kt = target_idx.shape
        pos = self.pos.expand(b, -1, -1)
        x = self.embed(context) + select(pos, context_idx)
        queries = self.mask_token + select(pos.repeat(j, 1, 1), target_idx.reshape(j * b, kt))
        x = torch.cat([x.repeat(j, 1, 1), queries], dim=1)
        x = self.norm(self.blocks(x))
        return self.proj(x[:, -kt:])


class TokenTeacher(EmaTeacher):
    """The target encoder: the backbone's EMA, read out as tokens, its momentum rising linearly from its
    planned start to 1 (src/train.py momentum_scheduler: ema[0] + i * (ema[1] - ema[0]) / total)."""

    def momentum_of(self, anneal: float) -> float:
        base = self.planned_now if self.planned_now is not None else float(self.planned_base)
        fraction = min(max(float(anneal), 0.0), 1.0)
        return base + (1.0 - base) * fraction

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts["backbone"](x, readout="tokens")


@METHODS.register("ijepa")
class IJEPA(Method):
    config_class = IJEPAConfig
    forward_only = ("teacher",)

    def __init__(self, cfg: IJEPAConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.grid = data.image_size // backbone.patch_size
        self.masks = MultiBlock.of(cfg, self.grid)
        heads = backbone.model.blocks[0].attn.num_heads  # the official predictor takes the encoder's
        if cfg.predictor_dim % heads or cfg.predictor_dim % 4:
            raise ConfigError(
                f"method.predictor_dim={cfg.predictor_dim} must be divisible by the encoder's {heads} heads "
                "(the predictor takes the encoder's head count, as the official does) and by 4 (its 2-D "
                f"sin-cos position embedding); e.g. method.predictor_dim={math.lcm(heads, 4) * 4}"
            )
        init_encoder(backbone, self.grid)
        self.predictor = Predictor(
            backbone.num_features, cfg.predictor_dim, cfg.predictor_depth, heads, self.grid
        )
        self.teacher = TokenTeacher.of({"backbone": backbone}, cfg)
        without_drop_path(self.teacher.parts["backbone"])  # the target encoder runs without stochastic depth

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        check_teacher_config(cfg)
        if run.backbone.family != "vit":
            raise ConfigError(
                f"method 'ijepa' encodes a subset of patch tokens and needs a ViT backbone, but backbone "
                f"'{run.backbone.name}' is a {run.backbone.family}; pick backbone=vit_base (or another vit_*)"
            )
        for name in ("target_scale", "context_scale"):
            low, high = getattr(cfg, f"{name}_min"), getattr(cfg, f"{name}_max")
            if not 0 < low <= high <= 1:
                raise ConfigError(
                    f"method.{name}_min={low} and method.{name}_max={high} must satisfy 0 < min <= max <= 1 "
                    "(shares of the image's patches)"
                )
        if not 0 < cfg.target_aspect_min <= cfg.target_aspect_max:
            raise ConfigError(
                f"method.target_aspect_min={cfg.target_aspect_min} and method.target_aspect_max="
                f"{cfg.target_aspect_max} must satisfy 0 < min <= max (height / width; reference 0.75, 1.5)"
            )
        if cfg.num_targets < 1 or cfg.predictor_depth < 1:
            raise ConfigError(
                f"method.num_targets={cfg.num_targets} and method.predictor_depth={cfg.predictor_depth} "
                "must be >= 1"
            )
        grid = run.dataset.image_size // run.backbone.patch_size
        masks = MultiBlock.of(cfg, grid)
        if masks.target_tokens < 1:
            raise ConfigError(
                f"method.target_scale_min={cfg.target_scale_min} draws target blocks of no patch on a "
                f"{grid}x{grid} grid; raise it or use more patches (a larger dataset.image_size or a "
                "smaller backbone.patch_size)"
            )
        if not 1 <= masks.context_tokens <= masks.smallest_context_block:
            raise ConfigError(
                f"method.context_keep={cfg.context_keep} keeps {masks.context_tokens} context tokens of "
                f"{grid * grid}; it must keep at least one and at most the smallest context block ("
                f"{masks.smallest_context_block} patches at method.context_scale_min={cfg.context_scale_min})"
            )

    def views(self) -> SingleView:
        """src/transforms.py make_transforms as the configs call it: a random resized crop, no flip, no
        colour distortion, no blur."""
        crop = random_crop_flip(
            self.data,
            self.data.image_size,
            self.cfg.crop_scale,
            flip=False,
            interpolation=self.cfg.interpolation,
        )
        return SingleView(crop)

    def on_step_start(self, clock: Clock) -> dict[str, float]:
        return {"momentum": self.teacher.schedule(Clock.of(clock).anneal)}

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        images = batch["image"]
        context_idx, target_idx = self.masks.draw(images.shape[0], images.device)
        return StepOutput(self.loss(images, context_idx, target_idx))

    def loss(self, images: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """The step's loss on given masks (src/train.py forward_target, forward_context, loss_fn)."""
        prefix = self.backbone.num_prefix_tokens
        h = self.teacher(images)[:, prefix:]
        h = F.layer_norm(h, (h.shape[-1],))
        target = torch.cat([select(h, idx) for idx in target_idx])  # block-major (apply_masks), as predicted
        z = self.backbone(images, readout="tokens", keep=context_idx)[:, prefix:]
        return ijepa_loss(self.predictor(z, context_idx, target_idx), target)

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        self.teacher.update({"backbone": self.backbone})
        return {}
