"""Joint image-and-mask transforms (transforms v2 moves masks with images, nearest-neighbour)."""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

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


def reference_train_view(info: SegInfo, size: int) -> SegView:
    """The fine-tuning view as a v2 pipeline: what `TrainView` computes, bit for bit (tested)."""
    crop = v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)
    return SegView(v2.Compose([crop, v2.RandomHorizontalFlip(), *_finish(info)]), info)


class TrainView:
    """The fine-tuning view: random resized crop (area 0.5-1, bilinear antialiased image, nearest mask),
    horizontal flip, scaled to [0, 1] and normalised. It draws the same random numbers in the same order
    as `reference_train_view` and gives the same tensors, through v2's functional kernels on plain
    tensors: without the v2 pipeline's per-transform dispatch, which at small sizes is much of a sample's
    cost, where the transfer's steps wait for data much of their time (benchmarks/README.md)."""

    def __init__(self, info: SegInfo, size: int) -> None:
        self.crop = v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)
        self.size = [size, size]
        self.mean, self.std = list(info.mean), list(info.std)
        self.info = info

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        p = self.crop.make_params([sample["image"]])
        box = (p["top"], p["left"], p["height"], p["width"])
        image = sample["image"].as_subclass(torch.Tensor)
        mask = sample["mask"].as_subclass(torch.Tensor)
        image = F.resized_crop(image, *box, self.size, InterpolationMode.BILINEAR, antialias=True)
        mask = F.resized_crop(mask[None], *box, self.size, InterpolationMode.NEAREST)[0]
        if torch.rand(1) < 0.5:  # v2.RandomHorizontalFlip(p=0.5) draws the same number
            image, mask = image.flip(-1), mask.flip(-1)
        image = F.normalize(F.to_dtype(image, torch.float32, scale=True), self.mean, self.std)
        mask = mask.long()
        check_labels(mask, self.info)
        return {"image": image, "mask": mask}


def train_view(info: SegInfo, size: int) -> TrainView:
    return TrainView(info, size)


def eval_view(info: SegInfo, size: int) -> SegView:
    return SegView(v2.Compose([v2.Resize((size, size), antialias=True), *_finish(info)]), info)


def full_view(info: SegInfo) -> SegView:
    """Normalised only: images and masks keep their stored resolution (sliding-window evaluation)."""
    return SegView(v2.Compose(_finish(info)), info)
