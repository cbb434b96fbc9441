"""data2vec 2.0 (Baevski, Babu, Hsu & Auli, ICML 2023, "Efficient Self-supervised Learning with
Contextualized Target Representations for Vision, Speech and Language"), images.

Each image is encoded by an EMA teacher once, unmasked; the student encodes `clone_batch` copies of it,
each with its own inverse block mask, on the kept patches only (as MAE). A light convolutional decoder fills
the masked positions with noise tokens and regresses, at the masked positions, the teacher's target: the
average of its top `average_top_k_layers` blocks' feed-forward outputs, each instance-normed over the
patches, then layer-normed. The student's class token regresses the target's mean over the patches.

Official code: facebookresearch/fairseq, examples/data2vec ([d2v] models/data2vec2.py
Data2VecMultiModel.forward, make_targets, d2v_loss; [base] models/modalities/base.py; [img]
models/modalities/images.py ImageEncoder.compute_mask; [mod] models/modalities/modules.py Decoder2d;
[mask] fairseq/data/data_utils.py compute_block_mask_2d). The recipe is configs/method/data2vec2.yaml.

What differs from the official code, and why:
- The backbone is the harness's timm ViT (pre-norm blocks, a final norm) rather than data2vec's post-norm
  AltBlocks; the layer target is the pre-norm block's feed-forward output before its residual
  (`Backbone(readout="ffn")`), the counterpart of AltBlock's `ffn_targets`. The official 2 "prenet" blocks
  plus 10 blocks are here the ViT's 12 blocks; its top 10 are the official 10 target blocks.
- The teacher's momentum follows the harness's EMA schedule (methods/ema.py: a cosine from the planned
  start to 1, the start set by `method.momentum_rule`), not [d2v]'s linear ramp from ema_decay to
  ema_end_decay over ema_anneal_end_step updates then constant: the suite's teacher checks and the
  start rule's bound are written for that schedule.
- The class-token loss: [d2v] sums it over a GPU's copies and scales it by the masked-token count before
  the trainer divides by that count, so its weight grows with the per-GPU batch; here it is the mean over
  copies times `cls_weight` = cls_loss x the recipe's copies per GPU (configs/method/data2vec2.yaml), which
  gives the recipe's gradient at its batch and does not depend on how a batch is split over ranks.

Cross-rank statistics: none beyond DDP's gradient average. Every copy masks the same number of patches
(require_same_masks), so the per-rank mean over masked tokens averaged over ranks is [d2v]'s global one.

Metering: the breakdown books the student's encoder on every masked copy under `backbone` (patch
embedding once per image, the blocks on each copy's kept tokens), the teacher's unmasked forward once per
image under `teacher`, and the decoder on every copy under `decoder` (tests/test_data2vec2.py).
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
from budgetssl.methods.augment import CropConfig, SingleView, random_crop_flip
from budgetssl.methods.base import Method
from budgetssl.methods.ema import EmaTeacher, TeacherConfig, check_teacher_config
from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.mae import sincos_pos_embed

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class Data2Vec2Config(TeacherConfig, CropConfig):
    """Values in configs/method/data2vec2.yaml (each cited there, from fairseq's
    examples/data2vec/config/v2/base_images_only_task.yaml); the momentum's fields are TeacherConfig's,
    the crop's CropConfig's."""

    clone_batch: int = MISSING  # masked copies of each image (model.clone_batch)
    mask_prob: float = MISSING  # share of patches masked (modalities.image.mask_prob)
    mask_length: int = MISSING  # side of the square blocks that are kept (modalities.image.mask_length)
    mask_prob_adjust: float = MISSING  # extra block centres drawn (modalities.image.mask_prob_adjust)
    average_top_k_layers: int = MISSING  # blocks averaged into the target (model.average_top_k_layers)
    decoder_dim: int = MISSING  # decoder channels (modalities.image.decoder.decoder_dim)
    decoder_layers: int = MISSING  # conv layers (decoder.decoder_layers)
    decoder_kernel: int = MISSING  # conv kernel side, odd (decoder.decoder_kernel)
    decoder_groups: int = MISSING  # conv groups (decoder.decoder_groups)
    mask_noise_std: float = (
        MISSING  # std of the decoder's noise mask tokens (modalities.image.mask_noise_std)
    )
    cls_weight: float = MISSING  # class-token loss weight per copy (model.cls_loss x copies per GPU)


def inverse_block_mask(
    copies: int, grid: int, mask_prob: float, length: int, adjust: float, device: torch.device
) -> torch.Tensor:
    """The kept patches of `copies` masks on a grid x grid image, (copies, keep) ascending: [mask]
    compute_block_mask_2d with inverse_mask=True. Block centres (int(L (1 - mask_prob + adjust) / length^2),
    drawn with replacement) grow into length x length squares clipped at the border; that set is cut or
    filled, uniformly at random, to exactly int(L (1 - mask_prob)) patches (require_same_masks), and the
    rest is masked. [mask] draws the cut/fill with torch.multinomial over uniform weights, one row at a
    time; ranking (in-set + uniform noise) draws the same uniformly random subsets in one batched op."""
    tokens = grid * grid
    keep_prob = 1.0 - mask_prob
    keep = int(tokens * keep_prob)
    centres = int(tokens * ((keep_prob + adjust) / length**2))
    at = torch.randint(0, tokens, (copies, centres), device=device)
    offsets = torch.arange(length, device=device) - length // 2
    rows = (at // grid)[:, :, None, None] + offsets[None, None, :, None]
    cols = (at % grid)[:, :, None, None] + offsets[None, None, None, :]
    index = rows.clamp(0, grid - 1) * grid + cols.clamp(0, grid - 1)
    blocks = torch.zeros(copies, tokens, device=device)
    blocks.scatter_(1, index.flatten(1), 1.0)
    ranked = (blocks + torch.rand(copies, tokens, device=device)).topk(keep, dim=1).indices
    return ranked.sort(dim=1).values


def make_targets(layers: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """[d2v] make_targets with instance_norm_target_layer and layer_norm_targets: each of the last `top_k`
    layers (B, T, C) instance-normed over the T tokens per channel, their average layer-normed over C."""
    normed = [F.instance_norm(layer.float().transpose(1, 2)).transpose(1, 2) for layer in layers[-top_k:]]
    mean = torch.stack(normed).mean(dim=0)
    return F.layer_norm(mean, mean.shape[-1:])


def data2vec2_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    masked: torch.Tensor,
    cls_pred: torch.Tensor,
    cls_target: torch.Tensor,
    cls_weight: float,
) -> torch.Tensor:
    """[d2v] d2v_loss (L2, loss_scale 1/sqrt(C)) on the masked tokens (`masked` (m, L) 1 where masked, of
    pred and target (m, L, C)), averaged over them as the trainer divides by sample_size, plus `cls_weight`
    times the same per-copy class-token loss (m, C) averaged over copies. Targets get no gradient. The mask
    weights the tokens rather than selecting them, so the count stays data-independent (meta tensors)."""
    scale = 1.0 / math.sqrt(pred.shape[-1])
    per_token = ((pred.float() - target.detach()) ** 2).sum(-1)
    regression = (per_token * masked).sum() / masked.sum() * scale
    if cls_weight == 0:
        return regression
    cls = ((cls_pred.float() - cls_target.detach()) ** 2).sum(-1).mean() * scale
    return regression + cls_weight * cls


class ConvDecoder(nn.Module):
    """[mod] Decoder2d: grouped convolutions over the patch grid (conv, layer norm over channels without
    affine, GELU; a residual where the widths match), then a linear map back to the encoder's width.
    Convolutions and the projection keep torch's default initialisation, as [img] reset_parameters does."""

    def __init__(self, cfg: Data2Vec2Config, width: int, grid: int) -> None:
        super().__init__()
        self.grid, self.dim = grid, cfg.decoder_dim
        self.blocks = nn.ModuleList(
            nn.Conv2d(
                width if i == 0 else cfg.decoder_dim,
                cfg.decoder_dim,
                kernel_size=cfg.decoder_kernel,
                padding=cfg.decoder_kernel // 2,
                groups=cfg.decoder_groups,
            )
            for i in range(cfg.decoder_layers)
        )
        self.proj = nn.Linear(cfg.decoder_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, self.grid, self.grid)
        residual = x
        for conv in self.blocks:
            x = F.gelu(F.layer_norm(conv(x).permute(0, 2, 3, 1), (self.dim,)).permute(0, 3, 1, 2))
            if residual.shape[1] == x.shape[1]:
                x = x + residual
            residual = x
        return self.proj(x.reshape(b, -1, t).transpose(1, 2))


class LayerTeacher(EmaTeacher):
    """The EMA teacher of the whole backbone ([d2v] ema_encoder_only=false, ema_local_encoder=true),
    read out per block."""

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return self.parts["backbone"](x, readout="ffn")


def init_encoder(backbone: Backbone, grid: int) -> None:
    """The student as [d2v] initialises it: init_bert_params (linears N(0, 0.02), zero bias), the patch
    projection xavier-uniform as a linear ([img]), the fixed 2-D sin-cos position embedding (frozen), none
    on the class token, which starts N(0, 1) ([base] extra_tokens, init_extra_token_zero=false)."""
    vit = backbone.model
    pos = vit.pos_embed
    with torch.no_grad():
        pos.copy_(sincos_pos_embed(grid, pos.shape[2], pos.shape[1] - grid * grid).unsqueeze(0))
        for m in vit.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        weight = vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        if getattr(vit, "cls_token", None) is not None:
            nn.init.normal_(vit.cls_token)
    pos.requires_grad_(False)


def check_sizes(cfg: Data2Vec2Config, width: int, prefix: int) -> None:
    """What the config can only be checked against once the backbone is built: its width and class token
    (an average_top_k_layers above the depth averages every block: the reference's 10 on a smaller ViT)."""
    if (
        cfg.decoder_layers < 1
        or cfg.decoder_groups < 1
        or width % cfg.decoder_groups
        or (cfg.decoder_dim % cfg.decoder_groups)
    ):
        raise ConfigError(
            f"method.decoder_groups={cfg.decoder_groups} must divide the backbone's width {width} and "
            f"method.decoder_dim={cfg.decoder_dim}, and method.decoder_layers={cfg.decoder_layers} be >= 1"
        )
    if cfg.cls_weight > 0 and prefix < 1:
        raise ConfigError(
            "method.cls_weight > 0 regresses the class token, but the backbone has none: set "
            "method.cls_weight=0 or use a ViT with a class token"
        )


@METHODS.register("data2vec2")
class Data2Vec2(Method):
    config_class = Data2Vec2Config
    forward_only = ("teacher",)

    def __init__(self, cfg: Data2Vec2Config, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.grid = data.image_size // backbone.patch_size
        self.prefix = backbone.num_prefix_tokens
        check_sizes(cfg, backbone.num_features, self.prefix)
        init_encoder(backbone, self.grid)
        self.decoder = ConvDecoder(cfg, backbone.num_features, self.grid)
        self.teacher = LayerTeacher.of({"backbone": backbone}, cfg)
        without_drop_path(self.teacher.parts["backbone"])  # [d2v] the teacher runs in eval mode

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        check_teacher_config(cfg)
        if run.backbone.family != "vit":
            raise ConfigError(
                f"method 'data2vec2' masks patch tokens and reads each block's output, so it needs a ViT "
                f"backbone, but '{run.backbone.name}' is a {run.backbone.family}; pick backbone=vit_base"
            )
        tokens = (run.dataset.image_size // run.backbone.patch_size) ** 2
        if not 0 < int(tokens * (1 - cfg.mask_prob)) < tokens:
            raise ConfigError(
                f"method.mask_prob={cfg.mask_prob} keeps {int(tokens * (1 - cfg.mask_prob))} of {tokens} "
                "patches; it must keep at least one and mask at least one (0.8 is the reference)"
            )
        if cfg.mask_length < 1 or cfg.mask_prob_adjust < 0:
            raise ConfigError(
                f"method.mask_length must be >= 1 and method.mask_prob_adjust >= 0 (got {cfg.mask_length}, "
                f"{cfg.mask_prob_adjust}; the reference is 3 and 0.07)"
            )
        if cfg.average_top_k_layers < 1:
            raise ConfigError(
                f"method.average_top_k_layers={cfg.average_top_k_layers} must be >= 1 (the reference "
                "averages the top 10 of ViT-B's 12 blocks; a value above the depth averages them all)"
            )
        if cfg.clone_batch < 1:
            raise ConfigError(
                f"method.clone_batch must be >= 1 masked copies per image, got {cfg.clone_batch}"
            )
        if cfg.decoder_kernel < 1 or cfg.decoder_kernel % 2 == 0:
            raise ConfigError(
                f"method.decoder_kernel={cfg.decoder_kernel} must be odd (the decoder pads it to keep the "
                "grid; the reference is 3)"
            )
        if cfg.cls_weight < 0 or cfg.mask_noise_std < 0:
            raise ConfigError("method.cls_weight and method.mask_noise_std must be >= 0")

    def views(self) -> SingleView:
        crop = random_crop_flip(
            self.data, self.data.image_size, self.cfg.crop_scale, interpolation=self.cfg.interpolation
        )
        return SingleView(crop)

    def on_step_start(self, clock: Clock) -> dict[str, float]:
        return {"momentum": self.teacher.schedule(Clock.of(clock).anneal)}

    def draw(self, images: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A step's randomness: each copy's kept patches (copies, keep) and the decoder's noise tokens
        (copies, L, C), [base] decoder_input's normal_(0, mask_noise_std) (drawn for every position; the
        kept ones are overwritten by the encoder's tokens)."""
        cfg, copies = self.cfg, images * self.cfg.clone_batch
        keep = inverse_block_mask(
            copies, self.grid, cfg.mask_prob, cfg.mask_length, cfg.mask_prob_adjust, device
        )
        noise = torch.randn(copies, self.grid**2, self.backbone.num_features, device=device)
        return keep, noise * cfg.mask_noise_std

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        images = batch["image"]
        keep, noise = self.draw(images.shape[0], images.device)
        return StepOutput(self.loss(images, keep, noise))

    def loss(self, images: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        copies = self.cfg.clone_batch
        tokens = self.backbone(images, readout="tokens", keep=keep)  # (copies, prefix + keep, C)
        visible = tokens[:, self.prefix :]
        full = noise.scatter(1, keep.unsqueeze(-1).expand(-1, -1, visible.shape[-1]), visible)
        pred = self.decoder(full)
        masked = torch.ones(pred.shape[:2], device=pred.device).scatter_(1, keep, 0.0)
        layers = [layer[:, self.prefix :] for layer in self.teacher(images)]
        target = make_targets(layers, self.cfg.average_top_k_layers)  # (B, L, C)
        cls_target = target.mean(dim=1).repeat_interleave(copies, 0)
        target = target.repeat_interleave(copies, 0)
        return data2vec2_loss(pred, target, masked, tokens[:, 0], cls_target, self.cfg.cls_weight)

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        self.teacher.update({"backbone": self.backbone})
        return {}
