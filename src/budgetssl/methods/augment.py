"""Augmentation pipelines (torchvision transforms v2) shared by methods."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from budgetssl.data.info import DataInfo
from budgetssl.errors import ConfigError

# How a random resized crop resamples. The references differ: DINO (main_dino.py), MAE
# (main_pretrain.py), open_clip (transform.py), SimCLR's TF code (data_util.py) and BYOL's (dataset.py)
# resize bicubic; MoCo v3 (main_moco.py), whose ViT study is the SimCLR/BYOL-on-ViT reference, keeps
# torchvision's default, bilinear.
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def check_interpolation(interpolation: str) -> None:
    """Refuse an unknown `method.interpolation` at config time."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"method.interpolation must be one of {', '.join(INTERPOLATIONS)}, got '{interpolation}'"
        )


def resized_crop(size: int, scale: tuple[float, float], interpolation: str) -> v2.RandomResizedCrop:
    """torchvision's random resized crop with the reference's resampling (antialiased)."""
    check_interpolation(interpolation)
    return v2.RandomResizedCrop(
        size, scale=scale, interpolation=INTERPOLATIONS[interpolation], antialias=True
    )


def to_normalized(data: DataInfo) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]


def random_crop_flip(
    data: DataInfo,
    size: int,
    scale: tuple[float, float],
    flip: bool = True,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """The classification recipe: random resized crop and (unless `flip` is off) horizontal flip."""
    flips = [v2.RandomHorizontalFlip()] if flip else []
    return v2.Compose([resized_crop(size, scale, interpolation), *flips, *to_normalized(data)])


def blur_kernel(size: int) -> int:
    """Odd kernel about 10% of the crop side (SimCLR's rule; 23 px at 224)."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


def ssl_crop(
    data: DataInfo,
    size: int,
    scale: tuple[float, float],
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    blur_p: float = 0.0,
    solarize_p: float = 0.0,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """The SimCLR/BYOL/DINO family of views: crop, flip, colour jitter, greyscale, blur, solarize."""
    b, c, s, h = jitter
    ops: list = [
        resized_crop(size, scale, interpolation),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)], p=jitter_p),
        v2.RandomGrayscale(p=gray_p),
    ]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    return v2.Compose([*ops, *to_normalized(data)])


class MultiView:
    """Several augmented views of one image, stacked per group: {"views": (V, C, H, W), ...}.

    Views of one size form one group so that a method sends them through the backbone together.
    """

    def __init__(self, groups: dict[str, list]) -> None:
        self.groups = {name: list(transforms) for name, transforms in groups.items() if transforms}

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        return {name: torch.stack([t(image) for t in ts]) for name, ts in self.groups.items()}


class SingleView:
    """One augmented view: {"image": (C, H, W)}."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, sample: dict) -> dict:
        return {"image": self.transform(sample["image"])}
