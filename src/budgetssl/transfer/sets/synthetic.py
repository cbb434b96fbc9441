"""Segmentation of the synthetic scenes: background plus one class per shape, boundaries ignored.

Its scenes come from streams of their own, so no transfer image was seen in pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from budgetssl.config.schema import TransferConfig
from budgetssl.data.info import SegInfo
from budgetssl.data.sets.synthetic import scene, to_sample
from budgetssl.data.shapes import IGNORE, SHAPES
from budgetssl.errors import ConfigError
from budgetssl.transfer.base import SegmentationDataset
from budgetssl.transfer.registry import TRANSFERS


@dataclass
class SyntheticSegConfig(TransferConfig):
    data_seed: int = 0
    num_train: int = 1000
    num_val: int = 256
    max_objects: int = 3
    val_image_size: int | None = None  # validation scenes' full resolution; null = image_size


@TRANSFERS.register("synthetic")
class SyntheticSegmentation(SegmentationDataset):
    config_class = SyntheticSegConfig

    def __init__(self, cfg: SyntheticSegConfig, split: str) -> None:
        if cfg.root is not None:
            raise ConfigError("transfer 'synthetic' is generated in memory: remove transfer.root")
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; valid: train, val")
        self.cfg = cfg
        self.split = f"transfer_{split}"
        self.length = cfg.num_train if split == "train" else cfg.num_val
        self.size = cfg.image_size if split == "train" else cfg.val_image_size or cfg.image_size
        if self.size < 8:
            raise ConfigError(f"transfer.val_image_size must be >= 8, got {self.size}")
        if self.length < 1:
            raise ConfigError(f"transfer 'synthetic' split '{split}' is empty: set transfer.num_{split} >= 1")
        self.info = SegInfo(
            image_size=cfg.image_size, class_names=("background", *SHAPES), ignore_index=IGNORE
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        s = to_sample(scene(self.cfg.data_seed, self.split, index, self.size, self.cfg.max_objects))
        return {"image": s["image"], "mask": s["mask"]}
