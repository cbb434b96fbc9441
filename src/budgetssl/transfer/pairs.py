"""Segmentation datasets stored as image files with label PNGs beside them (ADE20K, VOC): the shared
loading, the size check and the handling of unreadable files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from budgetssl.data.corrupt import load_or_skip
from budgetssl.data.decode import UnreadableImage, read_image
from budgetssl.transfer.base import SegmentationDataset
from budgetssl.transfer.masks import read_index_png


class ImageMaskPairs(SegmentationDataset):
    """Samples {"image", "mask"} from `images[i]` and `masks[i]`; `labels(png)` maps stored indices to
    training ids (ignore_index for pixels to ignore)."""

    images: list[Path]
    masks: list[Path]
    skip: bool = False

    def labels(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> dict[str, Any]:
        image = read_image(self.images[index])
        mask = self.labels(read_index_png(self.masks[index]))
        if tuple(image.shape[-2:]) != mask.shape:
            raise UnreadableImage(
                f"image {self.images[index]} is {tuple(image.shape[-2:])} but its mask {self.masks[index]} "
                f"is {mask.shape} (height, width)"
            )
        return {"image": image, "mask": tv_tensors.Mask(torch.from_numpy(mask))}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.images):
            raise IndexError(index)
        return load_or_skip(self._load, index, len(self.images), self.skip, "transfer.skip_corrupt")
