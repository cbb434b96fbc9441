"""MAE (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners").

A random `mask_ratio` of patch tokens is dropped per image; the ViT encoder runs on the visible ones
only, and a light transformer decoder, given mask tokens at the dropped positions, reconstructs the
(per-patch normalised) pixels of the masked patches. `mae_tiny` is the study's cheaper variant.

As in the reference (facebookresearch/mae models_mae.py), the encoder's and the decoder's position
embeddings are the fixed 2-D sin-cos embedding (zeros at the class token), not trained and so not
decayed, and every linear layer (encoder and decoder) starts xavier-uniform with zero bias.

The monitors (Method.monitor_outputs) read the base's default: the encoder's pooled features of the
whole, unmasked image, what the transfer reads; MAE has no embedding besides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from omegaconf import MISSING
from timm.models.vision_transformer import Block
from torch import nn

from budgetssl.backbones.backbone import Backbone
from budgetssl.data.info import DataInfo
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import CropConfig, SingleView, random_crop_flip
from budgetssl.methods.base import Method
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class MAEConfig(CropConfig):
    """Values in configs/method/mae.yaml and mae_tiny.yaml (cited there); the crop's fields are
    CropConfig's."""

    mask_ratio: float = MISSING
    decoder_dim: int = MISSING
    decoder_depth: int = MISSING
    decoder_heads: int = MISSING
    norm_pix_loss: bool = MISSING


# models_mae.py builds ViT-B (and its decoder) with LayerNorm(eps=1e-6), as timm's ViTs are.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed(grid: int, dim: int, prefix: int) -> torch.Tensor:
    """MAE's fixed position embedding (util/pos_embed.py get_2d_sincos_pos_embed), (prefix + grid^2, dim):
    the first half of the channels encodes a patch's column, the second half its row, each as
    [sin(p w), cos(p w)] over frequencies w = 10000^(-k / (dim / 4)); prefix tokens get zeros."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    row, col = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # ViT order: row-major

    def axis(position: torch.Tensor) -> torch.Tensor:
        angles = position.flatten().to(torch.float64)[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat(
        [torch.zeros(prefix, dim, dtype=torch.float64), torch.cat([axis(col), axis(row)], 1)]
    ).float()


def xavier_init(module: nn.Module) -> None:
    """models_mae.py `_init_weights`: xavier-uniform linears (JAX ViT's init) with zero bias, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_encoder(backbone: Backbone, grid: int) -> None:
    """The encoder as models_mae.py initialises it: the fixed sin-cos position embedding (frozen: no
    gradient, so no update and no weight decay), the patch projection xavier-uniform as a linear layer,
    the class token N(0, 0.02), every linear xavier-uniform."""
    vit = backbone.model
    pos = vit.pos_embed
    prefix = pos.shape[1] - grid * grid  # 0 where the ViT keeps its class token out of the embedding
    with torch.no_grad():
        pos.copy_(sincos_pos_embed(grid, pos.shape[2], prefix).unsqueeze(0))
    pos.requires_grad_(False)
    xavier_init(vit)
    weight = vit.patch_embed.proj.weight
    with torch.no_grad():
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    if getattr(vit, "cls_token", None) is not None:
        nn.init.normal_(vit.cls_token, std=0.02)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), patches in the ViT's row-major token order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_masking(batch: int, tokens: int, ratio: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-image random subsets: (kept indices (B, n_keep), restore order (B, N), mask (B, N), 1 = masked)."""
    keep_count = visible_tokens(tokens, ratio)
    shuffle = torch.rand(batch, tokens, device=device).argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, tokens, device=device)
    mask[:, :keep_count] = 0
    return shuffle[:, :keep_count], restore, torch.gather(mask, 1, restore)


def visible_tokens(tokens: int, ratio: float) -> int:
    return int(tokens * (1 - ratio))


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool
) -> torch.Tensor:
    """Mean squared error on masked patches only; with `norm_pix`, targets normalised per patch."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAEDecoder(nn.Module):
    """Encoder tokens + mask tokens, unshuffled, with fixed 2-D sin-cos positions -> pixels per patch."""

    def __init__(self, cfg: MAEConfig, encoder_dim: int, grid: int, patch: int, prefix: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.embed = nn.Linear(encoder_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        pos = sincos_pos_embed(grid, cfg.decoder_dim, prefix)
        self.register_buffer("pos", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(
            *[
                Block(cfg.decoder_dim, cfg.decoder_heads, qkv_bias=True, norm_layer=LayerNorm)
                for _ in range(cfg.decoder_depth)
            ]
        )
        self.norm = LayerNorm(cfg.decoder_dim)
        self.pred = nn.Linear(cfg.decoder_dim, patch * patch * 3)
        xavier_init(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        prefix, visible = x[:, : self.prefix], x[:, self.prefix :]
        hidden = self.mask_token.expand(x.shape[0], restore.shape[1] - visible.shape[1], -1)
        patches = torch.cat([visible, hidden], dim=1)
        patches = torch.gather(patches, 1, restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = self.norm(self.blocks(torch.cat([prefix, patches], dim=1) + self.pos))
        return self.pred(x)[:, self.prefix :]


@METHODS.register("mae")
@METHODS.register("mae_tiny")
class MAE(Method):
    config_class = MAEConfig

    def __init__(self, cfg: MAEConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.patch = backbone.patch_size
        self.grid = data.image_size // self.patch
        init_encoder(backbone, self.grid)
        self.decoder = MAEDecoder(
            cfg, backbone.num_features, self.grid, self.patch, backbone.num_prefix_tokens
        )

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if run.backbone.family != "vit":
            raise ConfigError(
                f"method '{cfg.name}' masks patch tokens and needs a ViT backbone, but backbone "
                f"'{run.backbone.name}' is a {run.backbone.family}; pick backbone=vit_base (or another vit_*)"
            )
        tokens = (run.dataset.image_size // run.backbone.patch_size) ** 2
        if not 0 <= cfg.mask_ratio < 1 or not 0 < visible_tokens(tokens, cfg.mask_ratio) < tokens:
            visible = visible_tokens(tokens, cfg.mask_ratio)
            raise ConfigError(
                f"method.mask_ratio={cfg.mask_ratio} leaves {visible} of {tokens} patches visible; "
                f"it must mask some and keep at least one (0.75 is the reference)"
            )
        if cfg.decoder_depth < 1 or cfg.decoder_dim < 1 or cfg.decoder_dim % cfg.decoder_heads:
            raise ConfigError(
                "method.decoder_depth and method.decoder_dim must be >= 1, with decoder_dim divisible by "
                f"decoder_heads (got {cfg.decoder_depth}, {cfg.decoder_dim}, {cfg.decoder_heads})"
            )
        if cfg.decoder_dim % 4:
            raise ConfigError(
                f"method.decoder_dim={cfg.decoder_dim} must be divisible by 4 (the decoder's 2-D sin-cos "
                "position embedding)"
            )

    def views(self) -> SingleView:
        crop = random_crop_flip(
            self.data,
            self.data.image_size,
            self.cfg.crop_scale,
            interpolation=self.cfg.interpolation,
        )
        return SingleView(crop)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        images = batch["image"]
        keep, restore, mask = random_masking(
            images.shape[0], self.grid * self.grid, self.cfg.mask_ratio, images.device
        )
        pred = self.decoder(self.backbone(images, readout="tokens", keep=keep), restore)
        loss = reconstruction_loss(pred, patchify(images, self.patch), mask, self.cfg.norm_pix_loss)
        return StepOutput(loss)
