"""Segmentation heads on a backbone's feature map, and the model the engine fine-tunes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from budgetssl.backbones.backbone import Backbone
from budgetssl.engine.task import StepOutput, Task
from budgetssl.errors import ConfigError
from budgetssl.methods.distributed import mean_over_ranks, rank_and_size

# timm's norms in ViTs use eps 1e-6, as does MAE's linear-probe BatchNorm; small enough that a read-out
# at 1/8 of unit scale is still normalised to within about 1e-4.
READOUT_EPS = 1e-6


class ReadoutNorm(nn.Module):
    """A LayerNorm without parameters over the channels of every token of whatever a head reads.

    Why: with `global_pool=avg` timm leaves the final norm out of `forward_features` (and
    `forward_intermediates` normalises nothing), so a head would read the raw residual stream, whose scale
    pretraining sets method by method. Reference protocols normalise what the head reads: MAE's linear
    probe puts `BatchNorm1d(affine=False, eps=1e-6)` before the head (facebookresearch/mae,
    main_linprobe.py); the BEiT/MAE ADE20K decoders (microsoft/unilm beit/semantic_segmentation, run with
    mmsegmentation's UPerHead) normalise each level in its own lateral ConvModule (conv + SyncBN).
    A per-token LayerNorm rather than a BatchNorm: it is the same function in training and evaluation (no
    running statistics that lag a backbone being fine-tuned), so LN(c * f) = LN(f) for any c > 0 at every
    step; and its gradient is divided by c, which cancels the factor c on the way back into the backbone,
    so the backbone's updates do not depend on c either. No affine parameters: the head that follows is
    linear in its input and absorbs them.
    """

    def __init__(self, readout: str) -> None:
        super().__init__()
        self.readout = readout

    def forward(self, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(features, (list, tuple)):  # levels: each level on its own
            return [self._norm(f) for f in features]
        return self._norm(features)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # (B, D, h, w): channels first
            return F.layer_norm(x.movedim(1, -1), x.shape[1:2], eps=READOUT_EPS).movedim(-1, 1)
        return F.layer_norm(x, x.shape[-1:], eps=READOUT_EPS)  # (B, N, D) tokens or (B, D) pooled

    def extra_repr(self) -> str:
        return f"readout={self.readout!r}, eps={READOUT_EPS}"


class LinearHead(nn.Module):
    """A 1x1 convolution on the feature map: the cheap linear probe of dense features."""

    readout = "map"

    @classmethod
    def for_backbone(cls, backbone: Backbone, num_classes: int, image_size: int) -> LinearHead:
        return cls(backbone.num_features, num_classes)

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.classify = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.norm(features))


class MultiLevelHead(nn.Module):
    """A light FPN-style decoder: each level projected to `dim`, upsampled to the finest level,
    concatenated, fused by a 3x3 convolution and classified per pixel."""

    readout = "levels"

    @classmethod
    def for_backbone(cls, backbone: Backbone, num_classes: int, image_size: int) -> MultiLevelHead:
        return cls(level_channels(backbone, image_size), num_classes)

    def __init__(self, channels: list[int], num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.project = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
                for c in channels
            ]
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(channels), dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.classify = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in levels), key=lambda s: s[0] * s[1])
        maps = [project(f) for project, f in zip(self.project, levels, strict=True)]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear") for m in maps]
        return self.classify(self.fuse(torch.cat(maps, dim=1)))


def level_channels(backbone: Backbone, image_size: int) -> list[int]:
    """Channels of each level, from one dry forward pass in eval mode, on the backbone's device (the meta
    device where a step is counted without running it: verify/flops.py)."""
    was_training = backbone.training
    device = next(backbone.parameters()).device
    backbone.eval()
    try:
        with torch.no_grad():
            levels = backbone(torch.zeros(1, 3, image_size, image_size, device=device), readout="levels")
    finally:
        backbone.train(was_training)
    return [f.shape[1] for f in levels]


HEADS = {"linear": LinearHead, "multilevel": MultiLevelHead}


def head_class(name: str) -> type[LinearHead | MultiLevelHead]:
    """The head called `name` (transfer.head): the one lookup, so the config check and the model agree."""
    if name not in HEADS:
        raise ConfigError(f"transfer.head must be one of {', '.join(HEADS)}; got '{name}'")
    return HEADS[name]


class Segmenter(Task):
    """Backbone read-out -> ReadoutNorm -> head -> logits upsampled to the input; a task for the engine.

    A frozen backbone (no parameter requires a gradient) stays in eval mode while the head trains, so a
    probe changes neither its normalisation statistics (ResNets' BatchNorm) nor samples its drop-path, as
    in MoCo's linear classification (main_lincls.py: model.eval() during training).
    """

    def __init__(
        self,
        backbone: Backbone,
        head: str,
        num_classes: int,
        ignore_index: int,
        backbone_lr_scale: float = 1.0,
        image_size: int = 32,
        layer_decay: float | None = None,
        readout_norm: bool = True,
    ) -> None:
        super().__init__()
        head_cls = head_class(head)
        self.backbone = backbone
        self.head = head_cls.for_backbone(backbone, num_classes, image_size)
        self.readout = head_cls.readout
        # readout_norm=False only to show what the normalisation buys (tests); every transfer uses it.
        self.readout_norm = ReadoutNorm(self.readout) if readout_norm else nn.Identity()
        self.ignore_index = ignore_index
        self.backbone_lr_scale = backbone_lr_scale
        self.layer_decay = layer_decay

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay off for norms and biases (timm's rule); the backbone at a scaled learning rate,
        and with `layer_decay` each backbone layer at decay^(layers above it) of that (timm's rule)."""
        if self.layer_decay is None:
            backbone_groups = param_groups_weight_decay(self.backbone.model, weight_decay)
        else:
            backbone_groups = param_groups_layer_decay(
                self.backbone.model, weight_decay, layer_decay=self.layer_decay
            )
        groups = []
        for group in backbone_groups:
            scale = group.get("lr_scale", 1.0) * self.backbone_lr_scale
            if group["params"]:
                groups.append({**group, "lr_scale": scale})
        for group in param_groups_weight_decay(self.head, weight_decay):
            if group["params"]:
                groups.append({**group, "lr_scale": 1.0})
        return groups

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        out = self.head(self.readout_norm(self.backbone(image, readout=self.readout)))
        return F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Cross-entropy averaged over the labelled pixels of the global batch. Under torchrun a rank's
        share holds its own number of ignored pixels, so each rank divides its sum by the ranks' mean
        count of labelled pixels: DDP's average of the ranks' gradients is then one process's gradient."""
        logits, mask = self.logits(batch["image"]), batch["mask"]
        if rank_and_size()[1] == 1:
            return StepOutput(F.cross_entropy(logits, mask, ignore_index=self.ignore_index))
        pixels = mean_over_ranks((mask != self.ignore_index).sum().float()).clamp(min=1)
        total = F.cross_entropy(logits, mask, ignore_index=self.ignore_index, reduction="sum")
        return StepOutput(total / pixels)
