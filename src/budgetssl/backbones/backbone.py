"""The backbone interface the rest of the code sees, and building one from config."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.layers import DropPath
from torch import nn

from budgetssl.backbones.registry import FAMILIES
from budgetssl.config.schema import BackboneConfig

READOUTS = ("pooled", "map", "tokens", "levels", "ffn")
LEVELS = 4  # feature maps a multi-level head reads


class Backbone(nn.Module):
    """A timm model (num_classes=0) with the two read-outs methods and heads need.

    `model` stays a plain timm module so its state dict loads into `timm.create_model`.
    """

    family: str

    def __init__(self, model: nn.Module, timm_name: str, timm_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.timm_name = timm_name
        self.timm_kwargs = dict(timm_kwargs)
        self.num_features: int = model.num_features

    def forward(
        self,
        x: torch.Tensor,
        readout: str = "pooled",
        keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Read the backbone out as `pooled` (B, D), `map` (B, D, h, w), `tokens` (B, N, D), `levels`
        (a list of LEVELS feature maps from several depths, shallow to deep, for multi-level heads) or
        `ffn` (ViTs: each block's feed-forward output before its residual connection, a list of depth
        (B, N, D) tensors, data2vec's layer targets).

        `keep` (B, n) lists the patch tokens to encode (masked image modelling: the encoder sees only
        those, so it costs what it runs); `keep` (k B, n) encodes k masked copies of each image, rows
        b k .. b k + k - 1 copies of image b (data2vec 2.0's multi-masking), the patch embedding run
        once per image. `mask` (B, N) bool with `mask_token` (1, D) replaces the masked patches'
        embeddings by the token before the position embedding and encodes every position (iBOT's and
        DINOv2's masked student; `tokens` read-out only). Every read-out goes through this call so that
        the FLOP meter books it under the backbone.
        """
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
        if mask is not None:
            if readout != "tokens" or keep is not None or mask_token is None:
                raise ValueError("a token mask needs readout='tokens', a mask_token and no keep")
            return self._masked_tokens(x, mask, mask_token)
        return getattr(self, f"_{readout}")(x, keep)

    def _masked_tokens(self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"a {self.family} backbone has no patch tokens to mask; use a ViT")

    def _pooled(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _map(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _tokens(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _levels(self, x: torch.Tensor, keep: torch.Tensor | None) -> list[torch.Tensor]:
        raise NotImplementedError

    def _ffn(self, x: torch.Tensor, keep: torch.Tensor | None) -> list[torch.Tensor]:
        raise NotImplementedError(f"the {self.family} family has no per-block feed-forward read-out")

    def timm_spec(self) -> dict[str, Any]:
        """What `timm.create_model(name, num_classes=0, **kwargs)` needs to rebuild this model."""
        return {"name": self.timm_name, "kwargs": dict(self.timm_kwargs)}


def build_backbone(cfg: BackboneConfig, image_size: int, drop_path: float = 0.0) -> Backbone:
    """A fresh timm model. `drop_path` (stochastic depth, a pretraining recipe's regulariser) is not
    part of the architecture: it stays out of `timm_spec`, so a transfer rebuilds the model without it."""
    family = FAMILIES.get(cfg.family)
    kwargs = family.timm_kwargs(cfg, image_size)
    extra = {"drop_path_rate": drop_path} if drop_path > 0 else {}
    model = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, **kwargs, **extra)
    return family(model, cfg.timm_name, kwargs)


def without_drop_path(backbone: Backbone) -> Backbone:
    """Turn stochastic depth off (after pretraining: the transfer fine-tunes without it, as a backbone
    rebuilt from its weights file would)."""
    for module in backbone.modules():
        if isinstance(module, DropPath):
            module.drop_prob = 0.0
    return backbone
