"""Joint image-and-mask transforms (transforms v2 moves masks with images, nearest-neighbour).

The fine-tuning's training view runs two ways, as a method's views do (`train.augment_on`):
`TrainView` per sample in the data path (the reference: torchvision's own kernels, bit for bit its v2
pipeline), and `BatchTrainView` on a whole collated batch on the training device, every random draw
per sample, the same distributions (tests/test_transfer_views.py); `batch_train_view` says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from budgetssl.data.info import SegInfo
from budgetssl.data.loader import IMAGE_SIZE, BatchView, collate_images, one_size
from budgetssl.errors import DataError
from budgetssl.methods.augment import CROP_RATIO
from budgetssl.methods.batched import (
    Draws,
    Rand,
    chance,
    crop_boxes,
    nearest_crops,
    normalize,
    resized_crops,
    views_on_device,
)

SCALE = (0.5, 1.0)  # the training crop's share of the image's area


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


def training_crop(size: int) -> v2.RandomResizedCrop:
    return v2.RandomResizedCrop(size, scale=SCALE, ratio=CROP_RATIO, antialias=True)


def reference_train_view(info: SegInfo, size: int) -> SegView:
    """The fine-tuning view as a v2 pipeline: what `TrainView` computes, bit for bit (tested)."""
    return SegView(v2.Compose([training_crop(size), v2.RandomHorizontalFlip(), *_finish(info)]), info)


class TrainView:
    """The fine-tuning view: random resized crop (area 0.5-1, bilinear antialiased image, nearest mask),
    horizontal flip, scaled to [0, 1] and normalised. It draws the same random numbers in the same order
    as `reference_train_view` and gives the same tensors, through v2's functional kernels on plain
    tensors: without the v2 pipeline's per-transform dispatch, which at small sizes is much of a sample's
    cost, where the transfer's steps wait for data much of their time (benchmarks/README.md)."""

    def __init__(self, info: SegInfo, size: int) -> None:
        self.crop = training_crop(size)
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


class BatchTrainView:
    """`TrainView` on a whole batch on the training device (train.augment_on=device): the batch the
    loader collated (`PairLoaderPart`: uint8 images and masks padded to the largest, each pair's size in
    `image_size`) -> {"image": (B, 3, size, size) normalised, "mask": (B, size, size) int64}.

    Per sample, from `draws`: a box by torchvision's RandomResizedCrop sampler (transforms/v2/
    _geometry.py RandomResizedCrop.make_params, as methods/batched.py crop_boxes runs it: area SCALE,
    aspect CROP_RATIO) and a flip with probability 0.5 (RandomHorizontalFlip there), both applied to
    image and mask. The image is resampled as v2's antialiased bilinear resize (v2/functional/
    _geometry.py resize_image; batched.resized_crops: torch's antialias weights), in float32, where
    v2's uint8 kernel rounds (within a grey level); the mask takes the pixels v2's NEAREST picks
    (resize_mask; batched.nearest_crops), exactly. Where `TrainView` draws from torch's global
    generator sample by sample, this draws every sample's numbers at once, so the two paths agree in
    distribution, not draw for draw (tests/test_transfer_views.py)."""

    def __init__(self, info: SegInfo, size: int) -> None:
        self.size = size
        self.mean, self.std = tuple(info.mean), tuple(info.std)

    def params(self, sizes: torch.Tensor, rand: Rand) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Each sample's crop box (top, left, height, width) within its own (height, width) `sizes`
        and whether it is flipped."""
        return crop_boxes(sizes, SCALE, CROP_RATIO, rand), chance(rand, 0.5)

    def apply(
        self, images: torch.Tensor, masks: torch.Tensor, boxes: tuple[torch.Tensor, ...], flip: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The views of uint8 `images` (B, 3, H, W) and `masks` (B, H, W) for the given boxes and flips."""
        x = resized_crops(images.float().div_(255), boxes, self.size, "bilinear", flip)
        return {
            "image": normalize(x, self.mean, self.std),
            "mask": nearest_crops(masks, boxes, self.size, flip).long(),
        }

    def __call__(self, batch: dict[str, Any], draws: Draws) -> dict[str, Any]:
        images = batch["image"]
        boxes, flip = self.params(batch[IMAGE_SIZE], draws.rows(1, images.shape[0]))
        return self.apply(images, batch["mask"], boxes, flip)


class PairLoaderPart(BatchView):
    """The loader's part of the training pairs under augment_on=device, for BatchTrainView: each pair
    as it was decoded (`__call__`), batched by `collate` (data/loader.py collate_images, the masks padded
    with the ignore index, so that padding is never a class) or, where the dataset gives whole batches
    (data/base.py WholeBatches: the synthetic set), taken whole (`batch`: the same values). Either way
    the batch's labels are checked once, here on the host (in the data-loader workers where there are
    some), so that the device is never waited on for the check; it covers the whole mask, not only the
    pixels a crop keeps, stricter than `TrainView`'s. Masks whose labels fit in a byte cross to the
    device as uint8 (an eighth of int64's bytes)."""

    def __init__(self, info: SegInfo) -> None:
        self.info = info
        self.narrow = info.num_classes <= 256 and 0 <= info.ignore_index <= 255

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"image": sample["image"], "mask": sample["mask"]}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.checked(collate_images(samples, fill={"mask": self.info.ignore_index}))

    def batch(self, samples: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
        return self.checked({**one_size(samples["image"]), "mask": samples["mask"]})

    def checked(self, batch: dict[str, Any]) -> dict[str, Any]:
        check_labels(batch["mask"], self.info)
        if self.narrow:
            batch["mask"] = batch["mask"].to(torch.uint8)
        return batch


def batch_train_view(
    info: SegInfo, size: int, augment_on: str, device: torch.device, workers: int
) -> BatchTrainView | None:
    """The batched training view where `train.augment_on` puts the views on the device
    (methods/batched.py views_on_device: auto does, unless a CPU run has data-loader workers to make
    them per sample beside the step), else None: `TrainView` per sample in the loader, kept as the
    reference the batched view is tested against and for runs where the loader's cores are free."""
    return BatchTrainView(info, size) if views_on_device(augment_on, device, workers) else None


def eval_view(info: SegInfo, size: int) -> SegView:
    return SegView(v2.Compose([v2.Resize((size, size), antialias=True), *_finish(info)]), info)


def full_view(info: SegInfo) -> SegView:
    """Normalised only: images and masks keep their stored resolution (sliding-window evaluation)."""
    return SegView(v2.Compose(_finish(info)), info)
