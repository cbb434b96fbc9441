"""Joint image-and-mask transforms (transforms v2 moves masks with images, nearest-neighbour)."""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from budgetssl.data.info import SegInfo


def _finish(info: SegInfo) -> list:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(info.mean), list(info.std)),
    ]


class SegView:
    def __init__(self, transform: v2.Transform) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, mask = self.transform(sample["image"], sample["mask"])
        return {"image": image, "mask": mask.as_subclass(torch.Tensor).long()}


def train_view(info: SegInfo, size: int) -> SegView:
    crop = v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)
    return SegView(v2.Compose([crop, v2.RandomHorizontalFlip(), *_finish(info)]))


def eval_view(info: SegInfo, size: int) -> SegView:
    return SegView(v2.Compose([v2.Resize((size, size), antialias=True), *_finish(info)]))
