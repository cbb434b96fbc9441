"""The built-in dataset: shapes on textures, generated on the fly, deterministic by `data_seed`.

Every sample has a class label (the main object's shape), a caption naming what is drawn and a
segmentation mask, so every method and the transfer stage can run on it with no files at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING
from torchvision import tv_tensors

from budgetssl.config.schema import DatasetConfig
from budgetssl.data.base import PretrainDataset, Sample
from budgetssl.data.info import DataInfo
from budgetssl.data.registry import DATASETS
from budgetssl.data.shapes import SHAPES, Scene, render
from budgetssl.errors import ConfigError

# Distinct streams so that no split shares a scene with another.
SPLITS = {"train": 0, "val": 1, "transfer_train": 2, "transfer_val": 3}


@dataclass
class SyntheticConfig(DatasetConfig):
    """configs/dataset/synthetic.yaml holds the values."""

    data_seed: int = MISSING
    num_train: int = MISSING
    num_val: int = MISSING
    max_objects: int = MISSING


def scene(data_seed: int, split: str, index: int, image_size: int, max_objects: int) -> Scene:
    """The scene at `index` of `split`: a pure function of its arguments."""
    rng = np.random.default_rng([data_seed, SPLITS[split], index])
    return render(rng, image_size, max_objects)


def to_sample(s: Scene) -> Sample:
    return {
        "image": tv_tensors.Image(torch.from_numpy(s.image).permute(2, 0, 1).contiguous()),
        "label": s.label,
        "caption": s.caption,
        "mask": tv_tensors.Mask(torch.from_numpy(s.mask.astype(np.int64))),
    }


@DATASETS.register("synthetic")
class SyntheticShapes(PretrainDataset):
    config_class = SyntheticConfig
    provides = frozenset({"image", "label", "caption", "mask"})

    def __init__(self, cfg: SyntheticConfig, split: str = "train") -> None:
        if cfg.root is not None:
            raise ConfigError("dataset 'synthetic' is generated in memory: remove dataset.root")
        if cfg.max_objects < 1:
            raise ConfigError(f"dataset.max_objects must be >= 1, got {cfg.max_objects}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.cfg = cfg
        self.split = split
        self.length = cfg.num_train if split == "train" else cfg.num_val
        if self.length < 1:
            raise ConfigError(f"dataset 'synthetic' split '{split}' is empty: set dataset.num_{split} >= 1")
        self.info = DataInfo(image_size=cfg.image_size, class_names=SHAPES)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return to_sample(
            scene(self.cfg.data_seed, self.split, index, self.cfg.image_size, self.cfg.max_objects)
        )
