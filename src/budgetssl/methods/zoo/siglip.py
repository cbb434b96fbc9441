"""SigLIP (Zhai, Mustafa, Kolesnikov & Beyer, ICCV 2023, "Sigmoid Loss for Language Image Pre-Training").

CLIP's two towers (methods/zoo/clip.py: the backbone as image tower, open_clip's text transformer,
captions or pseudo-captions tokenised offline) trained with a pairwise sigmoid loss instead of the
softmax: every image-text pair of the batch is its own binary problem, positive on the diagonal and
negative elsewhere, on logits t * <image, text> + b with a learnable log-temperature t' (t = exp t',
initialised at log 10) and bias b (initialised at -10), as the paper's Algorithm 1 and Sec. 4.9 give
them. The loss needs no normalisation over the batch, so across ranks each rank scores its own images
against every rank's texts, gathered with gradients (open_clip's SigLipLoss exchanges them between
neighbours to the same effect); averaged over ranks it is the one-process loss on the global batch.

The text tower is SigLIP's: full attention (no causal mask), pooled at the last position, projected
with a bias (open_clip model_configs/ViT-B-16-SigLIP.json: no_causal_mask, pool_type "last",
proj_bias; big_vision models/proj/image_text/text_transformer.py: pool_type "last", no mask). The
temperature is not clamped (big_vision models/proj/image_text/two_towers.py keeps t free).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from budgetssl.backbones.backbone import Backbone
from budgetssl.data.info import DataInfo
from budgetssl.engine.schedule import Clock
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.distributed import gather, rank_and_size
from budgetssl.methods.registry import METHODS
from budgetssl.methods.zoo.clip import CLIP, CLIPConfig

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig


@dataclass
class SigLIPConfig(CLIPConfig):
    """Values in configs/method/siglip.yaml (cited there); the text tower's, the captions' and the crop's
    fields are CLIP's. `init_temperature` is 1 / t, so the paper's t' = log 10 is 0.1."""

    init_bias: float = MISSING  # b's start: -10 (Sec. 4.9, Table 4; Algorithm 1 "b = -10")


def siglip_loss(
    image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The pairwise sigmoid loss (Algorithm 1): this rank's n images against every rank's texts,
    -sum log sigmoid(z_ij (t <x_i, y_j> + b)) / n with z_ij = 1 for an image's own caption and -1 for
    every other; the embeddings are L2-normalised here, t = exp(log_scale).

    Summed over all pairs and divided by the local batch, as the paper (`l = -sum(log_sigmoid(labels *
    logits)) / n`) and open_clip's SigLipLoss (`/ image_features.shape[0]`) divide: the mean over
    ranks is the one-process loss of the global batch, and gathering the texts with gradients gives
    each rank's texts their gradient from every rank's images."""
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    rank, _ = rank_and_size()
    n = image.shape[0]
    logits = log_scale.exp() * image @ gather(text).T + bias
    labels = -torch.ones_like(logits)
    labels.diagonal(rank * n).fill_(1.0)  # this rank's pairs sit at columns rank * n + i
    return -F.logsigmoid(labels * logits).sum() / n


@METHODS.register("siglip")
class SigLIP(CLIP):
    config_class = SigLIPConfig
    text_options: ClassVar[dict[str, Any]] = {"no_causal_mask": True, "pool_type": "last", "proj_bias": True}

    def __init__(self, cfg: SigLIPConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)  # logit_scale = log(1 / init_temperature) = t'
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_bias)))

    @classmethod
    def check(cls, run: RunConfig) -> None:
        super().check(run)
        if not math.isfinite(run.method.init_bias):
            raise ConfigError(
                f"method.init_bias must be a finite number (the paper's -10), got {run.method.init_bias}"
            )

    def no_weight_decay(self) -> set[str]:
        """The text tower's token embedding (2-d, so decayed by the `biases_norms` rule): big_vision decays
        only kernels (big_vision/optax.py `wd_mults` default ".*/kernel$"), not embeddings. Read by the
        recipe's `tokens` rule (engine/recipe.py decay_exempt_names), beside the position embeddings."""
        return {"text.token_embedding.weight"}

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        image = self.image_proj(self.backbone(batch["image"]))
        text = self.text(batch["tokens"])
        loss = siglip_loss(image, text, self.logit_scale, self.logit_bias)
        logs = {"temperature": 1 / self.logit_scale.detach().exp(), "bias": self.logit_bias.detach()}
        return StepOutput(loss, logs)  # read when logged

    def on_step_end(self, clock: Clock) -> dict[str, float]:
        """No clamp: big_vision's two towers leave t free (CLIP clamps its logit scale at 100)."""
        return {}
