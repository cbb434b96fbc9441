"""Vision Transformers (timm VisionTransformer): patch tokens reshaped into a feature map.

Built with `dynamic_img_size=True`, so one model takes crops of several sizes (DINO's local crops,
transfer at another resolution) by resampling its position embedding; at the configured size that
is a no-op.
"""

from __future__ import annotations

from typing import Any

import torch

from budgetssl.backbones.backbone import LEVELS, Backbone
from budgetssl.backbones.registry import FAMILIES
from budgetssl.config.schema import BackboneConfig
from budgetssl.errors import ConfigError


@FAMILIES.register("vit")
class ViTBackbone(Backbone):
    family = "vit"

    def __init__(self, model, timm_name: str, timm_kwargs: dict[str, Any]) -> None:
        super().__init__(model, timm_name, timm_kwargs)
        self.patch_size: int = model.patch_embed.patch_size[0]
        self.num_prefix_tokens: int = model.num_prefix_tokens

    @staticmethod
    def check(cfg: BackboneConfig, image_size: int) -> None:
        if cfg.patch_size is None or cfg.patch_size < 1:
            raise ConfigError(
                f"backbone '{cfg.name}' is a ViT: set backbone.patch_size to a positive integer"
            )
        if image_size % cfg.patch_size:
            raise ConfigError(
                f"dataset.image_size={image_size} is not a multiple of backbone.patch_size={cfg.patch_size}; "
                f"change one of them"
            )

    @staticmethod
    def timm_kwargs(cfg: BackboneConfig, image_size: int) -> dict[str, Any]:
        return {"dynamic_img_size": True, **cfg.kwargs, "img_size": image_size, "patch_size": cfg.patch_size}

    def _tokens(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """All tokens (prefix first) after the final norm; with `keep`, only the kept patches; with k
        rows of `keep` per image, k masked copies of each (embedded once, then repeated, as data2vec
        2.0's ModalitySpecificEncoder.contextualized_features repeats the embedded patches)."""
        m = self.model
        if keep is None:
            return m.forward_features(x)
        tokens = m._pos_embed(m.patch_embed(x))  # position embedding added before masking, as in MAE
        if keep.shape[0] != tokens.shape[0]:
            if keep.shape[0] % tokens.shape[0]:
                raise ValueError(
                    f"keep has {keep.shape[0]} rows for {tokens.shape[0]} images: give one row per image "
                    "or the same number of masked copies of each"
                )
            tokens = tokens.repeat_interleave(keep.shape[0] // tokens.shape[0], dim=0)
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]
        patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        tokens = m.norm_pre(m.patch_drop(torch.cat([prefix, patches], dim=1)))
        return m.norm(m.blocks(tokens))

    def _masked_tokens(self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, the patches where `mask` (B, N) is true replaced by
        `mask_token` (1, D) after the patch embedding and before the position embedding, as iBOT's
        (models/vision_transformer.py prepare_tokens, mask_model) and DINOv2's (dinov2/models/
        vision_transformer.py prepare_tokens_with_masks) ViTs do."""
        m = self.model
        patches = m.patch_embed(x)  # (B, h, w, D) under dynamic_img_size, else (B, N, D)
        hidden = mask.reshape(patches.shape[:-1]).unsqueeze(-1)
        patches = torch.where(hidden, mask_token.to(patches.dtype), patches)
        tokens = m.norm_pre(m.patch_drop(m._pos_embed(patches)))
        return m.norm(m.blocks(tokens))

    def _pooled(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.model.forward_head(self._tokens(x, keep))

    def _ffn(self, x: torch.Tensor, keep: torch.Tensor | None) -> list[torch.Tensor]:
        """Each block's feed-forward output before its residual connection (timm Block: ls2(mlp(norm2(x))),
        the pre-norm counterpart of data2vec's AltBlock ffn_targets), all tokens, prefix first."""
        if keep is not None:
            raise ValueError("the per-block read-out runs on every patch")
        outputs: list[torch.Tensor] = []
        hooks = []
        for i, block in enumerate(self.model.blocks):
            if not hasattr(block, "ls2"):
                raise ValueError(f"block {i} ({type(block).__name__}) has no ls2: not a timm Block")
            hooks.append(block.ls2.register_forward_hook(lambda _m, _i, out: outputs.append(out)))
        try:
            self.model.forward_features(x)
        finally:
            for hook in hooks:
                hook.remove()
        return outputs

    def _levels(self, x: torch.Tensor, keep: torch.Tensor | None) -> list[torch.Tensor]:
        """Patch tokens after LEVELS evenly spaced blocks (the last included), as maps of one stride."""
        if keep is not None:
            raise ValueError("multi-level maps need every patch")
        depth = len(self.model.blocks)
        indices = sorted({max(0, depth * (i + 1) // LEVELS - 1) for i in range(LEVELS)})
        return self.model.forward_intermediates(
            x, indices=indices, output_fmt="NCHW", intermediates_only=True
        )

    def _map(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if keep is not None:
            raise ValueError("a feature map needs every patch; call with readout='tokens' to mask")
        tokens = self._tokens(x, None)[:, self.num_prefix_tokens :]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
