"""ADE20K scene parsing (SceneParse150, the ADEChallengeData2016 release), as distributed.

Layout: `transfer.root` = ADEChallengeData2016/ holding `images/training/ADE_train_*.jpg`,
`annotations/training/ADE_train_*.png` (20,210 pairs) and `images/validation`, `annotations/validation`
(2,000). Masks are greyscale PNGs with values 0..150: 0 is "other" (unlabelled) and 1..150 the classes.
As in mmsegmentation (reduce_zero_label), 0 becomes the ignore index 255 and 1..150 become ids 0..149, so
the scored classes are exactly the benchmark's 150.

train is cropped and flipped at random by the transfer stage's train view, val resized by its eval view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import MISSING

from budgetssl.config.schema import TransferConfig
from budgetssl.data.layout import require_dir, require_files, require_root
from budgetssl.errors import ConfigError
from budgetssl.transfer.base import TransferInfo
from budgetssl.transfer.pairs import ImageMaskPairs
from budgetssl.transfer.registry import TRANSFERS

IGNORE = 255
SPLITS = {"train": "training", "val": "validation"}
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
LAYOUT = "ADEChallengeData2016: a folder holding images/{training,validation}/ and annotations/{...}/"


@dataclass
class ADE20KConfig(TransferConfig):
    skip_corrupt: bool = MISSING  # true: an unreadable image or mask is replaced by the next readable pair


def reduce_zero_label(stored: np.ndarray) -> np.ndarray:
    """0 ("other") -> ignore; 1..150 -> 0..149 (values past 150 are ignored too)."""
    labels = stored.astype(np.int64) - 1
    labels[(stored == 0) | (stored > len(CLASSES))] = IGNORE
    return labels


@TRANSFERS.register("ade20k")
class ADE20K(ImageMaskPairs):
    config_class = ADE20KConfig

    def __init__(self, cfg: ADE20KConfig, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        root = require_root(cfg.root, "transfer.root", LAYOUT)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"  # the folder the zip extracts to
        name = SPLITS[split]
        images = require_dir(root, f"images/{name}", "transfer.root", f"the {split} images of {LAYOUT}")
        masks = require_dir(root, f"annotations/{name}", "transfer.root", f"the {split} masks of {LAYOUT}")
        self.images = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not self.images:
            raise ConfigError(
                f"the {split} split is empty: {images} holds no .jpg images (transfer.root={root})"
            )
        self.masks = [masks / f"{p.stem}.png" for p in self.images]
        require_files(self.masks, "mask", f"{split} images in {images}", "transfer.root", root, LAYOUT)
        self.skip = cfg.skip_corrupt
        self.info = self.info_of(cfg)

    @classmethod
    def info_of(cls, cfg: TransferConfig) -> TransferInfo:
        # No background class: the 150 are objects and stuff, and "other" is ignored, so miou_objects = miou.
        return TransferInfo(
            image_size=cfg.image_size, class_names=CLASSES, ignore_index=IGNORE, background_index=None
        )

    def labels(self, stored: np.ndarray) -> np.ndarray:
        return reduce_zero_label(stored)
