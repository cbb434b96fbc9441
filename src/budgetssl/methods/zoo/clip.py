"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision").

The backbone is the image tower; a small causal text transformer (open_clip's) is the text tower;
both project to a shared space where a symmetric InfoNCE loss with a learnable temperature (logit
scale clamped at 100, as in the reference) pairs each image with its caption among all of the batch,
gathered across ranks. The projections start as open_clip's: N(0, width^-0.5) for the image
projection (VisionTransformer.proj, width = the image tower's) and the text projection, whose tower
open_clip's TextTransformer.init_parameters initialises itself (token embedding N(0, 0.02), position
N(0, 0.01), attention N(0, width^-0.5), residual projections scaled by (2 layers)^-0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from open_clip.transformer import TextTransformer
from torch import nn

from budgetssl.backbones.backbone import Backbone
from budgetssl.data.info import DataInfo
from budgetssl.data.registry import DATASETS
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import CropConfig, random_crop_flip
from budgetssl.methods.base import Method
from budgetssl.methods.captions import CAPTION_SOURCES, CaptionView
from budgetssl.methods.distributed import gather, rank_and_size
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

VOCAB_SIZE = 49408  # open_clip's bundled BPE vocabulary
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class CLIPConfig(CropConfig):
    """Values in configs/method/clip.yaml (cited there); the crop's fields are CropConfig's."""

    embed_dim: int = MISSING
    text_width: int = MISSING  # MiniLM-sized text tower (12 layers, 384 wide), as in the study
    text_layers: int = MISSING
    text_heads: int = MISSING
    context_length: int = MISSING
    init_temperature: float = MISSING
    captions: str = MISSING  # auto: captions if the dataset has them, else pseudo-captions from labels


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: this rank's images against every rank's texts, and its texts against every
    rank's images; the positive of item i is its own pair."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    rank, _ = rank_and_size()
    scale = logit_scale.exp()
    targets = rank * image.shape[0] + torch.arange(image.shape[0], device=image.device)
    image_logits = scale * image @ gather(text).T
    text_logits = scale * text @ gather(image).T
    return (F.cross_entropy(image_logits, targets) + F.cross_entropy(text_logits, targets)) / 2


@METHODS.register("clip")
class CLIP(Method):
    config_class = CLIPConfig
    # Options of open_clip's TextTransformer beyond the sizes (a subclass's text tower: SigLIP's pools the
    # last token without a causal mask); CLIP's is the default one (causal, pooled at the EOT token).
    text_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: CLIPConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.image_proj = nn.Linear(backbone.num_features, cfg.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=backbone.num_features**-0.5)  # open_clip's proj init
        self.text = TextTransformer(
            context_length=cfg.context_length,
            vocab_size=VOCAB_SIZE,
            width=cfg.text_width,
            heads=cfg.text_heads,
            layers=cfg.text_layers,
            output_dim=cfg.embed_dim,
            **self.text_options,
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if cfg.captions not in CAPTION_SOURCES:
            raise ConfigError(f"method.captions must be one of {CAPTION_SOURCES}, got '{cfg.captions}'")
        dataset = DATASETS.get(run.dataset.name)
        provides = dataset.provided(run.dataset)
        usable = {"auto": {"caption", "label"}, "caption": {"caption"}, "label": {"label"}}[cfg.captions]
        if not usable & provides:
            hint = dataset.missing_hint(run.dataset, usable)
            raise ConfigError(
                f"method '{cfg.name}' with method.captions={cfg.captions} needs "
                f"{' or '.join(sorted(usable))} from its data, but dataset '{run.dataset.name}' "
                f"provides only {', '.join(sorted(provides))}; "
                + (
                    f"{hint}, or pick a dataset with captions or labels"
                    if hint
                    else "pick a dataset with captions or labels"
                )
            )
        if cfg.text_width % cfg.text_heads:
            raise ConfigError(
                f"method.text_width={cfg.text_width} must be divisible by method.text_heads={cfg.text_heads}"
            )
        if min(cfg.embed_dim, cfg.text_layers, cfg.context_length) < 1:
            raise ConfigError("method.embed_dim, method.text_layers and method.context_length must be >= 1")
        if not 0 < cfg.init_temperature <= 1:
            raise ConfigError(f"method.init_temperature must be in (0, 1], got {cfg.init_temperature}")

    def views(self) -> CaptionView:
        crop = random_crop_flip(  # no flip: captions may say left/right (open_clip's training views)
            self.data,
            self.data.image_size,
            self.cfg.crop_scale,
            flip=False,
            interpolation=self.cfg.interpolation,
        )
        return CaptionView(crop, self.data.class_names, self.cfg.captions, self.cfg.context_length)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        image = self.image_proj(self.backbone(batch["image"]))
        text = self.text(batch["tokens"])
        loss = clip_loss(image, text, self.logit_scale)
        return StepOutput(loss, {"temperature": 1 / self.logit_scale.detach().exp()})  # read when logged

    def monitor_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image tower's pooled features and the image embedding (its projection, before the L2 norm)."""
        features = self.backbone(images)
        return {"features": features, "embedding": self.image_proj(features)}

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        with torch.no_grad():
            self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return {}
