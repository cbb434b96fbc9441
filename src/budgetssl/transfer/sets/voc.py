"""PASCAL VOC 2012 semantic segmentation, as distributed (VOCtrainval_11-May-2012.tar).

Layout: `transfer.root` = VOCdevkit/VOC2012/ (or VOCdevkit/) holding `JPEGImages/<id>.jpg`,
`SegmentationClass/<id>.png` and the split lists `ImageSets/Segmentation/{train,val}.txt` (1,464 and
1,449 ids). Masks are palette PNGs whose palette indices are the labels: 0 background, 1..20 the object
classes, 255 the void border (ignored); they are read as indices, never as RGB. The SBD-augmented set
(10,582 training masks, greyscale) is read with transfer.mask_dir=SegmentationClassAug and
transfer.train_split=<its list, e.g. train_aug>.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from budgetssl.config.schema import TransferConfig
from budgetssl.data.layout import require_dir, require_file, require_files, require_root
from budgetssl.errors import ConfigError
from budgetssl.transfer.base import TransferInfo
from budgetssl.transfer.pairs import ImageMaskPairs
from budgetssl.transfer.registry import TRANSFERS

IGNORE = 255
CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
LAYOUT = "VOCdevkit/VOC2012: a folder holding JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/"


@dataclass
class VOCConfig(TransferConfig):
    mask_dir: str = MISSING  # SegmentationClassAug for the SBD-augmented masks
    train_split: str = MISSING  # ImageSets/Segmentation/<train_split>.txt
    val_split: str = MISSING
    skip_corrupt: bool = MISSING  # true: an unreadable image or mask is replaced by the next readable pair


@TRANSFERS.register("voc")
class VOC(ImageMaskPairs):
    config_class = VOCConfig

    def __init__(self, cfg: VOCConfig, split: str) -> None:
        lists = {"train": cfg.train_split, "val": cfg.val_split}
        if split not in lists:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(lists)}")
        root = require_root(cfg.root, "transfer.root", LAYOUT)
        for inner in ("VOC2012", "VOCdevkit/VOC2012"):  # pointed at VOCdevkit/ or the folder it is in
            if not (root / "JPEGImages").is_dir() and (root / inner).is_dir():
                root = root / inner
        images = require_dir(root, "JPEGImages", "transfer.root", f"the images of {LAYOUT}")
        masks = require_dir(root, cfg.mask_dir, "transfer.root", f"the masks (transfer.mask_dir) of {LAYOUT}")
        listed = require_file(
            root,
            f"ImageSets/Segmentation/{lists[split]}.txt",
            "transfer.root",
            f"the {split} ids of {LAYOUT}",
        )
        ids = [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]
        if not ids:
            raise ConfigError(f"the {split} split is empty: {listed} lists no image ids")
        self.images = [images / f"{i}.jpg" for i in ids]
        self.masks = [masks / f"{i}.png" for i in ids]
        for kind, paths in (("image", self.images), ("mask", self.masks)):
            require_files(paths, kind, f"ids in {listed}", "transfer.root", root, LAYOUT)
        self.skip = cfg.skip_corrupt
        self.info = self.info_of(cfg)

    @classmethod
    def info_of(cls, cfg: TransferConfig) -> TransferInfo:
        return TransferInfo(
            image_size=cfg.image_size, class_names=CLASSES, ignore_index=IGNORE, background_index=0
        )
