"""What a dataset tells the methods and heads built on it."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataInfo:
    """Facts about a dataset that shape a method's modules (e.g. the classifier width)."""

    image_size: int
    class_names: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class SegInfo:
    """Facts about a segmentation dataset: its classes and the label that marks pixels to ignore."""

    image_size: int
    class_names: tuple[str, ...]
    ignore_index: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
