"""Segmentation of the synthetic scenes: background plus one class per shape, boundaries ignored.

Its scenes come from streams of their own, so no transfer image was seen in pretraining. Rendered scenes
come from the pretraining set's bounded cache: a transfer draws each of its scenes several times (100
steps of 32 from 1000 scenes) and the probe draws the same ones again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from budgetssl.config.schema import TransferConfig
from budgetssl.data.base import WholeBatches
from budgetssl.data.sets.synthetic import batch_indices, cached_scene, to_batch, to_sample
from budgetssl.data.shapes import IGNORE, SHAPES
from budgetssl.errors import ConfigError
from budgetssl.transfer.base import SegmentationDataset, TransferInfo
from budgetssl.transfer.registry import TRANSFERS


@dataclass
class SyntheticSegConfig(TransferConfig):
    data_seed: int = MISSING
    num_train: int = MISSING
    num_val: int = MISSING
    max_objects: int = MISSING
    val_image_size: int | None = MISSING  # validation scenes' full resolution; null = image_size


@TRANSFERS.register("synthetic")
class SyntheticSegmentation(WholeBatches, SegmentationDataset):
    config_class = SyntheticSegConfig

    @classmethod
    def check(cls, cfg: SyntheticSegConfig) -> None:  # type: ignore[override]
        super().check(cfg)
        cls.check_own(cfg)

    @staticmethod
    def check_own(cfg: SyntheticSegConfig) -> None:
        """This dataset's fields; also when it is built outside a checked run (tests, notebooks)."""
        if cfg.root is not None:
            raise ConfigError("transfer 'synthetic' is generated in memory: remove transfer.root")
        if cfg.val_image_size is not None and cfg.val_image_size < 8:
            raise ConfigError(f"transfer.val_image_size must be >= 8 or null, got {cfg.val_image_size}")
        for split, size in (("train", cfg.num_train), ("val", cfg.num_val)):
            if size < 1:
                raise ConfigError(
                    f"transfer 'synthetic' split '{split}' is empty: set transfer.num_{split} >= 1"
                )

    def __init__(self, cfg: SyntheticSegConfig, split: str) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; valid: train, val")
        self.check_own(cfg)
        self.cfg = cfg
        self.split = f"transfer_{split}"
        self.length = cfg.num_train if split == "train" else cfg.num_val
        self.size = cfg.image_size if split == "train" else cfg.val_image_size or cfg.image_size
        self.info = self.info_of(cfg)

    @classmethod
    def info_of(cls, cfg: TransferConfig) -> TransferInfo:
        return TransferInfo(
            image_size=cfg.image_size,
            class_names=("background", *SHAPES),
            ignore_index=IGNORE,
            background_index=0,
        )

    @classmethod
    def train_images_from_config(cls, cfg: SyntheticSegConfig) -> int:  # type: ignore[override]
        return cfg.num_train

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        s = to_sample(cached_scene(self.cfg.data_seed, self.split, index, self.size, self.cfg.max_objects))
        return {"image": s["image"], "mask": s["mask"]}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The pairs at `indices` in one gather from the stored scenes (WholeBatches): what `self[i]` gives
        for each, stacked."""
        at = batch_indices(indices, self.length, f"pairs of '{self.split}'")
        s = to_batch(cached_scene.rows(self.cfg.data_seed, self.split, at, self.size, self.cfg.max_objects))
        return {"image": s["image"], "mask": s["mask"]}
