"""Joint image-and-mask transforms (transforms v2 moves masks with images, nearest-neighbour)."""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from budgetssl.data.info import SegInfo
from budgetssl.errors import DataError


def _finish(info: SegInfo) -> list:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(info.mean), list(info.std)),
    ]


class SegView:
    """Transforms a sample and checks its mask against the classes the head will have."""

    def __init__(self, transform: v2.Transform, info: SegInfo) -> None:
        self.transform = transform
        self.info = info

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, mask = self.transform(sample["image"], sample["mask"])
        mask = mask.as_subclass(torch.Tensor).long()
        check_labels(mask, self.info)
        return {"image": image, "mask": mask}


def check_labels(mask: torch.Tensor, info: SegInfo) -> None:
    """A label outside the class list would crash cross-entropy obscurely (or be miscounted): say so."""
    bad = (mask != info.ignore_index) & ((mask < 0) | (mask >= info.num_classes))
    if bool(bad.any()):
        raise DataError(
            f"a transfer mask holds label {int(mask[bad][0])}, but the transfer dataset has "
            f"{info.num_classes} classes (labels 0..{info.num_classes - 1}, {info.ignore_index} = ignore) "
            f"and the head is built with that many: the dataset's class count disagrees with its masks; "
            f"check the masks under transfer.root and the class list of the transfer= config"
        )


def train_view(info: SegInfo, size: int) -> SegView:
    crop = v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)
    return SegView(v2.Compose([crop, v2.RandomHorizontalFlip(), *_finish(info)]), info)


def eval_view(info: SegInfo, size: int) -> SegView:
    return SegView(v2.Compose([v2.Resize((size, size), antialias=True), *_finish(info)]), info)


def full_view(info: SegInfo) -> SegView:
    """Normalised only: images and masks keep their stored resolution (sliding-window evaluation)."""
    return SegView(v2.Compose(_finish(info)), info)
