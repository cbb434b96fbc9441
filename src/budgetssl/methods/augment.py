"""Augmentation pipelines (torchvision transforms v2) shared by methods."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from budgetssl.data.info import DataInfo


def to_normalized(data: DataInfo) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]


def random_crop_flip(data: DataInfo, size: int, scale: tuple[float, float]) -> v2.Compose:
    """The classification recipe: random resized crop and horizontal flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            *to_normalized(data),
        ]
    )
