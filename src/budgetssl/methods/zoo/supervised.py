"""Supervised softmax classification on labels: the study's supervised baseline, on DeiT's recipe.

The reference (configs/method/supervised.yaml, cited there) is DeiT's (Touvron et al. 2021): a random
resized bicubic crop and flip, timm's RandAugment and random erasing per image (timm's create_transform,
as facebookresearch/deit datasets.py builds it), then mixup/cutmix on the batch with label smoothing
folded into the soft targets and a soft-target cross-entropy (deit main.py). Every augmentation is an
option, so the CPU recipe (configs/method/cpu/supervised.yaml) turns the heavy ones off.

The monitors (Method.monitor_outputs) read the base's default, the pooled features the classifier reads:
its logits, one per class, are no embedding.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import posterize as timm_posterize
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import str_to_pil_interp
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from budgetssl.backbones.backbone import Backbone
from budgetssl.data.info import DataInfo
from budgetssl.engine.task import StepOutput
from budgetssl.errors import ConfigError
from budgetssl.methods.augment import (
    INTERPOLATIONS,
    CropConfig,
    SingleView,
    random_crop_flip,
    resized_crop,
    to_normalized,
)
from budgetssl.methods.base import Method
from budgetssl.methods.registry import METHODS

if TYPE_CHECKING:
    from budgetssl.config.check import RunConfig

# How deit main.py builds timm's Mixup besides the two alphas: --mixup-prob 1.0 (mix every batch),
# --mixup-switch-prob 0.5 (cutmix or mixup, even odds, when both are on), --mixup-mode batch (one draw
# per batch). Random erasing: --remode pixel (per-pixel normal noise), --recount 1 (one box).
MIXUP_PROB = 1.0
MIXUP_SWITCH_PROB = 0.5
MIXUP_MODE = "batch"
ERASING_MODE = "pixel"
ERASING_COUNT = 1
VAL_BATCH = 256  # images per forward when scoring the held-out split


@dataclass
class SupervisedConfig(CropConfig):
    """Values in configs/method/supervised.yaml (cited there); the crop's fields are CropConfig's."""

    label_smoothing: float = MISSING
    randaugment: str | None = MISSING  # timm's RandAugment config string (rand-m9-mstd0.5-inc1); null = off
    random_erasing: float = MISSING  # chance of erasing one box of an image (timm's RandomErasing); 0 = off
    mixup_alpha: float = MISSING  # Beta(alpha, alpha) of mixup on the batch; 0 = off
    cutmix_alpha: float = MISSING  # Beta(alpha, alpha) of cutmix on the batch; 0 = off
    eval_crop_ratio: float = MISSING  # held-out scoring: resize to image_size / ratio, centre crop image_size


class LabelledView(SingleView):
    """One augmented view of the image plus its label."""

    def fields(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"label": torch.tensor(sample["label"])}

    def batch_fields(self, batch: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
        return {"label": torch.as_tensor(batch["label"])}


class StdlibSeeded:
    """Run `transform` with Python's and NumPy's global generators seeded from torch's, then put them back.

    timm's RandAugment and RandomErasing draw from `random` and `numpy.random`; the loader seeds only torch
    per sample (data/sampler.py), so without this their draws would depend on the worker count and on
    what else drew before. Seeding from torch keeps a sample's augmentation a function of its seed.
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return self.transform(image)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, with 0 bits kept giving a black image, as older Pillow did (a mask of 0) and as the
    TensorFlow RandAugment does; the Pillow installed here (13) refuses 0, which timm's PosterizeIncreasing
    asks for at magnitude 10, within reach of rand-m9-mstd0.5."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_posterize(image, bits_to_keep)


class TimmRandAugment:
    """timm's RandAugment (PIL) on a uint8 image tensor, with the hyper-parameters timm's create_transform
    gives it: translations up to 45% of the image side, the dataset mean as fill, the crop's resampling."""

    def __init__(self, config: str, size: int, mean: tuple[float, ...], interpolation: str) -> None:
        hparams = {
            "translate_const": int(size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in mean),
            "interpolation": str_to_pil_interp(interpolation),
        }
        self.op = rand_augment_transform(config, hparams)
        for op in self.op.ops:
            if op.aug_fn is timm_posterize:
                op.aug_fn = posterize

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        out = self.op(v2.functional.to_pil_image(image))
        return tv_tensors.Image(v2.functional.pil_to_tensor(out))


def train_transform(cfg: SupervisedConfig, data: DataInfo) -> Callable:
    """Crop and flip, RandAugment, normalise, random erasing: timm's transforms_imagenet_train order.

    No colour jitter: DeiT passes --color-jitter 0.3, but timm drops it whenever RandAugment is on, so the
    reference never applies it. Without RandAugment and random erasing it is the plain crop-and-flip
    `Augment`, which also runs batched on the device (train.augment_on=device); timm's per-image
    RandAugment (PIL) and random erasing run in the data path only.
    """
    size = data.image_size
    if not cfg.randaugment and cfg.random_erasing == 0:
        return random_crop_flip(data, size, cfg.crop_scale, interpolation=cfg.interpolation)
    ops: list = [resized_crop(size, cfg.crop_scale, cfg.interpolation), v2.RandomHorizontalFlip()]
    if cfg.randaugment:
        ops.append(TimmRandAugment(cfg.randaugment, size, data.mean, cfg.interpolation))
    ops += to_normalized(data)
    if cfg.random_erasing > 0:
        ops.append(
            RandomErasing(cfg.random_erasing, mode=ERASING_MODE, max_count=ERASING_COUNT, device="cpu")
        )
    transform = v2.Compose(ops)
    return StdlibSeeded(transform) if cfg.randaugment or cfg.random_erasing > 0 else transform


def eval_transform(cfg: SupervisedConfig, data: DataInfo) -> v2.Compose:
    """The deterministic centre view: shorter side to image_size / eval_crop_ratio, centre crop, normalise
    (deit datasets.py build_transform for evaluation)."""
    size = data.image_size
    return v2.Compose(
        [
            v2.Resize(int(size / cfg.eval_crop_ratio), INTERPOLATIONS[cfg.interpolation], antialias=True),
            v2.CenterCrop(size),
            *to_normalized(data),
        ]
    )


def labelled_batches(
    val_set: Dataset, transform: Callable, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of the held-out split in its order; samples without a label are left out."""
    if isinstance(val_set, IterableDataset):
        samples: Iterator[dict[str, Any]] = iter(val_set)
    else:
        samples = (val_set[i] for i in range(len(val_set)))  # type: ignore[arg-type]
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for sample in samples:
        if sample.get("label") is None:
            continue
        images.append(transform(sample["image"]))
        labels.append(int(sample["label"]))
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels)
            images, labels = [], []
    if images:
        yield torch.stack(images), torch.tensor(labels)


@METHODS.register("supervised")
class Supervised(Method):
    config_class = SupervisedConfig
    needs = frozenset({"label"})

    def __init__(self, cfg: SupervisedConfig, backbone: Backbone, data: DataInfo) -> None:
        super().__init__(cfg, backbone, data)
        self.head = nn.Linear(backbone.num_features, data.num_classes)
        self.mixup = (
            Mixup(
                mixup_alpha=cfg.mixup_alpha,
                cutmix_alpha=cfg.cutmix_alpha,
                prob=MIXUP_PROB,
                switch_prob=MIXUP_SWITCH_PROB,
                mode=MIXUP_MODE,
                label_smoothing=cfg.label_smoothing,
                num_classes=data.num_classes,
            )
            if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
            else None
        )
        self.soft_target_loss = SoftTargetCrossEntropy()

    @classmethod
    def check(cls, run: RunConfig) -> None:
        cfg = run.method
        if not 0 <= cfg.label_smoothing < 1:
            raise ConfigError(f"method.label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
        if not 0 <= cfg.random_erasing <= 1:
            raise ConfigError(f"method.random_erasing must be in [0, 1], got {cfg.random_erasing}")
        if cfg.mixup_alpha < 0 or cfg.cutmix_alpha < 0:
            raise ConfigError(
                f"method.mixup_alpha and method.cutmix_alpha must be >= 0 (0 = off), got "
                f"{cfg.mixup_alpha} and {cfg.cutmix_alpha}"
            )
        if (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) and run.train.batch_size % 2:
            raise ConfigError(
                f"mixup/cutmix pair each image with the batch's mirror image: train.batch_size must be even, "
                f"got {run.train.batch_size}"
            )
        if run.train.augment_on == "device" and (cfg.randaugment or cfg.random_erasing > 0):
            raise ConfigError(
                "train.augment_on=device runs views on whole batches, but timm's RandAugment and random "
                "erasing run per image in the data path: set train.augment_on=loader or auto (auto keeps "
                "them in the loader), or method.randaugment=null and method.random_erasing=0"
            )
        if not 0 < cfg.eval_crop_ratio <= 1:
            raise ConfigError(f"method.eval_crop_ratio must be in (0, 1], got {cfg.eval_crop_ratio}")
        if cfg.randaugment:
            try:
                rand_augment_transform(cfg.randaugment, {})
            except Exception as e:  # timm asserts on a malformed string
                raise ConfigError(
                    f"method.randaugment: '{cfg.randaugment}' is not a timm RandAugment string "
                    f"(e.g. rand-m9-mstd0.5-inc1; null turns it off): {e}"
                ) from e

    def views(self) -> LabelledView:
        return LabelledView(train_transform(self.cfg, self.data))

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None:
            # timm mixes in place: mix a copy, so the batch stays as the loader made it.
            images, targets = self.mixup(images.clone(), labels)
            logits = self.head(self.backbone(images))
            loss = self.soft_target_loss(logits, targets)
        else:
            logits = self.head(self.backbone(images))
            loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        # Against the unmixed labels: under mixup/cutmix, the label of the larger share of each image.
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return StepOutput(loss, {"accuracy": accuracy.detach()})  # read on logged steps only

    def validation_scores(self, val_set: Dataset) -> dict[str, float]:
        """Top-1 accuracy (percent) of the pretrained classifier on the held-out split: one centre view
        per image, eval mode (no drop-path), no augmentation, no gradients."""
        device = next(self.parameters()).device
        transform = eval_transform(self.cfg, self.data)
        was_training = self.training
        self.eval()
        correct = total = 0
        try:
            with torch.no_grad():
                for images, labels in labelled_batches(val_set, transform, VAL_BATCH):
                    predicted = self.head(self.backbone(images.to(device))).argmax(dim=1).cpu()
                    correct += int((predicted == labels).sum())
                    total += len(labels)
        finally:
            self.train(was_training)
        if total == 0:
            return {}
        return {"val_accuracy": 100.0 * correct / total, "val_images": total}
